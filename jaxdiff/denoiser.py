"""The denoiser: a network's raw output F at (x_t, t) -> (eps_hat, x0_hat).

Every process here writes x_t = alpha(t) x0 + sigma(t) n. A network can be
trained to output any quantity that, together with x_t, fixes both x0 and n;
a *parameterization* names that quantity and is the one place that converts
it (`config.model.prediction`):

  =========  ==========================  =====================================
  name       the network's target F*     (x0_hat, eps_hat) from F
  =========  ==========================  =====================================
  eps        n                           x0 = (x - sigma F) / alpha
  x0         x0                          eps = (x - alpha F) / sigma
  v          alpha n - sigma x0          x0 = (alpha x - sigma F) / (a^2 + s^2)
                                         eps = (sigma x + alpha F) / (a^2 + s^2)
  velocity   dx_t/dt = alpha' x0         x0 = (sigma' x - sigma F) / det,
             + sigma' n                  eps = (alpha F - alpha' x) / det,
                                         det = alpha sigma' - sigma alpha'
  edm        (sigma x0 - alpha sd^2 n)   x0 = c_skip x + c_out F, network
             / (m sd)                    input x / m
  =========  ==========================  =====================================

`v` is Salimans & Ho (2022)'s velocity (for VP, alpha^2 + sigma^2 = 1);
`velocity` is the flow-matching target (for the rectified flow alpha = 1 - t,
sigma = t it is n - x0). `edm` is Karras et al. (2022)'s preconditioning
(Table 1) written for any (alpha, sigma): EDM's noise level is sigma/alpha
acting on x/alpha, which gives m = sqrt(sigma^2 + alpha^2 sd^2), c_in = 1/m
(unit-variance network input), c_skip = alpha sd^2 / m^2, c_out = sigma sd /
m, with sd = `sigma_data`; every coefficient stays finite as alpha -> 0. The
network's time input (EDM's c_noise) is t itself for every parameterization.

Samplers, DPS, Tweedie, the diffusion classifier and the losses see only a
`Prediction` (eps, x0); nothing outside this file asks which
parameterization a network has. The denoisers made here check their
arguments' shapes when traced (`chex`): x [B, ...], t [B], and a network
output of x's shape.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from jaxdiff.registry import Registry
from jaxdiff.sde import bcast

Array = jax.Array


class Prediction(NamedTuple):
  """The denoiser's output at (x_t, t): both estimates, each [B, ...]."""
  eps: Array
  x0: Array

  def score(self, process, t) -> Array:
    """grad_x log p_t(x) = -eps / sigma(t)."""
    return -self.eps / bcast(process.sigma(t), self.eps)


DenoiseFn = Callable[[Array, Array], Prediction]  # (x [B, ...], t [B])


def check_call(x: Array, t: Array) -> None:
  """A denoiser's arguments: x [B, ...] and t [B] (shape checks only: free
  under jit after tracing). AssertionError saying what to pass."""
  chex.assert_rank(t, 1, custom_message=(
      "denoise_fn(x, t): t must be [B], one time per example; broadcast a "
      "scalar time with jnp.full((x.shape[0],), t)"))
  chex.assert_axis_dimension(t, 0, jnp.shape(x)[0], custom_message=(
      f"denoise_fn(x, t): t has {jnp.shape(t)[0]} times for a batch of "
      f"{jnp.shape(x)[0]} (x {jnp.shape(x)}); give one time per example"))


def check_output(x: Array, out: Array, what: str) -> None:
  """A network's output has the shape of its input x."""
  chex.assert_equal_shape([out, x], custom_message=(
      f"{what} must have the shape of its input x [B, ...]; got "
      f"{jnp.shape(out)} for x {jnp.shape(x)}"))


def from_eps(process, x: Array, t: Array, eps: Array) -> Prediction:
  """The prediction with noise estimate eps (x0 by Tweedie's formula)."""
  return Prediction(eps, process.eps_to_x0(x, eps, t))


