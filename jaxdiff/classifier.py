"""The diffusion classifier: a class-conditional model as a zero-shot classifier.

For an image x0 and each class c, the classifier measures how well the
conditional network denoises x0 under label c,

    err_c(x0) = sum_j w_j || eps_theta(alpha_j x0 + sigma_j eps_j, t_j, c) - eps_j ||^2
                / sum_j w_j,

over a FIXED set of n (t_j, eps_j) pairs that is the same for every class and
every image, and predicts argmin_c err_c (Li et al. 2023, "Your diffusion
model is secretly a zero-shot classifier"). err_c is a Monte-Carlo estimate
of the eps-MSE term of the negative ELBO of x0 given c, so argmin_c is
approximately argmax_c log p(x0 | c) = argmax_c p(c | x0) under a uniform
class prior. Sharing the pairs across classes makes the comparison a paired
one: the noise draw that dominates each error cancels in the differences.

Time weighting (`WEIGHTINGS`):

* "uniform" (default): w_j = 1, i.e. the plain eps-MSE averaged over t.
  This is the training objective's weighting; the literature finds it
  classifies better than the true ELBO weighting, which puts almost all mass
  on the smallest t, where every class denoises equally well.
* "elbo": w(t) = g(t)^2 / sigma(t)^2 = -d log SNR / dt, the continuous-time
  ELBO's weight of the eps-MSE (Kingma et al. 2021).

Times form a Weyl sequence t_j = frac(u0 + j / golden ratio) over (t_min, 1]
(snapped to the steps i/T of a discrete chain), so every prefix of the pairs
spreads over the whole time range; the noise of pair j depends on (key, j)
alone. The first n pairs are therefore the same whatever the total number.

Pruning (optional): after n1 pairs over all K classes, keep the k classes
with the smallest error and evaluate n2 further pairs on those only; the
final error of a kept class is its weighted mean over all n1 + n2 pairs.
Cost: K n1 + k n2 network evaluations per image instead of K (n1 + n2).

The `classify` mode (`--mode classify`) restores a conditional model,
classifies the first `config.classify.num_images` test images and writes
`<workdir>/classify/`: `classify.json` (accuracy, confusion matrix, time per
image against the number of pairs, Tweedie denoising PSNR with and without
the label), `confusion.png` and `denoise.png`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import metrics
from jaxdiff import train as train_lib
from jaxdiff.registry import Registry
from jaxdiff.run import MODES
from jaxdiff.run import restore_params
from jaxdiff.sde import SDE

Array = jax.Array
# (x [B, H, W, C], t [B], y [B] int) -> eps [B, H, W, C].
LabelledEpsFn = Callable[[Array, Array, Array], Array]

WEIGHTINGS = Registry("time weighting")

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1 / golden ratio: a Weyl sequence.


# ------------------------------------------------------------------ options


@dataclasses.dataclass(frozen=True)
class ClassifyOptions:
  """Settings of the diffusion classifier (`config.classify`).

  Attributes:
    num_images: classify the first N images of `split`.
    split: the data split to classify.
    batch_size: images per jitted call (the network sees batch_size * K).
    num_pairs: n1, the (t, noise) pairs evaluated for every class.
    prune_top_k: k > 0 keeps the k best classes after n1 pairs; 0: no pruning.
    num_pairs_pruned: n2, further pairs evaluated on the kept classes only.
    weighting: time weighting of the per-pair errors, a `WEIGHTINGS` name.
    t_min, t_max: the pairs' times are spread over [t_min, t_max] (within
      the process's own range). The extremes carry little class information:
      near t = 0 every label denoises alike, near t = 1 the image is gone.
    seed: key of the fixed (t, noise) pairs.
    timing_pairs: comma-separated pair counts n for the time-per-image curve.
    timing_images: images classified for each point of that curve.
    denoise_sigma: std (in [-1, 1] pixel units) of the Gaussian noise of the
      Tweedie denoising comparison; 0 skips it.
    use_ema: classify with the EMA parameters.
  """
  num_images: int = 1000
  split: str = "test"
  batch_size: int = 50
  num_pairs: int = 100
  prune_top_k: int = 0
  num_pairs_pruned: int = 0
  weighting: str = "uniform"
  t_min: float = 0.0
  t_max: float = 1.0
  seed: int = 0
  timing_pairs: str = "10,20,50,100"
  timing_images: int = 50
  denoise_sigma: float = 0.2
  use_ema: bool = True

  @property
  def timing_list(self) -> List[int]:
    return [int(n) for n in self.timing_pairs.split(",") if n.strip()]

  def validate(self, num_classes: int) -> "ClassifyOptions":
    """Checks the values against K = num_classes; returns self."""
    positive = ("num_images", "batch_size", "num_pairs")
    for name in positive:
      if getattr(self, name) < 1:
        raise ValueError(f"config.classify.{name} must be >= 1, got "
                         f"{getattr(self, name)}.")
    if not 0 <= self.prune_top_k <= num_classes:
      raise ValueError(
          f"config.classify.prune_top_k={self.prune_top_k} must be in "
          f"[0, {num_classes}] (0 turns pruning off).")
    if self.num_pairs_pruned < 0:
      raise ValueError("config.classify.num_pairs_pruned must be >= 0, got "
                       f"{self.num_pairs_pruned}.")
    if self.num_pairs_pruned and not self.prune_top_k:
      raise ValueError(
          "config.classify.num_pairs_pruned > 0 needs prune_top_k > 0; set "
          "--config.classify.prune_top_k (e.g. 2) or num_pairs_pruned=0.")
    WEIGHTINGS.get(self.weighting)
    if not 0.0 <= self.t_min < self.t_max <= 1.0:
      raise ValueError(
          f"config.classify.t_min={self.t_min} and t_max={self.t_max} must "
          "satisfy 0 <= t_min < t_max <= 1.")
    try:
      counts = self.timing_list
    except ValueError:
      raise ValueError(
          f"config.classify.timing_pairs={self.timing_pairs!r} must be "
          "comma-separated integers, e.g. '10,20,50,100' (or '' for none)."
      ) from None
    if any(n < 1 for n in counts):
      raise ValueError(f"config.classify.timing_pairs={self.timing_pairs!r} "
                       "must hold positive integers.")
    if self.timing_images < 1 and counts:
      raise ValueError("config.classify.timing_images must be >= 1.")
    if self.denoise_sigma < 0:
      raise ValueError("config.classify.denoise_sigma must be >= 0, got "
                       f"{self.denoise_sigma}.")
    return self


def default_config() -> ml_collections.ConfigDict:
  """`config.classify` with the defaults of `ClassifyOptions`."""
  return ml_collections.ConfigDict(dataclasses.asdict(ClassifyOptions()))


def options_from_config(config: ml_collections.ConfigDict) -> ClassifyOptions:
  """ClassifyOptions from `config.classify`; missing keys take defaults."""
  section = config.get("classify")
  if section is None:
    return ClassifyOptions()
  known = {f.name for f in dataclasses.fields(ClassifyOptions)}
  values = dict(section)
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"Unknown config.classify keys {unknown}; known: "
                     f"{sorted(known)}.")
  return ClassifyOptions(**values)


# ----------------------------------------------------------- (t, noise) pairs


@WEIGHTINGS.register("uniform")
def uniform_weight(process: SDE, t: Array) -> Array:
  """w(t) = 1: the eps-MSE averaged uniformly over t."""
  del process
  return jnp.ones_like(t)


@WEIGHTINGS.register("elbo")
def elbo_weight(process: SDE, t: Array) -> Array:
  """w(t) = g(t)^2 / sigma(t)^2 = -d log SNR(t) / dt (the ELBO's weight)."""
  return process.g2(t) / process.sigma(t)**2


class Pairs(NamedTuple):
  """A fixed set of n (t, noise) pairs with their time weights."""
  t: Array       # [n]
  noise: Array   # [n, H, W, C]
  weight: Array  # [n]

  def slice(self, start: int, stop: int) -> "Pairs":
    return Pairs(self.t[start:stop], self.noise[start:stop],
                 self.weight[start:stop])


def pair_times(process: SDE, key: Array, num: int, *, t_min: float = 0.0,
               t_max: float = 1.0) -> Array:
  """n times: a Weyl sequence over (t_min, t_max], on the steps of a chain.

  Every prefix of the sequence spreads evenly over the interval, and time j
  depends on (key, j) alone.

  Args:
    process: the SDE (a discrete chain has `num_steps` = T).
    key: PRNG key (gives the sequence's random offset).
    num: n.
    t_min, t_max: the interval, clipped to the process's training times
      ((process.t_min, 1], or the steps i/T, i = 1..T, of a chain).

  Returns:
    t [n] float32.
  """
  u0 = jax.random.uniform(key, ())
  u = jnp.mod(u0 + jnp.arange(num, dtype=jnp.float32) * _GOLDEN, 1.0)  # [n]
  steps = getattr(process, "num_steps", None)
  if steps:  # Steps i in lo..hi, each with probability 1 / (hi - lo + 1).
    lo = min(max(1, math.ceil(t_min * steps)), steps)
    hi = max(min(steps, math.floor(t_max * steps)), lo)
    i = lo + jnp.minimum(jnp.floor(u * (hi - lo + 1)), hi - lo)
    return (i / steps).astype(jnp.float32)
  lo = max(t_min, process.t_min)
  return (lo + (t_max - lo) * (1.0 - u)).astype(jnp.float32)  # (lo, t_max]


def make_pairs(process: SDE, key: Array, num: int, image_shape: Sequence[int],
               *, weighting: str = "uniform", t_min: float = 0.0,
               t_max: float = 1.0) -> Pairs:
  """The fixed (t, noise) pairs shared by all classes and images.

  Args:
    process: a Gaussian SDE.
    key: PRNG key; pair j uses fold_in(noise key, j), so a smaller `num` gives
      a prefix of a larger one.
    num: n >= 1.
    image_shape: (H, W, C).
    weighting: a `WEIGHTINGS` name.
    t_min, t_max: the interval of the times (see `pair_times`).

  Returns:
    Pairs with t [n], noise [n, H, W, C], weight [n].
  """
  if num < 1:
    raise ValueError(f"The number of (t, noise) pairs must be >= 1, got {num}.")
  if not 0.0 <= t_min < t_max <= 1.0:
    raise ValueError(f"Need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}.")
  return _make_pairs(process, key, int(num), tuple(image_shape),
                     WEIGHTINGS.get(weighting), float(t_min), float(t_max))


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4, 5, 6))
def _make_pairs(process, key, num, image_shape, weight_fn, t_min,
                t_max) -> Pairs:
  t_key, n_key = jax.random.split(key)
  t = pair_times(process, t_key, num, t_min=t_min, t_max=t_max)  # [n]
  noise = jax.vmap(lambda j: jax.random.normal(
      jax.random.fold_in(n_key, j), image_shape))(jnp.arange(num))
  return Pairs(t, noise, weight_fn(process, t).astype(jnp.float32))


