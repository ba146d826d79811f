"""Diffusion Posterior Sampling (Chung et al., 2023) on any registered sampler.

`dps_stepper` wraps a sampler's step: it calls the denoiser at x_t once,
inside the gradient of x0_hat(x_t) = denoise_fn(x_t, t).x0 (whatever the
network's parameterization, `jaxdiff.denoiser`), hands that prediction to
the base sampler's step and adds the likelihood guidance.

Step size: `r = sqrt(-2 sigma^2 log p(y | x0_hat))`, which for the Gaussian
model is the residual norm `||y - A x0_hat||`; the update is
`x <- x' - zeta * grad_{x_t} r`. This is the official DPS code's update
(`zeta * grad ||y - A x0_hat||`, i.e. the paper's zeta_i = zeta' /
||y - A x0_hat|| applied to the squared norm with zeta' = zeta / 2), and
extends it to any non-negative negative log-likelihood, e.g. the clipped one.
With `weighting='likelihood'` the guidance is instead added to the score:
`zeta * grad_{x_t} log p(y | x0_hat)` at the noise level
`sqrt(sigma_y^2 + r_t^2)`, r_t^2 the variance of x0 given x_t for data of
variance `prior_var`, which is the exact conditional score for Gaussian data;
its step follows the sampler's schedule.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxdiff import denoiser
from jaxdiff import samplers
from jaxdiff import sde as sde_lib
from jaxdiff.inverse.likelihood import InverseProblem

Array = jax.Array

DPS_WEIGHTINGS = ("normalised", "likelihood")


def dps_stepper(sampler: str, sde: sde_lib.Process,
                denoise_fn: denoiser.DenoiseFn, problem: InverseProblem,
                y: Array, *, zeta: float,
                weighting: str = "normalised", prior_var: float = 1.0,
                **options) -> samplers.Stepper:
  """Turns a registered sampler into a DPS sampler for the measurement y.

  Each step computes x0_hat(x_t) = denoise_fn(x_t, t).x0 with `jax.vjp`
  (keeping the whole `Prediction`), then, by `weighting`:

  * 'normalised' (the DPS paper's): the base step with that prediction, minus
    `zeta * grad_{x_t} r(y, x0_hat(x_t))`, r the problem's `residual`.
  * 'likelihood': adds `zeta * g` to the score, g = grad_{x_t} log p(y |
    x_t) with p(y | x_t) ~ p(y | x0_hat) at the noise level sqrt(sigma_y^2 +
    r_t^2), where r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2) is the
    variance of x0 given x_t for data of variance v = `prior_var` (as in
    Pseudoinverse-Guided Diffusion, Song et al. 2023): the base step sees
    the prediction whose noise estimate is eps - zeta sigma_t g (x0 by
    Tweedie's formula, `denoiser.from_eps`). For Gaussian data of variance
    v, the identity operator and unclipped y this is the exact conditional
    score, so with zeta = 1 the base sampler draws from p(x | y).

  Args:
    sampler: a name in `jaxdiff.samplers.SAMPLERS`.
    sde: the forward process (Gaussian).
    denoise_fn: (x [B, H, W, C], t [B]) -> `denoiser.Prediction`.
    problem: operator and noise model.
    y: measurements [B, ...] (`problem.measurement_shape` each; an
      AssertionError otherwise).
    zeta: guidance scale (0: the base sampler).
    weighting: 'normalised' or 'likelihood' (`DPS_WEIGHTINGS`).
    prior_var: the data variance v of the 'likelihood' weighting.
    **options: the base sampler's options (eta, snr, ...).

  Returns:
    A `Stepper` whose step calls the denoiser itself (it takes no
    precomputed prediction).
  """
  sde_lib.check_gaussian(sde, "DPS")
  if zeta < 0:
    raise ValueError(f"DPS zeta must be >= 0, got {zeta}.")
  if weighting not in DPS_WEIGHTINGS:
    raise ValueError(f"Unknown DPS weighting {weighting!r}; use one of "
                     f"{', '.join(DPS_WEIGHTINGS)}.")
  if not prior_var > 0:
    raise ValueError(f"prior_var must be > 0, got {prior_var}.")
  problem.check_measurement(y, "dps_stepper")
  base = samplers.make_sampler(sampler, sde, denoise_fn, **options)

  def step(state, t, s, noise, pred=None):
    if pred is not None:
      raise ValueError("The DPS step differentiates through its own network "
                       "call; it takes no precomputed prediction.")
    x = state["x"]  # [B, H, W, C]
    chex.assert_equal_shape_prefix([x, y], 1, custom_message=(
        "dps_stepper: the samples x and the measurements y need the same "
        "batch size"))
    t_vec = jnp.full((x.shape[0],), t, jnp.float32)

    def x0_hat(x_):
      p = denoise_fn(x_, t_vec)
      return p.x0, p

    x0, pullback, pred = jax.vjp(x0_hat, x, has_aux=True)
    if weighting == "likelihood":
      a, sg = sde.alpha(t), sde.sigma(t)
      r2 = prior_var * sg**2 / (a**2 * prior_var + sg**2)
      level = jnp.sqrt(problem.sigma**2 + r2)
      d_ll = jax.grad(lambda z: jnp.sum(problem.log_likelihood(y, z, level)))(
          x0)
      (g,) = pullback(d_ll)  # grad_{x_t} log p(y | x_t)
      guided = denoiser.from_eps(sde, x, t_vec, pred.eps - zeta * sg * g)
      return base.step(state, t, s, noise, guided)
    d_res = jax.grad(lambda z: jnp.sum(problem.residual(y, z)))(x0)
    (grad,) = pullback(d_res)  # [B, H, W, C]: grad_{x_t} r (r per image)
    new = base.step(state, t, s, noise, pred)
    return dict(new, x=new["x"] - zeta * grad)

  return base._replace(step=step)
