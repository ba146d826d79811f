"""The (t, noise) pairs and the per-class denoising errors of the classifier.

`make_pairs` draws the fixed pairs shared by every class and image,
`classify_batch` scores a batch of images under every candidate label (with
optional pruning) and `make_classify_fn` jits it with the network bound.
The network is seen through its parameterization (`jaxdiff.denoiser`): the
error is always the eps-MSE of the prediction's noise estimate.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxdiff import denoiser
from jaxdiff import sde as sde_lib
from jaxdiff.registry import Registry
from jaxdiff.sde import SDE
from jaxdiff.settings import ClassifySettings

Array = jax.Array
# (x [B, H, W, C], t [B], y [B] int) -> Prediction(eps, x0), each [B, ...].
LabelledDenoiseFn = Callable[[Array, Array, Array], denoiser.Prediction]

WEIGHTINGS = Registry("time weighting")

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 1 / golden ratio: a Weyl sequence.


def check_settings(s: ClassifySettings, num_classes: int) -> ClassifySettings:
  """`s.validate(num_classes)` and a known weighting name; returns s.

  Raises:
    ValueError: a value out of range, or a weighting not in `WEIGHTINGS`.
  """
  s.validate(num_classes)
  WEIGHTINGS.get(s.weighting)
  return s


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
      ((process.t_min, process.t_max], or the steps i/T, i = 1..T, of a
      chain).

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
  t_max = min(t_max, getattr(process, "t_max", 1.0))  # flow: t_max < 1
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


def settings_pairs(process: SDE, s: ClassifySettings,
                   image_shape: Sequence[int]) -> Pairs:
  """The pairs `s` asks for: enough for the classification (n1 + n2) and
  every point of the timing curve, from key(s.seed)."""
  num = max([s.total_pairs] + s.timing_list)
  return make_pairs(process, jax.random.key(s.seed), num, image_shape,
                    weighting=s.weighting, t_min=s.t_min, t_max=s.t_max)


# --------------------------------------------------------------- classifier


def labelled_denoiser(apply_fn: Callable, params, process: SDE,
                      param: Optional[denoiser.Parameterization] = None
                      ) -> LabelledDenoiseFn:
  """(x, t, y) -> Prediction: the network with its parameters bound.

  Args:
    apply_fn: (params, x, t, y) -> the network's raw output F.
    params: network parameters.
    process: the forward process.
    param: the network's parameterization (None: eps prediction).
  """
  param = denoiser.eps_prediction() if param is None else param

  def denoise_fn(x, t, y):
    f = denoiser.network_output(apply_fn, params, param, process, x, t, y)
    return param.predict(process, x, t, f)

  return denoise_fn


def denoising_errors(denoise_fn: LabelledDenoiseFn, process: SDE, x0: Array,
                     candidates: Array, pairs: Pairs) -> Array:
  """The eps-MSE of every image under every candidate label at every pair.

  Args:
    denoise_fn: (x [B, ...], t [B], y [B]) -> Prediction; the error is that
      of its noise estimate `.eps`.
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
      eps = denoise_fn(x_t, t_b, y).eps                   # [B, H, W, C]
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


def classify_batch(denoise_fn: LabelledDenoiseFn, process: SDE, x0: Array,
                   pairs: Pairs, num_classes: int, *, num_pairs: int,
                   prune_top_k: int = 0, num_pairs_pruned: int = 0
                   ) -> Classification:
  """Classifies x0 [B, ...] by the smallest weighted denoising error.

  Args:
    denoise_fn: (x, t, y) -> Prediction with the parameters bound
      (`labelled_denoiser`).
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
  e1 = denoising_errors(denoise_fn, process, x0, all_classes,
                        first)                                    # [B, K, n1]
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
    e2 = denoising_errors(denoise_fn, process, x0, cand,
                          second)                                # [B, k, n2]
    total = total + e2 @ second.weight
    weight = weight + jnp.sum(second.weight)
  final = total / weight                                          # [B, k]
  best = jnp.argmin(final, axis=-1)                               # [B]
  pred = jnp.take_along_axis(cand, best[:, None], axis=-1)[:, 0]
  return Classification(pred, errors, cand, final)


def network_evaluations(num_classes: int, s: ClassifySettings) -> int:
  """Network evaluations per image: K n1 + k n2."""
  return num_classes * s.num_pairs + s.prune_top_k * (
      s.total_pairs - s.num_pairs)


def make_classify_fn(apply_fn: Callable, process: SDE, num_classes: int, *,
                     num_pairs: int, prune_top_k: int = 0,
                     num_pairs_pruned: int = 0,
                     param: Optional[denoiser.Parameterization] = None
                     ) -> Callable:
  """jitted (params, x0 [B, ...], pairs) -> Classification.

  Args:
    apply_fn: (params, x, t, y) -> F, e.g. `Trained.apply_fn`.
    process: a Gaussian SDE.
    num_classes: K.
    num_pairs, prune_top_k, num_pairs_pruned: see `classify_batch`.
    param: what F means (`Trained.parameterization`; None: eps).

  Raises:
    ValueError: a process that is not a Gaussian SDE.
  """
  sde_lib.check_gaussian(process, "The diffusion classifier")

  @jax.jit
  def classify_fn(params, x0, pairs):
    denoise_fn = labelled_denoiser(apply_fn, params, process, param)
    return classify_batch(denoise_fn, process, x0, pairs, num_classes,
                          num_pairs=num_pairs, prune_top_k=prune_top_k,
                          num_pairs_pruned=num_pairs_pruned)

  return classify_fn