# --------------------------------------------------------------- classifier


def denoising_errors(eps_fn: LabelledEpsFn, process: SDE, x0: Array,
                     candidates: Array, pairs: Pairs) -> Array:
  """The eps-MSE of every image under every candidate label at every pair.

  Args:
    eps_fn: (x [B, ...], t [B], y [B]) -> eps [B, ...].
    process: a Gaussian SDE (alpha, sigma).
    x0: [B, H, W, C] images in [-1, 1].
    candidates: [B, K'] int labels to score for each image.
    pairs: n (t, noise) pairs.

  Returns:
    errors [B, K', n].
  """
  b = x0.shape[0]

  def one_pair(pair):
    t, noise = pair                                       # [], [H, W, C]
    x_t = process.alpha(t) * x0 + process.sigma(t) * noise[None]  # [B, ...]
    t_b = jnp.full((b,), t, jnp.float32)                  # [B]

    def one_class(y):                                     # y [B]
      eps = eps_fn(x_t, t_b, y)                           # [B, H, W, C]
      return jnp.mean(jnp.square(eps - noise[None]), axis=(1, 2, 3))  # [B]

    return jax.vmap(one_class, in_axes=1, out_axes=1)(candidates)  # [B, K']

  errors = jax.lax.map(one_pair, (pairs.t, pairs.noise))  # [n, B, K']
  return jnp.transpose(errors, (1, 2, 0))                 # [B, K', n]


