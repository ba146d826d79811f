"""The coursework CNN: 7x7 convolutions, LayerNorm over (H, W, C), GELU,
hidden channels (16, 32, 32, 16), a Fourier time embedding added after the
first block, and a 3x3 output convolution."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNNBlock(nn.Module):
  features: int
  kernel_size: int = 7
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), dtype=self.dtype)(x)
    x = nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=(-3, -2, -1),
                     dtype=self.dtype)(x)
    return nn.gelu(x, approximate=False)


class CNN(nn.Module):
  """Coursework noise predictor.

  Attributes:
    hidden: channels of the hidden blocks.
    kernel_size: kernel of the hidden convolutions.
    last_kernel_size: kernel of the output convolution.
    time_embeddings: number of Fourier frequencies of the time encoding.
    num_classes: optional class conditioning (added to the time embedding).
  """
  hidden: Sequence[int] = (16, 32, 32, 16)
  kernel_size: int = 7
  last_kernel_size: int = 3
  time_embeddings: int = 16
  num_classes: Optional[int] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, y=None, *, train: bool = False):
    """x [B, H, W, C], t [B] in [0, 1], y [B] or None -> eps [B, H, W, C]."""
    del train  # no dropout in the coursework model.
    # The coursework's frequencies: 0 and 2 pi 1.5^i.
    freqs = jnp.concatenate([
        jnp.zeros((1,)),
        2 * jnp.pi * 1.5 ** jnp.arange(self.time_embeddings - 1)])
    phases = t[:, None] * freqs[None]
    temb = jnp.concatenate([jnp.sin(phases), jnp.cos(phases)], axis=-1)
    for width in (128, 128, 128):
      temb = nn.gelu(nn.Dense(width, dtype=self.dtype)(temb), approximate=False)
    temb = nn.Dense(self.hidden[0], dtype=self.dtype)(temb)
    if self.num_classes is not None:
      if y is None:
        y = jnp.full(t.shape, self.num_classes, jnp.int32)
      temb = temb + nn.Embed(self.num_classes + 1, self.hidden[0],
                             dtype=self.dtype)(y)
    h = CNNBlock(self.hidden[0], self.kernel_size, self.dtype)(
        x.astype(self.dtype))
    h = h + temb[:, None, None, :]
    for width in self.hidden[1:]:
      h = CNNBlock(width, self.kernel_size, self.dtype)(h)
    k = self.last_kernel_size
    return nn.Conv(x.shape[-1], (k, k), dtype=self.dtype)(h).astype(jnp.float32)
