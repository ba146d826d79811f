"""Sample quality: a Frechet distance in the features of a small classifier.

A small CNN classifier (`FeatureCNN`) is trained once per data set and cached
(`load_or_train_classifier`: params.npz + meta.json in one folder). Its
penultimate layer (`feature_dim` = 128 by default, after ReLU) is the feature
space of an FID-style Frechet distance (`sample_quality`):

* `fd`: generated samples vs the whole test split;
* `floor`: the same number of real training images vs the test split, i.e.
  the distance a perfect generator would get with that many samples;
* `confidence`: the classifier's mean max-softmax on the samples (and
  `real_confidence` on the real images), and `histogram`, the classes it
  assigns to the samples.

The settings are `jaxdiff.settings.EvalSettings` (`config.eval`); `--mode
eval` (`jaxdiff/modes/eval.py`) scores the samples of a trained model:

    python launch.py --config configs/mnist_ddgm.py --workdir runs/ddgm \
        --mode eval
    python launch.py --config configs/mnist_ddpm.py --workdir runs/ddpm \
        --mode eval --config.sampling.method=ddim --config.sampling.steps=100
"""
from __future__ import annotations

import functools
import json
import os
import time
import zipfile
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxdiff import files
from jaxdiff import metrics
from jaxdiff.data import Dataset
from jaxdiff.settings import EvalSettings
from jaxdiff.data import to_model_range

Array = jax.Array

_ARCH = "FeatureCNN(3x3 stride-2 convs 32-64-128, dense)"


# ------------------------------------------------------------- classifier


class FeatureCNN(nn.Module):
  """Three 3x3 stride-2 convolutions, a dense feature layer, a linear head.

  Stride-2 convolutions rather than max-pooling keep training cheap on a CPU
  too (a 128-image step costs about a tenth as much).

  Attributes:
    num_classes: K.
    feature_dim: width of the penultimate layer (the FD features).
    widths: channels of the conv blocks.
  """
  num_classes: int
  feature_dim: int = 128
  widths: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, x: Array) -> Tuple[Array, Array]:
    """x [B, H, W, C] in [-1, 1] -> (logits [B, K], features [B, D])."""
    for w in self.widths:  # stride 2: 28 -> 14 -> 7 -> 4.
      x = nn.relu(nn.Conv(w, (3, 3), strides=(2, 2))(x))
    x = x.reshape((x.shape[0], -1))                     # [B, h * w * c]
    features = nn.relu(nn.Dense(self.feature_dim)(x))   # [B, D]
    return nn.Dense(self.num_classes)(features), features


class Classifier(NamedTuple):
  """A trained `FeatureCNN` and what is known about it."""
  model: FeatureCNN
  params: Any
  test_accuracy: float
  path: Optional[str]


def _to_unit(images: Array) -> Array:
  """uint8 [B, H, W, C] -> float32 in [-1, 1]."""
  return to_model_range(images)


def as_uint8(images: np.ndarray) -> np.ndarray:
  """Images as uint8 [N, H, W, C]: floats are read as [-1, 1], clipped and
  rounded exactly like the saved PNGs (`viz.to_uint8`)."""
  from jaxdiff import viz  # pylint: disable=g-import-not-at-top
  images = viz.to_uint8(np.asarray(images))
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"Expected images [N, H, W, C], got {images.shape}.")
  return images


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int,
                     *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
                     feature_dim: int = 128, seed: int = 0
                     ) -> Tuple[FeatureCNN, Any]:
  """Trains a `FeatureCNN` with Adam (cosine-decayed) on (images, labels).

  Each epoch takes N // batch_size batches of a permutation drawn from
  fold_in(key, epoch), one jitted step per batch. (A `lax.scan` over the
  steps runs about 10x slower on XLA:CPU, whose convolution gradients lose
  their fast path inside loops.)

  Args:
    images: [N, H, W, C] uint8.
    labels: [N] int class labels in [0, num_classes).
    num_classes: K.
    epochs: passes over the data (>= 1).
    batch_size: batch size (capped at N).
    lr: peak Adam learning rate (cosine decay to 0 over the run).
    feature_dim: width of the feature layer.
    seed: initialisation and shuffling seed.

  Returns:
    (model, params).
  """
  images = as_uint8(images)
  labels = np.asarray(labels, np.int32)
  if len(images) != len(labels) or len(images) < 2:
    raise ValueError(f"Need >= 2 images with one label each, got "
                     f"{len(images)} images and {len(labels)} labels.")
  if epochs < 1:
    raise ValueError(f"eval.classifier_epochs must be >= 1, got {epochs}.")
  n = len(images)
  bs = min(batch_size, n)
  steps = n // bs
  model = FeatureCNN(num_classes=num_classes, feature_dim=feature_dim)
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = model.init(init_key, jnp.zeros((1, *images.shape[1:])))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(lr, epochs * steps))

  def loss_fn(p, x, y):
    logits, _ = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, x_all, y_all, batch_idx):
    x = _to_unit(x_all[batch_idx])                      # [B, H, W, C]
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y_all[batch_idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def epoch_batches(epoch):
    perm = jax.random.permutation(jax.random.fold_in(data_key, epoch), n)
    return perm[:steps * bs].reshape(steps, bs)         # [S, B]

  x_all, y_all = jnp.asarray(images), jnp.asarray(labels)
  opt_state = tx.init(params)
  for epoch in range(epochs):
    idx = epoch_batches(epoch)
    for i in range(steps):  # dispatched asynchronously, no host sync.
      params, opt_state, _ = train_step(params, opt_state, x_all, y_all,
                                        idx[i])
  params = jax.block_until_ready(params)
  return model, params


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: FeatureCNN, params, x: Array) -> Tuple[Array, Array]:
  """uint8 [B, H, W, C] -> (features [B, D], probabilities [B, K])."""
  logits, feats = model.apply({"params": params}, _to_unit(x))
  return feats, jax.nn.softmax(logits)


