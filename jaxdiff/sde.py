"""Diffusion SDEs: VP, sub-VP, VE and rectified flow, pure functions of t.

Every SDE here has a Gaussian perturbation kernel

    x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I),

and linear drift `dx = f(t) x dt + g(t) dW`, where f = d log(alpha)/dt and
g^2 = d sigma^2/dt - 2 f sigma^2. Samplers only need (alpha, sigma, f, g^2), so
one integrator serves all three. The discrete DDPM chain is the VP-SDE with a
`DiscreteSchedule`, evaluated on the grid t = i/T. `Process` is that
interface without the Gaussian law (the DDGM gamma chain is one); the
Gaussian-only methods ask `check_gaussian`.

`score = -eps / sigma` and the Tweedie estimate `x0 = (x - sigma eps) /
alpha` convert a noise estimate; what a network's output means is
`jaxdiff.denoiser`'s business. `FlowSDE` is flow matching's rectified flow
(alpha = 1 - t, sigma = t) in the same interface.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff import schedules as schedules_lib
from jaxdiff.registry import Registry

SDES = Registry("sde")

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]  # (x [B, ...], t [B]) -> [B, ...]


def bcast(t: Array, x: Array) -> Array:
  """Reshapes t [B] (or scalar) to broadcast against x [B, ...]."""
  t = jnp.asarray(t, x.dtype)
  if t.ndim == 0:
    return t
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


class Process:
  """What samplers need of a forward process x_t = alpha(t) x_0 + sigma(t) n.

  Subclasses define alpha, sigma, f and g2 as functions of t; the noise n
  has mean 0 and variance 1 (Gaussian for an `SDE`, a centred gamma for
  `jaxdiff.gamma.GammaProcess`).
  """

  t_min: float = 1e-3  # smallest training time for continuous SDEs.
  t_max: float = 1.0   # largest time: training's and sampling's start.

  def alpha(self, t):
    raise NotImplementedError

  def sigma(self, t):
    raise NotImplementedError

  def f(self, t):
    """Drift coefficient: dx = f(t) x dt + g(t) dW."""
    raise NotImplementedError

  def g2(self, t):
    """Squared diffusion coefficient g(t)^2."""
    raise NotImplementedError

  # Derived quantities, shared by all processes.
  def sde(self, x: Array, t: Array):
    """Forward SDE: returns (drift [B, ...], diffusion g [B, 1, ...])."""
    return bcast(self.f(t), x) * x, bcast(jnp.sqrt(self.g2(t)), x)

  def marginal_prob(self, x0: Array, t: Array):
    """Mean and std of x_t | x_0."""
    return bcast(self.alpha(t), x0) * x0, bcast(self.sigma(t), x0)

  def log_snr(self, t):
    return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

  def reverse_drift(self, score_fn: ScoreFn, x: Array, t: Array, *,
                    probability_flow: bool = False) -> Array:
    """Drift of the reverse-time SDE (or probability-flow ODE) at (x, t).

    Reverse SDE: dx = [f x - g^2 score] dt + g dW-bar (t decreasing);
    probability flow: dx = [f x - 1/2 g^2 score] dt.
    """
    weight = 0.5 if probability_flow else 1.0
    drift, g = self.sde(x, t)
    return drift - weight * g**2 * score_fn(x, t)

  def eps_to_score(self, eps: Array, t: Array) -> Array:
    return -eps / bcast(self.sigma(t), eps)

  def eps_to_x0(self, x: Array, eps: Array, t: Array) -> Array:
    return (x - bcast(self.sigma(t), x) * eps) / bcast(self.alpha(t), x)

  def time_of_ratio(self, ratio, *, snap: str = "none", t_lo: float = 0.0):
    """The t with sigma(t) / alpha(t) = ratio; see `time_of_ratio`."""
    return time_of_ratio(self, ratio, snap=snap, t_lo=t_lo)


class SDE(Process):
  """A Gaussian process: x_t | x_0 ~ N(alpha(t) x_0, sigma(t)^2 I)."""

  def perturb(self, key, x0: Array, t: Array):
    """Draws x_t ~ q(x_t | x_0); returns (x_t, noise)."""
    noise = jax.random.normal(key, x0.shape, x0.dtype)
    mean, std = self.marginal_prob(x0, t)
    return mean + std * noise, noise

  @property
  def prior_std(self) -> float:
    return 1.0

  def prior_sample(self, key, shape, dtype=jnp.float32) -> Array:
    return self.prior_std * jax.random.normal(key, shape, dtype)

  def sample_time(self, key, batch: int) -> Array:
    """Training times t [B]: uniform on [t_min, t_max]."""
    return jax.random.uniform(key, (batch,), minval=self.t_min,
                              maxval=self.t_max)


def is_gaussian(process) -> bool:
  """Whether x_t | x_0 is Gaussian (an `SDE`), as the Gaussian-only methods
  (Tweedie from y = x + sigma n, DPS, the matched start) assume."""
  return isinstance(process, SDE)


def check_gaussian(process, what: str) -> None:
  """Raises a one-line ValueError when `process` is not Gaussian.

  Args:
    process: the forward process.
    what: what needs Gaussian noise, e.g. "DPS"; starts the message.
  """
  if not is_gaussian(process):
    raise ValueError(
        f"{what} assumes Gaussian noise, but the process "
        f"{type(process).__name__} is not Gaussian; use a model trained with "
        "config.diffusion.noise='gaussian'.")


@dataclasses.dataclass(frozen=True, eq=False)
class _ScheduledSDE(SDE):
  schedule: Any = dataclasses.field(
      default_factory=schedules_lib.LinearSchedule)

  @property
  def discrete(self) -> bool:
    return isinstance(self.schedule, schedules_lib.DiscreteSchedule)

  @property
  def num_steps(self):
    return self.schedule.num_steps if self.discrete else None

  def alpha(self, t):
    return jnp.exp(-0.5 * self.schedule.int_beta(t))

  def f(self, t):
    return -0.5 * self.schedule.beta(t)

  def sample_time(self, key, batch: int) -> Array:
    if self.discrete:  # the DDPM chain: integer steps i in 1..T, t = i/T.
      i = jax.random.randint(key, (batch,), 1, self.num_steps + 1)
      return i.astype(jnp.float32) / self.num_steps
    return super().sample_time(key, batch)


@SDES.register("vp")
@dataclasses.dataclass(frozen=True, eq=False)
class VPSDE(_ScheduledSDE):
  """Variance preserving: dx = -1/2 beta x dt + sqrt(beta) dW."""

  def sigma(self, t):
    return jnp.sqrt(-jnp.expm1(-self.schedule.int_beta(t)))

  def g2(self, t):
    return self.schedule.beta(t)


@SDES.register("subvp")
@dataclasses.dataclass(frozen=True, eq=False)
class SubVPSDE(_ScheduledSDE):
  """Sub-VP: g^2 = beta (1 - exp(-2 int beta)); sigma = 1 - exp(-int beta)."""

  def sigma(self, t):
    return -jnp.expm1(-self.schedule.int_beta(t))

  def g2(self, t):
    return self.schedule.beta(t) * -jnp.expm1(-2 * self.schedule.int_beta(t))


@SDES.register("ve")
@dataclasses.dataclass(frozen=True, eq=False)
class VESDE(SDE):
  """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  t_min: float = 1e-5

  def __post_init__(self):
    if not 0 < self.sigma_min < self.sigma_max:
      raise ValueError(f"Need 0 < sigma_min < sigma_max, got "
                       f"{self.sigma_min}, {self.sigma_max}.")

  discrete = False
  num_steps = None

  def alpha(self, t):
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def f(self, t):
    return jnp.zeros_like(jnp.asarray(t, jnp.float32))

  def g2(self, t):
    return 2.0 * self.sigma(t)**2 * math.log(self.sigma_max / self.sigma_min)

  @property
  def prior_std(self) -> float:
    return self.sigma_max


