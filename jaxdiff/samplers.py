"""One integrator for every sampler: a `jax.lax.scan` over a timestep grid.

A sampler is a `Stepper` whose `step(state, t, s, noise, pred=None)` moves
`state["x"]` from t to an earlier s > 0; `noise` (a `Noise` on step i's key
fold_in(key, i)) is its only randomness, and `pred`, when given, is the
denoiser's output at (x, t) computed by the caller (DPS, in its gradient),
which saves that network call. A grid ending at 0 ends with the Tweedie step
x0 = x0_hat(x, t) (for the DDPM chain, DDPM's final mean step). Samplers see
the network only as a denoiser `denoise_fn(x [B, ...], t [B]) -> Prediction`
(`jaxdiff.denoiser`), so each works with every parameterization; the ODE
samplers work in EDM's variables y = x / alpha, r = sigma / alpha, where
dy/dr = eps_hat (Euler there is DDIM). Each names its paper's time grid
(`Stepper.grid`, one of `jaxdiff.grids`), which `sample` uses unless told
otherwise.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.denoiser import DenoiseFn, Prediction
# The time grids, re-exported (`samplers.time_grid`, `samplers.GRIDS`).
from jaxdiff.grids import (  # noqa: F401  pylint: disable=unused-import
    GRIDS, R_MIN, default_t_min, time_grid)
from jaxdiff.registry import Registry
from jaxdiff.sde import Process, time_of_ratio

Array = jax.Array
State = Dict[str, Any]


class Draw(NamedTuple):
  """A law of standardised noise (mean 0, variance 1): `sample(key, shape,
  dtype, t)` draws the marginal's at t; `symmetric`: -z is a draw too."""
  sample: Callable[..., Array]
  symmetric: bool = True


GAUSSIAN = Draw(lambda key, shape, dtype, t=None: jax.random.normal(
    key, shape, dtype))


class Noise(NamedTuple):
  """The randomness `integrate` hands a step: draws from the step's key
  (fold_in(run key, i)), times `sign` (None, or a scalar, may be traced)."""
  key: Array
  sign: Optional[Array] = None
  draw: Draw = GAUSSIAN

  def __call__(self, x: Array, t=None, *, j: Optional[int] = None) -> Array:
    """A draw shaped like x: from `key` itself, or from fold_in(key, j)."""
    key = self.key if j is None else jax.random.fold_in(self.key, j)
    z = self.draw.sample(key, x.shape, x.dtype, t)
    return z if self.sign is None else z * self.sign

  def split(self) -> Tuple["Noise", "Noise"]:  # two independent sources
    a, b = jax.random.split(self.key)
    return self._replace(key=a), self._replace(key=b)


class Stepper(NamedTuple):
  """A sampler as a step function of the one integrator."""
  init: Callable[[Array], State]   # x [B, ...] -> state (a dict with "x")
  step: Callable[..., State]       # (state, t, s, noise, pred=None) -> state
  nfe_per_step: int                # network calls of a step without `pred`
  draw: Draw = GAUSSIAN            # the law of the noise the step is handed
  grid: str = "uniform"            # the `GRIDS` its paper recommends


SAMPLERS = Registry("sampler")


def make_sampler(name: str, sde: Process, denoise_fn: DenoiseFn, *,
                 steps: Optional[int] = None, **options) -> Stepper:
  """Builds a registered sampler; options are its own (eta, snr, ...).
  `steps` (the grid's length) reaches the samplers that take it (EDM's
  churn) and is ignored by the others."""
  factory = SAMPLERS.get(name)
  if steps is not None and "steps" in inspect.signature(factory).parameters:
    options["steps"] = steps
  try:
    return factory(sde, denoise_fn, **options)
  except TypeError as e:
    raise ValueError(f"Bad options {options} for sampler {name!r}: {e}"
                     ) from None


def _full(t, x):  # scalar time -> [B]
  return jnp.full((x.shape[0],), t, jnp.float32)


def _x_only(x):
  return {"x": x}


def _predict(denoise_fn, x, t, pred: Optional[Prediction]) -> Prediction:
  """The denoiser at (x, t), unless the caller computed it."""
  return denoise_fn(x, _full(t, x)) if pred is None else pred


def _clip(sde, x, t, pred: Prediction) -> Prediction:
  """x0_hat clipped to the data range [-1, 1], eps made consistent."""
  x0 = jnp.clip(pred.x0, -1.0, 1.0)
  return Prediction((x - sde.alpha(t) * x0) / sde.sigma(t), x0)


