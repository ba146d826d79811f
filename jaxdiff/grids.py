"""Time grids: where a sampler evaluates the network, from t_max down to 0.

Each grid is registered by name in `GRIDS` ('uniform', 'quadratic',
'karras', 'logsnr'); `time_grid` builds one for any process, snapped to a
discrete chain's steps. The grids uniform in a function of sigma/alpha invert
it with `sde.time_of_ratio`, so they hold for every alpha/sigma process.
"""
from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from jaxdiff.registry import Registry
from jaxdiff.sde import Process, time_of_ratio

R_MIN = 0.002  # EDM's sigma_min: the lowest sigma/alpha a default grid visits
GRIDS = Registry("time grid")


# The inverse of sigma/alpha, compiled once per process and shape (eager
# bisection would compile anew for every grid).
_time_of_ratio = jax.jit(time_of_ratio, static_argnums=0,
                         static_argnames=("snap", "iterations"))


def _ratio(sde, t) -> float:
  return float(sde.sigma(np.float32(t)) / sde.alpha(np.float32(t)))


def _times(sde, ratios, t_lo) -> np.ndarray:
  """The times [N] >= t_lo of the noise levels sigma/alpha = ratios [N]."""
  n = len(ratios)  # padded to a power-of-two bucket: one compilation
  ratios = np.pad(np.asarray(ratios, np.float32),
                  (0, max(64, 1 << (n - 1).bit_length()) - n), mode="edge")
  return np.asarray(_time_of_ratio(sde, ratios, t_lo=t_lo), np.float64)[:n]


def _ratio_grid(fwd, inv):
  """A grid uniform in fwd(r, rho) of r = sigma/alpha, inv its inverse."""
  def grid(sde, steps, t_max, t_min, rho):
    u = np.linspace(fwd(_ratio(sde, t_max), rho), fwd(_ratio(sde, t_min), rho),
                    steps)
    ts = _times(sde, inv(u, rho), t_min)
    ts[-1], ts[0] = t_min, t_max  # in this order: steps=1 gives [t_max].
    return ts
  return grid


# A grid: (sde, steps, t_max, t_min, rho) -> times [steps], decreasing.
GRIDS.register("uniform")(lambda sde, n, hi, lo, rho: np.linspace(hi, lo, n))
GRIDS.register("quadratic")(  # uniform in sqrt(t): denser near 0
    lambda sde, n, hi, lo, rho: np.linspace(hi**0.5, lo**0.5, n)**2)
GRIDS.register("karras")(_ratio_grid(  # Karras et al. (2022)
    lambda r, rho: r**(1 / rho), lambda u, rho: u**rho))
GRIDS.register("logsnr")(_ratio_grid(  # DPM-Solver's: uniform in log-SNR
    lambda r, rho: np.log(r), lambda u, rho: np.exp(u)))


def default_t_min(sde: Process, t_max: Optional[float] = None) -> float:
  """A grid's default last time: 1/T for a T-step chain, else the process's
  t_min raised (up to t_max) to the time of sigma/alpha = `R_MIN` (sub-VP:
  r(1e-3) = 1e-4; flow): lower levels cost steps and barely move the final
  Tweedie step (its variance bias is (r / data std)^2)."""
  if getattr(sde, "num_steps", None):
    return 1.0 / sde.num_steps
  t_max = getattr(sde, "t_max", 1.0) if t_max is None else t_max
  with jax.ensure_compile_time_eval():
    if _ratio(sde, sde.t_min) >= R_MIN or _ratio(sde, t_max) <= R_MIN:
      return min(sde.t_min, t_max)
    return float(_times(sde, [R_MIN], sde.t_min)[0])


def time_grid(sde: Process, steps: int, *, kind: str = "uniform",
              t_max: Optional[float] = None, t_min: Optional[float] = None,
              end_at_zero: bool = True, rho: float = 7.0) -> np.ndarray:
  """A decreasing grid of network-evaluation times, plus 0 at the end.

  Args:
    sde: the SDE (discrete chains are snapped to their t = i/T grid).
    steps: number of grid points from t_max down to t_min (>= 1).
    kind: a `GRIDS` name: 'uniform', 'quadratic', 'karras' (uniform in
      (sigma/alpha)^(1/rho)) or 'logsnr' (uniform in log(alpha/sigma)).
    t_max, t_min: the first and last evaluation times; None: the process's
      `t_max` and `default_t_min`.
    end_at_zero: append t = 0 (the final Tweedie denoising step).
    rho: Karras exponent.

  Returns ts [steps + 1] (or [steps]) float32, decreasing.
  """
  if int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps}.")
  t_max = getattr(sde, "t_max", 1.0) if t_max is None else t_max
  if t_min is None and 0 < t_max <= 1:
    t_min = default_t_min(sde, t_max)
  if not 0 < (t_min or 0) <= t_max <= 1:
    raise ValueError(f"Need 0 < t_min <= t_max <= 1, got {t_min}, {t_max}.")
  # A concrete constant even under jit: alpha/sigma evaluated eagerly.
  with jax.ensure_compile_time_eval():
    ts = np.asarray(GRIDS.get(kind)(sde, int(steps), t_max, t_min, rho),
                    np.float64)
  num_chain = getattr(sde, "num_steps", None)
  if num_chain:  # snapped to the chain's steps i/T, duplicates dropped
    ts = np.unique(np.clip(np.round(ts * num_chain), 1, num_chain))[::-1]
    ts = ts / num_chain
  return (np.append(ts, 0.0) if end_at_zero else ts).astype(np.float32)