class Classification(NamedTuple):
  """The classifier's output for a batch of B images."""
  pred: Array          # [B] predicted class
  errors: Array        # [B, K] weighted mean error over the first n1 pairs
  candidates: Array    # [B, k] classes kept after n1 pairs (all K unpruned)
  final_errors: Array  # [B, k] their weighted mean error over n1 + n2 pairs


def classify_batch(eps_fn: LabelledEpsFn, process: SDE, x0: Array,
                   pairs: Pairs, num_classes: int, *, num_pairs: int,
                   prune_top_k: int = 0, num_pairs_pruned: int = 0
                   ) -> Classification:
  """Classifies x0 [B, ...] by the smallest weighted denoising error.

  Args:
    eps_fn: (x, t, y) -> eps with the parameters bound.
    process: a Gaussian SDE.
    x0: [B, H, W, C] images in [-1, 1].
    pairs: at least num_pairs + num_pairs_pruned (t, noise) pairs.
    num_classes: K.
    num_pairs: n1, pairs evaluated for every class.
    prune_top_k: k > 0: keep the k best classes after n1 pairs (0: off).
    num_pairs_pruned: n2, further pairs for the kept classes.

  Returns:
    A `Classification`.
  """
  b = x0.shape[0]
  n1, n2 = num_pairs, num_pairs_pruned if prune_top_k else 0
  if pairs.t.shape[0] < n1 + n2:
    raise ValueError(f"{pairs.t.shape[0]} pairs given; {n1 + n2} needed.")
  first = pairs.slice(0, n1)
  all_classes = jnp.broadcast_to(jnp.arange(num_classes), (b, num_classes))
  e1 = denoising_errors(eps_fn, process, x0, all_classes, first)  # [B, K, n1]
  s1 = e1 @ first.weight                                          # [B, K]
  w1 = jnp.sum(first.weight)
  errors = s1 / w1                                                # [B, K]
  if not prune_top_k:
    return Classification(jnp.argmin(errors, axis=-1), errors, all_classes,
                          errors)
  _, cand = jax.lax.top_k(-errors, prune_top_k)                  # [B, k]
  total, weight = jnp.take_along_axis(s1, cand, axis=-1), w1      # [B, k]
  if n2:
    second = pairs.slice(n1, n1 + n2)
    e2 = denoising_errors(eps_fn, process, x0, cand, second)     # [B, k, n2]
    total = total + e2 @ second.weight
    weight = weight + jnp.sum(second.weight)
  final = total / weight                                          # [B, k]
  best = jnp.argmin(final, axis=-1)                               # [B]
  pred = jnp.take_along_axis(cand, best[:, None], axis=-1)[:, 0]
  return Classification(pred, errors, cand, final)


