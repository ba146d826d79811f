"""One-step Tweedie denoising with the true and with the null label.

A clean image plus N(0, s^2) noise, y = x0 + s n (unclipped), times alpha(t)
where sigma(t) / alpha(t) = s, is distributed exactly as x_t; the network's
x0 estimate at (alpha(t) y, t) is then E[x0 | y] (Tweedie). Comparing it
under the true label with the null label's shows how much the label helps.
The measurement, the matched time and the estimate are those of the
denoising protocol (`jaxdiff.inverse.protocol`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoiser
from jaxdiff import metrics
from jaxdiff.classifier.batched import image_batches
from jaxdiff.inverse import protocol
from jaxdiff.sde import SDE

Array = jax.Array


def noise_level_time(process: SDE, sigma_noise: float) -> float:
  """The t with sigma(t) / alpha(t) = sigma_noise, not snapped to a chain's
  steps (the network's time input is continuous).

  Raises:
    ValueError: sigma_noise outside the process's range of noise levels.
  """
  try:
    return protocol.matched_time(process, sigma_noise, snap="none")
  except ValueError as e:
    raise ValueError(
        f"config.classify.denoise_sigma={sigma_noise}: {e} Or choose 0 to "
        "skip the denoising comparison.") from None


def tweedie_with_and_without_label(
    apply_fn: Callable, params, process: SDE, noisy: Array, labels: Array,
    t: float, num_classes: int, *,
    param: Optional[denoiser.Parameterization] = None) -> Tuple[Array, Array]:
  """One-step Tweedie estimates E[x0 | y] with the true and the null label
  (`jaxdiff.inverse.protocol.tweedie`, one network call on both halves).

  Args:
    apply_fn: (params, x, t, y) -> the network's raw output F.
    params: network parameters.
    process: a Gaussian SDE.
    noisy: [B, H, W, C] noisy images y = x0 + s n.
    labels: [B] true labels.
    t: the diffusion time of the noise level s (`noise_level_time`).
    num_classes: K (label K is the null label).
    param: what F means (`Trained.parameterization`; None: eps).

  Returns:
    (x0 with label, x0 with null label), each [B, H, W, C], clipped to [-1, 1].
  """
  y = jnp.concatenate([labels, jnp.full_like(labels, num_classes)])  # [2B]
  param = denoiser.eps_prediction() if param is None else param
  denoise_fn = denoiser.model_denoiser(apply_fn, params, process, param,
                                       labels=y, num_classes=num_classes)
  x0 = protocol.tweedie(process, denoise_fn, jnp.concatenate([noisy, noisy]),
                        t)
  with_label, null = jnp.split(jnp.clip(x0, -1.0, 1.0), 2)  # [B, ...] each
  return with_label, null


def label_vs_null_denoising(apply_fn: Callable, params, process: SDE,
                            images: np.ndarray, labels: np.ndarray, *,
                            sigma_noise: float, num_classes: int, key: Array,
                            batch_size: int,
                            param: Optional[denoiser.Parameterization] = None
                            ) -> Dict[str, Any]:
  """PSNR of the Tweedie estimate with the true label and with the null one.

  Args:
    apply_fn: (params, x, t, y) -> the network's raw output F.
    params: network parameters.
    process: a Gaussian SDE.
    images: [N, H, W, C] uint8 clean images.
    labels: [N] true labels.
    sigma_noise: std of the added (unclipped) Gaussian noise, [-1, 1] units.
    num_classes: K (label K is the null label).
    key: noise key; image i gets fold_in(key, i).
    batch_size: images per jitted call.
    param: what F means (`Trained.parameterization`; None: eps).

  Returns:
    Per-image arrays "clean", "noisy", "label", "null" (float [N, ...]),
    "psnr_noisy", "psnr_label", "psnr_null" ([N] dB) and the time "t".
  """
  t = noise_level_time(process, sigma_noise)
  fn = jax.jit(lambda p, x, y: tweedie_with_and_without_label(
      apply_fn, p, process, x, y, t, num_classes, param=param))
  out = {k: [] for k in ("clean", "noisy", "label", "null")}
  for start, n, x in image_batches(images, batch_size):
    clean = jnp.asarray(x)
    noisy = protocol.measure(key, clean, sigma_noise, clip=False,
                             indices=jnp.arange(start, start + x.shape[0]))
    y = jnp.asarray(np.resize(labels[start:start + n], x.shape[0]), jnp.int32)
    with_label, null = fn(params, noisy, y)
    for k, v in (("clean", clean), ("noisy", noisy), ("label", with_label),
                 ("null", null)):
      out[k].append(np.asarray(v)[:n])
  out = {k: np.concatenate(v) for k, v in out.items()}
  for k in ("noisy", "label", "null"):
    out[f"psnr_{k}"] = np.asarray(metrics.psnr(
        out[k], out["clean"], data_range=protocol.DATA_RANGE))
  out["t"] = t
  return out
