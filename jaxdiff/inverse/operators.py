"""Linear measurement operators A on images [B, H, W, C], by name.

`make_operator(name, image_shape, **options)` builds one of `OPERATORS`:
denoise (A = I), inpaint_random, inpaint_box, blur, sr2, sr4. Each has a
`forward` (x -> A x) and a `backproject` (y -> an image: nearest upsampling
for super-resolution, the identity otherwise).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.registry import Registry

Array = jax.Array

OPERATORS = Registry("operator")

class Operator(NamedTuple):
  """A linear measurement operator on images [B, H, W, C].

  Attributes:
    name: registry name.
    image_shape: (H, W, C) of x.
    forward: x [B, H, W, C] -> A x [B, ...].
    backproject: y [B, ...] -> an image [B, H, W, C] (nearest upsampling for
      super-resolution, the identity otherwise): what figures show and where
      the matched methods start.
  """
  name: str
  image_shape: Tuple[int, int, int]
  forward: Callable[[Array], Array]
  backproject: Callable[[Array], Array]


@dataclasses.dataclass(frozen=True)
class OperatorOptions:
  """Parameters of the operators (each reads only its own).

  Attributes:
    missing_fraction: inpaint_random: fraction of pixels removed.
    mask_seed: inpaint_random: seed of the (fixed) pixel mask.
    box_size: inpaint_box: side of the centred square that is removed.
    blur_sigma: blur: standard deviation of the Gaussian kernel in pixels; the
      kernel has 2 ceil(3 sigma) + 1 taps and reflect padding.
  """
  missing_fraction: float = 0.5
  mask_seed: int = 0
  box_size: int = 12
  blur_sigma: float = 1.0


def make_operator(name: str, image_shape: Sequence[int],
                  **options) -> Operator:
  """Builds a registered operator for images of `image_shape` (H, W, C).

  Args:
    name: one of `OPERATORS` (denoise, inpaint_random, inpaint_box, blur,
      sr2, sr4).
    image_shape: (H, W, C).
    **options: fields of `OperatorOptions`.

  Returns:
    The operator.
  """
  try:
    opts = OperatorOptions(**options)
  except TypeError as e:
    known = ", ".join(f.name for f in dataclasses.fields(OperatorOptions))
    raise ValueError(f"Bad operator options {options}: {e}; known: "
                     f"{known}.") from None
  shape = tuple(int(s) for s in image_shape)
  if len(shape) != 3:
    raise ValueError(f"image_shape must be (H, W, C), got {image_shape}.")
  return OPERATORS.get(name)(shape, opts)


def _identity(x: Array) -> Array:
  return x


@OPERATORS.register("denoise")
def _denoise(shape, opts) -> Operator:
  """A = I."""
  del opts
  return Operator("denoise", shape, _identity, _identity)


def _mask_operator(name, shape, mask: np.ndarray) -> Operator:
  mask = jnp.asarray(mask, jnp.float32)[None]  # [1, H, W, C]

  def forward(x):
    return x * mask

  return Operator(name, shape, forward, _identity)


@OPERATORS.register("inpaint_random")
def _inpaint_random(shape, opts) -> Operator:
  """A x = m * x with a fixed random mask m: `missing_fraction` of the pixel
  positions (all channels) are zero."""
  if not 0.0 <= opts.missing_fraction < 1.0:
    raise ValueError(f"missing_fraction must be in [0, 1), got "
                     f"{opts.missing_fraction}.")
  h, w, c = shape
  with jax.ensure_compile_time_eval():
    keep = jax.random.bernoulli(jax.random.key(opts.mask_seed),
                                1.0 - opts.missing_fraction, (h, w, 1))
    keep = np.asarray(keep, np.float32)
  return _mask_operator("inpaint_random", shape, np.repeat(keep, c, axis=-1))


@OPERATORS.register("inpaint_box")
def _inpaint_box(shape, opts) -> Operator:
  """A x = m * x with m zero on the centred `box_size` square: rows and
  columns [(H - b) // 2, (H - b) // 2 + b)."""
  h, w, c = shape
  b = int(opts.box_size)
  if not 0 < b <= min(h, w):
    raise ValueError(f"box_size must be in [1, {min(h, w)}], got {b}.")
  mask = np.ones((h, w, c), np.float32)
  top, left = (h - b) // 2, (w - b) // 2
  mask[top:top + b, left:left + b] = 0.0
  return _mask_operator("inpaint_box", shape, mask)


def gaussian_kernel(sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian kernel with 2 ceil(3 sigma) + 1 taps."""
  if sigma <= 0:
    raise ValueError(f"blur_sigma must be > 0, got {sigma}.")
  half = int(math.ceil(3.0 * sigma))
  taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
  return taps / taps.sum()  # [2 half + 1]


def _blur_axis(x: Array, kernel: np.ndarray, axis: int) -> Array:
  """'same' filtering of x along axis with reflect padding (kernel is
  symmetric, so correlation equals convolution)."""
  half = len(kernel) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (half, half)
  xp = jnp.pad(x, pad, mode="reflect")
  n = x.shape[axis]
  out = 0.0
  for i, k in enumerate(kernel):  # a few taps, unrolled at trace time
    out = out + float(k) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis)
  return out


@OPERATORS.register("blur")
def _blur(shape, opts) -> Operator:
  """Separable Gaussian blur with standard deviation `blur_sigma`."""
  kernel = gaussian_kernel(opts.blur_sigma)
  if len(kernel) // 2 >= min(shape[:2]):
    raise ValueError(f"blur_sigma={opts.blur_sigma} gives a kernel wider than "
                     f"the {shape[0]}x{shape[1]} image; use a smaller one.")

  def forward(x):  # [B, H, W, C] -> [B, H, W, C]
    return _blur_axis(_blur_axis(x, kernel, 1), kernel, 2)

  return Operator("blur", shape, forward, _identity)


def _super_resolution(factor: int, shape) -> Operator:
  h, w, c = shape
  if h % factor or w % factor:
    raise ValueError(f"sr{factor} needs H and W divisible by {factor}, got "
                     f"{h}x{w}.")

  def forward(x):  # [B, H, W, C] -> [B, H/f, W/f, C]
    b = x.shape[0]
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(
        axis=(2, 4))

  def backproject(y):  # [B, H/f, W/f, C] -> [B, H, W, C], nearest
    return jnp.repeat(jnp.repeat(y, factor, axis=1), factor, axis=2)

  return Operator(f"sr{factor}", shape, forward, backproject)


@OPERATORS.register("sr2")
def _sr2(shape, opts) -> Operator:
  """2x super-resolution: 2x2 average pooling."""
  del opts
  return _super_resolution(2, shape)


@OPERATORS.register("sr4")
def _sr4(shape, opts) -> Operator:
  """4x super-resolution: 4x4 average pooling."""
  del opts
  return _super_resolution(4, shape)

