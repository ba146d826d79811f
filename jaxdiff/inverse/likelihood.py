"""Noise models log p(y | x); the problem y = clip(A x + sigma n, -1, 1).

Two noise models (`NOISE_MODELS`), both without the terms that do not depend
on x, so `-log p(y | x) >= 0`:

* `gaussian`: `-||y - A x||^2 / (2 sigma^2)`, which ignores the clipping;
* `clipped` (censored): interior pixels are Gaussian, a pixel with y = 1 has
  probability `P(A x + sigma n >= 1) = Phi((A x - 1) / sigma)`, one with
  y = -1 has `Phi((-1 - A x) / sigma)`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from jaxdiff.inverse import protocol
from jaxdiff.inverse.operators import Operator
from jaxdiff.registry import Registry

Array = jax.Array

NOISE_MODELS = Registry("noise model")


@NOISE_MODELS.register("gaussian")
def gaussian_log_likelihood(y: Array, mean: Array, sigma: float) -> Array:
  """log N(y; mean, sigma^2 I) up to a constant: -||y - mean||^2 / (2 s^2).

  Args:
    y: measurements [B, ...].
    mean: A x, same shape.
    sigma: noise standard deviation.

  Returns:
    [B] log-likelihoods.
  """
  axes = tuple(range(1, y.ndim))
  return -jnp.sum(jnp.square(y - mean), axes) / (2.0 * sigma**2)


@NOISE_MODELS.register("clipped")
def clipped_log_likelihood(y: Array, mean: Array, sigma: float, *,
                           lo: float = -1.0, hi: float = 1.0) -> Array:
  """Censored Gaussian: log p(y | mean) for y = clip(mean + sigma n, lo, hi).

  A pixel with y >= hi has log P(mean + sigma n >= hi) = log Phi((mean - hi)
  / sigma), one with y <= lo has log Phi((lo - mean) / sigma) (both via
  `log_ndtr`, stable in the tails); interior pixels have the Gaussian
  -(y - mean)^2 / (2 sigma^2) (constants dropped, as in
  `gaussian_log_likelihood`).

  Args:
    y: measurements [B, ...] in [lo, hi].
    mean: A x, same shape.
    sigma: noise standard deviation.
    lo: lower clipping bound.
    hi: upper clipping bound.

  Returns:
    [B] log-likelihoods.
  """
  axes = tuple(range(1, y.ndim))
  interior = -jnp.square(y - mean) / (2.0 * sigma**2)
  upper = jax.scipy.special.log_ndtr((mean - hi) / sigma)
  lower = jax.scipy.special.log_ndtr((lo - mean) / sigma)
  ll = jnp.where(y >= hi, upper, jnp.where(y <= lo, lower, interior))
  return jnp.sum(ll, axes)


@dataclasses.dataclass(frozen=True, eq=False)
class InverseProblem:
  """An operator with its noise: y = clip(A x + sigma n, -1, 1).

  Attributes:
    operator: the measurement operator A.
    sigma: noise standard deviation (images in [-1, 1]).
    noise_model: 'clipped' or 'gaussian' (the likelihood methods use).
    clip: whether measurements are clipped to [-1, 1].
  """
  operator: Operator
  sigma: float = 0.3
  noise_model: str = "clipped"
  clip: bool = True

  def __post_init__(self):
    if not self.sigma > 0:
      raise ValueError(f"The noise sigma must be > 0, got {self.sigma}.")
    NOISE_MODELS.get(self.noise_model)  # fails early on a bad name

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return self.operator.image_shape

  @functools.cached_property
  def measurement_shape(self) -> Tuple[int, ...]:
    """The shape of one image's measurement A x (without the batch axis)."""
    image = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
    return tuple(jax.eval_shape(self.operator.forward, image).shape[1:])

  def check_measurement(self, y: Array, where: str) -> None:
    """AssertionError unless y is a batch [B, ...] of this problem's
    measurements (shapes only: free under jit after tracing)."""
    chex.assert_shape(y, (None, *self.measurement_shape), custom_message=(
        f"{where}: y must be [B, {', '.join(map(str, self.measurement_shape))}]"
        f", measurements of the {self.operator.name!r} operator on "
        f"{self.image_shape} images (`InverseProblem.measure`)"))

  def measure(self, key: Array, x: Array,
              indices: Optional[Array] = None) -> Array:
    """y = clip(A x + sigma n, -1, 1) (`protocol.measure`): image i's noise
    comes from fold_in(key, indices[i]), whatever the batching.

    Args:
      key: the noise key.
      x: clean images [B, H, W, C] in [-1, 1].
      indices: [B] global image indices (default arange(B)).

    Returns:
      y [B, ...].
    """
    return protocol.measure(key, self.operator.forward(x), self.sigma,
                            indices=indices, clip=self.clip)

  def impute(self, key: Array, y: Array) -> Array:
    """Replaces clipped entries of y by draws beyond the bound they hit.

    With the clipped noise model, an entry y = -1 says only that
    A x + sigma n <= -1. Where A x sits at the bound (the black background
    of a CT slice: 12% of the protocol's pixels are clipped) the unclipped
    value is -1 - sigma |n'|, n' standard normal; that draw puts the
    entry's noise back on the Gaussian the network was trained on, so
    methods that read y as a noisy image (Tweedie, the matched start) see
    the noise they expect. Unclipped entries are kept. With the Gaussian
    noise model (clipping ignored), y is returned unchanged.

    Args:
      key: PRNG key of the draw.
      y: measurements [B, ...].

    Returns:
      y with its clipped entries imputed.
    """
    if not (self.clip and self.noise_model == "clipped"):
      return y
    tail = self.sigma * jnp.abs(jax.random.normal(key, y.shape, y.dtype))
    return jnp.where(y <= -1.0, -1.0 - tail,
                     jnp.where(y >= 1.0, 1.0 + tail, y))

  def log_likelihood(self, y: Array, x: Array,
                     sigma: Optional[Array] = None) -> Array:
    """[B] log p(y | x) under the noise model (x-independent terms dropped);
    `sigma` replaces the noise level (default: the problem's)."""
    return NOISE_MODELS.get(self.noise_model)(
        y, self.operator.forward(x), self.sigma if sigma is None else sigma)

  def residual(self, y: Array, x: Array) -> Array:
    """[B] sqrt(-2 sigma^2 log p(y | x)); ||y - A x|| for the Gaussian model."""
    nll = -self.log_likelihood(y, x)
    return jnp.sqrt(jnp.maximum(2.0 * self.sigma**2 * nll, 0.0) + 1e-12)
