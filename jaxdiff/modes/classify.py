"""`--mode classify`: the diffusion classifier (`jaxdiff.classifier`) on the
first `config.classify.num_images` images of a split, with a
class-conditional model from the newest checkpoint.

Writes `<workdir>/classify/`: `classify.json` (accuracy, confusion matrix,
time per image against the number of pairs, and for each noise level of
`denoise_sigmas` the Tweedie denoising PSNR/SSIM with and without the label
against the noisy input and a Gaussian filter), `confusion.png` and
`denoise_<sigma>.png`; the accuracy and
time per image also go to TensorBoard (`<workdir>/tensorboard/classify`, at
the checkpoint step).
"""
import dataclasses
import os
from typing import Any, Dict

import jax
import numpy as np

from jaxdiff import classifier
from jaxdiff import data as data_lib
from jaxdiff import files
from jaxdiff import settings as settings_lib
from jaxdiff import tensorboard
from jaxdiff import trained as trained_lib
from jaxdiff import viz


def _load_images(s: settings_lib.Settings) -> data_lib.Dataset:
  """The images to classify; ValueError when they do not fit the model."""
  dc, cs = s.data, s.classify
  ds = data_lib.config_split(dc, cs.split, cs.num_images)
  if ds.num_classes != dc.num_classes:
    raise ValueError(
        f"Data set {dc.name!r} has {ds.num_classes} classes but "
        f"config.data.num_classes={dc.num_classes}; set "
        f"--config.data.num_classes={ds.num_classes} (and train with it).")
  return ds


def _progress_bar(batches, num_images: int, batch_size: int):
  """The batches with a tqdm progress bar (as they are without tqdm)."""
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return batches
  return tqdm(batches, desc="classify", unit="batch", dynamic_ncols=True,
              mininterval=2.0,
              postfix=f"{num_images} images of {batch_size}/batch")


_DENOISE_ROWS = ("noisy", "label", "null", "filter")


def _denoise(trained, ds: data_lib.Dataset, cs, sigma: float, out_dir: str
             ) -> Dict[str, Any]:
  """Tweedie denoising with and without the label, against the noisy input
  and a Gaussian filter: numbers and `denoise_<sigma>.png`."""
  n = len(ds.labels)
  print(f"jaxdiff: one-step denoising of {n} images at sigma={sigma:g}, "
        "with and without the label", flush=True)
  den = classifier.label_vs_null_denoising(
      trained.apply_fn, trained.params, trained.process, ds.images, ds.labels,
      sigma_noise=sigma, num_classes=trained.num_classes,
      key=jax.random.fold_in(jax.random.key(cs.seed), 1),
      batch_size=cs.batch_size, param=trained.parameterization)
  names = {"noisy": f"noisy ({sigma:g})", "label": "with label",
           "null": "null label",
           "filter": f"filter {den['filter_width']:g} px"}
  viz.comparison_figure(
      os.path.join(out_dir, f"denoise_{sigma:g}.png"),
      {"clean": den["clean"], **{names[k]: den[k] for k in _DENOISE_ROWS}},
      scores={names[k]: den[f"psnr_{k}"] for k in _DENOISE_ROWS},
      title=(f"One-step Tweedie denoising at sigma {sigma:g}, with and "
             "without the label; Gaussian filter"))
  return {"sigma": sigma, "t": den["t"], "num_images": n,
          "filter_width": den["filter_width"],
          **{f"{m}_{k}": float(np.mean(den[f"{m}_{k}"]))
             for m in ("psnr", "ssim") for k in _DENOISE_ROWS
             if f"{m}_{k}" in den}}


def _summary_line(report: Dict[str, Any], s: settings_lib.Settings,
                  out_dir: str) -> str:
  """The one line the mode prints at the end."""
  line = (f"jaxdiff: diffusion classifier accuracy "
          f"{100 * report['accuracy']:.2f}% on {report['num_images']} "
          f"{s.data.name} {s.classify.split} images (step {report['step']}, "
          f"{s.classify.total_pairs} pairs, "
          f"{report['seconds_per_image']:.3f} s/image)")
  for d in report.get("denoise", []):
    line += (f"; sigma {d['sigma']:g}: Tweedie PSNR {d['psnr_label']:.2f} dB "
             f"with label, {d['psnr_null']:.2f} dB without (noisy "
             f"{d['psnr_noisy']:.2f}, Gaussian filter {d['psnr_filter']:.2f})")
  return line + f" -> {out_dir}"


def run(config, workdir: str) -> Dict[str, Any]:
  """Classifies, times and denoises; returns what classify.json holds."""
  s = settings_lib.from_config(config)
  if not s.training.conditional:
    raise ValueError(
        "--mode classify needs a class-conditional model: train with "
        "--config.training.conditional=True (e.g. configs/mnist_cond.py).")
  k = s.data.num_classes
  cs = classifier.check_settings(s.classify, k)
  ds = _load_images(s)
  trained = trained_lib.restore(s, workdir, use_ema=cs.use_ema)
  out_dir = os.path.join(workdir, "classify")
  os.makedirs(out_dir, exist_ok=True)

  pairs = classifier.settings_pairs(trained.process, cs, trained.image_shape)
  classify_fn = classifier.make_classify_fn(
      trained.apply_fn, trained.process, k, num_pairs=cs.num_pairs,
      prune_top_k=cs.prune_top_k, num_pairs_pruned=cs.num_pairs_pruned,
      param=trained.parameterization)
  res = classifier.run_classifier(
      classify_fn, trained.params, ds.images, pairs.slice(0, cs.total_pairs),
      cs.batch_size, progress=_progress_bar)
  cm = classifier.confusion_matrix(ds.labels, res["pred"], k)
  n = len(ds.labels)
  report: Dict[str, Any] = {
      "step": trained.step, "data": s.data.name, "split": cs.split,
      "num_images": n, **classifier.accuracy_summary(cm),
      "class_names": list(ds.class_names),
      "confusion_matrix": cm.tolist(),
      "options": dataclasses.asdict(cs),
      "network_evaluations_per_image": classifier.network_evaluations(k, cs),
      "seconds_per_image": res["seconds"] / n,
      "compile_seconds": res["compile_seconds"],
      "device": jax.devices()[0].platform,
  }
  viz.confusion_matrix_figure(
      os.path.join(out_dir, "confusion.png"), cm, list(ds.class_names),
      title=(f"Diffusion classifier, {s.data.name} {cs.split} ({n} images, "
             f"{cs.total_pairs} pairs)"))

  m = min(cs.timing_images, n)
  if cs.timing_list:
    print(f"jaxdiff: timing the classifier on {m} images at "
          f"{cs.timing_list} pairs (no pruning)", flush=True)
  report["timing"] = classifier.timing_curve(
      trained.apply_fn, trained.params, trained.process, ds.images[:m],
      ds.labels[:m], pairs, k, counts=cs.timing_list,
      batch_size=cs.batch_size, param=trained.parameterization)
  report["denoise"] = [_denoise(trained, ds, cs, sigma, out_dir)
                       for sigma in cs.denoise_sigma_list]

  files.write_json(os.path.join(out_dir, "classify.json"), report)
  with tensorboard.Writer.for_mode(workdir, "classify") as board:
    board.scalars(trained.step, {
        "accuracy": report["accuracy"],
        "seconds_per_image": report["seconds_per_image"]})
  print(_summary_line(report, s, out_dir), flush=True)
  return report
