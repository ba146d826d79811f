"""Trained models of different parameterizations, compared: sample quality
against NFE for every sampler, and the denoiser's x0 error against noise level.

For each training run (`--run name=workdir`, restored with the config it was
trained with, its EMA parameters; `--run name=pretrained:NAME` scores a
shipped model with the config stored in it):

* quality against NFE: `--num` samples per (sampler, NFE) from one fixed key,
  each sampler on its default grid and WITHOUT clipping, scored by the
  feature-space Frechet distance of `--mode eval` (`jaxdiff.feature_distance`,
  its classifier trained on the data set and cached in `--cache`); with wall
  seconds per image (after compilation) and the real-vs-real floor;
* x0_hat's MSE against log(sigma/alpha) on the first `--mse_images` test
  images (one noise draw per image and level): where each parameterization
  loses accuracy.

    python benchmarks/parameterizations.py --run eps=runs/param_eps \\
        --run v=runs/param_v --out docs/parameterizations/results.json
    python benchmarks/parameterizations.py --run eps=runs/param_eps \\
        --samplers dpm_solver_pp --nfe 20 --num 64          # a quick look

It takes no `--config`: each run is scored with the config it was trained
with (its workdir's config.json), so there is no file to load or override.

Writes --out (JSON; re-running merges into it, a finished (run, sampler,
NFE) point is kept) and two plots beside it: Frechet distance against
seconds per image, and x0_hat's MSE against noise level. Runs scored into
separate files (in parallel) are combined with `--merge a.json,b.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff import feature_distance
from jaxdiff import files
from jaxdiff import pretrained as pretrained_lib
from jaxdiff import samplers as samplers_lib
from jaxdiff import sde as sde_lib
from jaxdiff import trained as trained_lib
from jaxdiff import workdir as workdir_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

SAMPLERS = "ddim,dpm_solver_pp,dpm_solver_pp_3m,heun,euler"
NFES = "10,20,50,100"
REFERENCE = "ddpm:1000"


def restore(workdir: str, clip: bool = False) -> trained_lib.Trained:
  """The run's model with the config it was trained with; sampling set to
  each sampler's own grid, x0_hat clipped to [-1, 1] only if `clip`."""
  if workdir.startswith(pretrained_lib.PREFIX):  # its stored config
    _, _, config = pretrained_lib.load(pretrained_lib.parse(workdir))
    config.init_from = workdir
  else:
    saved = workdir_lib.read_config(workdir)
    if saved is None:
      raise SystemExit(f"{workdir}/config.json is missing: not a training "
                       "run (or give pretrained:NAME).")
    config = ml_collections.ConfigDict(saved)
  trained = trained_lib.restore(config, workdir)
  s = trained.settings
  sampling = dataclasses.replace(s.sampling, grid="default",
                                 clip_denoised=clip)
  return dataclasses.replace(trained,
                             settings=dataclasses.replace(s,
                                                          sampling=sampling))


def quality_point(trained, clf, test, floor, method: str, nfe: int, num: int,
                  batch: int, seed: int) -> Dict[str, Any]:
  """FD of `num` samples of one sampler at about `nfe` evaluations."""
  steps = samplers_lib.steps_for_nfe(
      samplers_lib.make_sampler(method, trained.process, lambda x, t: None),
      trained.process, nfe)
  fn = trained.sample_fn(method=method, steps=steps, batch_size=batch)
  params = trained.spread_params(batch)
  key = jax.random.key(seed)
  t0 = time.time()
  # Compiled ahead of time: no discarded batch (a third of the work of a
  # 1000-step reference at 256 samples in batches of 128).
  compiled = fn.lower(params, key, None).compile()
  compile_s = time.time() - t0
  t0 = time.time()
  images = trained_lib.generate(compiled, params, key, num, batch)
  seconds = time.time() - t0
  q = feature_distance.sample_quality(clf, images, test.images, floor)
  stepper = samplers_lib.make_sampler(method, trained.process,
                                      lambda x, t: None, steps=steps)
  ts = samplers_lib.time_grid(trained.process, steps, kind=stepper.grid)
  return dict(method=method, steps=steps, grid=stepper.grid,
              nfe=samplers_lib.nfe(stepper, ts), fd=q["fd"],
              floor=q["floor"], confidence=q["confidence"],
              seconds_per_image=seconds / num, compile_seconds=compile_s,
              range=[float(images.min()), float(images.max())])


def x0_mse_curve(trained, test_images: np.ndarray, num: int,
                 levels: np.ndarray) -> List[float]:
  """Mean squared x0_hat error at each sigma/alpha in `levels`."""
  x0 = data_lib.to_model_range(test_images[:num])
  process = trained.process
  t_levels = np.asarray(sde_lib.time_of_ratio(process, levels))
  denoise = jax.jit(trained.denoise)
  out = []
  for i, t in enumerate(t_levels):
    tt = jnp.full((x0.shape[0],), t, jnp.float32)
    x_t, _ = process.perturb(jax.random.key(i), x0, tt)
    _, x0_hat = denoise(x_t, tt)
    out.append(float(jnp.mean((x0_hat - x0)**2)))
  return out


