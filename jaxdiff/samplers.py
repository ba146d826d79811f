"""One integrator for every sampler: a `jax.lax.scan` over a timestep grid.

A sampler is a `Stepper`: `init(x) -> state` and `step(state, t, s, noise,
eps=None) -> state`, moving the sample (`state["x"]`) from time t to an
earlier time s > 0. `integrate` scans a stepper over a grid `ts` (decreasing).
When the grid ends at 0, the last transition is the Tweedie (posterior-mean)
denoising step `x0 = (x - sigma eps) / alpha`, shared by all samplers; for the
DDPM chain that is exactly DDPM's final mean step.

The step's contract: `noise` (a `Noise` built by `integrate` from
fold_in(key, i) for step i) is its only randomness: `noise(x, t)` draws
standardised noise shaped like x from the stepper's `draw` (Gaussian, or the
gamma process's for "ddgm"), negated in an antithetic run. `eps`, when given,
is the network's output at (state["x"], t) computed by the caller (DPS, inside
its gradient); the step then skips that network call.

Samplers are registered by name and built by `make_sampler(name, sde, eps_fn,
**options)`, where `eps_fn(x [B, ...], t [B]) -> eps [B, ...]` is the network's
noise prediction with parameters (and labels, guidance) bound.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.registry import Registry
from jaxdiff.sde import Process, time_of_ratio

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
State = Dict[str, Any]


class Draw(NamedTuple):
  """A law of standardised noise: `sample(key, shape, dtype, t)` draws the
  noise of the process's marginal at t (mean 0, variance 1; a Gaussian
  ignores t); `symmetric`: -z is a draw too (antithetic pairs allowed)."""
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

  def split(self) -> Tuple["Noise", "Noise"]:
    """Two independent sources (`jax.random.split` of the key)."""
    a, b = jax.random.split(self.key)
    return self._replace(key=a), self._replace(key=b)


class Stepper(NamedTuple):
  """A sampler as a step function of the one integrator.

  Attributes:
    init: x [B, ...] -> state (a dict holding at least "x").
    step: (state, t, s, noise, eps=None) -> state at s (module docstring).
    nfe_per_step: network evaluations of one step (without `eps`).
    draw: the law of the noise `integrate` hands the step.
  """
  init: Callable[[Array], State]
  step: Callable[..., State]
  nfe_per_step: int
  draw: Draw = GAUSSIAN


SAMPLERS = Registry("sampler")
GRIDS = Registry("time grid")


def make_sampler(name: str, sde: Process, eps_fn: EpsFn,
                 **options) -> Stepper:
  """Builds a registered sampler; options are its own (eta, snr, ...)."""
  factory = SAMPLERS.get(name)
  try:
    return factory(sde, eps_fn, **options)
  except TypeError as e:
    raise ValueError(
        f"Bad options {options} for sampler {name!r}: {e}") from None


def _full(t, x):
  """Scalar time -> [B] vector."""
  return jnp.full((x.shape[0],), t, jnp.float32)


def _x_only(x):
  return {"x": x}


def _eps_at(eps_fn: EpsFn, x: Array, t, eps: Optional[Array]) -> Array:
  """The network's eps at (x, t), unless the caller computed it."""
  return eps_fn(x, _full(t, x)) if eps is None else eps


# ---------------------------------------------------------------- samplers


@SAMPLERS.register("ddim")
def ddim(sde: Process, eps_fn: EpsFn, *, eta: float = 0.0,
         clip_denoised: bool = False, draw: Draw = GAUSSIAN) -> Stepper:
  """DDIM (Song et al. 2021) for any (alpha, sigma): eta=0 is deterministic,
  eta=1 is the ancestral sampler (posterior variance).

  `draw` is the law of the noise z of x_s = mean + c z, for the marginal
  at s (Gaussian; the gamma process's for "ddgm").
  """
  if eta < 0:
    raise ValueError(f"DDIM eta must be >= 0, got {eta}.")

  def step(state, t, s, noise, eps=None):
    x = state["x"]
    eps = _eps_at(eps_fn, x, t, eps)
    a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
    x0 = (x - s_t * eps) / a_t
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - a_t * x0) / s_t
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2          # q(x_t | x_s) variance
    c2 = eta**2 * var_ts * s_s**2 / s_t**2      # posterior variance * eta^2
    z = noise(x, s)
    x_s = a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c2, 0.0)) * eps
    return dict(state, x=x_s + jnp.sqrt(c2) * z)

  return Stepper(_x_only, step, 1, draw)


