"""Shared network layers: time embeddings and the conditioning embedding."""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def sinusoidal_embedding(t: jax.Array, dim: int, *, scale: float = 1000.0,
                         max_period: float = 10000.0) -> jax.Array:
  """Transformer-style sinusoidal embedding of t [B] -> [B, dim].

  `scale` maps the network's time input (t in [0, 1]) onto the range the
  frequencies were designed for; it is a network hyper-parameter, not a
  property of any SDE.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / max(half - 1, 1))
  args = (scale * t)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class ConditionEmbedding(nn.Module):
  """Time embedding MLP plus an optional class embedding.

  Labels index `num_classes + 1` rows: row `num_classes` is the null class used
  for unconditional / classifier-free-guided prediction.
  """
  dim: int
  num_classes: Optional[int] = None
  time_scale: float = 1000.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t, y=None):
    emb = sinusoidal_embedding(t, self.dim, scale=self.time_scale)
    emb = nn.Dense(4 * self.dim, dtype=self.dtype)(emb.astype(self.dtype))
    emb = nn.Dense(4 * self.dim, dtype=self.dtype)(nn.silu(emb))
    if self.num_classes is not None:
      if y is None:
        y = jnp.full(t.shape, self.num_classes, jnp.int32)
      emb = emb + nn.Embed(self.num_classes + 1, 4 * self.dim,
                           dtype=self.dtype)(y)
    return emb