def plot(results: Dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(results["runs"]), figsize=(
      4.2 * len(results["runs"]), 3.6), squeeze=False, sharey=True)
  # One colour per sampler in every panel.
  labels = sorted({p["method"] + ("+clip" if p.get("clip") else "")
                   for run in results["runs"].values()
                   for p in run["quality"].values()})
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"] + [
      "black", "olive", "navy"]
  color = {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}
  for ax, (name, run) in zip(axes[0], sorted(results["runs"].items())):
    by_method: Dict[str, list] = {}
    other_seeds: Dict[str, list] = {}
    for key, p in run["quality"].items():
      label = p["method"] + ("+clip" if p.get("clip") else "")
      # Points of other sample seeds are shown unjoined: one line per sampler.
      (other_seeds if "#seed" in key else by_method).setdefault(
          label, []).append(p)
    for method, pts in sorted(by_method.items()):
      pts.sort(key=lambda p: p["nfe"])
      ax.plot([p["seconds_per_image"] for p in pts], [p["fd"] for p in pts],
              "o-" if len(pts) > 1 else "*", label=method, ms=4,
              color=color[method])
    for method, pts in sorted(other_seeds.items()):
      ax.plot([p["seconds_per_image"] for p in pts], [p["fd"] for p in pts],
              "x", ms=5, color=color[method],
              label=f"{method}, other sample seeds")
    if run["quality"]:
      floor = next(iter(run["quality"].values()))["floor"]
      ax.axhline(floor, color="grey", ls=":", label="real floor")
    ax.set(xscale="log", yscale="log", xlabel="seconds per image (CPU)",
           title=name)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("feature Frechet distance")
  fig.tight_layout()
  fig.savefig(path.replace(".json", "_fd.png"), dpi=110)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 3.6))
  for name, run in sorted(results["runs"].items()):
    if run.get("x0_mse"):
      ax.plot(results["levels"], run["x0_mse"], "o-", ms=3, label=name)
  ax.set(xscale="log", yscale="log", xlabel="sigma / alpha",
         ylabel="MSE of x0_hat", title="denoiser error against noise level")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path.replace(".json", "_x0_mse.png"), dpi=110)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--run", action="append", default=[],
                 help="name=workdir of a training run (repeatable)")
  p.add_argument("--merge", default="",
                 help="comma-separated result files: merge their runs into "
                 "--out and plot, computing nothing")
  p.add_argument("--samplers", default=SAMPLERS)
  p.add_argument("--nfe", default=NFES)
  p.add_argument("--reference", default=REFERENCE,
                 help="sampler:NFE also scored ('' for none)")
  p.add_argument("--clip", action="store_true",
                 help="clip x0_hat to [-1, 1] (the samplers that can); the "
                 "points are named <sampler>+clip@<NFE>")
  p.add_argument("--num", type=int, default=256)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--mse_images", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sample_seed", type=int, default=-1,
                 help="seed of the samples only (-1: --seed); the feature "
                 "classifier and the floor keep --seed's")
  p.add_argument("--cache", default="runs/cache")
  p.add_argument("--data_dir", default="")
  p.add_argument("--out", default="docs/parameterizations/results.json")
  a = p.parse_args(argv)
  if a.merge:
    merged = {"runs": {}}
    for path in a.merge.split(","):
      with open(path) as f:
        part = json.load(f)
      merged["levels"] = part["levels"]
      merged["runs"].update(part["runs"])
    files.write_json(a.out, merged)
    plot(merged, a.out)
    print(f"wrote {a.out}")
    return
  if not a.run:
    p.error("give --run name=workdir (or --merge)")
  results = {"runs": {}}
  if os.path.exists(a.out):
    with open(a.out) as f:
      results = json.load(f)
  levels = np.exp(np.linspace(np.log(0.01), np.log(50.0), 15))
  results["levels"] = levels.tolist()
  points = [(m, int(n)) for m in a.samplers.split(",") if m
            for n in a.nfe.split(",")]
  if a.reference:
    m, n = a.reference.split(":")
    points.append((m, int(n)))
  for spec in a.run:
    name, workdir = spec.split("=", 1)
    trained = restore(workdir, a.clip)
    s = trained.settings
    es = dataclasses.replace(s.eval, seed=a.seed)
    data_dir = a.data_dir or s.data.data_dir or None
    test = data_lib.load(s.data.name, "test", data_dir=data_dir)
    train = data_lib.load(s.data.name, "train", data_dir=data_dir)
    clf = feature_distance.load_or_train_classifier(
        os.path.join(a.cache, f"classifier_{s.data.name}"), es,
        dataset=s.data.name, train=train, test=test)
    floor = feature_distance.floor_images(train.images, a.num, a.seed)
    run = results["runs"].setdefault(name, {"quality": {}})
    run.update(workdir=workdir, step=trained.step,
               prediction=s.model.prediction, sde=s.diffusion.sde,
               weighting=s.training.weighting)
    run["x0_mse"] = x0_mse_curve(trained, test.images, a.mse_images, levels)
    files.write_json(a.out, results)
    for method, nfe in points:
      sample_seed = a.seed if a.sample_seed < 0 else a.sample_seed
      key = f"{method}{'+clip' if a.clip else ''}@{nfe}" + (
          f"#seed{sample_seed}" if sample_seed != a.seed else "")
      if key in run["quality"] and run["quality"][key].get("num") == a.num:
        continue
      q = quality_point(trained, clf, test, floor, method, nfe, a.num,
                        a.batch, sample_seed)
      run["quality"][key] = dict(q, num=a.num, clip=a.clip)
      print(f"{name:>8} {method:>17} NFE {q['nfe']:>4}: FD {q['fd']:.3f} "
            f"(floor {q['floor']:.3f}), {q['seconds_per_image'] * 1e3:.1f} "
            f"ms/image, range {q['range'][0]:.2f}..{q['range'][1]:.2f}",
            flush=True)
      files.write_json(a.out, results)
  plot(results, a.out)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