def network_evaluations(num_classes: int, opts: ClassifyOptions) -> int:
  """Network evaluations per image: K n1 + k n2."""
  n2 = opts.num_pairs_pruned if opts.prune_top_k else 0
  return num_classes * opts.num_pairs + opts.prune_top_k * n2


def make_classify_fn(apply_fn: Callable, process: SDE, num_classes: int, *,
                     num_pairs: int, prune_top_k: int = 0,
                     num_pairs_pruned: int = 0) -> Callable:
  """jitted (params, x0 [B, ...], pairs) -> Classification.

  Args:
    apply_fn: (params, x, t, y) -> eps, e.g. `train.make_apply_fn(model)`.
    process: a Gaussian SDE.
    num_classes: K.
    num_pairs, prune_top_k, num_pairs_pruned: see `classify_batch`.
  """
  if not isinstance(process, SDE):
    raise ValueError(
        "The diffusion classifier needs a Gaussian forward process; set "
        "config.diffusion.noise='gaussian'.")

  @jax.jit
  def classify_fn(params, x0, pairs):
    eps_fn = lambda x, t, y: apply_fn(params, x, t, y)
    return classify_batch(eps_fn, process, x0, pairs, num_classes,
                          num_pairs=num_pairs, prune_top_k=prune_top_k,
                          num_pairs_pruned=num_pairs_pruned)

  return classify_fn