@SDES.register("flow")
@dataclasses.dataclass(frozen=True, eq=False)
class FlowSDE(SDE):
  """Flow matching's rectified flow (Liu et al. 2022; Lipman et al. 2022):
  x_t = (1 - t) x0 + t n, so alpha = 1 - t, sigma = t.

  Its drift f = -1 / (1 - t) and g^2 = 2 t / (1 - t) make it an SDE like the
  others (the probability-flow ODE is the flow dx/dt = n - x0), but they blow
  up at t = 1 where alpha = 0, so training and sampling stop at `t_max`:
  80/81, where sigma/alpha = 80 (EDM's sigma_max; a grid starting at 999
  spends its first steps where nothing happens). The prior there is
  N(0, sigma(t_max)^2), which ignores the alpha(t_max) x0 = x0 / 81 part of
  the marginal (std 0.006 for data in [-1, 1]).
  """
  t_min: float = 1e-3
  t_max: float = 80.0 / 81.0

  def __post_init__(self):
    if not 0 < self.t_min < self.t_max < 1:
      raise ValueError(f"Need 0 < t_min < t_max < 1, got {self.t_min}, "
                       f"{self.t_max}.")

  discrete = False
  num_steps = None

  def alpha(self, t):
    return 1.0 - jnp.asarray(t, jnp.float32)

  def sigma(self, t):
    return jnp.asarray(t, jnp.float32)

  def f(self, t):
    return -1.0 / (1.0 - jnp.asarray(t, jnp.float32))

  def g2(self, t):
    t = jnp.asarray(t, jnp.float32)
    return 2.0 * t / (1.0 - t)

  @property
  def prior_std(self) -> float:
    return self.t_max