def classifier_outputs(model: FeatureCNN, params, images: np.ndarray, *,
                       batch_size: int = 500) -> Tuple[np.ndarray, np.ndarray]:
  """Features and class probabilities of images, in fixed-size batches.

  Args:
    model: the classifier.
    params: its parameters.
    images: [N, H, W, C] uint8, or floats in [-1, 1] (quantised to uint8
      first, as saved samples are).
    batch_size: images per call (the last batch is padded).

  Returns:
    (features [N, D] float32, probabilities [N, K] float32), numpy.
  """
  images = as_uint8(images)
  n = len(images)
  bs = max(1, batch_size)
  feats, probs = [], []
  for i in range(0, n, bs):
    chunk = images[i:i + bs]
    pad = bs - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]),
                                              np.uint8)])
    f, p = jax.device_get(_apply(model, params, chunk))
    feats.append(f[:bs - pad])
    probs.append(p[:bs - pad])
  return np.concatenate(feats), np.concatenate(probs)


def accuracy(model: FeatureCNN, params, images: np.ndarray,
             labels: np.ndarray, *, batch_size: int = 500) -> float:
  """Top-1 accuracy of the classifier."""
  _, probs = classifier_outputs(model, params, images, batch_size=batch_size)
  return float(np.mean(np.argmax(probs, -1) == np.asarray(labels)))


def save_classifier(path: str, params, meta: Dict[str, Any]) -> None:
  """Writes params.npz (flattened 'a/b/c' keys) and meta.json under path.

  Each file is written atomically, meta.json last and only after the old one
  is removed: a failed save never pairs new parameters with old settings.
  """
  meta_file = os.path.join(path, "meta.json")
  if os.path.isfile(meta_file):
    os.remove(meta_file)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  with files.atomic_write(os.path.join(path, "params.npz")) as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})
  files.write_json(meta_file, meta, sort_keys=True)


def load_classifier_params(path: str):
  """(params, meta) from `save_classifier`, or (None, None) if absent or
  unreadable (the caller then trains and saves a new classifier)."""
  p_file, m_file = (os.path.join(path, "params.npz"),
                    os.path.join(path, "meta.json"))
  if not (os.path.isfile(p_file) and os.path.isfile(m_file)):
    return None, None
  try:
    with open(m_file) as f:
      meta = json.load(f)
    with np.load(p_file, allow_pickle=False) as z:
      flat = {k: jnp.asarray(z[k]) for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile):
    return None, None
  if not isinstance(meta, dict):
    return None, None
  return traverse_util.unflatten_dict(flat, sep="/"), meta


def cache_settings(dataset: str, es: EvalSettings) -> Dict[str, Any]:
  """What a cached classifier was trained with (its meta.json "settings")."""
  return dict(dataset=dataset, arch=_ARCH, epochs=int(es.classifier_epochs),
              batch_size=int(es.classifier_batch_size),
              lr=float(es.classifier_lr), limit=int(es.classifier_limit),
              feature_dim=int(es.feature_dim), seed=int(es.seed))