def confusion_matrix(labels: np.ndarray, pred: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """[K, K] counts; rows are true classes, columns predictions."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(labels), np.asarray(pred)), 1)
  return cm


def _batches(images: np.ndarray, batch_size: int):
  """Yields (start, n, x): x [batch_size, ...] float32 in [-1, 1] holds
  images[start:start + n], the last batch padded by repeating its last image."""
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
    yield start, n, chunk.astype(np.float32) / 127.5 - 1.0


def run_classifier(classify_fn: Callable, params, images: np.ndarray,
                   pairs: Pairs, batch_size: int, *,
                   desc: Optional[str] = None) -> Dict[str, Any]:
  """Classifies uint8 images [N, H, W, C] in fixed-size batches.

  The jitted function is compiled before the clock starts, so `seconds` is
  the time of the classification alone.

  Args:
    classify_fn: from `make_classify_fn`.
    params: network parameters.
    images: [N, H, W, C] uint8.
    pairs: the (t, noise) pairs classify_fn expects.
    batch_size: images per call.
    desc: show a progress bar with this label (None: no bar).

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
  batches = list(_batches(images, batch_size))
  for _, n, x in _progress(batches, desc, len(images), batch_size):
    # Wait for each batch, so the progress bar shows finished work rather
    # than dispatched work (dispatch runs far ahead of the computation).
    outs.append((n, jax.block_until_ready(
        compiled(params, jnp.asarray(x), pairs))))
  pred = np.concatenate([np.asarray(o.pred)[:n] for n, o in outs])
  errors = np.concatenate([np.asarray(o.errors)[:n] for n, o in outs])
  seconds = time.perf_counter() - t0
  return {"pred": pred, "errors": errors, "seconds": seconds,
          "compile_seconds": compile_s}


def _progress(batches, desc: Optional[str], total: int, batch_size: int):
  """Iterates over batches, with a progress bar when desc is given."""
  if not desc:
    return batches
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return batches
  return tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True,
              mininterval=2.0, postfix=f"{total} images of {batch_size}/batch")


# --------------------------------------------- denoising with / without label


def time_of_noise_level(process: SDE, sigma_noise: float) -> float:
  """The t with sigma(t) / alpha(t) = sigma_noise (bisection).

  A clean image plus N(0, sigma_noise^2) noise, times alpha(t), is then
  distributed exactly as x_t. For a T-step chain t is in general between two
  trained steps i/T (the network's time input is continuous).

  Raises:
    ValueError: sigma_noise outside the process's range of noise levels.
  """
  t_lo = 0.0 if getattr(process, "num_steps", None) else process.t_min
  ratio = lambda t: float(process.sigma(t) / process.alpha(t))
  lo, hi = ratio(max(t_lo, 1e-6)), ratio(1.0)
  if not lo <= sigma_noise <= hi:
    raise ValueError(
        f"config.classify.denoise_sigma={sigma_noise} is outside the noise "
        f"levels sigma/alpha of this process, [{lo:.4g}, {hi:.4g}]; choose a "
        "value inside (or 0 to skip the denoising comparison).")
  a, b = max(t_lo, 1e-6), 1.0
  for _ in range(60):
    mid = 0.5 * (a + b)
    a, b = (mid, b) if ratio(mid) < sigma_noise else (a, mid)
  return 0.5 * (a + b)


def tweedie_with_and_without_label(apply_fn: Callable, params, process: SDE,
                                   noisy: Array, labels: Array, t: float,
                                   num_classes: int):
  """One-step Tweedie estimates E[x0 | y] with the true and the null label.

  y = x0 + s n is rescaled to x_t = alpha(t) y, where t solves
  sigma(t) / alpha(t) = s (`time_of_noise_level`), so that
  x0_hat = (x_t - sigma(t) eps_hat(x_t, t, c)) / alpha(t) = y - s eps_hat.

  Args:
    apply_fn: (params, x, t, y) -> eps.
    params: network parameters.
    process: a Gaussian SDE.
    noisy: [B, H, W, C] noisy images y.
    labels: [B] true labels.
    t: the diffusion time of the noise level (a Python float).
    num_classes: K (label K is the null label).

  Returns:
    (x0 with label, x0 with null label), each [B, H, W, C], clipped to [-1, 1].
  """
  b = noisy.shape[0]
  t_b = jnp.full((2 * b,), t, jnp.float32)                   # [2B]
  alpha, sigma = process.alpha(t_b[0]), process.sigma(t_b[0])
  x_t = jnp.concatenate([alpha * noisy, alpha * noisy])     # [2B, H, W, C]
  y = jnp.concatenate([labels, jnp.full_like(labels, num_classes)])  # [2B]
  eps = apply_fn(params, x_t, t_b, y)
  x0 = jnp.clip((x_t - sigma * eps) / alpha, -1.0, 1.0)
  with_label, null = jnp.split(x0, 2)
  return with_label, null