def _ddim_move(sde, x, t, s, pred: Prediction, eta, z):
  """x_s from x_t for a frozen prediction: x_s = alpha_s x0 + sqrt(sigma_s^2
  - c^2) eps + c z, c^2 = eta^2 x the posterior variance of q(x_s|x_t, x0)."""
  a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
  var_ts = s_t**2 - (a_t / a_s)**2 * s_s**2   # q(x_t | x_s) variance
  c2 = eta**2 * var_ts * s_s**2 / s_t**2      # posterior variance * eta^2
  x_s = a_s * pred.x0 + jnp.sqrt(jnp.maximum(s_s**2 - c2, 0.0)) * pred.eps
  return x_s if z is None else x_s + jnp.sqrt(c2) * z


@SAMPLERS.register("ddim")
def ddim(sde: Process, denoise_fn: DenoiseFn, *, eta: float = 0.0,
         clip_denoised: bool = False, draw: Draw = GAUSSIAN,
         grid: str = "uniform") -> Stepper:
  """DDIM (Song et al. 2021) for any (alpha, sigma): eta=0 is deterministic
  (Euler in EDM's variables; no draws), eta=1 the ancestral sampler. `draw`:
  the law of z in x_s = mean + c z (the gamma process's for ddgm)."""
  if eta < 0:
    raise ValueError(f"DDIM eta must be >= 0, got {eta}.")

  def step(state, t, s, noise, pred=None):
    x = state["x"]
    pred = _predict(denoise_fn, x, t, pred)
    if clip_denoised:
      pred = _clip(sde, x, t, pred)
    z = noise(x, s) if eta > 0 else None
    return dict(state, x=_ddim_move(sde, x, t, s, pred, eta, z))

  return Stepper(_x_only, step, 1, draw, grid)


@SAMPLERS.register("ddpm")
def ancestral(sde: Process, denoise_fn: DenoiseFn, *,
              clip_denoised: bool = False):
  """DDPM ancestral sampling: x_s ~ q(x_s | x_t, x0_hat) (DDIM with eta=1)."""
  return ddim(sde, denoise_fn, eta=1.0, clip_denoised=clip_denoised)


@SAMPLERS.register("ddgm")
def ddgm(sde: Process, denoise_fn: DenoiseFn, *,
         clip_denoised: bool = False) -> Stepper:
  """DDGM's reverse sampler (Nachmani et al. 2021, Algorithm 2): the DDPM
  step with the process's own noise draw (`jaxdiff.gamma.GammaProcess`)."""
  draw = getattr(sde, "noise_draw", None)
  if draw is None:
    raise ValueError(
        f"The 'ddgm' sampler needs the gamma process, got {type(sde).__name__}"
        ". Set config.diffusion.noise='gamma' (e.g. configs/mnist_ddgm.py).")
  return ddim(sde, denoise_fn, eta=1.0, clip_denoised=clip_denoised, draw=draw)


@SAMPLERS.register("euler_ancestral")
def euler_ancestral(sde: Process, denoise_fn: DenoiseFn, *, eta: float = 1.0,
                    clip_denoised: bool = False) -> Stepper:
  """k-diffusion's Euler-ancestral: an Euler step in EDM's variables down to
  r_down, then fresh noise r_up, with r_up^2 = eta^2 r_s^2 (r_t^2 - r_s^2) /
  r_t^2 and r_down^2 = r_s^2 - r_up^2 (r = sigma/alpha). In x that is DDIM
  with the same eta (eta = 1: the DDPM posterior step), on Karras's grid."""
  return ddim(sde, denoise_fn, eta=eta, clip_denoised=clip_denoised,
              grid="karras")


@SAMPLERS.register("euler_maruyama")
def euler_maruyama(sde: Process, denoise_fn: DenoiseFn) -> Stepper:
  """Euler-Maruyama on the reverse SDE dx = [f x - g^2 score] dt + g dW."""

  def step(state, t, s, noise, pred=None):
    x = state["x"]
    score = _predict(denoise_fn, x, t, pred).score(sde, t)
    drift = sde.f(t) * x - sde.g2(t) * score
    z = noise(x, s) * jnp.sqrt(sde.g2(t) * (t - s))
    return dict(state, x=x + drift * (s - t) + z)

  return Stepper(_x_only, step, 1)


