"""The network's noise estimate against the true noise of real images."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import trained as trained_lib
from jaxdiff.figures import forward

Array = jax.Array
Pair = Tuple[np.ndarray, np.ndarray]  # (predicted, true), each [B, H, W, C]


def hist_times(process, fractions: Sequence[float]) -> np.ndarray:
  """Times at fractions of the process: i / T with i = round(f T) >= 1 for a
  chain (the steps the network was trained on), else f."""
  f = np.asarray(fractions, np.float64)
  if np.any((f <= 0) | (f > 1)):
    raise ValueError(f"config.viz.hist_times must be fractions in (0, 1], "
                     f"got {list(fractions)}.")
  n = forward.num_steps(process)
  if n:
    return (np.clip(np.round(f * n), 1, n) / n).astype(np.float32)
  return f.astype(np.float32)


def noise_pairs(trained: trained_lib.Trained, x0: Array,
                labels: Optional[Array], ts, key: Array) -> List[Pair]:
  """(predicted, true) noise of a batch at each time of ts; the prediction
  is the denoiser's noise estimate, whatever the network's parameterization.

  Args:
    trained: the trained network and its forward process.
    x0: [B, H, W, C] real images in [-1, 1].
    labels: [B] or None.
    ts: [K] times.
    key: PRNG key; time k uses fold_in(key, k).

  Returns:
    K pairs of [B, H, W, C] arrays.
  """
  process = trained.process

  @jax.jit
  def one(params, t, key):
    tb = jnp.full((x0.shape[0],), t, jnp.float32)  # [B]
    x_t, eps = process.perturb(key, x0, tb)
    return trained.denoise_fn(labels, params=params)(x_t, tb).eps, eps

  return [tuple(np.asarray(a) for a in one(trained.params, t,
                                           jax.random.fold_in(key, k)))
          for k, t in enumerate(np.asarray(ts, np.float32))]


def noise_panels(process, ts, pairs: Sequence[Pair]) -> Dict[str, Pair]:
  """Panel title ('t = 100  (MSE 0.123)') -> its pair, in the order of ts."""
  panels = {}
  for label, (pred, true) in zip(forward.time_labels(process, ts), pairs):
    mse = float(np.mean((pred - true)**2))
    panels[f"t = {label}  (MSE {mse:.3f})"] = (pred, true)
  return panels


def gaussian_reference(pairs: Sequence[Pair], key: Array,
                       num: int = 200_000) -> Dict[str, np.ndarray]:
  """Gaussian draws with the true noise's standard deviation, to overlay on
  non-Gaussian (gamma) noise: {'Gaussian, std 1.00': [num]}."""
  std = float(np.std(np.concatenate([p[1].ravel() for p in pairs])))
  normal = np.asarray(jax.random.normal(key, (num,)))
  return {f"Gaussian, std {std:.2f}": std * normal}
