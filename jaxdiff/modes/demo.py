"""`--mode demo`: what jaxdiff does, in about two minutes on two CPU cores.

    python launch.py --config configs/organamnist.py:quickstart \\
        --workdir runs/quickstart --mode demo

With the shipped OrganAMNIST model (`config.init_from`, `jaxdiff.pretrained`)
and the OrganAMNIST subset inside the package, it writes to WORKDIR:

1. `denoise.png`: the first `config.denoise.num_images` test slices with
   measurement noise sigma = `config.denoise.sigma` (the denoising protocol
   of `--mode denoise`), the one-step Tweedie estimate, one posterior sample,
   the mean of `config.denoise.num_posterior` posterior samples (`matched`:
   exact posterior samples for this problem when no pixel is clipped) and
   their per-pixel standard deviation (where the model is unsure), each
   image with its PSNR / SSIM; the numbers in `denoise.json`.
2. `samples.png`: new CT-like slices from the sampler of `config.sampling`.
3. `train/`: a short fine-tuning run of the same model on the subset,
   stopped half-way and resumed (as any interrupted run resumes), with
   its loss curve and checkpoints.

TensorBoard (`tensorboard --logdir WORKDIR`) shows the training curves
(`train/tensorboard`) and, under `tensorboard/demo`, both pictures and the
PSNR of each column.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import files
from jaxdiff import inverse
from jaxdiff import settings as settings_lib
from jaxdiff import tensorboard
from jaxdiff import train as train_lib
from jaxdiff import trained as trained_lib
from jaxdiff import viz
from jaxdiff.inverse import benchmark
from jaxdiff.inverse import protocol

STD_RANGE = 0.5  # posterior std shown black (0) to white (0.5)


def _posterior(trained, problem, settings, y, key, k: int):
  """(one-step Tweedie, K matched posterior samples [K, N, ...])."""
  tweedie = inverse.make_method("tweedie", trained.process, problem, settings)
  matched = inverse.make_method("matched", trained.process, problem, settings)

  @jax.jit
  def run(params, y, key):
    denoise_fn = trained.denoise_fn(params=params)
    k1, k2 = jax.random.split(key)
    draws = jax.lax.map(lambda kk: matched(denoise_fn, y, kk),
                        jax.random.split(k2, k))
    return tweedie(denoise_fn, y, k1), draws

  return run(trained.params, jnp.asarray(y), key)


def denoise_strip(s: settings_lib.Settings, trained, workdir: str) -> dict:
  """Writes denoise.png / denoise.json; returns the mean PSNR per column."""
  ds = s.denoise
  x = data_lib.to_model_range(
      data_lib.config_split(s.data, ds.data_split, ds.num_images).images)
  problem = inverse.make_problem(ds, s.data.image_shape)
  settings = inverse.method_settings(ds, config_lib.sampler_options(
      s.sampling, ds.sampler))
  y = benchmark.measure(problem, x, ds.noise_seed, len(x))
  noisy = np.asarray(problem.operator.backproject(jnp.asarray(y)))
  tweedie, draws = _posterior(trained, problem, settings, y,
                              jax.random.key(s.seed), ds.num_posterior)
  draws = np.asarray(draws)
  columns = {"noisy": noisy, "Tweedie (1 step)": np.asarray(tweedie),
             "one sample": draws[0], f"mean of {len(draws)}": draws.mean(0)}
  metrics = {k: {m: np.asarray(v) for m, v in protocol.image_metrics(
      jnp.asarray(c), jnp.asarray(x)).items()} for k, c in columns.items()}
  std = draws.std(0)
  columns[f"std (0..{STD_RANGE})"] = np.clip(
      std / STD_RANGE * 2 - 1, -1, 1)
  columns["clean"] = x
  out = os.path.join(workdir, "denoise.png")
  viz.comparison_figure(
      out, columns, scores={k: m["psnr"] for k, m in metrics.items()},
      ssim={k: m["ssim"] for k, m in metrics.items()}, max_rows=len(x),
      title=f"{len(x)} {s.data.name} test slices, sigma={ds.sigma}")
  summary = {k: dict(psnr=float(m["psnr"].mean()), ssim=float(
      m["ssim"].mean())) for k, m in metrics.items()}
  files.write_json(os.path.join(workdir, "denoise.json"), dict(
      model=s.init_from, num_images=len(x), sigma=ds.sigma,
      num_posterior=len(draws), mean_posterior_std=float(std.mean()),
      results=summary), indent=1)
  return summary


def _train_twice(config, workdir: str) -> None:
  """Fine-tunes for half the steps, then resumes to the end."""
  total = int(config.training.num_train_steps)
  for steps in (total // 2, total):
    c = config.copy_and_resolve_references()
    c.training.num_train_steps = steps
    train_lib.train_and_evaluate(c, os.path.join(workdir, "train"))


def run(config, workdir: str) -> dict:
  s = settings_lib.from_config(config)
  if not s.init_from:
    raise ValueError("--mode demo shows a shipped model: give "
                     "--config.init_from=pretrained:NAME (e.g. "
                     "configs/organamnist.py:quickstart sets it).")
  trained_lib.check_sampler(s.sampling.method, s.sampling.grid)
  trained = trained_lib.restore(s, workdir)
  start = time.time()
  print(f"jaxdiff: demo: 1/3 denoising {s.denoise.num_images} test slices "
        f"with {s.init_from} ...", flush=True)
  summary = denoise_strip(s, trained, workdir)
  line = ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in summary.items())
  print(f"jaxdiff: PSNR (mean over the slices): {line} -> "
        f"{os.path.join(workdir, 'denoise.png')}", flush=True)
  print(f"jaxdiff: demo: 2/3 sampling {s.sampling.num_samples} slices "
        f"({s.sampling.method}, {s.sampling.steps} steps) ...", flush=True)
  images = trained.generate(jax.random.key(s.seed + 1), s.sampling.num_samples)
  samples = viz.save_grid(os.path.join(workdir, "samples.png"), images)
  print(f"jaxdiff: -> {samples}", flush=True)
  with tensorboard.Writer.for_mode(workdir, "demo") as board:
    board.image_file(trained.step, "denoise", os.path.join(workdir,
                                                           "denoise.png"))
    board.image(trained.step, "samples", viz.make_grid(images))
    board.scalars(trained.step, {f"psnr/{k}": v["psnr"]
                                 for k, v in summary.items()})
  print(f"jaxdiff: demo: 3/3 fine-tuning for {s.training.num_train_steps} "
        "steps, stopped half-way and resumed ...", flush=True)
  _train_twice(config, workdir)
  print(f"jaxdiff: demo done in {time.time() - start:.0f} s; pictures in "
        f"{workdir}: denoise.png, samples.png, train/loss.png.", flush=True)
  return summary
