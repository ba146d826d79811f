"""Tests for jaxdiff.metrics."""
import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import metrics


def _images(seed, shape):
  return jax.random.uniform(
      jax.random.PRNGKey(seed), shape, minval=-1.0, maxval=1.0)


# ----------------------------------------------------------------------- PSNR


def test_psnr_identical_images_is_finite_cap():
  x = _images(0, (3, 8, 8, 1))
  p = jax.jit(metrics.psnr)(x, x)
  assert p.shape == (3,)
  assert np.all(np.isfinite(p))
  np.testing.assert_allclose(p, metrics.PSNR_MAX_DB, rtol=1e-5)
  # The cap keeps means finite when some pairs are identical.
  assert np.isfinite(np.mean(metrics.psnr(x, jnp.stack([x[0], x[1], x[2]]))))


@pytest.mark.parametrize("d", [0.01, 0.1, 0.5])
def test_psnr_constant_offset_closed_form(d):
  x = _images(1, (2, 16, 16, 3)) * 0.4
  p = jax.jit(metrics.psnr)(x + d, x)
  np.testing.assert_allclose(p, 10 * np.log10(4.0 / d**2), atol=1e-3)


def test_psnr_data_range():
  x = jnp.zeros((1, 4, 4, 1))
  p = metrics.psnr(x + 0.1, x, data_range=1.0)
  np.testing.assert_allclose(p, 20.0, atol=1e-4)


def test_psnr_shape_mismatch_raises():
  with pytest.raises(ValueError):
    metrics.psnr(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 3)))


# ----------------------------------------------------------------------- SSIM


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (2, 32, 32, 3)])
def test_ssim_matches_dm_pix(shape):
  x = _images(2, shape)
  noisy = jnp.clip(x + 0.2 * jax.random.normal(jax.random.PRNGKey(3), shape),
                   -1, 1)
  unrelated = _images(4, shape)
  ours = jax.jit(metrics.ssim)
  ref = jax.jit(functools.partial(dm_pix.ssim, max_val=2.0))
  for y in (noisy, unrelated):
    got = ours(x, y)
    assert got.shape == (shape[0],)
    np.testing.assert_allclose(got, ref(x, y), atol=1e-5)


def test_ssim_matches_dm_pix_non_default_args():
  x = _images(5, (2, 20, 20, 1))
  y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.PRNGKey(6), x.shape),
               -1, 1)
  kwargs = dict(max_val=2.0, filter_size=7, filter_sigma=1.0, k1=0.02,
                k2=0.05)
  np.testing.assert_allclose(
      jax.jit(functools.partial(metrics.ssim, **kwargs))(x, y),
      dm_pix.ssim(x, y, **kwargs), atol=1e-5)


def test_ssim_of_identical_images_is_one():
  x = _images(7, (3, 28, 28, 1))
  np.testing.assert_allclose(jax.jit(metrics.ssim)(x, x), 1.0, atol=1e-5)


def test_ssim_too_small_raises():
  with pytest.raises(ValueError):
    metrics.ssim(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 8, 1)))


# ---------------------------------------------------------- Frechet distance


def test_frechet_identical_stats_is_zero():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(500, 16))
  mu, cov = metrics.feature_statistics(feats)
  assert mu.shape == (16,) and cov.shape == (16, 16)
  assert mu.dtype == np.float64 and cov.dtype == np.float64
  assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-8


def test_frechet_identical_singular_stats_is_zero():
  # Rank-deficient covariance (N < D): eigenvalues ~ -1e-16 must not give NaN.
  rng = np.random.default_rng(1)
  mu, cov = metrics.feature_statistics(rng.normal(size=(5, 32)))
  d = metrics.frechet_distance(mu, cov, mu, cov)
  assert np.isfinite(d) and d < 1e-6


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0),
                                         (1.0, 2.0, -0.5, 0.5),
                                         (3.0, 0.1, 2.0, 4.0)])
def test_frechet_1d_closed_form(m1, s1, m2, s2):
  expected = (m1 - m2)**2 + s1 + s2 - 2 * np.sqrt(s1 * s2)
  got = metrics.frechet_distance(np.array([m1]), np.array([[s1]]),
                                 np.array([m2]), np.array([[s2]]))
  np.testing.assert_allclose(got, expected, atol=1e-10)
  # Scalars are accepted too.
  np.testing.assert_allclose(metrics.frechet_distance(m1, s1, m2, s2),
                             expected, atol=1e-10)


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
  expected = (np.sum((mu1 - mu2)**2) + np.sum(s1) + np.sum(s2)
              - 2 * np.sum(np.sqrt(s1 * s2)))
  got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_full_covariance_against_commuting_case():
  # Covariances sharing eigenvectors: tr sqrt(C1 C2) = sum sqrt(l1 * l2).
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  l1, l2 = rng.uniform(0.1, 2.0, 6), rng.uniform(0.1, 2.0, 6)
  c1, c2 = (q * l1) @ q.T, (q * l2) @ q.T
  mu = np.zeros(6)
  expected = np.sum(l1) + np.sum(l2) - 2 * np.sum(np.sqrt(l1 * l2))
  np.testing.assert_allclose(metrics.frechet_distance(mu, c1, mu, c2),
                             expected, rtol=1e-8)


def test_feature_statistics_values():
  feats = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
  mu, cov = metrics.feature_statistics(feats)
  np.testing.assert_allclose(mu, [2.0, 2.0])
  np.testing.assert_allclose(cov, np.cov(feats.T))
  with pytest.raises(ValueError):
    metrics.feature_statistics(np.zeros((1, 3)))