SNAP_RULES = ("none", "nearest", "up")


def time_of_ratio(process, ratio, *, snap: str = "none", t_lo: float = 0.0,
                  iterations: int = 60):
  """The time t with sigma(t) / alpha(t) = ratio: the one inverse of the
  noise-to-signal ratio, for every process with increasing sigma/alpha.

  Bisection on [t_lo, 1] with float32 evaluations of alpha and sigma; pure
  and jittable, elementwise over an array of ratios. Ratios outside the
  process's range give the nearest end of [t_lo, 1] (check the range first
  with `ratio_range` where that is an error).

  Args:
    process: anything with `alpha(t)` and `sigma(t)` (and `num_steps` for a
      discrete chain).
    ratio: sigma/alpha, a scalar or an array (e.g. [B]).
    snap: for a T-step chain (`num_steps` set), the rule that puts t on its
      grid i/T, i in 1..T: 'none' keeps the continuous t (the network's time
      input is continuous), 'nearest' rounds to the nearest step, 'up' to
      the next step at or above t (at least the requested noise). Ignored for
      continuous processes.
    t_lo: lower end of the search (the upper end is process.t_max).
    iterations: bisection steps (60 reach float64's resolution).

  Returns:
    t, a float64 numpy value for concrete input, else a jax array.
  """
  if snap not in SNAP_RULES:
    raise ValueError(f"Unknown snap rule {snap!r}; use one of {SNAP_RULES}.")
  r = jnp.asarray(ratio, jnp.float32)
  f = lambda t: process.sigma(t) / process.alpha(t)
  lo = jnp.full(r.shape, t_lo, jnp.float32)
  hi = jnp.full(r.shape, getattr(process, "t_max", 1.0), jnp.float32)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    up = f(mid) < r
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
  t = 0.5 * (lo + hi)
  num = getattr(process, "num_steps", None)
  if num and snap != "none":
    rounded = jnp.round(t * num) if snap == "nearest" else jnp.ceil(t * num)
    t = jnp.clip(rounded, 1, num) / num
  return t


def ratio_range(process, t_lo: float = 0.0):
  """(sigma/alpha at t_lo, at t_max): the noise levels a process covers."""
  with jax.ensure_compile_time_eval():
    ratio = lambda t: float(process.sigma(jnp.float32(t)) /
                            process.alpha(jnp.float32(t)))
    return ratio(t_lo), ratio(getattr(process, "t_max", 1.0))


def make_sde(name: str, *, schedule: str = "linear",
             num_steps=None, schedule_kwargs=None, **kwargs) -> SDE:
  """Builds an SDE by name. VP/sub-VP take a schedule by name."""
  cls = SDES.get(name)
  if name in ("ve", "flow"):
    return cls(**kwargs)
  sched = schedules_lib.make_schedule(
      schedule, num_steps=num_steps, **dict(schedule_kwargs or {}))
  return cls(schedule=sched, **kwargs)