@SAMPLERS.register("ddpm")
def ancestral(sde: Process, eps_fn: EpsFn, *, clip_denoised: bool = False):
  """DDPM ancestral sampling: x_s ~ q(x_s | x_t, x0_hat) (DDIM with eta=1)."""
  return ddim(sde, eps_fn, eta=1.0, clip_denoised=clip_denoised)


@SAMPLERS.register("ddgm")
def ddgm(sde: Process, eps_fn: EpsFn, *,
         clip_denoised: bool = False) -> Stepper:
  """DDGM's reverse sampler (Nachmani et al. 2021, Algorithm 2): the DDPM
  step with the process's own noise draw (`jaxdiff.gamma.GammaProcess`)."""
  draw = getattr(sde, "noise_draw", None)
  if draw is None:
    raise ValueError(
        f"The 'ddgm' sampler needs the gamma process, got "
        f"{type(sde).__name__}. Set config.diffusion.noise='gamma' (e.g. "
        "configs/mnist_ddgm.py), or pass jaxdiff.gamma.make_gamma_process(...) "
        "as the process.")
  return ddim(sde, eps_fn, eta=1.0, clip_denoised=clip_denoised, draw=draw)


@SAMPLERS.register("euler_maruyama")
def euler_maruyama(sde: Process, eps_fn: EpsFn) -> Stepper:
  """Euler-Maruyama on the reverse SDE dx = [f x - g^2 score] dt + g dW."""

  def step(state, t, s, noise, eps=None):
    x = state["x"]
    score = sde.eps_to_score(_eps_at(eps_fn, x, t, eps), t)
    drift = sde.f(t) * x - sde.g2(t) * score
    z = noise(x, s)
    return dict(state,
                x=x + drift * (s - t) + jnp.sqrt(sde.g2(t) * (t - s)) * z)

  return Stepper(_x_only, step, 1)


@SAMPLERS.register("pc")
def predictor_corrector(sde: Process, eps_fn: EpsFn, *, snr: float = 0.16,
                        corrector_steps: int = 1) -> Stepper:
  """Euler-Maruyama predictor + Langevin corrector (Song et al. 2021)."""
  predictor = euler_maruyama(sde, eps_fn)

  def step(state, t, s, noise, eps=None):
    corrector_noise, predictor_noise = noise.split()
    x = predictor.step(state, t, s, predictor_noise, eps)["x"]
    # Corrector step size scale: 1 - beta_i for VP (alpha ratio^2), 1 for VE.
    ratio = (sde.alpha(t) / sde.alpha(s))**2
    for i in range(corrector_steps):
      score = sde.eps_to_score(eps_fn(x, _full(s, x)), s)
      z = corrector_noise(x, s, j=i)
      axes = tuple(range(1, x.ndim))
      g_norm = jnp.sqrt(jnp.mean(jnp.sum(score**2, axes)))
      z_norm = jnp.sqrt(jnp.mean(jnp.sum(z**2, axes)))
      # A zero score (e.g. a freshly initialised network with a zero output
      # layer) has no Langevin step size: skip the corrector, not NaN.
      size = jnp.where(g_norm > 0, 2 * ratio * (
          snr * z_norm / jnp.where(g_norm > 0, g_norm, 1.0))**2, 0.0)
      x = x + size * score + jnp.sqrt(2 * size) * z
    return dict(state, x=x)

  return Stepper(_x_only, step, 1 + corrector_steps)


