"""The diffusion classifier over a whole image set: fixed-size batches, the
time per image, the time-per-image curve against the number of pairs and
the confusion matrix."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoiser
from jaxdiff.classifier import scoring
from jaxdiff.sde import SDE
from jaxdiff.data import to_model_range

# Wraps the list of batches for display, e.g. a progress bar:
# progress(batches, num_images, batch_size) -> an iterable of the same items.
Progress = Callable[[Sequence[Any], int, int], Iterable[Any]]


def image_batches(images: np.ndarray, batch_size: int
                  ) -> Iterator[Tuple[int, int, np.ndarray]]:
  """Yields (start, n, x): x [batch_size, ...] float32 in [-1, 1] holds
  images[start:start + n], the last batch padded by repeating its last image.

  Args:
    images: [N, H, W, C] uint8.
    batch_size: rows of every x.
  """
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
    yield start, n, to_model_range(chunk)


def run_classifier(classify_fn: Callable, params, images: np.ndarray,
                   pairs: scoring.Pairs, batch_size: int, *,
                   progress: Optional[Progress] = None) -> Dict[str, Any]:
  """Classifies uint8 images [N, H, W, C] in fixed-size batches.

  The jitted function is compiled before the clock starts, so `seconds` is
  the time of the classification alone.

  Args:
    classify_fn: from `scoring.make_classify_fn`.
    params: network parameters.
    images: [N, H, W, C] uint8.
    pairs: the (t, noise) pairs classify_fn expects.
    batch_size: images per call.
    progress: wraps the batches for display (None: none).

  Returns:
    {"pred": [N] int, "errors": [N, K] round-one errors, "seconds": float,
     "compile_seconds": float}.
  """
  shape = (batch_size, *images.shape[1:])
  t0 = time.perf_counter()
  compiled = classify_fn.lower(
      params, jax.ShapeDtypeStruct(shape, jnp.float32), pairs).compile()
  compile_s = time.perf_counter() - t0
  outs = []
  t0 = time.perf_counter()
  batches = list(image_batches(images, batch_size))
  if progress is not None:
    batches = progress(batches, len(images), batch_size)
  for _, n, x in batches:
    # Wait for each batch, so a progress display shows finished work rather
    # than dispatched work (dispatch runs far ahead of the computation).
    outs.append((n, jax.block_until_ready(
        compiled(params, jnp.asarray(x), pairs))))
  pred = np.concatenate([np.asarray(o.pred)[:n] for n, o in outs])
  errors = np.concatenate([np.asarray(o.errors)[:n] for n, o in outs])
  seconds = time.perf_counter() - t0
  return {"pred": pred, "errors": errors, "seconds": seconds,
          "compile_seconds": compile_s}


def timing_curve(apply_fn: Callable, params, process: SDE,
                 images: np.ndarray, labels: np.ndarray, pairs: scoring.Pairs,
                 num_classes: int, *, counts: Sequence[int], batch_size: int,
                 param: Optional[denoiser.Parameterization] = None
                 ) -> List[Dict[str, Any]]:
  """Time per image and accuracy against the number of pairs n (no pruning).

  Args:
    apply_fn: (params, x, t, y) -> the network's raw output F.
    params: network parameters.
    process: a Gaussian SDE.
    images: [M, H, W, C] uint8, the images classified at every point.
    labels: [M] their true classes.
    pairs: at least max(counts) pairs; point n uses the first n.
    num_classes: K.
    counts: the numbers of pairs n.
    batch_size: images per call (capped at M).
    param: what F means (`Trained.parameterization`; None: eps).

  Returns:
    One {"num_pairs", "num_images", "seconds_per_image", "accuracy"} per n.
  """
  m = len(images)
  curve = []
  for count in counts:
    fn = scoring.make_classify_fn(apply_fn, process, num_classes,
                                  num_pairs=count, param=param)
    r = run_classifier(fn, params, images, pairs.slice(0, count),
                       min(batch_size, m))
    curve.append({"num_pairs": count, "num_images": m,
                  "seconds_per_image": r["seconds"] / m,
                  "accuracy": float(np.mean(r["pred"] == labels[:m]))})
  return curve


def confusion_matrix(labels: np.ndarray, pred: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[K, K] counts; rows are true classes, columns predictions."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
  return cm


def accuracy_summary(cm: np.ndarray) -> Dict[str, Any]:
  """Accuracy and per-class accuracy (None for an absent class) of a
  confusion matrix [K, K]."""
  return {
      "accuracy": float(np.trace(cm) / cm.sum()),
      "per_class_accuracy": [
          float(cm[c, c] / cm[c].sum()) if cm[c].sum() else None
          for c in range(len(cm))],
  }
