"""The reverse process as pictures: sampler and DPS trajectories of a
trained network, with the time of every saved frame."""
from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import inverse
from jaxdiff import samplers
from jaxdiff import trained as trained_lib

Array = jax.Array


def trajectory_every(num_transitions: int, frames: int,
                     final_denoise: bool) -> int:
  """Steps between saved frames so a trajectory has about `frames` frames.

  `samplers.integrate` saves the start, every k-th of the n transitions and
  the final denoised x: 1 + n // k + final_denoise frames.
  """
  room = max(1, int(frames) - 1 - int(final_denoise))
  return max(1, math.ceil(num_transitions / room))


def saved_times(ts: np.ndarray, every: int) -> np.ndarray:
  """The time of each frame `integrate(..., trajectory_every=every)` saves.

  Args:
    ts: the grid given to `integrate` (decreasing; may end at 0).
    every: trajectory_every.

  Returns:
    [F] times: ts[0], then the time after every `every`-th transition, then
    0 for the final denoised x when ts ends at 0.
  """
  ts = np.asarray(ts, np.float32)
  final = bool(ts[-1] == 0)
  grid = ts[:-1] if final else ts
  n = len(grid) - 1
  r = n % every
  out = [grid[0]] + [grid[r + (j + 1) * every] for j in range(n // every)]
  return np.asarray(out + ([0.0] if final else []), np.float32)


def frames_plan(ts: np.ndarray, frames: int) -> int:
  """`trajectory_every` for the grid ts (its final denoising step counted)."""
  final = bool(ts[-1] == 0)
  return trajectory_every(len(ts) - 2 if final else len(ts) - 1, frames,
                          final)


def grid_kind(process, sampler: str, grid: str, steps: int,
              options: Mapping[str, Any] = ()) -> str:
  """The grid `samplers.sample` runs: `grid`, or for 'default' the
  sampler's own (`Stepper.grid`; built without a network, never called)."""
  if grid not in (None, "", "default"):
    return grid
  return samplers.make_sampler(sampler, process, None, steps=steps,
                               **dict(options)).grid


def reverse_trajectory(trained: trained_lib.Trained, key: Array, *, num: int,
                       frames: int) -> Tuple[np.ndarray, np.ndarray]:
  """A sampler trajectory of the trained network (its sampling settings:
  method, steps, grid, options and guidance).

  Args:
    trained: the trained network.
    key: PRNG key.
    num: images per frame (conditional: labels 0, 1, ..., K - 1, 0, ...).
    frames: about this many frames (see `trajectory_every`).

  Returns:
    (trajectory [F, num, H, W, C] float32, ts [F] the time of each frame,
    0 for the final denoised frame).
  """
  sc = trained.settings.sampling
  kind = grid_kind(trained.process, sc.method, sc.grid, sc.steps,
                   config_lib.sampler_options(sc))
  ts = samplers.time_grid(trained.process, sc.steps, kind=kind)
  every = frames_plan(ts, frames)
  labels = jnp.arange(num, dtype=jnp.int32) % trained.num_classes
  sample_fn = trained_lib.make_sample_fn(
      trained.settings, trained.apply_fn, trained.process, batch_size=num,
      trajectory_every=every)
  _, traj = sample_fn(trained.params, key, labels)
  return np.asarray(traj), saved_times(ts, every)


def dps_trajectory(trained: trained_lib.Trained,
                   problem: inverse.InverseProblem,
                   settings: inverse.MethodSettings, y: Array, key: Array, *,
                   frames: int) -> Tuple[np.ndarray, np.ndarray]:
  """A DPS trajectory from pure noise for the measurements y.

  Args:
    trained: the trained network (a Gaussian process).
    problem: operator and noise model of y.
    settings: the DPS settings (base sampler and its options, steps, grid,
      zeta, weighting), as `--mode denoise` runs them.
    y: [B, H, W, C] measurements.
    key: PRNG key.
    frames: about this many frames.

  Returns:
    (trajectory [F, B, H, W, C], ts [F]).
  """
  process = trained.process
  kind = grid_kind(process, settings.sampler, settings.grid, settings.steps,
                   settings.sampler_options)
  # steps reaches the samplers that take it (EDM's churn).
  options = dict(settings.sampler_options, steps=settings.steps)
  ts = samplers.time_grid(process, settings.steps, kind=kind)
  every = frames_plan(ts, frames)

  @jax.jit
  def run(params, y, key):
    denoise_fn = trained.denoise_fn(params=params)
    init_key, key = jax.random.split(key)
    x_init = process.prior_sample(init_key, y.shape)
    stepper = inverse.dps_stepper(
        settings.sampler, process, denoise_fn, problem, y, zeta=settings.zeta,
        weighting=settings.dps_weighting, prior_var=settings.prior_var,
        **options)
    return samplers.integrate(stepper, x_init, ts, key, sde=process,
                              denoise_fn=denoise_fn, trajectory_every=every)

  _, traj = run(trained.params, y, key)
  return np.asarray(traj), saved_times(ts, every)
