"""Inverse problems: measurement operators, Diffusion Posterior Sampling (DPS)
and the OrganAMNIST denoising protocol (mode `denoise`).

A measurement is `y = clip(A x + sigma n, -1, 1)` with `n ~ N(0, I)`, a linear
operator `A` from `OPERATORS` (denoise, inpaint_random, inpaint_box, blur,
sr2, sr4) and images `x` in [-1, 1]. Two noise models give log p(y | x):

* `gaussian`: `-||y - A x||^2 / (2 sigma^2)`, which ignores the clipping;
* `clipped` (censored): interior pixels are Gaussian, a pixel with y = 1 has
  probability `P(A x + sigma n >= 1) = Phi((A x - 1) / sigma)`, one with
  y = -1 has `Phi((-1 - A x) / sigma)`.

Both drop the terms that do not depend on x, so `-log p(y | x) >= 0`.

Reconstruction methods (`METHODS`), all batched and jittable, all sampling
through the one integrator `jaxdiff.samplers.integrate`:

* `tweedie`: one network call. With a VP (or VE) SDE and sigma(t*)/alpha(t*) =
  sigma_y, `alpha(t*) y` is distributed exactly as x_{t*} given x when y is
  unclipped, so the Tweedie estimate `x0_hat(alpha(t*) y, t*)` is the MMSE
  estimate E[x | y] for the identity operator.
* `dps`: DPS (Chung et al., 2023) from pure noise: `dps_stepper` wraps any
  registered sampler's step, subtracting `zeta * grad_{x_t} r(x0_hat(x_t))`.
* `dps_matched`: DPS from the matched time t*, started at `alpha(t*) y`.
* `matched`: plain sampling (no likelihood guidance) from `alpha(t*) y` at t*;
  for the identity operator and unclipped y this samples p(x | y) exactly.
* `posterior_mean`: the mean of K samples of `dps` (or `posterior_of`),
  vmapped over K; with `antithetic`, drawn in pairs whose Gaussian noise
  (prior draw and every step's) is negated, which cancels the part of a
  draw that is odd in the noise (all of it for Gaussian data).

DPS step size: `r = sqrt(-2 sigma^2 log p(y | x0_hat))`, which for the Gaussian
model is the residual norm `||y - A x0_hat||`; the update is
`x <- x' - zeta * grad_{x_t} r`. This is the official DPS code's update
(`zeta * grad ||y - A x0_hat||`, i.e. the paper's zeta_i = zeta' /
||y - A x0_hat|| applied to the squared norm with zeta' = zeta / 2), and
extends it to any non-negative negative log-likelihood, e.g. the clipped one.
With `dps_weighting='likelihood'` the guidance is instead added to the score:
`zeta * grad_{x_t} log p(y | x0_hat)` at the noise level
`sqrt(sigma_y^2 + r_t^2)`, r_t^2 the variance of x0 given x_t for data of
variance `prior_var`, which is the exact conditional score for Gaussian data
(`dps_stepper`); its step follows the sampler's schedule.

The denoising protocol (`--mode denoise`): OrganAMNIST test split, the first
`num_images` (300) images, pixels scaled to [-1, 1]; image i gets the noise
`normal(fold_in(key(noise_seed), i))`, so y does not depend on the batch size;
`y = clip(x + 0.3 n, -1, 1)`; PSNR with data range 2 and SSIM (11x11 Gaussian
window, sigma 1.5, k1 0.01, k2 0.03, max value 2; `jaxdiff.metrics.ssim`,
equal to dm-pix) per image, averaged over images. With noise_seed 0 the
noisy input scores 17.18 dB / SSIM 0.540 on the first 300 test images
(closed-form expectation 17.17 dB) and 17.21 dB / 0.541 on the whole test
split (17,778 images).

The step size zeta is per step: `dps_matched` runs its `steps` between t*
and 0, so the same zeta pulls much harder towards y than in `dps`.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import time
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from jaxdiff import metrics as metrics_lib
from jaxdiff import samplers
from jaxdiff import sde as sde_lib
from jaxdiff.registry import Registry
from jaxdiff.run import MODES

Array = jax.Array
EpsFn = samplers.EpsFn
# (eps_fn, y [B, ...], key) -> reconstruction x [B, H, W, C].
Method = Callable[[EpsFn, Array, Array], Array]

# Protocol: images in [-1, 1], so the data range (PSNR) and max value (SSIM)
# are both 2.
DATA_RANGE = 2.0

OPERATORS = Registry("operator")
NOISE_MODELS = Registry("noise model")
METHODS = Registry("inverse method")
# Samplers with a `clip_denoised` option (x0_hat clipped to [-1, 1]).
CLIPPING_SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp")

_AXES = (1, 2, 3)  # pixel axes of [B, H, W, C]


# ------------------------------------------------------------------ operators


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


# ------------------------------------------------------------- noise models


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

  def measure(self, key: Array, x: Array,
              indices: Optional[Array] = None) -> Array:
    """y = clip(A x + sigma n, -1, 1); image i's noise comes from fold_in(key,
    indices[i]), so a data set's measurements do not depend on batching.

    Args:
      key: the noise key.
      x: clean images [B, H, W, C] in [-1, 1].
      indices: [B] global image indices (default arange(B)).

    Returns:
      y [B, ...].
    """
    ax = self.operator.forward(x)
    if indices is None:
      indices = jnp.arange(x.shape[0])
    noise = jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(key, i), ax.shape[1:], ax.dtype))(indices)
    y = ax + self.sigma * noise
    return jnp.clip(y, -1.0, 1.0) if self.clip else y

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


# ------------------------------------------------------------------- DPS


DPS_WEIGHTINGS = ("normalised", "likelihood")


def _full(t, x):
  return jnp.full((x.shape[0],), t, jnp.float32)


def dps_stepper(sampler: str, sde: sde_lib.SDE, eps_fn: EpsFn,
                problem: InverseProblem, y: Array, *, zeta: float,
                weighting: str = "normalised", prior_var: float = 1.0,
                **options) -> samplers.Stepper:
  """Turns a registered sampler into a DPS sampler for the measurement y.

  Each step computes x0_hat(x_t) = (x_t - sigma eps(x_t, t)) / alpha with
  `jax.vjp`, then, by `weighting`:

  * 'normalised' (the DPS paper's): takes the base sampler's step (reusing
    that network call) and subtracts `zeta * grad_{x_t} r(y, x0_hat(x_t))`
    with r the problem's `residual` (see the module docstring).
  * 'likelihood': adds `zeta * g` to the score, g = grad_{x_t} log p(y |
    x_t) with p(y | x_t) ~ p(y | x0_hat) at the noise level sqrt(sigma_y^2 +
    r_t^2), where r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2) is the
    variance of x0 given x_t for data of variance v = `prior_var` (as in
    Pseudoinverse-Guided Diffusion, Song et al. 2023): the base step sees
    eps - zeta sigma_t g. For Gaussian data of variance v, the identity
    operator and unclipped y this is the exact conditional score, so with
    zeta = 1 the base sampler draws from p(x | y); the step size follows
    the sampler's own schedule.

  Args:
    sampler: a name in `jaxdiff.samplers.SAMPLERS`.
    sde: the SDE.
    eps_fn: (x [B, H, W, C], t [B]) -> eps.
    problem: operator and noise model.
    y: measurements [B, ...].
    zeta: guidance scale (0: the base sampler).
    weighting: 'normalised' or 'likelihood' (`DPS_WEIGHTINGS`).
    prior_var: the data variance v of the 'likelihood' weighting.
    **options: the base sampler's options (eta, snr, ...).

  Returns:
    A `Stepper` for `samplers.integrate`.
  """
  if zeta < 0:
    raise ValueError(f"DPS zeta must be >= 0, got {zeta}.")
  if weighting not in DPS_WEIGHTINGS:
    raise ValueError(f"Unknown DPS weighting {weighting!r}; use one of "
                     f"{', '.join(DPS_WEIGHTINGS)}.")
  if not prior_var > 0:
    raise ValueError(f"prior_var must be > 0, got {prior_var}.")
  base = samplers.make_sampler(sampler, sde, eps_fn, **options)

  def step(state, t, s, key):
    x = state["x"]  # [B, H, W, C]
    t_vec = _full(t, x)

    def denoise(x_):
      eps = eps_fn(x_, t_vec)
      return sde.eps_to_x0(x_, eps, t_vec), eps

    x0, pullback, eps = jax.vjp(denoise, x, has_aux=True)
    if weighting == "likelihood":
      a, sg = sde.alpha(t), sde.sigma(t)
      r2 = prior_var * sg**2 / (a**2 * prior_var + sg**2)
      noise = jnp.sqrt(problem.sigma**2 + r2)
      d_ll = jax.grad(lambda z: jnp.sum(problem.log_likelihood(y, z, noise)))(
          x0)
      (g,) = pullback(d_ll)  # grad_{x_t} log p(y | x_t)
      eps_step = eps - zeta * sg * g
    else:
      d_res = jax.grad(lambda z: jnp.sum(problem.residual(y, z)))(x0)
      (grad,) = pullback(d_res)  # [B, H, W, C]: grad_{x_t} r (r per image)
      eps_step = eps

    def cached_eps(x_, t_):
      # The base step's network call at the current x is the one above.
      return eps_step if x_ is x else eps_fn(x_, t_)

    new = samplers.make_sampler(sampler, sde, cached_eps, **options).step(
        state, t, s, key)
    if weighting == "likelihood":
      return new
    return dict(new, x=new["x"] - zeta * grad)

  return samplers.Stepper(base.init, step, base.nfe_per_step)


def matched_time(sde: sde_lib.SDE, sigma_y: float) -> float:
  """t* with sigma(t*) / alpha(t*) = sigma_y, by bisection (float).

  For a discrete chain (sde.num_steps = T) t* is rounded to the nearest
  trained time i/T (then the match is approximate).

  Args:
    sde: the SDE (sigma/alpha increasing in t).
    sigma_y: the measurement noise standard deviation.

  Returns:
    t* in (0, 1].
  """
  with jax.ensure_compile_time_eval():
    ratio = lambda t: float(sde.sigma(jnp.float32(t)) /
                            sde.alpha(jnp.float32(t)))
    lo_r, hi_r = ratio(0.0), ratio(1.0)
    if not lo_r < sigma_y <= hi_r:
      raise ValueError(
          f"The noise level {sigma_y} is outside the SDE's range of "
          f"sigma/alpha ({lo_r:.4g}, {hi_r:.4g}]; use another SDE or sigma.")
    lo, hi = 0.0, 1.0
    for _ in range(60):
      mid = 0.5 * (lo + hi)
      lo, hi = (mid, hi) if ratio(mid) < sigma_y else (lo, mid)
  t = 0.5 * (lo + hi)
  num = getattr(sde, "num_steps", None)
  if num:
    t = max(1, round(t * num)) / num
  return t


# --------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class MethodSettings:
  """What the reconstruction methods need.

  Attributes:
    sampler: base sampler name (ddpm, ddim, euler_maruyama, ...).
    steps: number of grid points (network evaluation times) of a sampler.
    grid: time grid kind (uniform, quadratic, karras, logsnr).
    zeta: DPS guidance scale.
    dps_weighting: 'normalised' (the DPS paper's step) or 'likelihood'
      (`dps_stepper`).
    prior_var: data variance of the 'likelihood' weighting.
    num_posterior: K, samples averaged by `posterior_mean`.
    posterior_batch: draws of `posterior_mean` computed together (vmapped);
      the groups run one after another (`lax.map`). 0: all K at once, the
      fastest on an accelerator; 1 is about twice as fast on a CPU, whose
      caches a K-times larger batch overflows, and needs K times less memory.
    posterior_of: the sampling method `posterior_mean` averages.
    antithetic: `posterior_mean` draws its samples in antithetic pairs:
      draw k + K/2 reuses draw k's key with every Gaussian draw negated
      (`samplers.integrate`'s noise_sign; an odd K's middle draw is
      unpaired). Each draw is still a draw of the method, but the pair's
      mean cancels the part of the sample that is odd in the noise. False:
      K independent draws.
    clip_output: clip reconstructions to [-1, 1].
    sampler_options: (name, value) pairs for the base sampler.
    impute_samples: `tweedie` averages its estimate over this many
      imputations of the clipped entries (`InverseProblem.impute`).
  """
  sampler: str = "ddpm"
  steps: int = 50
  grid: str = "uniform"
  zeta: float = 1.0
  dps_weighting: str = "normalised"
  prior_var: float = 1.0
  num_posterior: int = 8
  posterior_batch: int = 0
  posterior_of: str = "dps"
  antithetic: bool = False
  clip_output: bool = True
  sampler_options: Tuple[Tuple[str, Any], ...] = ()
  impute_samples: int = 8


def make_method(name: str, sde: sde_lib.SDE, problem: InverseProblem,
                settings: MethodSettings = MethodSettings()) -> Method:
  """A reconstruction method `(eps_fn, y, key) -> x [B, H, W, C]`.

  Args:
    name: one of `METHODS` (tweedie, dps, dps_matched, matched,
      posterior_mean).
    sde: the SDE the network was trained with.
    problem: operator and noise model.
    settings: sampler, steps, zeta, K, ...

  Returns:
    A jittable function of (eps_fn, y, key).
  """
  if not isinstance(sde, sde_lib.SDE):
    raise ValueError(f"Inverse methods need a Gaussian SDE process, got "
                     f"{type(sde).__name__}; use config.diffusion.noise="
                     "'gaussian'.")
  method = METHODS.get(name)(sde, problem, settings)
  if not settings.clip_output:
    return method
  return lambda eps_fn, y, key: jnp.clip(method(eps_fn, y, key), -1.0, 1.0)


@METHODS.register("tweedie")
def _tweedie(sde, problem, settings) -> Method:
  """x0_hat(alpha(t*) y, t*): the network at the matched time.

  With the clipped noise model the estimate is averaged over
  `settings.impute_samples` imputations of y's clipped entries (one network
  call each); with the Gaussian model it is one call on y itself.
  """
  t_star = matched_time(sde, problem.sigma)
  k = settings.impute_samples if problem.noise_model == "clipped" else 1
  if k < 1:
    raise ValueError(f"impute_samples must be >= 1, got {k}.")

  def one(eps_fn, y, key):
    y = problem.impute(key, y)
    x = sde.alpha(t_star) * problem.operator.backproject(y)
    return sde.eps_to_x0(x, eps_fn(x, _full(t_star, x)), t_star)

  def method(eps_fn, y, key):
    if k == 1:
      return one(eps_fn, y, key)
    # Each estimate clipped to the data range before the mean, as in
    # posterior_mean.
    clip = (lambda a: jnp.clip(a, -1.0, 1.0)) if settings.clip_output else (
        lambda a: a)
    keys = jax.random.split(key, k)
    return jnp.mean(jax.vmap(lambda kk: clip(one(eps_fn, y, kk)))(keys),
                    axis=0)

  return method


def _dps_from(sde, problem, settings, *, matched: bool, zeta: float) -> Method:
  """DPS (or plain sampling when zeta = 0) from noise or from t*."""
  options = dict(settings.sampler_options)
  t_max = matched_time(sde, problem.sigma) if matched else 1.0
  ts = samplers.time_grid(sde, settings.steps, kind=settings.grid,
                          t_max=t_max)

  def method(eps_fn, y, key, noise_sign=None):
    # noise_sign (+1 / -1, see `samplers.integrate`) multiplies the prior
    # draw and every step's Gaussian draw; the imputation of clipped
    # entries (a one-sided draw) is shared by an antithetic pair.
    init_key, key = jax.random.split(key)
    b = y.shape[0]
    if matched:  # x_{t*} = alpha(t*) y, y's clipped entries imputed.
      y_in = problem.impute(jax.random.fold_in(init_key, 1), y)
      x_init = sde.alpha(t_max) * problem.operator.backproject(y_in)
    else:
      x_init = sde.prior_sample(init_key, (b, *problem.image_shape))
      if noise_sign is not None:
        x_init = x_init * noise_sign
    if zeta == 0.0:  # no guidance: the base sampler, without DPS's vjp
      stepper = samplers.make_sampler(settings.sampler, sde, eps_fn,
                                      **options)
    else:
      stepper = dps_stepper(settings.sampler, sde, eps_fn, problem, y,
                            zeta=zeta, weighting=settings.dps_weighting,
                            prior_var=settings.prior_var, **options)
    return samplers.integrate(stepper, x_init, ts, key, sde=sde,
                              eps_fn=eps_fn, noise_sign=noise_sign)

  return method


@METHODS.register("dps")
def _dps(sde, problem, settings) -> Method:
  """DPS from pure noise at t = 1."""
  return _dps_from(sde, problem, settings, matched=False, zeta=settings.zeta)


@METHODS.register("dps_matched")
def _dps_matched(sde, problem, settings) -> Method:
  """DPS from x = alpha(t*) y at the matched time t*."""
  return _dps_from(sde, problem, settings, matched=True, zeta=settings.zeta)


@METHODS.register("matched")
def _matched(sde, problem, settings) -> Method:
  """Plain sampling (no guidance) from x = alpha(t*) y at t*."""
  return _dps_from(sde, problem, settings, matched=True, zeta=0.0)


@METHODS.register("posterior_mean")
def _posterior_mean(sde, problem, settings) -> Method:
  """Mean of K = num_posterior samples of `posterior_of`, `posterior_batch`
  draws at a time (vmapped; 0: all K); with `settings.antithetic`, in
  antithetic pairs: draw K - K // 2 + j reuses draw j's key with its noise
  negated (j < K // 2; for an odd K the middle draw is unpaired)."""
  if settings.posterior_of == "posterior_mean" or (
      settings.posterior_of not in ("dps", "dps_matched", "matched")):
    raise ValueError(f"posterior_of must be dps, dps_matched or matched, got "
                     f"{settings.posterior_of!r}.")
  if settings.num_posterior < 1:
    raise ValueError(f"num_posterior must be >= 1, got "
                     f"{settings.num_posterior}.")
  if settings.posterior_batch < 0:
    raise ValueError(f"posterior_batch must be >= 0, got "
                     f"{settings.posterior_batch}.")
  one = METHODS.get(settings.posterior_of)(sde, problem, settings)
  group = settings.posterior_batch or settings.num_posterior

  k_all = settings.num_posterior
  half = k_all // 2 if settings.antithetic else 0
  key_index = np.concatenate([np.arange(k_all - half), np.arange(half)])
  signs = np.concatenate([np.ones(k_all - half), -np.ones(half)])

  def method(eps_fn, y, key):
    keys = jax.random.split(key, k_all)[key_index]
    # Groups of `group` draws, vmapped, one group after another; draw k
    # uses keys[k] (antithetic: keys[k mod (K - K // 2)] and signs[k])
    # whatever the grouping.
    draws = jax.lax.map(
        lambda ks: one(eps_fn, y, ks[0],
                       noise_sign=ks[1] if settings.antithetic else None),
        (keys, jnp.asarray(signs, jnp.float32)),
        batch_size=group)  # [K, B, H, W, C]
    if settings.clip_output:  # each draw to the data range, then the mean
      draws = jnp.clip(draws, -1.0, 1.0)
    return jnp.mean(draws, axis=0)

  return method


# -------------------------------------------------------------- protocol


def image_metrics(x: Array, ref: Array) -> Dict[str, Array]:
  """Protocol metrics per image: PSNR (data range 2) and SSIM (max value 2).

  Args:
    x: reconstructions [B, H, W, C] in [-1, 1].
    ref: clean images, same shape.

  Returns:
    {'psnr': [B] dB, 'ssim': [B]}.
  """
  return {"psnr": metrics_lib.psnr(x, ref, data_range=DATA_RANGE),
          "ssim": metrics_lib.ssim(x, ref, max_val=DATA_RANGE)}


@dataclasses.dataclass(frozen=True)
class DenoiseConfig:
  """`config.denoise`, typed. Defaults are the OrganAMNIST protocol.

  Attributes:
    operator: a name in OPERATORS.
    sigma: measurement noise standard deviation.
    noise_model: likelihood used by DPS: 'clipped' or 'gaussian'.
    clip_measurement: clip y to [-1, 1].
    methods: comma-separated names in METHODS.
    steps: sampler steps (grid points) of the sampling methods.
    sampler: base sampler of DPS.
    clip_denoised: the base sampler clips its x0 estimate to [-1, 1]
      (`CLIPPING_SAMPLERS` only; keeps an imperfect network's early
      x0 = (x - sigma eps) / alpha, with alpha(1) ~ 0.01, from blowing up). DPS's likelihood
      always sees the unclipped estimate.
    grid: time grid kind.
    zeta: DPS guidance scale.
    dps_weighting: DPS step: 'normalised' (the paper's) or 'likelihood'
      (score of p(y | x_t) with x0's variance given x_t; `dps_stepper`).
    prior_var: data variance of the 'likelihood' weighting.
    num_posterior: K of posterior_mean.
    posterior_batch: draws of posterior_mean computed together (0: all K).
    posterior_of: the method posterior_mean averages.
    antithetic: posterior_mean draws in antithetic pairs (`MethodSettings`).
    impute_samples: imputations of y's clipped entries averaged by tweedie
      (clipped noise model only; see `InverseProblem.impute`).
    num_images: the first N images of the split.
    method_num_images: fewer images for slow methods, e.g.
      'posterior_mean:50,dps:100' ('' = num_images for every method).
    batch_size: images per jitted call, split over the local devices (and
      rounded up to a multiple of their count; the extra rows are padding).
    noise_seed: seed of the measurement noise.
    data_split: data split the images come from.
    clip_output: clip reconstructions to [-1, 1].
    use_ema: use the EMA parameters.
    out_dir: output folder ('' = WORKDIR/denoise).
    figure_rows: images shown in comparison.png.
    missing_fraction, mask_seed, box_size, blur_sigma: operator parameters.
  """
  operator: str = "denoise"
  sigma: float = 0.3
  noise_model: str = "clipped"
  clip_measurement: bool = True
  methods: str = "tweedie,dps,dps_matched,posterior_mean"
  steps: int = 50
  sampler: str = "ddpm"
  clip_denoised: bool = True
  grid: str = "uniform"
  zeta: float = 1.0
  dps_weighting: str = "normalised"
  prior_var: float = 1.0
  num_posterior: int = 8
  posterior_batch: int = 0
  posterior_of: str = "dps"
  antithetic: bool = False
  impute_samples: int = 8
  num_images: int = 300
  method_num_images: str = ""
  batch_size: int = 50
  noise_seed: int = 0
  data_split: str = "test"
  clip_output: bool = True
  use_ema: bool = True
  out_dir: str = ""
  figure_rows: int = 6
  missing_fraction: float = 0.5
  mask_seed: int = 0
  box_size: int = 12
  blur_sigma: float = 1.0

  @classmethod
  def from_config(cls, config) -> "DenoiseConfig":
    """Reads config.denoise (absent: the defaults)."""
    section = config.get("denoise")
    values = dict(section) if section is not None else {}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown config.denoise keys {unknown}; known: "
                       f"{', '.join(sorted(known))}.")
    out = cls(**values)
    out.validate()
    return out

  def validate(self):
    for name in self.method_names:
      METHODS.get(name)
    OPERATORS.get(self.operator)
    NOISE_MODELS.get(self.noise_model)
    if self.num_images < 1 or self.batch_size < 1:
      raise ValueError(f"config.denoise.num_images and batch_size must be "
                       f">= 1, got {self.num_images}, {self.batch_size}.")
    self.images_per_method()

  @property
  def method_names(self) -> List[str]:
    names = [m.strip() for m in self.methods.split(",") if m.strip()]
    if not names:
      raise ValueError("config.denoise.methods is empty; list methods, e.g. "
                       "'tweedie,dps'.")
    return names

  def images_per_method(self) -> Dict[str, int]:
    counts = {m: self.num_images for m in self.method_names}
    for item in filter(None, (s.strip() for s in
                              self.method_num_images.split(","))):
      name, _, num = item.partition(":")
      if name not in counts or not num.strip().isdigit() or int(num) < 1:
        raise ValueError(
            f"Bad config.denoise.method_num_images entry {item!r}; use "
            f"'method:N' with a method of {counts} and N >= 1.")
      counts[name] = min(int(num), self.num_images)
    return counts

  def operator_options(self) -> Dict[str, Any]:
    return {f.name: getattr(self, f.name)
            for f in dataclasses.fields(OperatorOptions)}

  def method_settings(self, sampler_options=()) -> MethodSettings:
    sampler_options = dict(sampler_options)
    if self.sampler in CLIPPING_SAMPLERS:
      sampler_options["clip_denoised"] = bool(self.clip_denoised)
    elif self.clip_denoised:
      raise ValueError(
          f"config.denoise.clip_denoised works with the samplers "
          f"{', '.join(CLIPPING_SAMPLERS)}, not {self.sampler!r}; set it to "
          "False.")
    return MethodSettings(
        sampler=self.sampler, steps=self.steps, grid=self.grid,
        zeta=self.zeta, dps_weighting=self.dps_weighting,
        prior_var=self.prior_var, num_posterior=self.num_posterior,
        posterior_batch=self.posterior_batch,
        posterior_of=self.posterior_of, antithetic=self.antithetic,
        clip_output=self.clip_output,
        impute_samples=self.impute_samples,
        sampler_options=tuple(sorted(sampler_options.items())))


