"""`--mode viz`: the pictures that explain diffusion, from one command.

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
  test images.
* `noise_histograms.png`: predicted vs true noise on real images at a few t
  (with a Gaussian of the same variance for gamma noise).
* `loss.png`: loss curves from `<workdir>/metrics.jsonl`.
* `samples.png`: a sample grid (one row per class when conditional).
* `denoise_comparison.png`: test images, y = clip(x + sigma n, -1, 1), the
  one-step Tweedie estimate at the matched noise level, the methods of
  `config.denoise.methods` and the clean images, with PSNR and SSIM.

Which ones: `config.viz.figures`, a comma list of the names in `FIGURES`
(default: all). A figure whose checkpoint, metrics or Gaussian process the
run lacks is skipped with a printed note. The arrays come from
`jaxdiff.figures`, the drawing from `jaxdiff.viz`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import textwrap
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import figures
from jaxdiff import inverse
from jaxdiff import sde as sde_lib
from jaxdiff import settings as settings_lib
from jaxdiff import trained as trained_lib
from jaxdiff import viz
from jaxdiff.registry import Registry

# name -> fn(job) -> the paths it wrote.
FIGURES: Registry[Callable[["Job"], Tuple[str, ...]]] = Registry("figure")

NEEDS_CHECKPOINT = frozenset({"reverse", "reverse_dps", "noise_histograms",
                              "samples", "denoise_comparison"})
NEEDS_GAUSSIAN = frozenset({"reverse_dps", "denoise_comparison"})


class Job:
  """One run's figures: its settings, where they go, keys, the network."""

  def __init__(self, config, workdir: str,
               trained: Optional[trained_lib.Trained] = None):
    self.settings = config_lib.typed(config)
    vs = self.settings.viz
    self.viz = vs if vs.seed >= 0 else dataclasses.replace(
        vs, seed=self.settings.seed)  # seed -1: the config's
    self.workdir = workdir
    self._trained = trained

  @functools.cached_property
  def process(self):
    return config_lib.build_process(self.settings)

  @property
  def trained(self) -> trained_lib.Trained:
    """The newest checkpoint (restored on first use)."""
    if self._trained is None:
      self._trained = trained_lib.restore(
          self.settings, self.workdir,
          use_ema=self.settings.sampling.use_ema)
    return self._trained

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, "figures", name)

  def key(self, salt: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.viz.seed), salt)

  def images(self, split: str, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """(images float32 [N, H, W, C] in [-1, 1], labels int32 [N])."""
    dc = self.settings.data
    ds = data_lib.load(dc.name, split, data_dir=dc.data_dir or None,
                       limit=limit, **dc.load_kwargs())
    if len(ds.images) == 0:
      raise ValueError(f"Data set {dc.name!r} has no {split} images; set "
                       "config.data.name to one that has.")
    x = data_lib.to_model_range(ds.images)  # [N, H, W, C]
    return x, ds.labels.astype(np.int32)

  def noisy_test_images(self, num: int):
    """(clean x, measured y, the problem): the first `num` test images
    under the denoise protocol's noise at sigma = config.viz.denoise_sigma."""
    dc = self.settings.denoise
    problem = inverse.make_problem(dc, self.settings.data.image_shape,
                                   operator="denoise",
                                   sigma=self.viz.denoise_sigma)
    x, _ = self.images("test", num)
    y = problem.measure(jax.random.key(dc.noise_seed), jnp.asarray(x))
    return x, y, problem

  def skip_reason(self, name: str) -> Optional[str]:
    """Why figure `name` cannot be made for this run, or None."""
    if name in NEEDS_CHECKPOINT and not trained_lib.has_checkpoint(
        self.workdir):
      return (f"no checkpoint in {os.path.join(self.workdir, 'checkpoints')}"
              " (train first).")
    if name == "loss" and not os.path.isfile(
        os.path.join(self.workdir, "metrics.jsonl")):
      return f"no metrics.jsonl in {self.workdir}."
    if name in NEEDS_GAUSSIAN and not sde_lib.is_gaussian(self.process):
      return (f"it assumes Gaussian noise and the process "
              f"{type(self.process).__name__} is not Gaussian.")
    return None


def _trajectory_files(job: Job, stem: str, trajectory, title: str):
  """`<stem>.gif` and `<stem>_strip.png` of a (trajectory, ts) pair."""
  traj, ts = trajectory
  vs = job.viz
  return (viz.reverse_gif(job.path(f"{stem}.gif"), traj),
          viz.frame_strip(job.path(f"{stem}_strip.png"), traj,
                          figures.time_labels(job.process, ts),
                          num=vs.strip_frames, n_images=vs.strip_images,
                          title=title))


def _method_settings(job: Job) -> inverse.MethodSettings:
  """The inverse methods' settings from config.denoise (checked) and the
  base sampler's options from config.sampling, as `--mode denoise` runs them."""
  dc = inverse.check_settings(job.settings.denoise)
  return inverse.method_settings(
      dc, config_lib.sampler_options(job.settings.sampling, dc.sampler))


@FIGURES.register("forward_strip")
def forward_strip(job: Job) -> Tuple[str, ...]:
  """The first training image along the forward process."""
  x, _ = job.images("train", 1)
  ts = figures.forward_times(job.process, job.viz.forward_frames)
  frames = figures.forward_frames(job.process, x[0], ts, job.key(1))
  name = figures.process_name(job.settings.diffusion)
  return (viz.forward_strip(
      job.path("forward_strip.png"), frames,
      figures.time_labels(job.process, ts), dpi=300,
      title=f"Forward process q(x_t | x_0): {name}"),)


@FIGURES.register("schedules")
def schedules(job: Job) -> Tuple[str, ...]:
  """T from config.diffusion.num_steps, else config.viz.schedule_steps."""
  steps = job.settings.diffusion.num_steps or job.viz.schedule_steps
  return (figures.plot_schedules(job.path("schedules.png"),
                                 steps=int(steps)),)


@FIGURES.register("reverse")
def reverse(job: Job) -> Tuple[str, ...]:
  """The sampler's trajectory, `config.viz.reverse_samples` images."""
  sc = job.settings.sampling
  trajectory = figures.reverse_trajectory(
      job.trained, job.key(3), num=job.viz.reverse_samples,
      frames=job.viz.reverse_frames)
  return _trajectory_files(job, "reverse", trajectory,
                           f"Reverse process: {sc.method}, {sc.steps} steps")


@FIGURES.register("reverse_dps")
def reverse_dps(job: Job) -> Tuple[str, ...]:
  """DPS denoising of the first `config.viz.strip_images` test images."""
  _, y, problem = job.noisy_test_images(job.viz.strip_images)
  trajectory = figures.dps_trajectory(
      job.trained, problem, _method_settings(job), y, job.key(5),
      frames=job.viz.reverse_frames)
  return _trajectory_files(job, "reverse_dps", trajectory,
                           f"DPS denoising, sigma = {job.viz.denoise_sigma}")


@FIGURES.register("noise_histograms")
def noise_histograms(job: Job) -> Tuple[str, ...]:
  """The network's noise estimate vs the true noise on training images."""
  x, labels = job.images("train", job.viz.hist_images)
  fractions = [float(v) for v in job.viz.hist_times.split(",") if v.strip()]
  ts = figures.hist_times(job.process, fractions)
  conditional = job.settings.training.conditional
  pairs = figures.noise_pairs(job.trained, jnp.asarray(x),
                              jnp.asarray(labels) if conditional else None,
                              ts, job.key(6))
  reference = None
  if job.settings.diffusion.noise == "gamma":
    reference = figures.gaussian_reference(pairs, job.key(7))
  return (viz.noise_histograms(
      job.path("noise_histograms.png"),
      figures.noise_panels(job.process, ts, pairs), reference=reference,
      title=f"Predicted vs true noise, {x.shape[0]} training images, "
      f"step {job.trained.step}"),)


@FIGURES.register("loss")
def loss(job: Job) -> Tuple[str, ...]:
  """Loss (and the frequency term when it is trained) from metrics.jsonl."""
  records = viz.read_metrics(os.path.join(job.workdir, "metrics.jsonl"))
  keys = ["loss"] + [k for k in ("freq",) if any(k in r for r in records)]
  return (viz.loss_curves(job.path("loss.png"), records, keys=keys,
                          smooth=0.6 if len(records) >= 20 else 0.0),)


@FIGURES.register("samples")
def samples(job: Job) -> Tuple[str, ...]:
  """`config.sampling.num_samples` samples (one row per class when
  conditional)."""
  s, sc = job.settings, job.settings.sampling
  num = sc.num_samples
  labels, row_labels, ncol = None, None, None
  if s.training.conditional:
    k = s.data.num_classes
    ncol = max(1, num // k)
    labels = np.repeat(np.arange(k), ncol)
    num, row_labels = len(labels), [str(c) for c in range(k)]
  images = job.trained.generate(job.key(8), num, labels)
  return (viz.save_grid(job.path("samples.png"), images, ncol=ncol,
                        row_labels=row_labels,
                        title=f"Samples: {sc.method}, {sc.steps} steps, "
                        f"training step {job.trained.step}"),)


@FIGURES.register("denoise_comparison")
def denoising(job: Job) -> Tuple[str, ...]:
  """Noisy / one-step Tweedie / `config.denoise.methods` / clean, on the
  first `config.viz.denoise_rows` test images, with PSNR and SSIM."""
  x, y, problem = job.noisy_test_images(job.viz.denoise_rows)
  methods = job.settings.denoise.method_names
  columns, t = figures.denoising_columns(
      job.trained, problem, y, methods, _method_settings(job),
      [job.key(100 + i) for i in range(len(methods))])
  scores = figures.column_metrics(columns, x)
  columns["clean"] = x
  summary = ", ".join(f"{k} {v['psnr'].mean():.2f}" for k, v in scores.items())
  sigma, n = problem.sigma, x.shape[0]
  print(f"jaxdiff: viz: denoising, sigma = {sigma}, {n} "
        f"{job.settings.data.name} test images, mean PSNR [dB]: {summary} "
        f"(Tweedie at t = {figures.time_labels(job.process, [t])[0]}).")
  # The title wraps to the width of the columns (~1.6 in, ~18 characters).
  title = textwrap.fill(f"Denoising, sigma = {sigma}; mean PSNR [dB] over "
                        f"these {n} images: {summary}",
                        width=18 * len(columns))
  return (viz.comparison_figure(
      job.path("denoise_comparison.png"), columns,
      scores={k: v["psnr"] for k, v in scores.items()},
      ssim={k: v["ssim"] for k, v in scores.items()}, max_rows=n,
      title=title),)


def selected(vs: settings_lib.VizSettings) -> List[str]:
  """Figure names from `config.viz.figures` (default: all of `FIGURES`)."""
  raw = vs.figures.strip()
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


def make_figures(config, workdir: str, *,
                 trained: Optional[trained_lib.Trained] = None) -> List[str]:
  """Makes the selected figures, printing each path; returns the paths.

  Args:
    config: the run's config (ConfigDict or `Settings`).
    workdir: the run directory; figures go to `<workdir>/figures/`.
    trained: the restored network (default: restored when first needed).
  """
  job = Job(config, workdir, trained)
  paths = []
  for name in selected(job.viz):
    reason = job.skip_reason(name)
    if reason:
      print(f"jaxdiff: viz: skipping {name}: {reason}")
      continue
    for path in FIGURES.get(name)(job):
      print(f"jaxdiff: viz: wrote {path}")
      paths.append(path)
  return paths


def run(config, workdir: str) -> None:
  make_figures(config, workdir)