def denoise_comparison(apply_fn: Callable, params, process: SDE,
                       images: np.ndarray, labels: np.ndarray, *,
                       sigma_noise: float, num_classes: int, key: Array,
                       batch_size: int) -> Dict[str, Any]:
  """PSNR of the Tweedie estimate with the true label and with the null one.

  Args:
    images: [N, H, W, C] uint8 clean images.
    labels: [N] true labels.
    sigma_noise: std of the added (unclipped) Gaussian noise, [-1, 1] units.
    key: noise key; image i gets fold_in(key, i).

  Returns:
    Per-image arrays "clean", "noisy", "label", "null" (float [N, ...]),
    "psnr_noisy", "psnr_label", "psnr_null" ([N] dB) and the time "t".
  """
  t = time_of_noise_level(process, sigma_noise)
  fn = jax.jit(lambda p, x, y: tweedie_with_and_without_label(
      apply_fn, p, process, x, y, t, num_classes))
  out = {k: [] for k in ("clean", "noisy", "label", "null")}
  for start, n, x in _batches(images, batch_size):
    idx = jnp.arange(start, start + x.shape[0])
    noise = jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(key, i), x.shape[1:]))(idx)
    clean = jnp.asarray(x)
    noisy = clean + sigma_noise * noise
    y = jnp.asarray(np.resize(labels[start:start + n], x.shape[0]), jnp.int32)
    with_label, null = fn(params, noisy, y)
    for k, v in (("clean", clean), ("noisy", noisy), ("label", with_label),
                 ("null", null)):
      out[k].append(np.asarray(v)[:n])
  out = {k: np.concatenate(v) for k, v in out.items()}
  for k in ("noisy", "label", "null"):
    out[f"psnr_{k}"] = np.asarray(metrics.psnr(out[k], out["clean"]))
  out["t"] = t
  return out


# --------------------------------------------------------------------- mode


def _load_images(config, opts: ClassifyOptions):
  dc = config.data
  ds = data_lib.load(dc.name, opts.split, data_dir=dc.data_dir or None,
                     limit=opts.num_images)
  want = train_lib.image_shape(config)
  if ds.images.shape[1:] != want:
    raise ValueError(
        f"Data set {dc.name!r} has images {ds.images.shape[1:]} but the "
        f"config asks for {want}; set config.data.image_size / channels.")
  if ds.num_classes != dc.num_classes:
    raise ValueError(
        f"Data set {dc.name!r} has {ds.num_classes} classes but "
        f"config.data.num_classes={dc.num_classes}; set "
        f"--config.data.num_classes={ds.num_classes} (and train with it).")
  return ds


