"""The pictures that explain diffusion, each from one command on a workdir.

    python launch.py --config configs/organamnist.py --workdir runs/organ \
        --mode viz

writes into `<workdir>/figures/`:

* `forward_strip.png`: one training image through the forward process at
  evenly spaced t (300 dpi). Needs no checkpoint.
* `schedules.png`: linear vs cosine alphabar(t) and SNR(t) (log scale), for
  the discrete T-step chain and the continuous VP-SDE. Needs no checkpoint.
* `reverse.gif`, `reverse_strip.png`: a grid of samples along one sampler
  trajectory of the trained network (config sampling method and steps).
* `reverse_dps.gif`, `reverse_dps_strip.png`: the same for DPS denoising of
  test images (when `jaxdiff.inverse` is installed).
* `noise_histograms.png`: predicted vs true noise on real images at a few t
  (with a Gaussian of the same variance for gamma noise).
* `loss.png`: loss curves from `<workdir>/metrics.jsonl`.
* `samples.png`: a sample grid (one row per class when conditional).
* `denoise_comparison.png`: test images, y = clip(x + 0.3 n, -1, 1), the
  one-step Tweedie estimate at the matched noise level, the methods of
  `config.denoise.methods` (DPS, ...; when `jaxdiff.inverse` is installed)
  and the clean images, with PSNR (data range 2).

Which ones: `config.viz.figures`, a comma list of the names in `FIGURES`
(default: all). Figures that need a checkpoint (or metrics) are skipped with
a printed note when there is none. Each figure is also a function
`(config, workdir, ...) -> path` so it can be made alone, and
`plot_schedules(path)` draws the schedule figure without any config.
"""
from __future__ import annotations

