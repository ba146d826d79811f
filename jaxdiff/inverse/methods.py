"""Reconstruction methods for y = clip(A x + sigma n, -1, 1), by name.

`make_method(name, process, problem, settings)` returns a jittable
`(denoise_fn, y, key) -> x [B, H, W, C]`, where `denoise_fn(x, t) ->
Prediction(eps, x0)` is the network (`jaxdiff.denoiser`, any
parameterization); all of them are batched and sample through the one
integrator `jaxdiff.samplers.integrate`. They assume Gaussian noise and
refuse other processes (the DDGM gamma chain).

* `tweedie`: one network call. With sigma(t*)/alpha(t*) = sigma_y,
  `alpha(t*) y` is distributed exactly as x_{t*} given x when y is unclipped,
  so the Tweedie estimate `x0_hat(alpha(t*) y, t*)` (`protocol.tweedie`) is
  the MMSE estimate E[x | y] for the identity operator.
* `dps`: DPS (Chung et al., 2023) from pure noise (`dps.dps_stepper`).
* `dps_matched`: DPS from the matched time t*, started at `alpha(t*) y`.
  The step size zeta is per step: `dps_matched` runs its `steps` between t*
  and 0, so the same zeta pulls much harder towards y than in `dps`.
* `matched`: plain sampling (no likelihood guidance) from `alpha(t*) y` at t*;
  for the identity operator and unclipped y this samples p(x | y) exactly.
* `posterior_mean`: the mean of K samples of `dps` (or `posterior_of`),
  vmapped over K; with `antithetic`, drawn in pairs whose noise (prior draw
  and every step's) is negated, which cancels the part of a draw that is odd
  in the noise (all of it for Gaussian data).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoiser
from jaxdiff import samplers
from jaxdiff import sde as sde_lib
from jaxdiff.inverse import protocol
from jaxdiff.inverse.dps import dps_stepper
from jaxdiff.inverse.likelihood import InverseProblem
from jaxdiff.registry import Registry
from jaxdiff.settings import DenoiseSettings

Array = jax.Array
# (denoise_fn, y [B, ...], key) -> reconstruction x [B, H, W, C].
Method = Callable[[denoiser.DenoiseFn, Array, Array], Array]

METHODS = Registry("inverse method")
# Samplers with a `clip_denoised` option (x0_hat clipped to [-1, 1]).
CLIPPING_SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp", "dpm_solver_pp_3m",
                     "euler_ancestral")


@dataclasses.dataclass(frozen=True)
class MethodSettings:
  """What the reconstruction methods need.

  Attributes:
    sampler: base sampler name (ddpm, ddim, euler_maruyama, ...).
    steps: number of grid points (network evaluation times) of a sampler.
    grid: time grid kind (uniform, quadratic, karras, logsnr), or
      'default': the base sampler's own (`Stepper.grid`).
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
  # Defaults: config.denoise's (`settings.DenoiseSettings`).
  sampler: str = DenoiseSettings.sampler
  steps: int = DenoiseSettings.steps
  grid: str = DenoiseSettings.grid
  zeta: float = DenoiseSettings.zeta
  dps_weighting: str = DenoiseSettings.dps_weighting
  prior_var: float = DenoiseSettings.prior_var
  num_posterior: int = DenoiseSettings.num_posterior
  posterior_batch: int = DenoiseSettings.posterior_batch
  posterior_of: str = DenoiseSettings.posterior_of
  antithetic: bool = DenoiseSettings.antithetic
  clip_output: bool = DenoiseSettings.clip_output
  sampler_options: Tuple[Tuple[str, Any], ...] = ()
  impute_samples: int = DenoiseSettings.impute_samples