@MODES.register("classify")
def classify_mode(config: ml_collections.ConfigDict, workdir: str) -> Dict:
  """Classifies test images with the diffusion classifier; writes
  `<workdir>/classify/{classify.json,confusion.png,denoise.png}`."""
  from jaxdiff import viz  # pylint: disable=g-import-not-at-top
  if not config.training.conditional:
    raise ValueError(
        "--mode classify needs a class-conditional model: train with "
        "--config.training.conditional=True (e.g. configs/mnist_cond.py).")
  k = config.data.num_classes
  opts = options_from_config(config).validate(k)
  ds = _load_images(config, opts)
  model, params, step = restore_params(config, workdir, use_ema=opts.use_ema)
  process = config_lib.build_process(config)
  apply_fn = train_lib.make_apply_fn(model)
  shape = train_lib.image_shape(config)
  out_dir = os.path.join(workdir, "classify")
  os.makedirs(out_dir, exist_ok=True)

  n_total = opts.num_pairs + (opts.num_pairs_pruned if opts.prune_top_k else 0)
  timing = opts.timing_list
  pairs = make_pairs(process, jax.random.key(opts.seed),
                     max([n_total] + timing), shape, weighting=opts.weighting,
                     t_min=opts.t_min, t_max=opts.t_max)
  classify_fn = make_classify_fn(
      apply_fn, process, k, num_pairs=opts.num_pairs,
      prune_top_k=opts.prune_top_k, num_pairs_pruned=opts.num_pairs_pruned)
  res = run_classifier(classify_fn, params, ds.images,
                       pairs.slice(0, n_total), opts.batch_size,
                       desc="classify")
  labels = ds.labels
  cm = confusion_matrix(labels, res["pred"], k)
  n = len(labels)
  accuracy = float(np.trace(cm) / n)
  report: Dict[str, Any] = {
      "step": step, "data": config.data.name, "split": opts.split,
      "num_images": n, "accuracy": accuracy,
      "per_class_accuracy": [
          float(cm[c, c] / cm[c].sum()) if cm[c].sum() else None
          for c in range(k)],
      "class_names": list(ds.class_names),
      "confusion_matrix": cm.tolist(),
      "options": dataclasses.asdict(opts),
      "network_evaluations_per_image": network_evaluations(k, opts),
      "seconds_per_image": res["seconds"] / n,
      "compile_seconds": res["compile_seconds"],
      "device": jax.devices()[0].platform,
  }
  title = (f"Diffusion classifier, {config.data.name} {opts.split} "
           f"({n} images, {n_total} pairs)")
  viz.confusion_matrix_figure(os.path.join(out_dir, "confusion.png"), cm,
                              list(ds.class_names), title=title)

  # Time per image against the number of pairs n (no pruning).
  m = min(opts.timing_images, n)
  curve = []
  if timing:
    print(f"jaxdiff: timing the classifier on {m} images at "
          f"{timing} pairs (no pruning)", flush=True)
  for count in timing:
    fn = make_classify_fn(apply_fn, process, k, num_pairs=count)
    r = run_classifier(fn, params, ds.images[:m], pairs.slice(0, count),
                       min(opts.batch_size, m))
    curve.append({"num_pairs": count, "num_images": m,
                  "seconds_per_image": r["seconds"] / m,
                  "accuracy": float(np.mean(r["pred"] == labels[:m]))})
  report["timing"] = curve

  if opts.denoise_sigma > 0:
    print(f"jaxdiff: one-step denoising of {n} images at sigma="
          f"{opts.denoise_sigma:g}, with and without the label", flush=True)
    den = denoise_comparison(
        apply_fn, params, process, ds.images, labels,
        sigma_noise=opts.denoise_sigma, num_classes=k,
        key=jax.random.fold_in(jax.random.key(opts.seed), 1),
        batch_size=opts.batch_size)
    report["denoise"] = {
        "sigma": opts.denoise_sigma, "t": den["t"], "num_images": n,
        "psnr_noisy": float(np.mean(den["psnr_noisy"])),
        "psnr_label": float(np.mean(den["psnr_label"])),
        "psnr_null": float(np.mean(den["psnr_null"])),
    }
    viz.comparison_figure(
        os.path.join(out_dir, "denoise.png"),
        {"clean": den["clean"], f"noisy (sigma={opts.denoise_sigma:g})":
         den["noisy"], "Tweedie, label": den["label"],
         "Tweedie, null label": den["null"]},
        scores={f"noisy (sigma={opts.denoise_sigma:g})": den["psnr_noisy"],
                "Tweedie, label": den["psnr_label"],
                "Tweedie, null label": den["psnr_null"]},
        title="One-step denoising with and without the class label")

  with open(os.path.join(out_dir, "classify.json"), "w") as f:
    json.dump(report, f, indent=2)
  line = (f"jaxdiff: diffusion classifier accuracy {100 * accuracy:.2f}% on "
          f"{n} {config.data.name} {opts.split} images (step {step}, "
          f"{n_total} pairs, {report['seconds_per_image']:.3f} s/image)")
  if "denoise" in report:
    d = report["denoise"]
    line += (f"; Tweedie PSNR {d['psnr_label']:.2f} dB with label, "
             f"{d['psnr_null']:.2f} dB without (noisy {d['psnr_noisy']:.2f})")
  print(line + f" -> {out_dir}", flush=True)
  return report