def load_or_train_classifier(path: str, es: EvalSettings, *, dataset: str,
                             train: Dataset, test: Dataset,
                             log: Callable[[str], None] = print
                             ) -> Classifier:
  """The classifier cached in `path`, trained (and cached) first if needed.

  The cache is reused when its recorded settings (`cache_settings`) equal
  these; otherwise the classifier is retrained and the cache overwritten.

  Args:
    path: the cache folder (params.npz and meta.json).
    es: the classifier's settings (classifier_epochs, classifier_batch_size,
      classifier_lr, classifier_limit, feature_dim, seed).
    dataset: the data set's name (recorded with the settings).
    train: the training split; the first `es.classifier_limit` images (0:
      all) train the classifier.
    test: the test split; gives K and the recorded test accuracy.
    log: progress messages.

  Returns:
    A `Classifier` (test accuracy measured on the whole test split).
  """
  settings = cache_settings(dataset, es)
  params, meta = load_classifier_params(path)
  model = FeatureCNN(num_classes=test.num_classes, feature_dim=es.feature_dim)
  if (params is not None and meta.get("settings") == settings
      and "test_accuracy" in meta):
    return Classifier(model, params, float(meta["test_accuracy"]), path)
  if params is not None:
    log(f"jaxdiff: classifier cache {path} has other settings; retraining.")
  limit = es.classifier_limit or None
  images, labels = train.images[:limit], train.labels[:limit]
  log(f"jaxdiff: training the {dataset} classifier ({len(images)} images, "
      f"{es.classifier_epochs} epochs) -> {path}")
  t0 = time.time()
  model, params = train_classifier(
      images, labels, test.num_classes, epochs=es.classifier_epochs,
      batch_size=es.classifier_batch_size, lr=es.classifier_lr,
      feature_dim=es.feature_dim, seed=es.seed)
  train_seconds = time.time() - t0
  acc = accuracy(model, params, test.images, test.labels)
  save_classifier(path, params, dict(settings=settings, test_accuracy=acc,
                                     train_seconds=train_seconds,
                                     num_train_images=len(images)))
  log(f"jaxdiff: classifier test accuracy {acc:.4f} ({train_seconds:.0f} s).")
  return Classifier(model, params, acc, path)


def floor_images(train_images: np.ndarray, num: int, seed: int) -> np.ndarray:
  """min(num, N) distinct training images, in their order, drawn with
  numpy's generator of `seed`: the real images of the floor distance."""
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(train_images), min(num, len(train_images)),
                   replace=False)
  return train_images[np.sort(idx)]


# ------------------------------------------------------------- the metric


def frechet_distance_of(features_a: np.ndarray,
                        features_b: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two feature sets [N, D]."""
  return metrics.frechet_distance(*metrics.feature_statistics(features_a),
                                  *metrics.feature_statistics(features_b))


def sample_quality(clf: Classifier, samples: np.ndarray,
                   reference: np.ndarray, floor_images: np.ndarray, *,
                   labels: Optional[np.ndarray] = None,
                   batch_size: int = 500) -> Dict[str, Any]:
  """Frechet distance, floor, confidence and class histogram.

  Args:
    clf: the classifier.
    samples: [N, H, W, C] generated images (floats in [-1, 1] or uint8).
    reference: [M, H, W, C] real images (the test split).
    floor_images: [N', H, W, C] other real images (N' = N training images).
    labels: [N] the classes the samples were conditioned on, or None.
    batch_size: classifier batch.

  Returns:
    dict with fd, floor, confidence, real_confidence, histogram (list of K
    counts over the classifier's argmax on the samples; sums to N) and
    num_samples; with labels also label_agreement (the fraction of samples
    the classifier assigns to their conditioning class).
  """
  out = lambda x: classifier_outputs(clf.model, clf.params, x,
                                     batch_size=batch_size)
  f_s, p_s = out(samples)
  f_r, _ = out(reference)
  f_f, p_f = out(floor_images)
  ref_stats = metrics.feature_statistics(f_r)
  fd = metrics.frechet_distance(*metrics.feature_statistics(f_s), *ref_stats)
  floor = metrics.frechet_distance(*metrics.feature_statistics(f_f),
                                   *ref_stats)
  k = p_s.shape[-1]
  result = dict(
      fd=fd, floor=floor,
      confidence=float(np.mean(np.max(p_s, -1))),
      real_confidence=float(np.mean(np.max(p_f, -1))),
      histogram=np.bincount(np.argmax(p_s, -1), minlength=k).tolist(),
      num_samples=int(len(f_s)), num_floor_images=int(len(f_f)),
      num_reference_images=int(len(f_r)))
  if labels is not None:
    result["label_agreement"] = float(
        np.mean(np.argmax(p_s, -1) == np.asarray(labels)))
  return result