def from_x0(process, x: Array, t: Array, x0: Array) -> Prediction:
  """The prediction with data estimate x0 (eps = (x - alpha x0) / sigma)."""
  a, s = bcast(process.alpha(t), x), bcast(process.sigma(t), x)
  return Prediction((x - a * x0) / s, x0)


def derivatives(process, t: Array):
  """(alpha'(t), sigma'(t)) by forward-mode differentiation; t scalar or [B]."""
  t = jnp.asarray(t, jnp.float32)
  ones = jnp.ones_like(t)
  _, da = jax.jvp(process.alpha, (t,), (ones,))
  _, ds = jax.jvp(process.sigma, (t,), (ones,))
  return da, ds


class Parameterization(NamedTuple):
  """What a network's output means.

  Attributes:
    name: its registry name.
    input_scale: (process, t [B]) -> c_in [B], or None (the network sees x_t).
    predict: (process, x, t [B], F) -> `Prediction`.
    target: (process, x0, eps, t [B]) -> F*, what training regresses F on.
    eps_factor: (process, t [B]) -> k [B] with |F - F*|^2 = k |eps_hat - eps|^2
      at fixed x_t: how the target's error scales with the noise error
      (`jaxdiff.losses` converts every weighting through it).
  """
  name: str
  input_scale: Optional[Callable[..., Array]]
  predict: Callable[..., Prediction]
  target: Callable[..., Array]
  eps_factor: Callable[..., Array]


PARAMETERIZATIONS = Registry("parameterization")


def _ab(process, t, x):
  return bcast(process.alpha(t), x), bcast(process.sigma(t), x)


@PARAMETERIZATIONS.register("eps")
def eps_prediction() -> Parameterization:
  """The network predicts the noise (Ho et al. 2020)."""
  return Parameterization(
      "eps", None, from_eps, lambda p, x0, eps, t: eps,
      lambda p, t: jnp.ones_like(jnp.asarray(t, jnp.float32)))


@PARAMETERIZATIONS.register("x0")
def x0_prediction() -> Parameterization:
  """The network predicts the clean data."""
  return Parameterization(
      "x0", None, from_x0, lambda p, x0, eps, t: x0,
      lambda p, t: (p.sigma(t) / p.alpha(t))**2)


@PARAMETERIZATIONS.register("v")
def v_prediction() -> Parameterization:
  """The network predicts v = alpha eps - sigma x0 (Salimans & Ho 2022)."""

  def predict(p, x, t, v):
    a, s = _ab(p, t, x)
    norm = a**2 + s**2
    return Prediction((s * x + a * v) / norm, (a * x - s * v) / norm)

  def target(p, x0, eps, t):
    a, s = _ab(p, t, x0)
    return a * eps - s * x0

  def eps_factor(p, t):
    a, s = p.alpha(t), p.sigma(t)
    return ((a**2 + s**2) / a)**2

  return Parameterization("v", None, predict, target, eps_factor)


@PARAMETERIZATIONS.register("velocity")
def velocity_prediction() -> Parameterization:
  """The network predicts dx_t/dt = alpha' x0 + sigma' eps (flow matching)."""

  def predict(p, x, t, u):
    a, s = _ab(p, t, x)
    da, ds = derivatives(p, t)
    da, ds = bcast(da, x), bcast(ds, x)
    det = a * ds - s * da
    return Prediction((a * u - da * x) / det, (ds * x - s * u) / det)

  def target(p, x0, eps, t):
    da, ds = derivatives(p, t)
    return bcast(da, x0) * x0 + bcast(ds, x0) * eps

  def eps_factor(p, t):
    a, s = p.alpha(t), p.sigma(t)
    da, ds = derivatives(p, t)
    return ((a * ds - s * da) / a)**2

  return Parameterization("velocity", None, predict, target, eps_factor)