def make_method(name: str, sde: sde_lib.Process, problem: InverseProblem,
                settings: MethodSettings = MethodSettings()) -> Method:
  """A reconstruction method `(denoise_fn, y, key) -> x [B, H, W, C]`.

  Args:
    name: one of `METHODS` (tweedie, dps, dps_matched, matched,
      posterior_mean).
    sde: the SDE the network was trained with.
    problem: operator and noise model.
    settings: sampler, steps, zeta, K, ...

  Returns:
    A jittable function of (denoise_fn, y, key); y [B, ...] must be a batch
    of `problem.measurement_shape` measurements (AssertionError otherwise).

  Raises:
    ValueError: an unknown name, or a process that is not Gaussian (every
      method reads y or the guidance through Gaussian noise).
  """
  factory = METHODS.get(name)
  sde_lib.check_gaussian(sde, f"The inverse method {name!r}")
  method = factory(sde, problem, settings)

  def reconstruct(denoise_fn, y, key, **options):  # e.g. DPS's noise_sign
    problem.check_measurement(y, f"The inverse method {name!r}")
    x = method(denoise_fn, y, key, **options)
    return jnp.clip(x, -1.0, 1.0) if settings.clip_output else x

  return reconstruct


@METHODS.register("tweedie")
def _tweedie(sde, problem, settings) -> Method:
  """x0_hat(alpha(t*) y, t*): the network at the matched time.

  With the clipped noise model the estimate is averaged over
  `settings.impute_samples` imputations of y's clipped entries (one network
  call each); with the Gaussian model it is one call on y itself.
  """
  t_star = protocol.matched_time(sde, problem.sigma)
  k = settings.impute_samples if problem.noise_model == "clipped" else 1
  if k < 1:
    raise ValueError(f"impute_samples must be >= 1, got {k}.")

  def one(denoise_fn, y, key):
    y = problem.operator.backproject(problem.impute(key, y))
    return protocol.tweedie(sde, denoise_fn, y, t_star)

  def method(denoise_fn, y, key):
    if k == 1:
      return one(denoise_fn, y, key)
    # Each estimate clipped to the data range before the mean, as in
    # posterior_mean.
    clip = (lambda a: jnp.clip(a, -1.0, 1.0)) if settings.clip_output else (
        lambda a: a)
    keys = jax.random.split(key, k)
    return jnp.mean(jax.vmap(lambda kk: clip(one(denoise_fn, y, kk)))(keys),
                    axis=0)

  return method


def _dps_from(sde, problem, settings, *, matched: bool, zeta: float) -> Method:
  """DPS (or plain sampling when zeta = 0) from noise or from t*."""
  # steps reaches the samplers that take it (EDM's churn).
  options = dict(settings.sampler_options, steps=settings.steps)
  # From noise: the process's own first time (1, or flow's t_max < 1).
  t_max = protocol.matched_time(sde, problem.sigma) if matched else None
  grid = settings.grid
  if grid == "default":  # the sampler's own (the network is not called)
    grid = samplers.make_sampler(settings.sampler, sde, None, **options).grid
  ts = samplers.time_grid(sde, settings.steps, kind=grid, t_max=t_max)

  def method(denoise_fn, y, key, noise_sign=None):
    # noise_sign (+1 / -1, see `samplers.integrate`) multiplies the prior
    # draw and every step's noise draw; the imputation of clipped
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
      stepper = samplers.make_sampler(settings.sampler, sde, denoise_fn,
                                      **options)
    else:
      stepper = dps_stepper(settings.sampler, sde, denoise_fn, problem, y,
                            zeta=zeta, weighting=settings.dps_weighting,
                            prior_var=settings.prior_var, **options)
    return samplers.integrate(stepper, x_init, ts, key, sde=sde,
                              denoise_fn=denoise_fn, noise_sign=noise_sign)

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

  def method(denoise_fn, y, key):
    keys = jax.random.split(key, k_all)[key_index]
    # Groups of `group` draws, vmapped, one group after another; draw k
    # uses keys[k] (antithetic: keys[k mod (K - K // 2)] and signs[k])
    # whatever the grouping.
    draws = jax.lax.map(
        lambda ks: one(denoise_fn, y, ks[0],
                       noise_sign=ks[1] if settings.antithetic else None),
        (keys, jnp.asarray(signs, jnp.float32)),
        batch_size=group)  # [K, B, H, W, C]
    if settings.clip_output:  # each draw to the data range, then the mean
      draws = jnp.clip(draws, -1.0, 1.0)
    return jnp.mean(draws, axis=0)

  return method
