"""U-Net noise predictor: residual blocks with GroupNorm, multi-head
self-attention at chosen resolutions, sinusoidal time embedding and optional
class conditioning. The network only sees (x, t, y); it knows no SDE."""
from __future__ import annotations

import functools
import itertools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import ConditionEmbedding


def _groups(ch: int) -> int:
  for g in (32, 16, 8, 4, 2, 1):
    if ch % g == 0:
      return g
  return 1


class ResBlock(nn.Module):
  out_ch: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x))
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
    h = h + nn.Dense(self.out_ch, dtype=self.dtype)(nn.silu(emb))[:, None, None]
    h = nn.silu(nn.GroupNorm(_groups(self.out_ch), dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype,
                kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype)(x)
    return x + h


def attention(query, key, value, bias=None, mask=None, **kwargs):
  """Scaled dot-product attention, heads moved next to the batch.

  The same arithmetic as `flax.linen.dot_product_attention` (no dropout, no
  mask), written as batched matmuls over [B, heads, L, D]: XLA's CPU backend
  runs this layout 2.4x faster than flax's einsums in the forward pass and
  1.3x in the backward (a 14x14, 8-head block at batch 32, one core).
  Arguments as flax's `attention_fn`; query, key, value are [B, L, heads, D].
  """
  if bias is not None or mask is not None or kwargs.get("dropout_rate", 0.):
    return nn.dot_product_attention(query, key, value, bias, mask, **kwargs)
  dtype = kwargs.get("dtype") or query.dtype
  q, k, v = (jnp.swapaxes(a, 1, 2).astype(dtype) for a in (query, key, value))
  q = q / jnp.sqrt(q.shape[-1]).astype(dtype)
  weights = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2), axis=-1)
  return jnp.swapaxes(weights.astype(dtype) @ v, 1, 2)


def fused_attention(query, key, value, bias=None, mask=None, *,
                    implementation: str = "xla", **kwargs):
  """`jax.nn.dot_product_attention` with the given implementation ("xla", or
  "cudnn": cuDNN's fused kernel on NVIDIA GPUs). Arguments as flax's
  `attention_fn`; query, key, value are [B, L, heads, D]."""
  if kwargs.get("dropout_rate", 0.):
    return nn.dot_product_attention(query, key, value, bias, mask, **kwargs)
  dtype = kwargs.get("dtype") or query.dtype
  q, k, v = (a.astype(dtype) for a in (query, key, value))
  return jax.nn.dot_product_attention(q, k, v, bias, mask,
                                      implementation=implementation)


# config.model.kwargs.attention -> the U-Net's attention function.
ATTENTION = {
    "matmul": attention,
    "xla": functools.partial(fused_attention, implementation="xla"),
    "cudnn": functools.partial(fused_attention, implementation="cudnn"),
}


def attention_fn(name: str):
  """The attention function named `name` (a key of `ATTENTION`); "cudnn"
  only where JAX's default backend is a GPU (ValueError elsewhere)."""
  if name not in ATTENTION:
    raise ValueError(f"Unknown attention implementation {name!r}; use one of "
                     f"{', '.join(ATTENTION)}.")
  if name == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(
        f"attention='cudnn' needs an NVIDIA GPU (cuDNN), but JAX runs on "
        f"{jax.default_backend()}: use attention='xla' or 'matmul'.")
  return ATTENTION[name]


class AttnBlock(nn.Module):
  """GroupNorm, multi-head self-attention over the H x W positions, residual.

  `attention` picks the implementation (see `ATTENTION`); it changes no
  parameter, so checkpoints load whichever is used.
  """
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  attention: str = "matmul"

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.GroupNorm(_groups(c), dtype=self.dtype)(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        attention_fn=attention_fn(self.attention),
        out_kernel_init=nn.initializers.zeros)(y, y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """DDPM-style U-Net.

  Attributes:
    ch: base channel count.
    ch_mult: channel multiplier per resolution level.
    num_res_blocks: residual blocks per level.
    attn_resolutions: spatial sizes (e.g. 14, 7) that get self-attention.
    num_heads: attention heads.
    dropout: dropout rate in residual blocks.
    num_classes: None for unconditional, else K (a null class K is added).
    time_scale: multiplier of t in [0, 1] inside the sinusoidal embedding.
    remat: recompute each residual block's activations in the backward pass
      instead of storing them (less memory, about one more forward of time);
      the parameters are the same either way.
    attention: the attention implementation: "matmul" (batched matmuls, the
      default), "xla" (`jax.nn.dot_product_attention` with XLA) or "cudnn"
      (its cuDNN fused kernel, NVIDIA GPUs only); same parameters for all.
  """
  ch: int = 64
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (14,)
  num_heads: int = 8
  dropout: float = 0.1
  num_classes: Optional[int] = None
  time_scale: float = 1000.0
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  attention: str = "matmul"

  @nn.compact
  def __call__(self, x, t, y=None, *, train: bool = False):
    """x [B, H, W, C], t [B] in [0, 1], y [B] int or None -> eps [B, H, W, C]."""
    block_cls = (nn.remat(ResBlock, static_argnums=(3,)) if self.remat
                 else ResBlock)
    count = itertools.count()

    def res_block(h, out_ch):  # Named as without remat: same parameters.
      return block_cls(out_ch, self.dropout, self.dtype,
                       name=f"ResBlock_{next(count)}")(h, emb, train)

    def attn_block(h):
      return AttnBlock(self.num_heads, self.dtype, self.attention)(h)

    emb = ConditionEmbedding(self.ch, self.num_classes, self.time_scale,
                             self.dtype)(t, y)
    h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = res_block(h, self.ch * mult)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(h)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)
        skips.append(h)
    h = res_block(h, h.shape[-1])
    h = attn_block(h)
    h = res_block(h, h.shape[-1])
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(h, self.ch * mult)
        if h.shape[1] in self.attn_resolutions:
          h = attn_block(h)
      if level != 0:
        skip_hw = skips[-1].shape[1:3]
        h = jax.image.resize(h, (h.shape[0], *skip_hw, h.shape[-1]), "nearest")
        h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype)(h)
    h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype)(h))
    out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype,
                  kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)
