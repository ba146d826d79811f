"""The forward process as pictures: one image at evenly spaced times, and
the linear and cosine noise schedules (discrete chain and continuous SDE)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules as schedules_lib
from jaxdiff import viz
from jaxdiff.settings import DiffusionSettings

Array = jax.Array


def num_steps(process) -> Optional[int]:
  """T of a discrete chain, else None."""
  n = getattr(process, "num_steps", None)
  return int(n) if n else None


def time_labels(process, ts) -> List[Any]:
  """Step indices i = t T for a chain, else the times themselves (rounded to
  3 decimals): what a figure writes under each frame."""
  n = num_steps(process)
  if n:
    return [int(round(float(t) * n)) for t in ts]
  return [round(float(t), 3) for t in ts]


def process_name(diffusion: DiffusionSettings) -> str:
  """A short name of the forward process, e.g. 'VP-SDE, cosine'."""
  d = diffusion
  if d.noise == "gamma":
    kind = "gamma (DDGM)"
  else:
    kind = f"{d.sde.upper()}-SDE" if d.sde != "ve" else "VE-SDE"
  if d.sde != "ve" or d.noise == "gamma":
    kind += f", {d.schedule}"
  if d.num_steps:
    kind += f", T = {d.num_steps}"
  return kind


def forward_times(process, num: int) -> np.ndarray:
  """`num` evenly spaced times from the data (t = 0) to the prior (t = 1).

  For a T-step chain these are the steps i = round(linspace(0, T, num)) as
  t = i / T (x_0 is the image, x_T the end of the chain; T = 1000 and 11
  frames give i = 0, 100, ..., 1000); for a continuous process the same
  fractions, t = linspace(0, 1, num).

  Args:
    process: the forward process (`num_steps` set for a chain).
    num: number of times (>= 2).

  Returns:
    ts [num] float32, increasing from 0 to 1.
  """
  if int(num) != num or num < 2:
    raise ValueError(f"Need at least 2 forward frames, got {num}; set "
                     "config.viz.forward_frames.")
  n = num_steps(process)
  if n:
    steps = np.round(np.linspace(0, n, int(num)))
    return (steps / n).astype(np.float32)
  return np.linspace(0.0, 1.0, int(num)).astype(np.float32)


def forward_frames(process, image: Array, ts, key: Array) -> np.ndarray:
  """One image at the times ts of the forward process, x_t ~ q(x_t | x_0).

  Every frame draws its noise with the same key, so for a Gaussian process
  frame k is alpha(t_k) x_0 + sigma(t_k) eps with one shared eps and the
  strip shows one noise pattern growing.

  Args:
    process: the forward process (`perturb(key, x0, t) -> (x_t, noise)`).
    image: [H, W, C] in [-1, 1].
    ts: [K] times in [0, 1].
    key: PRNG key.

  Returns:
    frames [K, H, W, C] float32 (not clipped).
  """
  x0 = jnp.asarray(image, jnp.float32)[None]  # [1, H, W, C]

  def one(t):
    x_t, _ = process.perturb(key, x0, jnp.full((1,), t, jnp.float32))
    return x_t[0]  # [H, W, C]

  return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(ts, jnp.float32)))


def schedule_curves(steps: int = 1000
                    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """alphabar of the linear and cosine schedules on t in [1/T, 1].

  The discrete T-step chains (DDPM's linear betas 1e-4..0.02 and the clipped
  cosine betas) at t = i / T, i = 1..T, and their continuous VP-SDE forms
  (linear beta 0.1..20, cosine with alphabar(1) = 1e-4) on a fine grid over
  the same range.

  Args:
    steps: T of the discrete chains.

  Returns:
    name -> (t [M], alphabar [M]); names "linear, T = 1000",
    "linear, continuous", "cosine, T = 1000", "cosine, continuous".
  """
  curves = {}
  t_disc = np.arange(1, steps + 1) / steps
  t_cont = np.linspace(1.0 / steps, 1.0, 1000)
  for name in ("linear", "cosine"):
    sched = schedules_lib.make_schedule(name, num_steps=steps)
    curves[f"{name}, T = {steps}"] = (t_disc, sched.alphabars)
    cont = schedules_lib.make_schedule(name)
    abar = np.exp(-np.asarray(cont.int_beta(t_cont), np.float64))
    curves[f"{name}, continuous"] = (t_cont, abar)
  return curves


_SCHEDULE_COLORS = {"linear": "tab:blue", "cosine": "tab:orange"}


def plot_schedules(path: str, *, steps: int = 1000,
                   snr_floor: float = 1e-5) -> str:
  """Linear vs cosine: alphabar(t) and SNR(t) (log scale), no config needed.

  Thick coloured lines are the discrete T-step chains; the thin dashed black
  line over each is its continuous VP-SDE form, against t = i / T.

  Args:
    path: output PNG path.
    steps: T of the discrete chains.
    snr_floor: lower limit of the SNR axis (the clipped discrete cosine
      chain ends near alphabar = 1e-9 and runs off the bottom).

  Returns:
    The path written.
  """
  curves = schedule_curves(steps)
  styles = {
      name: (dict(color="black", lw=1.0, ls="--", zorder=3)
             if "continuous" in name else
             dict(color=_SCHEDULE_COLORS[name.split(",")[0]], lw=3.0,
                  alpha=0.8))
      for name in curves}
  return viz.schedules_figure(path, curves, styles=styles,
                              xlabel=f"t = i / T  (T = {steps})",
                              snr_floor=snr_floor)