def _ode_drift(sde, eps_fn, x, t, eps=None):
  score = sde.eps_to_score(_eps_at(eps_fn, x, t, eps), t)
  return sde.f(t) * x - 0.5 * sde.g2(t) * score


@SAMPLERS.register("euler")
def euler_ode(sde: Process, eps_fn: EpsFn) -> Stepper:
  """Euler on the probability-flow ODE (first order)."""

  def step(state, t, s, noise, eps=None):
    del noise
    x = state["x"]
    return dict(state, x=x + _ode_drift(sde, eps_fn, x, t, eps) * (s - t))

  return Stepper(_x_only, step, 1)


@SAMPLERS.register("heun")
def heun_ode(sde: Process, eps_fn: EpsFn) -> Stepper:
  """Heun (explicit trapezoid) on the probability-flow ODE (second order)."""

  def step(state, t, s, noise, eps=None):
    del noise
    x = state["x"]
    d1 = _ode_drift(sde, eps_fn, x, t, eps)
    x_euler = x + d1 * (s - t)
    d2 = _ode_drift(sde, eps_fn, x_euler, s)
    return dict(state, x=x + 0.5 * (d1 + d2) * (s - t))

  return Stepper(_x_only, step, 2)


@SAMPLERS.register("dpm_solver_pp")
def dpm_solver_pp_2m(sde: Process, eps_fn: EpsFn, *,
                     clip_denoised: bool = False) -> Stepper:
  """DPM-Solver++(2M) (Lu et al. 2022): multistep, data prediction.

  clip_denoised clips the data prediction x0_hat to [-1, 1] (the paper's
  thresholding, static): near t = 1 an eps-prediction network's x0_hat =
  (x - sigma eps_hat) / alpha multiplies its error by 1 / alpha.
  """

  def init(x):
    return {"x": x, "x0_prev": jnp.zeros_like(x), "h_prev": jnp.zeros(()),
            "first": jnp.ones((), bool)}

  def step(state, t, s, noise, eps=None):
    del noise
    x = state["x"]
    eps = _eps_at(eps_fn, x, t, eps)
    a_t, s_t, a_s, s_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
    x0 = (x - s_t * eps) / a_t
    if clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
    h = jnp.log(a_s / s_s) - jnp.log(a_t / s_t)
    r = state["h_prev"] / h
    first = state["first"]
    inv2r = jnp.where(first, 0.0, 0.5 / jnp.where(first, 1.0, r))
    d = (1 + inv2r) * x0 - inv2r * state["x0_prev"]
    x_s = (s_s / s_t) * x - a_s * jnp.expm1(-h) * d
    return dict(state, x=x_s, x0_prev=x0, h_prev=h,
                first=jnp.zeros((), bool))

  return Stepper(init, step, 1)


# ---------------------------------------------------------------- time grids


def _times_of_ratios(sde: Process, ratios: np.ndarray, t_lo) -> np.ndarray:
  """`time_of_ratio` (no snapping) of the grid's sigma/alpha values [N]."""
  n = len(ratios)
  # Pad to a power-of-two bucket: the eager bisection compiles once per
  # shape, so a new `steps` would otherwise cost a compilation.
  ratios = np.pad(ratios, (0, max(64, 1 << (n - 1).bit_length()) - n),
                  mode="edge")
  ts = time_of_ratio(sde, ratios, snap="none", t_lo=t_lo)
  return np.asarray(ts, np.float64)[:n]


@GRIDS.register("uniform")
def _uniform(sde, steps, t_max, t_min, rho):
  del sde, rho
  return np.linspace(t_max, t_min, steps)


@GRIDS.register("quadratic")
def _quadratic(sde, steps, t_max, t_min, rho):
  del sde, rho
  u = np.linspace(np.sqrt(t_max), np.sqrt(t_min), steps)
  return u**2


