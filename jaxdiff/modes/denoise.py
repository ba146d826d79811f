"""`--mode denoise`: the denoising / inverse-problem benchmark on the newest
checkpoint (config.denoise, `jaxdiff.settings.DenoiseSettings`).

Measures the first `num_images` images of `data_split` (`jaxdiff.inverse`'s
protocol), runs every method and writes `metrics.json`, `metrics.csv`,
`comparison.png` and `reconstructions.npz` to WORKDIR/denoise (or `out_dir`).
metrics.json is rewritten after each method: an interrupted run keeps the
finished ones. At the end, each method's mean PSNR and SSIM (scalars
`psnr_mean/<method>`, `ssim_mean/<method>` at the checkpoint step) and
comparison.png go to TensorBoard, `WORKDIR/tensorboard/denoise`.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Any, Dict

import jax
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import files
from jaxdiff import inverse
from jaxdiff import settings as settings_lib
from jaxdiff import tensorboard
from jaxdiff import trained as trained_lib
from jaxdiff import viz
from jaxdiff.inverse import benchmark

Results = Dict[str, Dict[str, Any]]


def write_results(out_dir: str, results: Results, header: Dict[str, Any]):
  """Writes metrics.json and metrics.csv (long format: one row per method
  and image, plus a 'mean' row per method with its wall time)."""
  json_path = files.write_json(os.path.join(out_dir, "metrics.json"),
                              dict(header, results=results), indent=1)
  with files.atomic_write(os.path.join(out_dir, "metrics.csv"), "w",
                          newline="") as f:
    w = csv.writer(f)
    w.writerow(["method", "image", "psnr", "ssim", "wall_time_s",
                "compile_time_s"])
    for name, r in results.items():
      w.writerow([name, "mean", f"{r['psnr_mean']:.4f}",
                  f"{r['ssim_mean']:.5f}", f"{r.get('wall_time_s', 0.0):.2f}",
                  f"{r.get('compile_time_s', 0.0):.2f}"])
      for i, (p, s) in enumerate(zip(r["psnr"], r["ssim"])):
        w.writerow([name, i, f"{p:.4f}", f"{s:.5f}", "", ""])
  return json_path


def format_table(results: Results) -> str:
  """A plain-text table: method, images, PSNR, SSIM, wall time."""
  lines = [f"{'method':<16}{'images':>7}{'PSNR [dB]':>11}{'SSIM':>8}"
           f"{'time [s]':>10}{'compile [s]':>13}"]
  for name, r in results.items():
    wall, comp = r.get("wall_time_s"), r.get("compile_time_s")
    lines.append(
        f"{name:<16}{r['num_images']:>7}{r['psnr_mean']:>11.2f}"
        f"{r['ssim_mean']:>8.3f}"
        f"{(f'{wall:.1f}' if wall is not None else '-'):>10}"
        f"{(f'{comp:.1f}' if comp is not None else '-'):>13}")
  return "\n".join(lines)


def _progress_bar(total: int, desc: str):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)
  except ImportError:
    return None


def _header(s: settings_lib.Settings, step: int, num_images: int,
            settings: inverse.MethodSettings, process) -> Dict[str, Any]:
  """What metrics.json says besides the results."""
  ds = s.denoise
  try:
    t_star = inverse.matched_time(process, ds.sigma)
  except ValueError:
    t_star = None
  return {"checkpoint_step": step, "data": s.data.name,
          "split": ds.data_split, "num_images": num_images,
          "protocol": dataclasses.asdict(ds),
          "settings": {**dataclasses.asdict(settings),
                       "sampler_options": dict(settings.sampler_options)},
          "matched_time": t_star, "psnr_data_range": inverse.DATA_RANGE,
          "ssim_max_val": inverse.DATA_RANGE}


def _load_images(s: settings_lib.Settings) -> np.ndarray:
  """The first num_images images of the split, [N, H, W, C] in [-1, 1]."""
  ds = s.denoise
  return data_lib.to_model_range(
      data_lib.config_split(s.data, ds.data_split, ds.num_images).images)


def _write_figures(out_dir: str, ds, x, outputs, results: Results):
  nrow = min(ds.figure_rows, min(len(v) for v in outputs.values()))
  columns = {k: v[:nrow] for k, v in outputs.items()}
  columns["clean"] = x[:nrow]
  viz.comparison_figure(
      os.path.join(out_dir, "comparison.png"), columns,
      scores={k: np.asarray(results[k]["psnr"][:nrow]) for k in outputs},
      ssim={k: np.asarray(results[k]["ssim"][:nrow]) for k in outputs},
      max_rows=nrow,
      title=f"{ds.operator}, sigma={ds.sigma} ({ds.noise_model} likelihood)")
  with files.atomic_write(os.path.join(out_dir, "reconstructions.npz")) as f:
    np.savez_compressed(f, clean=viz.to_uint8(x),
                        **{k: viz.to_uint8(v) for k, v in outputs.items()})


def _write_board(workdir: str, step: int, results: Results, figure: str):
  """The means of each method and the comparison figure, to TensorBoard."""
  with tensorboard.Writer.for_mode(workdir, "denoise") as board:
    for key in ("psnr_mean", "ssim_mean"):
      board.scalars(step, {name: r[key] for name, r in results.items()},
                    prefix=f"{key}/")
    board.image_file(step, "comparison", figure)


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the benchmark; returns the contents of metrics.json."""
  s = settings_lib.from_config(config)
  ds = inverse.check_settings(s.denoise)
  process = config_lib.build_process(s)
  settings = inverse.method_settings(
      ds, config_lib.sampler_options(s.sampling, ds.sampler))
  problem = inverse.make_problem(ds, s.data.image_shape)
  methods = inverse.make_methods(ds, process, problem, settings)
  trained = trained_lib.restore(s, workdir, use_ema=ds.use_ema)
  # Each batch is split over the local devices (config.cpu_devices); a batch
  # size they do not divide is rounded up (the extra rows are padding).
  n_dev = jax.local_device_count() if jax.process_count() == 1 else 1
  bs = benchmark.round_up(ds.batch_size, n_dev)
  mesh = trained_lib.sampling_mesh(bs)
  params = trained.spread_params(bs)
  n_split = mesh.size if mesh is not None else 1
  x = _load_images(s)
  n = len(x)
  counts = {m: min(c, n) for m, c in ds.images_per_method().items()}
  out_dir = ds.out_dir or os.path.join(workdir, "denoise")
  print(f"jaxdiff: denoise: {n} {s.data.name} {ds.data_split} images, "
        f"operator {ds.operator}, sigma {ds.sigma}, noise model "
        f"{ds.noise_model}, checkpoint step {trained.step}, batches split "
        f"over {n_split} device(s).", flush=True)

  y = benchmark.measure(problem, x, ds.noise_seed, bs)  # [N, ...]
  noisy = benchmark.map_batches(jax.jit(problem.operator.backproject), [y], bs)
  results = {"noisy": benchmark.summary(benchmark.evaluate(noisy, x, bs))}
  outputs = {"noisy": noisy}
  header = _header(s, trained.step, n, settings, process)
  json_path = write_results(out_dir, results, header)
  for name, method in methods.items():
    m = counts[name]
    bar = _progress_bar(m, name)
    # Batch i uses the key fold_in(key(config.seed), i).
    recon, wall, compile_s = benchmark.reconstruct(
        method, lambda p: trained.denoise_fn(params=p), params, y[:m],
        jax.random.key(s.seed), benchmark.round_up(min(bs, m), n_split),
        mesh=mesh, progress=bar.update if bar is not None else None)
    if bar is not None:
      bar.close()
    outputs[name] = recon
    results[name] = dict(
        benchmark.summary(benchmark.evaluate(recon, x, bs)),
        wall_time_s=wall, compile_time_s=compile_s,
        noisy_psnr_mean_same_images=float(
            np.mean(results["noisy"]["psnr"][:m])))
    print(f"jaxdiff: {name}: {results[name]['psnr_mean']:.2f} dB, SSIM "
          f"{results[name]['ssim_mean']:.3f} on {m} images in {wall:.1f} s "
          f"(+{compile_s:.1f} s compile).", flush=True)
    json_path = write_results(out_dir, results, header)
  _write_figures(out_dir, ds, x, outputs, results)
  _write_board(workdir, trained.step, results,
               os.path.join(out_dir, "comparison.png"))
  print(format_table(results))
  print(f"jaxdiff: wrote {json_path}, metrics.csv and comparison.png in "
        f"{out_dir}.", flush=True)
  with open(json_path) as f:
    return json.load(f)