@SAMPLERS.register("pc")
def predictor_corrector(sde: Process, denoise_fn: DenoiseFn, *,
                        snr: float = 0.16,
                        corrector_steps: int = 1) -> Stepper:
  """Euler-Maruyama predictor + Langevin corrector (Song et al. 2021)."""
  predictor = euler_maruyama(sde, denoise_fn)

  def step(state, t, s, noise, pred=None):
    corrector_noise, predictor_noise = noise.split()
    x = predictor.step(state, t, s, predictor_noise, pred)["x"]
    ratio = (sde.alpha(t) / sde.alpha(s))**2  # 1 - beta_i for VP, 1 for VE
    for i in range(corrector_steps):
      score = denoise_fn(x, _full(s, x)).score(sde, s)
      z = corrector_noise(x, s, j=i)
      axes = tuple(range(1, x.ndim))
      g_norm = jnp.sqrt(jnp.mean(jnp.sum(score**2, axes)))
      z_norm = jnp.sqrt(jnp.mean(jnp.sum(z**2, axes)))
      # A zero score (e.g. a zero-initialised last layer): no step, not NaN.
      size = jnp.where(g_norm > 0, 2 * ratio * (
          snr * z_norm / jnp.where(g_norm > 0, g_norm, 1.0))**2, 0.0)
      x = x + size * score + jnp.sqrt(2 * size) * z
    return dict(state, x=x)

  return Stepper(_x_only, step, 1 + corrector_steps)


@SAMPLERS.register("euler")
def euler_ode(sde: Process, denoise_fn: DenoiseFn) -> Stepper:
  """Euler on the probability-flow ODE in EDM's variables (first order):
  y_s = y_t + (r_s - r_t) eps_hat, i.e. DDIM (eta = 0) on Karras's grid."""
  return ddim(sde, denoise_fn, grid="karras")


@SAMPLERS.register("heun")
def heun_ode(sde: Process, denoise_fn: DenoiseFn) -> Stepper:
  """Heun (explicit trapezoid) on the probability-flow ODE in EDM's
  variables (second order; Karras et al. 2022, Algorithm 1), on their grid."""

  def step(state, t, s, noise, pred=None):
    del noise
    x = state["x"]
    p1 = _predict(denoise_fn, x, t, pred)
    x_e = _ddim_move(sde, x, t, s, p1, 0.0, None)            # Euler
    p2 = denoise_fn(x_e, _full(s, x))
    dr = sde.sigma(s) / sde.alpha(s) - sde.sigma(t) / sde.alpha(t)
    return dict(state, x=x_e + sde.alpha(s) * dr * 0.5 * (p2.eps - p1.eps))

  return Stepper(_x_only, step, 2, grid="karras")


@SAMPLERS.register("edm")
def edm_stochastic(sde: Process, denoise_fn: DenoiseFn, *,
                   s_churn: float = 0.0, s_min: float = 0.0,
                   s_max: float = float("inf"), s_noise: float = 1.0,
                   steps: Optional[int] = None) -> Stepper:
  """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): raise the
  noise level from r_t to r_hat = (1 + gamma) r_t by adding fresh noise,
  then a Heun step from r_hat to r_s, in EDM's variables (r = sigma/alpha).

  gamma = min(s_churn / steps, sqrt(2) - 1) where s_min <= r_t <= s_max,
  else 0; r_hat stops at the process's top level r(t_max). s_churn, s_min,
  s_max, s_noise are Karras et al.'s S_churn, S_tmin, S_tmax, S_noise (> 1
  offsets the denoiser's loss of detail); steps is the grid's length N
  (`make_sampler` passes it). With s_churn = 0 this is `heun`.
  """
  if s_churn < 0 or s_noise <= 0 or (s_churn > 0 and not steps):
    raise ValueError(f"EDM needs s_churn >= 0, s_noise > 0 and, with churn, "
                     f"steps (make_sampler(..., steps=N)); got {s_churn}, "
                     f"{s_noise}, {steps}.")
  heun = heun_ode(sde, denoise_fn)
  if s_churn == 0:
    return heun
  gamma_max = min(s_churn / steps, 2**0.5 - 1)
  t_top = getattr(sde, "t_max", 1.0)

  def step(state, t, s, noise, pred=None):
    if pred is not None:
      raise ValueError("EDM churn moves x before the network call; it takes "
                       "no precomputed prediction.")
    x, r_t = state["x"], sde.sigma(t) / sde.alpha(t)
    gamma = jnp.where((r_t >= s_min) & (r_t <= s_max), gamma_max, 0.0)
    r_hat = jnp.minimum(r_t * (1 + gamma), sde.sigma(t_top) / sde.alpha(t_top))
    t_hat = jnp.where(r_hat > r_t, time_of_ratio(sde, r_hat, t_lo=t), t)
    y_hat = x / sde.alpha(t) + jnp.sqrt(jnp.maximum(
        r_hat**2 - r_t**2, 0.0)) * s_noise * noise(x, t)
    return heun.step(dict(state, x=sde.alpha(t_hat) * y_hat), t_hat, s, None)

  return heun._replace(step=step)