@GRIDS.register("karras")
def _karras(sde, steps, t_max, t_min, rho):
  """Karras et al. (2022): uniform in sigma^(1/rho), sigma = sigma/alpha."""
  r = lambda t: float(sde.sigma(t) / sde.alpha(t))
  lo, hi = r(t_min) ** (1 / rho), r(t_max) ** (1 / rho)
  ratios = np.linspace(hi, lo, steps) ** rho
  ts = _times_of_ratios(sde, ratios, t_min)
  ts[-1], ts[0] = t_min, t_max  # in this order: steps=1 gives [t_max].
  return ts


@GRIDS.register("logsnr")
def _logsnr(sde, steps, t_max, t_min, rho):
  """Uniform in log-SNR lambda = log(alpha/sigma) (DPM-Solver's grid)."""
  del rho
  lam = lambda t: float(np.log(sde.alpha(t)) - np.log(sde.sigma(t)))
  lams = np.linspace(lam(t_max), lam(t_min), steps)
  ts = _times_of_ratios(sde, np.exp(-lams), t_min)
  ts[-1], ts[0] = t_min, t_max  # in this order: steps=1 gives [t_max].
  return ts


def time_grid(sde: Process, steps: int, *, kind: str = "uniform",
              t_max: float = 1.0, t_min: Optional[float] = None,
              end_at_zero: bool = True, rho: float = 7.0) -> np.ndarray:
  """A decreasing grid of network-evaluation times, plus 0 at the end.

  Args:
    sde: the SDE (discrete chains are snapped to their t = i/T grid).
    steps: number of grid points from t_max down to t_min (>= 1).
    kind: 'uniform', 'quadratic' (denser near 0), 'karras' (uniform in
      (sigma/alpha)^(1/rho)) or 'logsnr' (uniform in log(alpha/sigma)).
    t_max: first time (1 = pure noise).
    t_min: last evaluation time; defaults to 1/T for a chain, else sde.t_min.
    end_at_zero: append t = 0 (the final Tweedie denoising step).
    rho: Karras exponent.

  Returns:
    ts [steps + 1] (or [steps]) float32, decreasing.
  """
  if int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps}.")
  num_chain = getattr(sde, "num_steps", None)
  if t_min is None:
    t_min = 1.0 / num_chain if num_chain else sde.t_min
  if not 0 < t_min <= t_max <= 1:
    raise ValueError(f"Need 0 < t_min <= t_max <= 1, got {t_min}, {t_max}.")
  # The grid is a concrete constant even when built under jit (sample() is
  # meant to be jitted): evaluate the SDE's alpha/sigma eagerly.
  with jax.ensure_compile_time_eval():
    ts = np.asarray(GRIDS.get(kind)(sde, int(steps), t_max, t_min, rho),
                    np.float64)
  if num_chain:
    ts = np.unique(np.clip(np.round(ts * num_chain), 1, num_chain))[::-1]
    ts = ts / num_chain
  if end_at_zero:
    ts = np.concatenate([ts, [0.0]])
  return ts.astype(np.float32)


# ---------------------------------------------------------------- integrator