@PARAMETERIZATIONS.register("edm")
def edm_preconditioning(sigma_data: float = 0.5) -> Parameterization:
  """Karras et al. (2022)'s preconditioning for any (alpha, sigma).

  Args:
    sigma_data: the data's standard deviation sd (0.5 for images in [-1, 1]).
  """
  if not sigma_data > 0:
    raise ValueError(f"EDM sigma_data must be > 0, got {sigma_data}.")
  sd2 = sigma_data**2

  def m(a, s):
    return jnp.sqrt(s**2 + a**2 * sd2)

  def predict(p, x, t, f):
    a, s = _ab(p, t, x)
    mm = m(a, s)
    x0 = (a * sd2 / mm**2) * x + (s * sigma_data / mm) * f
    return from_x0(p, x, t, x0)

  def target(p, x0, eps, t):
    a, s = _ab(p, t, x0)
    return (s * x0 - a * sd2 * eps) / (m(a, s) * sigma_data)

  def eps_factor(p, t):
    a, s = p.alpha(t), p.sigma(t)
    return (m(a, s) / (a * sigma_data))**2

  return Parameterization("edm", lambda p, t: 1.0 / m(p.alpha(t), p.sigma(t)),
                          predict, target, eps_factor)


def make_parameterization(name: str, **options) -> Parameterization:
  """A registered parameterization; options are its own (edm: sigma_data)."""
  factory = PARAMETERIZATIONS.get(name)
  try:
    return factory(**options)
  except TypeError as e:
    raise ValueError(f"Bad options {options} for parameterization "
                     f"{name!r}: {e}") from None


def network_output(apply_fn: Callable, params, param: Parameterization,
                   process, x: Array, t: Array, *args, **kwargs) -> Array:
  """The network's raw output F at (x_t, t), its input scaled by c_in."""
  if param.input_scale is not None:
    x = bcast(param.input_scale(process, t), x) * x
  return apply_fn(params, x, t, *args, **kwargs)


def model_denoiser(apply_fn: Callable, params, process,
                   param: Parameterization, *, labels=None,
                   num_classes: Optional[int] = None,
                   guidance_scale: float = 0.0) -> DenoiseFn:
  """Binds a network into denoise_fn(x, t) -> Prediction.

  With classifier-free guidance (labels given, w = guidance_scale > 0) the
  prediction is (1 + w) P(x, t, y) - w P(x, t, null), for eps and x0 alike
  (both are affine in the network output at fixed x_t).

  Args:
    apply_fn: (params, x, t, y) -> F.
    params: the network's parameters.
    process: the forward process.
    param: the network's `Parameterization`.
    labels: [B] int labels, or None (unconditional).
    num_classes: K; label K is the null class.
    guidance_scale: w.
  """
  def predict(x, t, y):
    f = network_output(apply_fn, params, param, process, x, t, y)
    check_output(x, f, f"The network's output ({param.name} prediction)")
    return param.predict(process, x, t, f)

  def denoise_fn(x, t):
    check_call(x, t)
    if labels is not None:
      chex.assert_shape(labels, (jnp.shape(x)[0],), custom_message=(
          "model_denoiser: labels must be [B] class indices, one per "
          "example of x"))
    if labels is None or guidance_scale == 0.0:
      return predict(x, t, labels)
    null = jnp.full_like(labels, num_classes)
    both = predict(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                   jnp.concatenate([labels, null]))
    w = guidance_scale
    return jax.tree.map(
        lambda b: (1 + w) * b[:x.shape[0]] - w * b[x.shape[0]:], both)

  return denoise_fn


def eps_denoiser(process, eps_fn: Callable[[Array, Array], Any]) -> DenoiseFn:
  """A denoiser from a noise predictor eps_fn(x, t) (e.g. an exact score)."""
  def denoise_fn(x, t):
    check_call(x, t)
    eps = eps_fn(x, t)
    check_output(x, eps, "eps_fn(x, t)")
    return from_eps(process, x, t, eps)
  return denoise_fn