@SAMPLERS.register("dpm_solver_pp")
def dpm_solver_pp_2m(sde: Process, denoise_fn: DenoiseFn, *,
                     clip_denoised: bool = False) -> Stepper:
  """DPM-Solver++(2M) (Lu et al. 2022); clip_denoised: static thresholding
  of x0_hat to [-1, 1]."""
  return _dpm_solver_pp(sde, denoise_fn, 2, clip_denoised)


@SAMPLERS.register("dpm_solver_pp_3m")
def dpm_solver_pp_3m(sde: Process, denoise_fn: DenoiseFn, *,
                     clip_denoised: bool = False) -> Stepper:
  """DPM-Solver++(3M): its first two steps are of order 1 and 2."""
  return _dpm_solver_pp(sde, denoise_fn, 3, clip_denoised)


def _dpm_solver_pp(sde, denoise_fn, order: int, clip_denoised: bool):
  """DPM-Solver++ multistep of order 2 or 3 in lambda = log(alpha/sigma).

  With h = lambda_s - lambda_t, m0 = x0_hat(x, t) and d1 ~ h D', d2 ~ h^2 D''
  (D: x0_hat as a function of lambda) from divided differences of the last
  steps' x0_hat: x_s = (sigma_s/sigma_t) x + alpha_s u, with u = -phi1 (m0 +
  d1/2) for 2M and u = -phi1 m0 + phi2 d1 - phi3 d2 for 3M, phi1 = e^-h - 1,
  phi2 = phi1/h + 1, phi3 = phi2/h - 1/2 (D's Taylor polynomial integrated
  exactly; the reference code's d2 / 2 leaves its 3M second order)."""

  def init(x):  # the last two x0_hat and lambda steps, the step count
    z, h = jnp.zeros_like(x), jnp.zeros(())
    return dict(x=x, m1=z, m2=z, h1=h, h2=h, n=jnp.zeros((), jnp.int32))

  def step(state, t, s, noise, pred=None):
    del noise
    x = state["x"]
    pred = _predict(denoise_fn, x, t, pred)
    if clip_denoised:
      pred = _clip(sde, x, t, pred)
    m0, m1, m2, n = pred.x0, state["m1"], state["m2"], state["n"]
    a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
    h = jnp.log(a_s / s_s) - jnp.log(a_t / s_t)
    safe = lambda v: jnp.where(v == 0, 1.0, v)
    r0, r1 = state["h1"] / h, state["h2"] / h
    d1_0, d1_1 = (m0 - m1) / safe(r0), (m1 - m2) / safe(r1)
    phi1 = jnp.expm1(-h)
    phi2, first = phi1 / h + 1.0, -phi1 * m0
    u = jnp.where(n == 0, first, first - 0.5 * phi1 * d1_0)
    if order == 3:
      d1 = d1_0 + (r0 / safe(r0 + r1)) * (d1_0 - d1_1)
      d2 = 2.0 * (d1_0 - d1_1) / safe(r0 + r1)
      u = jnp.where(n >= 2, first + phi2 * d1 - (phi2 / h - 0.5) * d2, u)
    x_s = (s_s / s_t) * x + a_s * u
    return dict(state, x=x_s, m1=m0, m2=m1, h1=h, h2=state["h1"], n=n + 1)

  return Stepper(init, step, 1, grid="logsnr")


