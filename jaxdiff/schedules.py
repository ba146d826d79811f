"""Noise schedules: pure, jittable functions of time.

Time runs over t in [0, 1]. A schedule gives the VP integrated rate
`int_beta(t) = int_0^t beta(s) ds` and its derivative `beta(t)`, so that
`alphabar(t) = exp(-int_beta(t))`. Three kinds:

* `LinearSchedule`: continuous linear beta(t) (score_sde's VP: 0.1 -> 20).
* `CosineSchedule`: Nichol & Dhariwal's cosine alphabar, s=0.008, with time
  rescaled so that alphabar(1) = `alphabar_min` (finite beta everywhere).
* `DiscreteSchedule`: a length-T array of betas (the DDPM chain). Step i
  (1-based) covers t in ((i-1)/T, i/T]; beta(t) is piecewise constant with
  `int_beta(i/T) = -sum_{j<=i} log(1 - beta_j)`, so alphabar at t = i/T is
  exactly the discrete cumulative product. The discrete chain is therefore the
  VP-SDE special case evaluated on the grid.

`discrete_betas(name, T)` gives the classic arrays; `make_schedule` builds one
by name, discrete when `num_steps` is given.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax.numpy as jnp
import numpy as np

from jaxdiff.registry import Registry

BETAS = Registry("beta schedule")


@BETAS.register("linear")
def linear_betas(num_steps: int, *, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear betas, [T] float64."""
  _check_steps(num_steps)
  if not 0.0 < beta_start <= beta_end < 1.0:
    raise ValueError(
        f"Need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}.")
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


@BETAS.register("cosine")
def cosine_betas(num_steps: int, *, s: float = 0.008,
                 max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal (2021) cosine betas, [T] float64, clipped at max_beta."""
  _check_steps(num_steps)
  if s < 0:
    raise ValueError(f"Cosine offset s must be >= 0, got {s}.")
  t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
  betas = 1.0 - f[1:] / f[:-1]
  return np.clip(betas, 0.0, max_beta)


def _check_steps(num_steps):
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps}.")


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
  """beta(t) = beta_min + t (beta_max - beta_min)."""
  beta_min: float = 0.1
  beta_max: float = 20.0

  def __post_init__(self):
    if not 0 <= self.beta_min <= self.beta_max:
      raise ValueError(f"Need 0 <= beta_min <= beta_max, got {self.beta_min}, "
                       f"{self.beta_max}.")

  def beta(self, t):
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def int_beta(self, t):
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
  """alphabar(t) = cos^2(pi/2 (u + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)), u = t t_max.

  t_max < 1 is chosen so that alphabar(1) = alphabar_min, keeping beta finite.
  """
  s: float = 0.008
  alphabar_min: float = 1e-4

  def __post_init__(self):
    if self.s < 0:
      raise ValueError(f"Cosine offset s must be >= 0, got {self.s}.")
    if not 0 < self.alphabar_min < 1:
      raise ValueError(f"alphabar_min must be in (0, 1), got "
                       f"{self.alphabar_min}.")

  @property
  def t_max(self) -> float:
    c0 = math.cos(math.pi / 2 * self.s / (1 + self.s))
    return ((1 + self.s) * 2 / math.pi *
            math.acos(math.sqrt(self.alphabar_min) * c0) - self.s)

  def _angle(self, t):
    return jnp.pi / 2 * (t * self.t_max + self.s) / (1 + self.s)

  def int_beta(self, t):
    c0 = math.cos(math.pi / 2 * self.s / (1 + self.s))
    return -2.0 * (jnp.log(jnp.cos(self._angle(t))) - math.log(c0))

  def beta(self, t):
    return self.t_max * jnp.pi / (1 + self.s) * jnp.tan(self._angle(t))


@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteSchedule:
  """The DDPM chain of T betas as a piecewise-constant beta(t)."""
  betas: np.ndarray  # [T]

  def __post_init__(self):
    b = np.asarray(self.betas, np.float64)
    if b.ndim != 1 or not np.all((b > 0) & (b < 1)):
      raise ValueError("betas must be a 1-D array with values in (0, 1).")
    object.__setattr__(self, "betas", b)

  @property
  def num_steps(self) -> int:
    return len(self.betas)

  @property
  def alphabars(self) -> np.ndarray:
    """[T] cumulative products alphabar_1..alphabar_T."""
    return np.cumprod(1.0 - self.betas)

  def _rates(self):  # [T] per-unit-time rates of each step
    return jnp.asarray(-np.log1p(-self.betas) * self.num_steps, jnp.float32)

  def beta(self, t):
    idx = jnp.clip(jnp.ceil(t * self.num_steps).astype(jnp.int32) - 1, 0,
                   self.num_steps - 1)
    return self._rates()[idx]

  def int_beta(self, t):
    cum = np.concatenate([[0.0], np.cumsum(-np.log1p(-self.betas))])
    grid = np.linspace(0.0, 1.0, self.num_steps + 1)
    return jnp.interp(t, jnp.asarray(grid, jnp.float32),
                      jnp.asarray(cum, jnp.float32))


def make_schedule(name: str, *, num_steps: Optional[int] = None, **kwargs):
  """Builds a schedule by name ('linear' or 'cosine').

  Args:
    name: 'linear' or 'cosine'.
    num_steps: if given, the discrete T-step chain (DDPM); else continuous.
    **kwargs: passed to the discrete betas function or the continuous class
      (linear: beta_start/beta_end or beta_min/beta_max; cosine: s, ...).
  """
  if num_steps is not None:
    return DiscreteSchedule(BETAS.get(name)(num_steps, **kwargs))
  continuous = {"linear": LinearSchedule, "cosine": CosineSchedule}
  if name not in continuous:
    raise ValueError(f"Unknown schedule {name!r}. Known: linear, cosine.")
  return continuous[name](**kwargs)


def alphabar(schedule, t):
  """alphabar(t) = exp(-int_beta(t))."""
  return jnp.exp(-schedule.int_beta(t))
