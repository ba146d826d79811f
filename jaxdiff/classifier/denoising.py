"""One-step Tweedie denoising with the true and with the null label.

A clean image plus N(0, s^2) noise, y = x0 + s n (unclipped), times alpha(t)
where sigma(t) / alpha(t) = s, is distributed exactly as x_t; the network's
x0 estimate at (alpha(t) y, t) is then E[x0 | y] (Tweedie). Comparing it
under the true label with the null label's shows how much the label helps.
The measurement, the matched time and the estimate are those of the
denoising protocol (`jaxdiff.inverse.protocol`). A classical reference
beside them: the Gaussian filter (`gaussian_filter_baseline`) whose width
is best on the same images, an optimistic figure for that filter.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoiser
from jaxdiff import metrics
from jaxdiff.classifier.batched import image_batches
from jaxdiff.inverse import operators
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
        f"config.classify.denoise_sigmas has {sigma_noise}: {e} Or set it "
        "to '' to skip the denoising comparison.") from None


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
    Per-image arrays "clean", "noisy", "label", "null", "filter" (float
    [N, ...]), "psnr_<k>" ([N] dB) and "ssim_<k>" ([N]; for images of at
    least SSIM's window, `metrics.SSIM_FILTER_SIZE`) for k in noisy,
    label, null and filter (`gaussian_filter_baseline`), the filter's
    "filter_width" (pixels) and the time "t".
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
  out["filter"], out["filter_width"] = gaussian_filter_baseline(
      out["noisy"], out["clean"], batch_size=batch_size)
  for k in ("noisy", "label", "null", "filter"):
    for m, v in _image_metrics(out[k], out["clean"], batch_size).items():
      out[f"{m}_{k}"] = v
  out["t"] = t
  return out


def _image_metrics(x: np.ndarray, ref: np.ndarray,
                   batch_size: int) -> Dict[str, np.ndarray]:
  """`protocol.image_metrics` per image, batch by batch; PSNR only for
  images smaller than SSIM's window."""
  if min(x.shape[1:3]) < metrics.SSIM_FILTER_SIZE:
    return {"psnr": np.asarray(metrics.psnr(
        x, ref, data_range=protocol.DATA_RANGE))}
  parts = [protocol.image_metrics(jnp.asarray(x[i:i + batch_size]),
                                  jnp.asarray(ref[i:i + batch_size]))
           for i in range(0, len(x), batch_size)]
  return {k: np.concatenate([np.asarray(p[k]) for p in parts])
          for k in ("psnr", "ssim")}


FILTER_WIDTHS = (0.5, 0.7, 1.0, 1.4, 2.0)


def gaussian_filter_baseline(noisy: np.ndarray, clean: np.ndarray, *,
                             widths: Sequence[float] = FILTER_WIDTHS,
                             batch_size: int = 256
                             ) -> Tuple[np.ndarray, float]:
  """A classical denoiser: the Gaussian filter of the best width.

  Each width's filter (the `blur` operator of `jaxdiff.inverse.operators`)
  is applied to every noisy image (widths whose kernel is wider than the
  image are left out); the width with the highest mean PSNR
  against the clean images is kept. Choosing it on the images it is scored
  on makes the figure optimistic for the filter.

  Args:
    noisy: [N, H, W, C] noisy images in [-1, 1] units.
    clean: [N, H, W, C] clean images.
    widths: filter standard deviations (pixels) to choose from.
    batch_size: images per call.

  Returns:
    (filtered images clipped to [-1, 1], the chosen width).
  """
  best = None
  fits = [w for w in widths
          if len(operators.gaussian_kernel(w)) // 2 < min(noisy.shape[1:3])]
  if not fits:
    raise ValueError(f"No filter width of {tuple(widths)} fits "
                     f"{noisy.shape[1]}x{noisy.shape[2]} images.")
  for w in fits:
    blur = jax.jit(operators.make_operator(
        "blur", noisy.shape[1:], blur_sigma=w).forward)
    out = np.concatenate([
        np.clip(np.asarray(blur(jnp.asarray(noisy[i:i + batch_size]))),
                -1.0, 1.0) for i in range(0, len(noisy), batch_size)])
    score = float(np.mean(np.asarray(metrics.psnr(
        out, clean, data_range=protocol.DATA_RANGE))))
    if best is None or score > best[0]:
      best = (score, out, float(w))
  return best[1], best[2]