import importlib
import math
import os
import textwrap
from typing import (Any, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

from flax import linen as nn
import jax
import jax.numpy as jnp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import ml_collections
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import metrics as metrics_lib
from jaxdiff import samplers
from jaxdiff import schedules as schedules_lib
from jaxdiff import sde as sde_lib
from jaxdiff import train as train_lib
from jaxdiff import viz
from jaxdiff.registry import Registry
from jaxdiff.run import MODES
from jaxdiff.run import restore_params

Array = jax.Array

FIGURES = Registry("figure")

# Settings read from `config.viz` (all optional; these are the defaults).
DEFAULTS = dict(
    figures="",                 # comma list of FIGURES names; "" or "all": all
    seed=-1,                    # -1: config.seed
    forward_frames=11,          # frames of the forward strip
    schedule_steps=1000,        # T of the discrete curves in schedules.png
    reverse_samples=16,         # images per frame of reverse.gif
    reverse_frames=60,          # about this many frames in reverse.gif
    strip_frames=10,            # frames of reverse_strip.png
    strip_images=4,             # images per frame of reverse_strip.png
    hist_times="0.1,0.5,0.9",   # fractions of T for noise_histograms.png
    hist_images=64,             # real images for the histograms
    denoise_sigma=0.3,          # noise std of the denoising comparison
    denoise_rows=6,             # test images in denoise_comparison.png
)



def viz_config() -> ml_collections.ConfigDict:
  """`DEFAULTS` as a ConfigDict, for a config's `c.viz = viz_config()` (then
  `--config.viz.figures=forward_strip,schedules` works on the command line)."""
  return ml_collections.ConfigDict(dict(DEFAULTS))


# Figures that need a trained network.
NEEDS_CHECKPOINT = frozenset({"reverse", "reverse_dps", "noise_histograms",
                              "samples", "denoise_comparison"})


class Restored(NamedTuple):
  """A trained network: flax module, parameters (EMA if configured), step."""
  model: nn.Module
  params: Any
  step: int


# ------------------------------------------------------------------ plumbing


def settings(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`DEFAULTS` overridden by the keys present in `config.viz` (if any)."""
  out = dict(DEFAULTS)
  vc = config.get("viz")
  if vc is not None:
    for k in DEFAULTS:
      v = vc.get(k)
      if v is not None:
        out[k] = v
  if out["seed"] is None or int(out["seed"]) < 0:
    out["seed"] = int(config.seed)
  return out


def figures_dir(workdir: str) -> str:
  return os.path.join(workdir, "figures")


def has_checkpoint(workdir: str) -> bool:
  """Whether `<workdir>/checkpoints` holds at least one step folder."""
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any(
      name.isdigit() and os.path.isdir(os.path.join(d, name))
      for name in os.listdir(d))


def restore(config: ml_collections.ConfigDict, workdir: str) -> Restored:
  """The newest checkpoint of `workdir` (EMA parameters if configured)."""
  model, params, step = restore_params(config, workdir,
                                       use_ema=config.sampling.use_ema)
  return Restored(model, params, step)


def _key(config, salt: int) -> Array:
  return jax.random.fold_in(jax.random.key(settings(config)["seed"]), salt)


def _load(config, split: str, limit: int):
  """(images float32 [N, H, W, C] in [-1, 1], labels int32 [N], Dataset)."""
  dc = config.data
  ds = data_lib.load(dc.name, split, data_dir=dc.data_dir or None,
                     limit=limit)
  if len(ds.images) == 0:
    raise ValueError(f"Data set {dc.name!r} has no {split} images; set "
                     "config.data.name to one that has.")
  x = ds.images.astype(np.float32) / 127.5 - 1.0  # [N, H, W, C]
  return x, ds.labels.astype(np.int32), ds


def _num_steps(process) -> Optional[int]:
  """T of a discrete chain, else None."""
  n = getattr(process, "num_steps", None)
  return int(n) if n else None


def _time_labels(process, ts: np.ndarray) -> List[Any]:
  """Step indices i = t T for a chain, else the times themselves."""
  n = _num_steps(process)
  if n:
    return [int(round(float(t) * n)) for t in ts]
  return [round(float(t), 3) for t in ts]


def _process_name(config) -> str:
  d = config.diffusion
  if d.noise == "gamma":
    kind = "gamma (DDGM)"
  else:
    kind = f"{d.sde.upper()}-SDE" if d.sde != "ve" else "VE-SDE"
  if d.sde != "ve" or d.noise == "gamma":
    kind += f", {d.schedule}"
  if d.num_steps:
    kind += f", T = {d.num_steps}"
  return kind


# ----------------------------------------------------------- forward process


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
  n = _num_steps(process)
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


@FIGURES.register("forward_strip")
def forward_strip(config: ml_collections.ConfigDict, workdir: str, *,
                  num_frames: Optional[int] = None) -> str:
  """`forward_strip.png`: the first training image along the forward process.

  Args:
    config: experiment config (data set and forward process).
    workdir: the run directory; writes into `<workdir>/figures/`.
    num_frames: frames (default `config.viz.forward_frames`, 11).

  Returns:
    The path written.
  """
  s = settings(config)
  process = config_lib.build_process(config)
  x, _, _ = _load(config, "train", 1)
  ts = forward_times(process, num_frames or s["forward_frames"])
  frames = forward_frames(process, x[0], ts, _key(config, 1))
  return viz.forward_strip(
      os.path.join(figures_dir(workdir), "forward_strip.png"), frames,
      _time_labels(process, ts), dpi=300,
      title=f"Forward process q(x_t | x_0): {_process_name(config)}")


# ------------------------------------------------------------------ schedules


def schedule_curves(num_steps: int = 1000
                    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """alphabar of the linear and cosine schedules on t in [1/T, 1].

  The discrete T-step chains (DDPM's linear betas 1e-4..0.02 and the clipped
  cosine betas) at t = i / T, i = 1..T, and their continuous VP-SDE forms
  (linear beta 0.1..20, cosine with alphabar(1) = 1e-4) on a fine grid over
  the same range.

  Args:
    num_steps: T of the discrete chains.

  Returns:
    name -> (t [M], alphabar [M]); names "linear, T = 1000",
    "linear, continuous", "cosine, T = 1000", "cosine, continuous".
  """
  curves = {}
  t_disc = np.arange(1, num_steps + 1) / num_steps
  t_cont = np.linspace(1.0 / num_steps, 1.0, 1000)
  for name in ("linear", "cosine"):
    sched = schedules_lib.make_schedule(name, num_steps=num_steps)
    curves[f"{name}, T = {num_steps}"] = (t_disc, sched.alphabars)
    cont = schedules_lib.make_schedule(name)
    abar = np.exp(-np.asarray(cont.int_beta(t_cont), np.float64))
    curves[f"{name}, continuous"] = (t_cont, abar)
  return curves


def plot_schedules(path: str, *, num_steps: int = 1000,
                   snr_floor: float = 1e-5) -> str:
  """Linear vs cosine: alphabar(t) and SNR(t) (log scale), no config needed.

  Thick coloured lines are the discrete T-step chains; the thin dashed black
  line over each is its continuous VP-SDE form, against t = i / T.

  Args:
    path: output PNG path.
    num_steps: T of the discrete chains.
    snr_floor: lower limit of the SNR axis (the clipped discrete cosine
      chain ends near alphabar = 1e-9 and runs off the bottom).

  Returns:
    The path written.
  """
  fig = Figure(figsize=(10.0, 4.0))
  FigureCanvasAgg(fig)
  ax_a, ax_s = fig.subplots(1, 2)
  colors = {"linear": "tab:blue", "cosine": "tab:orange"}
  for name, (t, abar) in schedule_curves(num_steps).items():
    abar = np.clip(np.asarray(abar, np.float64), 0.0, 1.0)
    if "continuous" in name:
      style = dict(color="black", lw=1.0, ls="--", zorder=3)
    else:
      style = dict(color=colors[name.split(",")[0]], lw=3.0, alpha=0.8)
    with np.errstate(divide="ignore", invalid="ignore"):
      snr = abar / (1.0 - abar)  # [M]
    ax_a.plot(t, abar, label=name, **style)
    ax_s.plot(t, np.where(snr > 0, snr, np.nan), label=name, **style)
  ax_a.set_ylabel(r"$\bar\alpha_t$")
  ax_a.set_title(r"Signal level $\bar\alpha_t$")
  ax_s.set_yscale("log")
  ax_s.set_ylim(bottom=snr_floor)
  ax_s.set_ylabel(r"SNR$(t) = \bar\alpha_t / (1 - \bar\alpha_t)$")
  ax_s.set_title("Signal-to-noise ratio (log scale)")
  for ax in (ax_a, ax_s):
    ax.set_xlabel(f"t = i / T  (T = {num_steps})")
    ax.grid(True, which="major", alpha=0.3)
  ax_a.legend(fontsize=9)
  fig.tight_layout()
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150, facecolor="white", bbox_inches="tight",
              pad_inches=0.05)
  return path


@FIGURES.register("schedules")
def schedules(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`schedules.png`: see `plot_schedules` (T from config.diffusion.num_steps,
  else `config.viz.schedule_steps`)."""
  steps = config.diffusion.num_steps or settings(config)["schedule_steps"]
  return plot_schedules(os.path.join(figures_dir(workdir), "schedules.png"),
                        num_steps=int(steps))


# ----------------------------------------------------------- reverse process


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


def _frames_plan(ts: np.ndarray, frames: int) -> int:
  final = bool(ts[-1] == 0)
  return trajectory_every(len(ts) - 2 if final else len(ts) - 1, frames,
                          final)


def reverse_trajectory(config: ml_collections.ConfigDict, restored: Restored,
                       key: Array, *, num: int, frames: int
                       ) -> Tuple[np.ndarray, np.ndarray]:
  """A sampler trajectory of the trained network (config sampling method).

  Args:
    config: experiment config (sampling method, steps, grid, guidance).
    restored: the trained network.
    key: PRNG key.
    num: images per frame (conditional: labels 0, 1, ..., K - 1, 0, ...).
    frames: about this many frames (see `trajectory_every`).

  Returns:
    (trajectory [F, num, H, W, C] float32, ts [F] the time of each frame,
    0 for the final denoised frame).
  """
  sc = config.sampling
  process = config_lib.build_process(config)
  ts = samplers.time_grid(process, sc.steps, kind=sc.grid)
  every = _frames_plan(ts, frames)
  apply_fn = train_lib.make_apply_fn(restored.model)
  labels = None
  if config.training.conditional:
    labels = jnp.arange(num, dtype=jnp.int32) % config.data.num_classes
  shape = (num, *train_lib.image_shape(config))
  options = config_lib.sampler_options(config)

  @jax.jit
  def run(params, key):
    eps_fn = samplers.model_eps_fn(
        apply_fn, params, labels=labels, num_classes=config.data.num_classes,
        guidance_scale=sc.guidance_scale)
    return samplers.sample(sc.method, process, eps_fn, key, shape,
                           steps=sc.steps, grid=sc.grid,
                           trajectory_every=every, **options)

  _, traj = run(restored.params, key)
  return np.asarray(traj), saved_times(ts, every)


def inverse_module():
  """The `jaxdiff.inverse` module, or None where it is not installed."""
  try:
    return importlib.import_module("jaxdiff.inverse")
  except ModuleNotFoundError as e:
    if e.name != "jaxdiff.inverse":
      raise
    return None


def _denoise_problem(inverse, config, sigma: float):
  """(DenoiseConfig, InverseProblem with the identity operator)."""
  dc = inverse.DenoiseConfig.from_config(config)
  problem = inverse.InverseProblem(
      inverse.make_operator("denoise", train_lib.image_shape(config)),
      sigma=sigma, noise_model=dc.noise_model, clip=dc.clip_measurement)
  return dc, problem


def dps_trajectory(config: ml_collections.ConfigDict, restored: Restored,
                   y: Array, key: Array, *, frames: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """A DPS denoising trajectory (needs `jaxdiff.inverse`).

  The sampler, steps, grid, zeta and noise model come from config.denoise
  (`jaxdiff.inverse.DenoiseConfig`); the operator is the identity with noise
  std `config.viz.denoise_sigma`.

  Args:
    config: experiment config.
    restored: the trained network.
    y: [B, H, W, C] noisy images.
    key: PRNG key.
    frames: about this many frames.

  Returns:
    (trajectory [F, B, H, W, C], ts [F]).
  """
  inverse = inverse_module()
  if inverse is None:
    raise ValueError("DPS trajectories need jaxdiff.inverse, which is not "
                     "installed; leave 'reverse_dps' out of "
                     "config.viz.figures.")
  process = config_lib.build_process(config)
  dc, problem = _denoise_problem(inverse, config,
                                 float(settings(config)["denoise_sigma"]))
  ts = samplers.time_grid(process, dc.steps, kind=dc.grid)
  every = _frames_plan(ts, frames)
  apply_fn = train_lib.make_apply_fn(restored.model)
  # The same sampler options as `--mode denoise` (x0 clipping included).
  options = dict(dc.method_settings(
      config_lib.sampler_options(config, dc.sampler)).sampler_options)

  @jax.jit
  def run(params, y, key):
    eps_fn = samplers.model_eps_fn(apply_fn, params)
    init_key, key = jax.random.split(key)
    x_init = process.prior_sample(init_key, y.shape)
    stepper = inverse.dps_stepper(dc.sampler, process, eps_fn, problem, y,
                                  zeta=dc.zeta, weighting=dc.dps_weighting,
                                  prior_var=dc.prior_var, **options)
    return samplers.integrate(stepper, x_init, ts, key, sde=process,
                              eps_fn=eps_fn, trajectory_every=every)

  _, traj = run(restored.params, y, key)
  return np.asarray(traj), saved_times(ts, every)


@FIGURES.register("reverse")
def reverse_process(config: ml_collections.ConfigDict, workdir: str, *,
                    restored: Optional[Restored] = None,
                    trajectory: Optional[Tuple[np.ndarray, np.ndarray]] = None
                    ) -> Tuple[str, ...]:
  """`reverse.gif` and `reverse_strip.png`: the sampler's trajectory.

  Args:
    config: experiment config.
    workdir: the run directory with a checkpoint.
    restored: the trained network (default: restored from workdir).
    trajectory: (trajectory, ts) from `reverse_trajectory`, to draw instead
      of sampling one with `config.viz.reverse_samples` images.

  Returns:
    The paths written (GIF first).
  """
  s = settings(config)
  restored = restored or restore(config, workdir)
  if trajectory is None:
    trajectory = reverse_trajectory(config, restored, _key(config, 3),
                                    num=s["reverse_samples"],
                                    frames=s["reverse_frames"])
  traj, ts = trajectory
  process = config_lib.build_process(config)
  sc = config.sampling
  out = figures_dir(workdir)
  return (
      viz.reverse_gif(os.path.join(out, "reverse.gif"), traj),
      viz.frame_strip(os.path.join(out, "reverse_strip.png"), traj,
                      _time_labels(process, ts), num=s["strip_frames"],
                      n_images=s["strip_images"],
                      title=f"Reverse process: {sc.method}, {sc.steps} "
                      "steps"))


@FIGURES.register("reverse_dps")
def reverse_dps(config: ml_collections.ConfigDict, workdir: str, *,
                restored: Optional[Restored] = None) -> Tuple[str, ...]:
  """`reverse_dps.gif` and `reverse_dps_strip.png`: DPS denoising of the
  first `config.viz.strip_images` test images (see `dps_trajectory`)."""
  s = settings(config)
  restored = restored or restore(config, workdir)
  x, _, _ = _load(config, "test", s["strip_images"])
  y = protocol_noisy(x, float(s["denoise_sigma"]), _noise_seed(config))
  traj, ts = dps_trajectory(config, restored, jnp.asarray(y),
                            _key(config, 5), frames=s["reverse_frames"])
  process = config_lib.build_process(config)
  labels = _time_labels(process, ts)
  out = figures_dir(workdir)
  return (
      viz.reverse_gif(os.path.join(out, "reverse_dps.gif"), traj),
      viz.frame_strip(os.path.join(out, "reverse_dps_strip.png"), traj,
                      labels, num=s["strip_frames"], n_images=s["strip_images"],
                      title=f"DPS denoising, sigma = {s['denoise_sigma']}"))


# ----------------------------------------------------------- noise estimates


def hist_times(process, fractions: Sequence[float]) -> np.ndarray:
  """Times at fractions of the process: i / T with i = round(f T) >= 1 for a
  chain (the steps the network was trained on), else f."""
  f = np.asarray(fractions, np.float64)
  if np.any((f <= 0) | (f > 1)):
    raise ValueError(f"config.viz.hist_times must be fractions in (0, 1], "
                     f"got {list(fractions)}.")
  n = _num_steps(process)
  if n:
    return (np.clip(np.round(f * n), 1, n) / n).astype(np.float32)
  return f.astype(np.float32)


def noise_pairs(process, apply_fn: Callable, params, x0: Array,
                labels: Optional[Array], ts, key: Array
                ) -> List[Tuple[np.ndarray, np.ndarray]]:
  """(predicted, true) noise of a batch at each time of ts.

  Args:
    process: the forward process.
    apply_fn: (params, x, t, y) -> eps_hat.
    params: network parameters.
    x0: [B, H, W, C] real images in [-1, 1].
    labels: [B] or None.
    ts: [K] times.
    key: PRNG key; time k uses fold_in(key, k).

  Returns:
    K pairs of [B, H, W, C] arrays.
  """
  @jax.jit
  def one(params, t, key):
    tb = jnp.full((x0.shape[0],), t, jnp.float32)  # [B]
    x_t, eps = process.perturb(key, x0, tb)
    return apply_fn(params, x_t, tb, labels), eps

  return [tuple(np.asarray(a) for a in one(params, t,
                                           jax.random.fold_in(key, k)))
          for k, t in enumerate(np.asarray(ts, np.float32))]


@FIGURES.register("noise_histograms")
def noise_histograms(config: ml_collections.ConfigDict, workdir: str, *,
                     restored: Optional[Restored] = None) -> str:
  """`noise_histograms.png`: the network's noise estimate vs the true noise.

  Args:
    config: experiment config.
    workdir: the run directory with a checkpoint.
    restored: the trained network (default: restored from workdir).

  Returns:
    The path written.
  """
  s = settings(config)
  restored = restored or restore(config, workdir)
  process = config_lib.build_process(config)
  x, y, _ = _load(config, "train", s["hist_images"])
  fractions = [float(v) for v in str(s["hist_times"]).split(",") if v.strip()]
  ts = hist_times(process, fractions)
  labels = jnp.asarray(y) if config.training.conditional else None
  pairs = noise_pairs(process, train_lib.make_apply_fn(restored.model),
                      restored.params, jnp.asarray(x), labels, ts,
                      _key(config, 6))
  panels = {}
  for t, label, (pred, true) in zip(ts, _time_labels(process, ts), pairs):
    mse = float(np.mean((pred - true)**2))
    panels[f"t = {label}  (MSE {mse:.3f})"] = (pred, true)
  reference = None
  if config.diffusion.noise == "gamma":
    std = float(np.std(np.concatenate([p[1].ravel() for p in pairs])))
    normal = np.asarray(jax.random.normal(_key(config, 7), (200_000,)))
    reference = {f"Gaussian, std {std:.2f}": std * normal}
  return viz.noise_histograms(
      os.path.join(figures_dir(workdir), "noise_histograms.png"), panels,
      reference=reference,
      title=f"Predicted vs true noise, {x.shape[0]} training images, "
      f"step {restored.step}")


# ------------------------------------------------------------ loss, samples


@FIGURES.register("loss")
def loss_curves(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`loss.png` from `<workdir>/metrics.jsonl` (loss, and the frequency term
  when it is trained)."""
  del config
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {path}; train first with --mode train and "
                            "the same --workdir.")
  records = viz.read_metrics(path)
  keys = ["loss"] + [k for k in ("freq",) if any(k in r for r in records)]
  return viz.loss_curves(os.path.join(figures_dir(workdir), "loss.png"),
                         records, keys=keys,
                         smooth=0.6 if len(records) >= 20 else 0.0)


@FIGURES.register("samples")
def sample_grid(config: ml_collections.ConfigDict, workdir: str, *,
                restored: Optional[Restored] = None) -> str:
  """`samples.png`: `config.sampling.num_samples` samples (one row per class
  when conditional)."""
  restored = restored or restore(config, workdir)
  process = config_lib.build_process(config)
  sample_fn = train_lib.make_sample_fn(config, restored.model, process)
  num = config.sampling.num_samples
  labels, row_labels, ncol = None, None, None
  if config.training.conditional:
    k = config.data.num_classes
    per_class = max(1, num // k)
    labels = np.repeat(np.arange(k), per_class)
    num, ncol = len(labels), per_class
    row_labels = [str(c) for c in range(k)]
  images = train_lib.generate(config, sample_fn, restored.params,
                              _key(config, 8), num, labels)
  sc = config.sampling
  return viz.save_grid(os.path.join(figures_dir(workdir), "samples.png"),
                       images, ncol=ncol, row_labels=row_labels,
                       title=f"Samples: {sc.method}, {sc.steps} steps, "
                       f"training step {restored.step}")


# ------------------------------------------------------------------ denoising


def _noise_seed(config) -> int:
  """config.denoise.noise_seed (the benchmark's), else 0."""
  dc = config.get("denoise")
  return int(dc.get("noise_seed", 0)) if dc is not None else 0


def protocol_noisy(x: np.ndarray, sigma: float, noise_seed: int = 0
                   ) -> np.ndarray:
  """y = clip(x + sigma n, -1, 1); image i's noise is
  normal(fold_in(key(noise_seed), i)), as in the denoising benchmark, so the
  first images match `--mode denoise`.

  Args:
    x: [N, H, W, C] clean images in [-1, 1].
    sigma: noise standard deviation.
    noise_seed: seed of the noise.

  Returns:
    [N, H, W, C] float32.
  """
  key = jax.random.key(noise_seed)
  noise = jax.vmap(lambda i: jax.random.normal(
      jax.random.fold_in(key, i), x.shape[1:], jnp.float32))(
          jnp.arange(x.shape[0]))  # [N, H, W, C]
  return np.asarray(jnp.clip(jnp.asarray(x) + sigma * noise, -1.0, 1.0))


def matched_time(process, noise_std: float) -> float:
  """The t at which x_t / alpha(t) = x_0 + noise_std * eps.

  Solves sigma(t) / alpha(t) = noise_std by bisection on t in [0, 1]; for a
  T-step chain, the step i / T with the closest ratio.

  Args:
    process: a forward process with `alpha(t)` and `sigma(t)`.
    noise_std: noise standard deviation of the observation.

  Returns:
    t in (0, 1].
  """
  ratio = lambda t: np.asarray(process.sigma(t) / process.alpha(t),
                               np.float64)
  n = _num_steps(process)
  if n:
    grid = np.arange(1, n + 1, dtype=np.float32) / n
    return float(grid[np.argmin(np.abs(ratio(grid) - noise_std))])
  lo, hi = 0.0, 1.0
  if ratio(np.float32(hi)) < noise_std:
    raise ValueError(f"Noise std {noise_std} is beyond the process's end "
                     f"(sigma/alpha = {float(ratio(np.float32(hi))):.3g} at "
                     "t = 1); lower config.viz.denoise_sigma.")
  for _ in range(50):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if ratio(np.float32(mid)) < noise_std else (lo, mid)
  return 0.5 * (lo + hi)


def tweedie_denoise(process, eps_fn: Callable, y: Array, t: float) -> Array:
  """One-step Tweedie estimate of x_0 from y = x_0 + sigma n.

  y is read as x_t / alpha(t) at the matched time t: x_t = alpha(t) y and
  x0_hat = (x_t - sigma(t) eps_hat(x_t, t)) / alpha(t), clipped to [-1, 1].

  Args:
    process: the forward process.
    eps_fn: (x [B, ...], t [B]) -> eps_hat.
    y: [B, H, W, C] noisy images.
    t: the matched time (`matched_time`).

  Returns:
    [B, H, W, C] estimates in [-1, 1].
  """
  tb = jnp.full((y.shape[0],), t, jnp.float32)  # [B]
  x_t = sde_lib.bcast(process.alpha(tb), y) * y
  return jnp.clip(process.eps_to_x0(x_t, eps_fn(x_t, tb), tb), -1.0, 1.0)


@FIGURES.register("denoise_comparison")
def denoise_comparison(config: ml_collections.ConfigDict, workdir: str, *,
                       restored: Optional[Restored] = None) -> str:
  """`denoise_comparison.png`: noisy / one-step Tweedie / (more) / clean.

  Protocol: the first `config.viz.denoise_rows` test images of
  config.data.name, x in [-1, 1], y = clip(x + sigma n, -1, 1) with
  sigma = `config.viz.denoise_sigma` (0.3) and the benchmark's noise
  (`protocol_noisy`), PSNR with data range 2. With `jaxdiff.inverse`, the
  other methods of `config.denoise.methods` (DPS, ...) with their settings
  are added as columns; without it, the one-step estimate only.

  Args:
    config: experiment config.
    workdir: the run directory with a checkpoint.
    restored: the trained network (default: restored from workdir).

  Returns:
    The path written.
  """
  s = settings(config)
  restored = restored or restore(config, workdir)
  process = config_lib.build_process(config)
  sigma = float(s["denoise_sigma"])
  x, _, _ = _load(config, "test", s["denoise_rows"])
  y = protocol_noisy(x, sigma, _noise_seed(config))
  apply_fn = train_lib.make_apply_fn(restored.model)
  t = matched_time(process, sigma)
  tweedie = jax.jit(lambda p, y: tweedie_denoise(
      process, samplers.model_eps_fn(apply_fn, p), y, t))
  columns = {"noisy": y, "Tweedie (1 step)": tweedie(restored.params, y)}
  inverse = inverse_module()
  if inverse is None:
    print("jaxdiff: viz: jaxdiff.inverse is not installed; comparing the "
          "one-step estimate only.")
  else:
    dc, problem = _denoise_problem(inverse, config, sigma)
    method_settings = dc.method_settings(
        config_lib.sampler_options(config, dc.sampler))
    for i, name in enumerate(dc.method_names):
      # The protocol's tweedie (imputing clipped pixels under the clipped
      # noise model) replaces the plain one-step column.
      column = "Tweedie (1 step)" if name == "tweedie" else name
      method = inverse.make_method(name, process, problem, method_settings)
      run = jax.jit(lambda p, y, key, method=method: method(
          samplers.model_eps_fn(apply_fn, p), y, key))
      columns[column] = run(restored.params, jnp.asarray(y),
                            _key(config, 100 + i))
  scores = {name: np.asarray(metrics_lib.psnr(v, x, data_range=2.0))
            for name, v in columns.items()}
  ssims = {name: np.asarray(metrics_lib.ssim(v, x, max_val=2.0))
           for name, v in columns.items()}
  columns["clean"] = x
  summary = ", ".join(f"{k} {v.mean():.2f}" for k, v in scores.items())
  print(f"jaxdiff: viz: denoising, sigma = {sigma}, {x.shape[0]} "
        f"{config.data.name} test images, mean PSNR [dB]: {summary} "
        f"(Tweedie at t = {_time_labels(process, [t])[0]}).")
  # The title wraps to the width of the columns (~1.6 in, ~18 characters).
  title = textwrap.fill(
      f"Denoising, sigma = {sigma}; mean PSNR [dB] over these "
      f"{x.shape[0]} images: {summary}", width=18 * len(columns))
  return viz.comparison_figure(
      os.path.join(figures_dir(workdir), "denoise_comparison.png"),
      {k: np.asarray(v) for k, v in columns.items()}, scores=scores,
      ssim=ssims, max_rows=x.shape[0], title=title)


# ----------------------------------------------------------------------- mode


def selected(config: ml_collections.ConfigDict) -> List[str]:
  """Figure names from `config.viz.figures` (default: all of `FIGURES`)."""
  raw = str(settings(config)["figures"] or "").strip()
  everything = FIGURES.names()
  if raw in ("", "all"):
    return everything
  names = [n.strip() for n in raw.split(",") if n.strip()]
  unknown = [n for n in names if n not in FIGURES]
  if unknown:
    raise ValueError(f"Unknown figure(s) {', '.join(unknown)} in "
                     f"config.viz.figures; choose from "
                     f"{', '.join(everything)}.")
  return names


def make_figures(config: ml_collections.ConfigDict, workdir: str
                 ) -> List[str]:
  """Makes the selected figures; returns the paths written.

  Figures that need a checkpoint (or metrics.jsonl) that the workdir lacks
  are skipped with a printed note.
  """
  names = selected(config)
  ckpt = has_checkpoint(workdir)
  restored = None
  paths = []
  for name in names:
    fn = FIGURES.get(name)
    if name == "reverse_dps" and inverse_module() is None:
      print("jaxdiff: viz: skipping reverse_dps: jaxdiff.inverse is not "
            "installed.")
      continue
    if name in NEEDS_CHECKPOINT:
      if not ckpt:
        print(f"jaxdiff: viz: skipping {name}: no checkpoint in "
              f"{os.path.join(workdir, 'checkpoints')} (train first).")
        continue
      restored = restored or restore(config, workdir)
      out = fn(config, workdir, restored=restored)
    elif name == "loss" and not os.path.isfile(
        os.path.join(workdir, "metrics.jsonl")):
      print(f"jaxdiff: viz: skipping loss: no metrics.jsonl in {workdir}.")
      continue
    else:
      out = fn(config, workdir)
    for p in (out if isinstance(out, tuple) else (out,)):
      print(f"jaxdiff: viz: wrote {p}")
      paths.append(p)
  return paths


@MODES.register("viz")
def viz_mode(config: ml_collections.ConfigDict, workdir: str) -> None:
  """--mode viz: the figures of `make_figures` into `<workdir>/figures/`."""
  make_figures(config, workdir)


if __name__ == "__main__":
  # python -m jaxdiff.figures docs/schedules.png
  import sys  # pylint: disable=g-import-not-at-top
  print(plot_schedules(sys.argv[1] if len(sys.argv) > 1 else "schedules.png"))
