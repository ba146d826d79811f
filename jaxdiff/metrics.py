"""Image-quality and distribution metrics over arrays.

Pure functions with no dependency on the rest of jaxdiff:

* `psnr` and `ssim`: per-image full-reference metrics in JAX (jittable),
  `dm_pix.psnr` and `dm_pix.ssim` with the project's conventions: images
  are NHWC (any number of leading batch axes is accepted) and, by default,
  live in [-1, 1], so the data range is 2; identical images give a PSNR of
  `PSNR_MAX_DB`, not +inf.
* `feature_statistics` and `frechet_distance`: the Frechet distance between
  two Gaussians fitted to feature sets (FID-style), in numpy float64.

The denoising protocol's measurement (`clip(x + sigma n, -1, 1)`) is
`jaxdiff.inverse.protocol.measure`.
"""
from __future__ import annotations

from typing import Callable, Tuple

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# PSNR is capped at this value: identical images give exactly `PSNR_MAX_DB`
# rather than +inf, so per-image PSNRs can be averaged safely.
PSNR_MAX_DB = 100.0


def _per_image(name: str, fn: Callable[[jax.Array, jax.Array], jax.Array],
               x: jax.Array, y: jax.Array) -> jax.Array:
  """`fn` (a dm_pix metric of [B, H, W, C] float images) on images with any
  leading axes [..., H, W, C] (integers read as float32); returns [...]."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.shape != y.shape:
    raise ValueError(f"{name}: shapes differ: {x.shape} vs {y.shape}.")
  if x.ndim < 3:
    raise ValueError(f"{name}: expected [..., H, W, C] images, got "
                     f"{x.shape}.")
  dtype = jnp.result_type(x.dtype, y.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  flat = lambda z: z.astype(dtype).reshape((-1,) + z.shape[-3:])
  return fn(flat(x), flat(y)).reshape(x.shape[:-3])  # [...]


def psnr(x: jax.Array, y: jax.Array, *, data_range: float = 2.0) -> jax.Array:
  """Per-image peak signal-to-noise ratio in dB (`dm_pix.psnr`).

  PSNR = 10 log10(data_range^2 / MSE), with the MSE taken over the last three
  axes (H, W, C). Identical images (MSE = 0) do not give +inf: the PSNR is
  capped at `PSNR_MAX_DB` (100 dB), so batch means stay finite.

  Args:
    x: Images, [B, H, W, C] (or [..., H, W, C]).
    y: Reference images, same shape as `x`.
    data_range: Max minus min of the pixel range (2.0 for images in [-1, 1]).

  Returns:
    PSNR of each image in dB, [B] (or [...]).
  """
  # dm_pix.psnr assumes a data range of 1: scale the images to it.
  fn = lambda a, b: dm_pix.psnr(a / data_range, b / data_range)
  return jnp.minimum(_per_image("psnr", fn, x, y), PSNR_MAX_DB)  # [B]


SSIM_FILTER_SIZE = 11  # the protocol's SSIM window (pixels)


def ssim(
    x: jax.Array,
    y: jax.Array,
    *,
    max_val: float = 2.0,
    filter_size: int = SSIM_FILTER_SIZE,
    filter_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> jax.Array:
  """Per-image structural similarity (Wang et al., 2004), `dm_pix.ssim`.

  A separable Gaussian window with 'valid' filtering; the SSIM map is
  averaged over pixels and channels (channels are treated independently, no
  colour transform). The defaults are the project's protocol: 11x11 window,
  sigma 1.5, k1 0.01, k2 0.03 and max value 2 (images in [-1, 1]; dm_pix's
  own default is 1).

  Args:
    x: Images, [B, H, W, C] (or [..., H, W, C]); H, W >= filter_size.
    y: Reference images, same shape as `x`.
    max_val: Dynamic range of the pixels (2.0 for images in [-1, 1]).
    filter_size: Gaussian window size.
    filter_sigma: Gaussian window standard deviation.
    k1: Stabiliser of the luminance term, c1 = (k1 * max_val)^2.
    k2: Stabiliser of the contrast term, c2 = (k2 * max_val)^2.

  Returns:
    Mean SSIM of each image, [B] (or [...]).
  """
  shape = jnp.shape(x)
  if len(shape) >= 3 and min(shape[-3], shape[-2]) < filter_size:
    raise ValueError(
        f"ssim: images {shape[-3]}x{shape[-2]} are smaller than the "
        f"filter ({filter_size}).")
  fn = lambda a, b: dm_pix.ssim(a, b, max_val=max_val,
                                filter_size=filter_size,
                                filter_sigma=filter_sigma, k1=k1, k2=k2)
  return _per_image("ssim", fn, x, y)  # [B]


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of a feature set, in float64.

  Args:
    features: Features, [N, D] with N >= 2 (a 1-D array is read as D = 1).

  Returns:
    (mu [D], cov [D, D]); the covariance is unbiased (divides by N - 1).
  """
  f = np.asarray(features, dtype=np.float64)
  if f.ndim == 1:
    f = f[:, None]  # [N, 1]
  if f.ndim != 2:
    raise ValueError(f"feature_statistics: expected [N, D], got {f.shape}.")
  if f.shape[0] < 2:
    raise ValueError("feature_statistics: need at least 2 samples.")
  mu = f.mean(axis=0)  # [D]
  cov = np.atleast_2d(np.cov(f, rowvar=False))  # [D, D]
  return mu, cov


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negatives clipped)."""
  a = 0.5 * (a + a.T)
  w, v = np.linalg.eigh(a)
  w = np.sqrt(np.clip(w, 0.0, None))
  return (v * w) @ v.T


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
  """Frechet distance between N(mu1, cov1) and N(mu2, cov2).

  d^2 = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2)).
  The trace term is computed from the eigenvalues of the symmetric PSD matrix
  sqrt(cov1) cov2 sqrt(cov1), which has the same spectrum as cov1 cov2; tiny
  negative eigenvalues from round-off are clipped to zero, so the result is
  real and stable even for singular covariances.

  Args:
    mu1: Mean of the first Gaussian, [D] (a scalar is read as D = 1).
    cov1: Covariance of the first Gaussian, [D, D] (a scalar: a variance).
    mu2: Mean of the second Gaussian, [D].
    cov2: Covariance of the second Gaussian, [D, D].

  Returns:
    The (squared) Frechet distance as a Python float, clipped at 0.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
  cov1 = np.atleast_2d(np.asarray(cov1, dtype=np.float64))
  cov2 = np.atleast_2d(np.asarray(cov2, dtype=np.float64))
  d = mu1.shape[0]
  if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
    raise ValueError(
        f"frechet_distance: inconsistent shapes {mu1.shape}, {cov1.shape}, "
        f"{mu2.shape}, {cov2.shape}.")
  sqrt1 = _sqrtm_psd(cov1)  # [D, D]
  m = sqrt1 @ cov2 @ sqrt1  # [D, D]
  eig = np.linalg.eigvalsh(0.5 * (m + m.T))  # [D]
  tr_covmean = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  dist = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean
  return float(max(dist, 0.0))