def integrate(stepper: Stepper, x_init: Array, ts, key: Array, *,
              sde: Optional[Process] = None,
              denoise_fn: Optional[DenoiseFn] = None,
              trajectory_every: int = 0, noise_sign: Optional[Any] = None):
  """Runs a stepper over the grid ts with one `lax.scan`.

  Args:
    stepper: from `make_sampler`.
    x_init: [B, ...] starting sample at ts[0].
    ts: [N] decreasing times (concrete). If ts[-1] == 0 the last transition
      is the Tweedie denoising step, which needs `denoise_fn`.
    key: PRNG key; step i draws its noise from fold_in(key, i).
    sde: unused (the denoiser makes the final step).
    trajectory_every: if k > 0, also return x after every k-th transition
      (and the initial x) as [N_saved, B, ...].
    noise_sign: None, or a scalar (+1 / -1, may be traced) multiplying
      every draw: the runs with +1 and -1 and one key form an antithetic
      pair (for an affine chain their mean has no Monte Carlo error).

  Returns x [B, ...] at ts[-1], or (x, trajectory) when trajectory_every > 0.
  """
  del sde
  final_denoise = bool(np.asarray(ts)[-1] == 0.0)
  if final_denoise and denoise_fn is None:
    raise ValueError("A grid ending at t=0 needs denoise_fn for the final "
                     "denoising step.")
  if noise_sign is not None:
    if not stepper.draw.symmetric:
      raise ValueError(
          "Antithetic draws (noise_sign) need symmetric noise; this sampler's"
          " noise is skewed (e.g. 'ddgm': gamma), so -z is not a draw. Use "
          "independent draws (antithetic=False).")
    noise_sign = jnp.asarray(noise_sign, x_init.dtype)
  grid = jnp.asarray(ts[:-1] if final_denoise else ts, jnp.float32)
  n = grid.shape[0] - 1
  pairs = (grid[:-1], grid[1:], jnp.arange(n))

  def body(state, inp):
    t, s, i = inp
    noise = Noise(jax.random.fold_in(key, i), noise_sign, stepper.draw)
    return stepper.step(state, t, s, noise), None

  def chunk_body(state, inp):  # k steps, then x saved
    state, _ = jax.lax.scan(body, state, inp)
    return state, state["x"]

  # The first n % k steps, then n // k chunks of k (one chunk: no frames).
  k = trajectory_every or max(n, 1)
  state, _ = jax.lax.scan(body, stepper.init(x_init),
                          jax.tree.map(lambda a: a[:n % k], pairs))
  state, saved = jax.lax.scan(chunk_body, state, jax.tree.map(
      lambda a: a[n % k:].reshape((n // k, k)), pairs))
  x = state["x"]
  if final_denoise:
    x = denoise_fn(x, _full(grid[-1], x)).x0
  if not trajectory_every:
    return x
  last = [x[None]] if final_denoise else []
  return x, jnp.concatenate([x_init[None], saved] + last, axis=0)


def nfe(stepper: Stepper, ts) -> int:
  """Network evaluations `integrate` spends on the grid ts."""
  final = int(np.asarray(ts)[-1] == 0)
  return stepper.nfe_per_step * (len(ts) - 1 - final) + final


def steps_for_nfe(stepper: Stepper, sde: Process, target: int, *,
                  grid: Optional[str] = None,
                  t_max: Optional[float] = None) -> int:
  """The `steps` whose grid costs the NFE closest to `target` (ties: the
  cheaper one), for comparing samplers at equal cost.

  A 2-evaluation step (heun, pc) can only reach odd NFEs, and a discrete
  chain drops grid points that snap to the same step, so the count is
  measured with `nfe` on the grid, not computed. grid None or 'default':
  the sampler's own (`Stepper.grid`).
  """
  if int(target) != target or target < 1:
    raise ValueError(f"target NFE must be a positive integer, got {target}.")
  kind = stepper.grid if grid in (None, "", "default") else grid

  costs = {}  # steps -> NFE, each grid built once

  def cost(steps):
    if steps not in costs:
      costs[steps] = nfe(stepper, time_grid(sde, steps, kind=kind,
                                            t_max=t_max))
    return costs[steps]

  steps = max(1, (target - 1) // stepper.nfe_per_step + 1)
  while cost(steps) < target and steps <= 2 * target:  # snapped duplicates
    steps += 1
  return min({max(1, steps - 1), steps},
             key=lambda n: (abs(cost(n) - target), cost(n)))


def sample(name: str, sde: Process, denoise_fn: DenoiseFn, key: Array,
           shape, *, steps: int, grid: Optional[str] = None,
           trajectory_every: int = 0, x_init: Optional[Array] = None,
           t_max: Optional[float] = None, **options):
  """Draws samples: prior at t_max, then `integrate` the named sampler on
  the grid `grid` (None or "default": the sampler's own) from t_max (None:
  the process's). Jit it (name/shape/steps static) or call it inside jit."""
  init_key, key = jax.random.split(key)
  if x_init is None:
    x_init = sde.prior_sample(init_key, shape)
  stepper = make_sampler(name, sde, denoise_fn, steps=steps, **options)
  if grid in (None, "", "default"):
    grid = stepper.grid
  ts = time_grid(sde, steps, kind=grid, t_max=t_max)
  return integrate(stepper, x_init, ts, key, denoise_fn=denoise_fn,
                   trajectory_every=trajectory_every)