def _batches(n: int, batch_size: int):
  """(start, stop) of each batch of [0, n)."""
  return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis to `size` by repeating the last row."""
  if a.shape[0] == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], axis=0)])


def _map_batches(fn, arrays: Sequence[np.ndarray], batch_size: int, *,
                 key: Optional[Array] = None, bar=None):
  """Applies fn to padded batches of the arrays' leading axis.

  Args:
    fn: (*batches[, key]) -> a pytree of [batch_size, ...] arrays.
    arrays: arrays with the same leading size N.
    batch_size: every call sees this many rows (the last batch is padded by
      repeating its last row, so fn compiles once).
    key: if given, batch i also gets fold_in(key, i).
    bar: optional tqdm bar, advanced by the rows of each batch.

  Returns:
    fn's outputs for the N rows, as numpy arrays concatenated over batches.
  """
  outs = []
  for i, (a, b) in enumerate(_batches(len(arrays[0]), batch_size)):
    args = [jnp.asarray(_pad(np.asarray(v[a:b]), batch_size)) for v in arrays]
    if key is not None:
      args.append(jax.random.fold_in(key, i))
    outs.append(jax.tree.map(lambda o, k=b - a: np.asarray(o)[:k],
                             fn(*args)))
    if bar is not None:
      bar.update(b - a)
  return jax.tree.map(lambda *o: np.concatenate(o), *outs)


def _progress(total, desc):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
  except ImportError:
    return None


def _summary(per_image: Dict[str, np.ndarray]) -> Dict[str, Any]:
  return {"psnr_mean": float(np.mean(per_image["psnr"])),
          "ssim_mean": float(np.mean(per_image["ssim"])),
          "num_images": int(len(per_image["psnr"])),
          "psnr": [float(v) for v in per_image["psnr"]],
          "ssim": [float(v) for v in per_image["ssim"]]}


def write_results(out_dir: str, results: Dict[str, Dict[str, Any]],
                  header: Dict[str, Any]) -> Tuple[str, str]:
  """Writes metrics.json and metrics.csv (long format: one row per method
  and image, plus a 'mean' row per method with its wall time)."""
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "metrics.json")
  with open(json_path, "w") as f:
    json.dump(dict(header, results=results), f, indent=1)
  csv_path = os.path.join(out_dir, "metrics.csv")
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method", "image", "psnr", "ssim", "wall_time_s",
                "compile_time_s"])
    for name, r in results.items():
      w.writerow([name, "mean", f"{r['psnr_mean']:.4f}",
                  f"{r['ssim_mean']:.5f}", f"{r.get('wall_time_s', 0.0):.2f}",
                  f"{r.get('compile_time_s', 0.0):.2f}"])
      for i, (p, s) in enumerate(zip(r["psnr"], r["ssim"])):
        w.writerow([name, i, f"{p:.4f}", f"{s:.5f}", "", ""])
  return json_path, csv_path


def format_table(results: Dict[str, Dict[str, Any]]) -> str:
  """A plain-text table: method, images, PSNR, SSIM, wall time."""
  lines = [f"{'method':<16}{'images':>7}{'PSNR [dB]':>11}{'SSIM':>8}"
           f"{'time [s]':>10}{'compile [s]':>13}"]
  for name, r in results.items():
    wall = r.get("wall_time_s")
    comp = r.get("compile_time_s")
    lines.append(
        f"{name:<16}{r['num_images']:>7}{r['psnr_mean']:>11.2f}"
        f"{r['ssim_mean']:>8.3f}"
        f"{(f'{wall:.1f}' if wall is not None else '-'):>10}"
        f"{(f'{comp:.1f}' if comp is not None else '-'):>13}")
  return "\n".join(lines)


def _matched_time_or_none(sde, sigma) -> Optional[float]:
  try:
    return matched_time(sde, sigma)
  except ValueError:
    return None


@MODES.register("denoise")
def denoise(config, workdir: str) -> Dict[str, Any]:
  """Runs the denoising / inverse-problem benchmark on a trained checkpoint.

  Reads `config.denoise` (see `DenoiseConfig`), restores the newest
  checkpoint in `workdir`, measures the first `num_images` images of
  `data_split`, runs every method and writes `metrics.json`, `metrics.csv`,
  `comparison.png` and `reconstructions.npz` to `workdir/denoise` (or
  `out_dir`).

  Args:
    config: the experiment config.
    workdir: the training workdir (holds `checkpoints/`).

  Returns:
    The contents of metrics.json.
  """
  # pylint: disable=g-import-not-at-top
  from jaxdiff import config as config_lib
  from jaxdiff import data as data_lib
  from jaxdiff import run as run_lib
  from jaxdiff import train as train_lib
  from jaxdiff import viz
  # pylint: enable=g-import-not-at-top
  dc = DenoiseConfig.from_config(config)
  process = config_lib.build_process(config)
  settings = dc.method_settings(config_lib.sampler_options(config, dc.sampler))
  counts = dc.images_per_method()
  shape = train_lib.image_shape(config)
  problem = InverseProblem(make_operator(dc.operator, shape,
                                         **dc.operator_options()),
                           sigma=dc.sigma, noise_model=dc.noise_model,
                           clip=dc.clip_measurement)
  methods = {m: make_method(m, process, problem, settings)
             for m in dc.method_names}

  model, params, step = run_lib.restore_params(config, workdir,
                                               use_ema=dc.use_ema)
  # Each batch is split over the local devices (config.cpu_devices); a batch
  # size they do not divide is rounded up (the extra rows are padding).
  n_dev = jax.local_device_count() if jax.process_count() == 1 else 1
  bs = _round_up(dc.batch_size, n_dev)
  mesh, params = train_lib.spread_for_sampling(config, params, bs)
  n_split = mesh.size if mesh is not None else 1
  ds = data_lib.load(config.data.name, dc.data_split,
                     data_dir=config.data.data_dir or None,
                     limit=dc.num_images)
  x = ds.images.astype(np.float32) / 127.5 - 1.0  # [N, H, W, C]
  n = len(x)
  if x.shape[1:] != shape:
    raise ValueError(f"Data set images are {x.shape[1:]} but the model "
                     f"expects {shape}; check config.data.")
  counts = {m: min(c, n) for m, c in counts.items()}
  out_dir = dc.out_dir or os.path.join(workdir, "denoise")
  print(f"jaxdiff: denoise: {n} {config.data.name} {dc.data_split} images, "
        f"operator {dc.operator}, sigma {dc.sigma}, noise model "
        f"{dc.noise_model}, checkpoint step {step}, batches split over "
        f"{n_split} device(s).", flush=True)

  measure = jax.jit(functools.partial(problem.measure,
                                      jax.random.key(dc.noise_seed)))
  y = _map_batches(measure, [x, np.arange(n)], bs)  # [N, ...]
  score = jax.jit(image_metrics)

  def evaluate(images):  # [M, H, W, C] -> {'psnr': [M], 'ssim': [M]}
    return _map_batches(score, [images, x[:len(images)]], bs)

  noisy = _map_batches(jax.jit(problem.operator.backproject), [y], bs)
  results = {"noisy": _summary(evaluate(noisy))}
  outputs = {"noisy": noisy}
  apply_fn = train_lib.make_apply_fn(model)
  base_key = jax.random.key(config.seed)
  header = {"checkpoint_step": step, "data": config.data.name,
            "split": dc.data_split, "num_images": n,
            "protocol": dataclasses.asdict(dc),
            "settings": {**dataclasses.asdict(settings),
                         "sampler_options": dict(settings.sampler_options)},
            "matched_time": _matched_time_or_none(process, dc.sigma),
            "psnr_data_range": DATA_RANGE, "ssim_max_val": DATA_RANGE}
  # Rewritten after each method: an interrupted run keeps the finished ones.
  json_path, _ = write_results(out_dir, results, header)

  for name, method in methods.items():
    m = counts[name]
    mbs = _round_up(min(bs, m), n_split)

    def run_batch(p, y_b, key, method=method):
      return method(samplers.model_eps_fn(apply_fn, p), y_b, key)

    jit_kwargs = {}
    if mesh is not None:
      rows, same = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
      jit_kwargs = dict(in_shardings=(same, rows, same), out_shardings=rows)
    t0 = time.time()
    compiled = jax.jit(run_batch, **jit_kwargs).lower(
        params, jnp.asarray(_pad(y[:1], mbs)), base_key).compile()
    compile_s = time.time() - t0
    bar = _progress(m, name)
    t0 = time.time()
    # Batch i uses the key fold_in(key(config.seed), i).
    recon = _map_batches(functools.partial(compiled, params), [y[:m]], mbs,
                         key=base_key, bar=bar)
    wall = time.time() - t0
    if bar is not None:
      bar.close()
    outputs[name] = recon
    results[name] = dict(_summary(evaluate(recon)), wall_time_s=wall,
                         compile_time_s=compile_s,
                         noisy_psnr_mean_same_images=float(
                             np.mean(results["noisy"]["psnr"][:m])))
    print(f"jaxdiff: {name}: {results[name]['psnr_mean']:.2f} dB, SSIM "
          f"{results[name]['ssim_mean']:.3f} on {m} images in {wall:.1f} s "
          f"(+{compile_s:.1f} s compile).", flush=True)
    json_path, _ = write_results(out_dir, results, header)

  nrow = min(dc.figure_rows, min(len(v) for v in outputs.values()))
  columns = {k: v[:nrow] for k, v in outputs.items()}
  columns["clean"] = x[:nrow]
  viz.comparison_figure(
      os.path.join(out_dir, "comparison.png"), columns,
      scores={k: np.asarray(results[k]["psnr"][:nrow]) for k in outputs},
      ssim={k: np.asarray(results[k]["ssim"][:nrow]) for k in outputs},
      max_rows=nrow,
      title=f"{dc.operator}, sigma={dc.sigma} ({dc.noise_model} likelihood)")
  np.savez_compressed(os.path.join(out_dir, "reconstructions.npz"),
                      clean=viz.to_uint8(x),
                      **{k: viz.to_uint8(v) for k, v in outputs.items()})
  print(format_table(results))
  print(f"jaxdiff: wrote {json_path}, metrics.csv and comparison.png in "
        f"{out_dir}.", flush=True)
  with open(json_path) as f:
    return json.load(f)