def integrate(stepper: Stepper, x_init: Array, ts, key: Array, *,
              sde: Optional[Process] = None, eps_fn: Optional[EpsFn] = None,
              trajectory_every: int = 0, noise_sign: Optional[Any] = None):
  """Runs a stepper over the grid ts with one `lax.scan`.

  Args:
    stepper: from `make_sampler`.
    x_init: [B, ...] starting sample at ts[0].
    ts: [N] decreasing times. If ts[-1] == 0 the last transition is the
      Tweedie denoising step, which needs `sde` and `eps_fn`.
    key: PRNG key; step i draws its noise from fold_in(key, i).
    trajectory_every: if k > 0, also return x after every k-th transition
      (and the initial x) as [N_saved, B, ...].
    noise_sign: None, or a scalar (+1 / -1, may be traced) multiplying
      every draw: the runs with +1 and -1 and one key form an antithetic
      pair (for an affine chain their mean has no Monte Carlo error).

  Returns:
    x [B, ...] at ts[-1], or (x, trajectory) when trajectory_every > 0.
  """
  final_denoise = bool(np.asarray(ts)[-1] == 0.0)  # ts must be concrete.
  ts = jnp.asarray(ts, jnp.float32)
  if final_denoise and (sde is None or eps_fn is None):
    raise ValueError("A grid ending at t=0 needs sde and eps_fn for the final "
                     "denoising step.")
  if noise_sign is not None and not stepper.draw.symmetric:
    raise ValueError(
        "Antithetic draws (noise_sign) need symmetric noise; this sampler's "
        "noise is skewed (e.g. 'ddgm': gamma), so -z is not a draw. Use "
        "independent draws (antithetic=False).")
  if noise_sign is not None:
    noise_sign = jnp.asarray(noise_sign, x_init.dtype)
  grid = ts[:-1] if final_denoise else ts
  n = grid.shape[0] - 1
  pairs = (grid[:-1], grid[1:], jnp.arange(n))

  def body(state, inp):
    t, s, i = inp
    noise = Noise(jax.random.fold_in(key, i), noise_sign, stepper.draw)
    return stepper.step(state, t, s, noise), None

  state = stepper.init(x_init)
  traj = [x_init]
  if trajectory_every > 0:
    k = trajectory_every
    r = n % k
    state, _ = jax.lax.scan(body, state, jax.tree.map(lambda a: a[:r], pairs))
    chunks = jax.tree.map(lambda a: a[r:].reshape((n // k, k)), pairs)

    def chunk_body(state, inp):
      state, _ = jax.lax.scan(body, state, inp)
      return state, state["x"]

    state, saved = jax.lax.scan(chunk_body, state, chunks)
    traj = jnp.concatenate([x_init[None], saved], axis=0)
  else:
    state, _ = jax.lax.scan(body, state, pairs)
  x = state["x"]
  if final_denoise:
    t_last = grid[-1]
    x = sde.eps_to_x0(x, eps_fn(x, _full(t_last, x)), t_last)
    if trajectory_every > 0:
      traj = jnp.concatenate([traj, x[None]], axis=0)
  return (x, traj) if trajectory_every > 0 else x


def nfe(stepper: Stepper, ts) -> int:
  """Network evaluations `integrate` spends on the grid ts."""
  ts = np.asarray(ts)
  final = int(ts[-1] == 0)
  return stepper.nfe_per_step * (len(ts) - 1 - final) + final


def sample(name: str, sde: Process, eps_fn: EpsFn, key: Array, shape, *,
           steps: int, grid: str = "uniform", trajectory_every: int = 0,
           x_init: Optional[Array] = None, t_max: float = 1.0, **options):
  """Draws samples: prior at t_max, then `integrate` the named sampler.

  Jit this function (with name/shape/steps static) or call it inside jit.
  """
  init_key, key = jax.random.split(key)
  if x_init is None:
    x_init = sde.prior_sample(init_key, shape)
  stepper = make_sampler(name, sde, eps_fn, **options)
  ts = time_grid(sde, steps, kind=grid, t_max=t_max)
  return integrate(stepper, x_init, ts, key, sde=sde, eps_fn=eps_fn,
                   trajectory_every=trajectory_every)


def model_eps_fn(apply_fn, params, *, labels=None, num_classes=None,
                 guidance_scale: float = 0.0) -> EpsFn:
  """Binds a network into eps_fn(x, t), with classifier-free guidance.

  eps = (1 + w) eps(x, t, y) - w eps(x, t, null) when w = guidance_scale > 0.
  """
  def eps_fn(x, t):
    if labels is None or guidance_scale == 0.0:
      return apply_fn(params, x, t, labels)
    null = jnp.full_like(labels, num_classes)
    both = apply_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, null]))
    cond, uncond = jnp.split(both, 2)
    return (1 + guidance_scale) * cond - guidance_scale * uncond
  return eps_fn
