"""Tests for jaxdiff.inverse: operators, likelihoods, DPS, the denoise mode."""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import special as sp_special
from scipy import stats

from jaxdiff import denoiser
from jaxdiff import gamma
from jaxdiff import inverse
from jaxdiff import samplers
from jaxdiff import sde as sde_lib
from jaxdiff import settings as settings_lib
from jaxdiff.settings import DenoiseSettings

REPO = pathlib.Path(__file__).resolve().parents[1]

# Gaussian data x ~ N(MU, S2 I): the score is exact, and so is the posterior
# of y = x + SIG n: mean (S2 y + SIG^2 MU) / (S2 + SIG^2), variance
# S2 SIG^2 / (S2 + SIG^2).
MU, S2, SIG = 0.2, 0.25, 0.3
SHAPE = (8, 8, 1)


def _gaussian_eps(sde, mu=MU, s2=S2):
  """eps(x, t) = sigma (x - alpha mu) / (alpha^2 s2 + sigma^2), exactly."""
  def eps_fn(x, t):
    a = sde_lib.bcast(sde.alpha(t), x)
    s = sde_lib.bcast(sde.sigma(t), x)
    return s * (x - a * mu) / (a**2 * s2 + s**2)
  return eps_fn


def _gaussian_denoiser(sde):
  """The exact denoiser of N(MU, S2 I) data (an eps network)."""
  return denoiser.eps_denoiser(sde, _gaussian_eps(sde))


@pytest.fixture(name="vp", scope="module")
def fixture_vp():
  return sde_lib.make_sde("vp", schedule="cosine")


@pytest.fixture(name="gaussian_case", scope="module")
def fixture_gaussian_case(vp):
  """(problem, x, y, exact posterior mean) for the identity operator."""
  problem = inverse.InverseProblem(
      inverse.make_operator("denoise", SHAPE), sigma=SIG,
      noise_model="gaussian", clip=False)
  x = MU + math.sqrt(S2) * jax.random.normal(jax.random.key(1), (4, *SHAPE))
  y = problem.measure(jax.random.key(2), x)
  exact = (S2 * y + SIG**2 * MU) / (S2 + SIG**2)
  return problem, x, y, exact


# ------------------------------------------------------------------ operators


def test_denoise_operator_is_identity():
  op = inverse.make_operator("denoise", (5, 5, 2))
  x = jax.random.normal(jax.random.key(0), (3, 5, 5, 2))
  np.testing.assert_array_equal(op.forward(x), x)


def test_inpaint_random_masks_a_fixed_fraction_of_pixel_positions():
  op = inverse.make_operator("inpaint_random", (28, 28, 2),
                             missing_fraction=0.3, mask_seed=5)
  mask = np.asarray(op.forward(jnp.ones((1, 28, 28, 2))))[0]
  assert set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(mask[..., 0], mask[..., 1])  # whole pixels
  assert abs((mask == 0).mean() - 0.3) < 0.06
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 2))
  np.testing.assert_array_equal(op.forward(x), np.where(mask, x, 0.0))
  again = inverse.make_operator("inpaint_random", (28, 28, 2),
                                missing_fraction=0.3, mask_seed=5)
  other = inverse.make_operator("inpaint_random", (28, 28, 2),
                                missing_fraction=0.3, mask_seed=6)
  ones = jnp.ones((1, 28, 28, 2))
  np.testing.assert_array_equal(again.forward(ones)[0], mask)
  assert np.any(np.asarray(other.forward(ones)[0]) != mask)


def test_inpaint_box_zeroes_the_centred_square():
  op = inverse.make_operator("inpaint_box", (28, 28, 1), box_size=12)
  out = np.asarray(op.forward(jnp.full((2, 28, 28, 1), 0.5)))
  expected = np.full((28, 28), 0.5)
  expected[8:20, 8:20] = 0.0  # (28 - 12) // 2 = 8
  np.testing.assert_array_equal(out[0, ..., 0], expected)
  np.testing.assert_array_equal(out[1, ..., 0], expected)


def test_blur_of_a_delta_is_the_kernel():
  op = inverse.make_operator("blur", (21, 21, 1), blur_sigma=1.0)
  delta = np.zeros((1, 21, 21, 1), np.float32)
  delta[0, 10, 10, 0] = 1.0
  out = np.asarray(op.forward(jnp.asarray(delta)))[0, ..., 0]
  taps = np.exp(-0.5 * np.arange(-3, 4) ** 2)  # 2 ceil(3 sigma) + 1 = 7 taps
  taps /= taps.sum()
  expected = np.zeros((21, 21))
  expected[7:14, 7:14] = np.outer(taps, taps)
  np.testing.assert_allclose(out, expected, atol=1e-7)


def test_blur_keeps_constants_and_channels_apart():
  op = inverse.make_operator("blur", (12, 12, 2), blur_sigma=1.5)
  x = jnp.concatenate([jnp.full((1, 12, 12, 1), 0.3),
                       jnp.full((1, 12, 12, 1), -0.7)], axis=-1)
  np.testing.assert_allclose(op.forward(x), x, atol=1e-6)


@pytest.mark.parametrize("name,factor", [("sr2", 2), ("sr4", 4)])
def test_super_resolution_averages_blocks(name, factor):
  op = inverse.make_operator(name, (4, 4, 1))
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  out = np.asarray(op.forward(x))[0, ..., 0]
  expected = {2: [[2.5, 4.5], [10.5, 12.5]], 4: [[7.5]]}[factor]
  np.testing.assert_allclose(out, expected)
  const = op.forward(jnp.full((2, 4, 4, 1), -0.25))
  np.testing.assert_allclose(const, -0.25)
  up = np.asarray(op.backproject(op.forward(x)))[0, ..., 0]
  np.testing.assert_allclose(up, np.kron(np.asarray(expected),
                                         np.ones((factor, factor))))


@pytest.mark.parametrize("name,options,match", [
    ("nope", {}, "Known: blur, denoise"),
    ("sr4", {}, "divisible by 4"),
    ("inpaint_random", {"missing_fraction": 1.0}, r"in \[0, 1\)"),
    ("inpaint_box", {"box_size": 40}, r"box_size must be in \[1, 30\]"),
    ("blur", {"blur_sigma": 0.0}, "must be > 0"),
    ("blur", {"radius": 2}, "known: missing_fraction"),
])
def test_bad_operator_arguments_say_what_to_do(name, options, match):
  with pytest.raises(ValueError, match=match):
    inverse.make_operator(name, (30, 30, 1), **options)


# ------------------------------------------------------------ likelihoods


def test_gaussian_log_likelihood_closed_form():
  y = jnp.asarray([[0.1, -0.4, 0.9]])
  m = jnp.asarray([[0.0, 0.2, 1.0]])
  expected = -(0.01 + 0.36 + 0.01) / (2 * 0.3**2)
  np.testing.assert_allclose(
      inverse.gaussian_log_likelihood(y, m, 0.3), [expected], rtol=1e-6)


def test_clipped_likelihood_is_gaussian_inside_and_log_phi_at_bounds():
  sigma = 0.3
  mean = jnp.asarray([[0.2, -0.5, 0.95, -0.9, 2.0, -3.0]])
  y = jnp.asarray([[0.1, -0.3, 1.0, -1.0, 1.0, -1.0]])
  per_pixel = [-(0.1**2) / (2 * sigma**2), -(0.2**2) / (2 * sigma**2),
               stats.norm.logcdf((0.95 - 1) / sigma),
               stats.norm.logcdf((-1 + 0.9) / sigma),
               stats.norm.logcdf((2.0 - 1) / sigma),
               stats.norm.logcdf((-1 + 3.0) / sigma)]
  got = [float(inverse.clipped_log_likelihood(y[:, i:i + 1],
                                              mean[:, i:i + 1], sigma)[0])
         for i in range(6)]
  np.testing.assert_allclose(got, per_pixel, rtol=1e-5, atol=1e-7)
  inside = jnp.asarray([[0.3, -0.2, 0.99]])
  np.testing.assert_allclose(
      inverse.clipped_log_likelihood(inside, inside * 0.5, sigma),
      inverse.gaussian_log_likelihood(inside, inside * 0.5, sigma), rtol=1e-6)


def test_clipped_likelihood_gradient_is_finite_in_the_tails():
  y = jnp.asarray([[1.0, -1.0, 1.0, -1.0, 0.5]])
  mean = jnp.asarray([[-60.0, 60.0, 60.0, -60.0, 0.4]])
  grad = jax.grad(lambda m: inverse.clipped_log_likelihood(y, m, 0.3).sum())(
      mean)
  assert np.all(np.isfinite(grad))
  # d/dm log Phi((m - 1)/s) > 0 (raising m makes y = 1 likelier), etc.
  assert grad[0, 0] > 0 and grad[0, 1] < 0
  np.testing.assert_allclose(grad[0, 4], 0.1 / 0.09, rtol=1e-5)


def test_measure_noise_statistics_clipping_and_batch_independence():
  op = inverse.make_operator("denoise", (28, 28, 1))
  x = jnp.zeros((4, 28, 28, 1))
  free = inverse.InverseProblem(op, sigma=0.3, clip=False)
  y = np.asarray(free.measure(jax.random.key(0), x))
  assert abs(y.mean()) < 0.02 and abs(y.std() - 0.3) < 0.015
  clipped = inverse.InverseProblem(op, sigma=0.3)
  yc = np.asarray(clipped.measure(jax.random.key(0), x + 0.9))
  assert yc.max() == 1.0 and yc.min() >= -1.0
  np.testing.assert_allclose(yc, np.clip(y + 0.9, -1, 1), atol=1e-6)
  part = free.measure(jax.random.key(0), x[2:4], jnp.asarray([2, 3]))
  np.testing.assert_array_equal(part, y[2:4])


def test_protocol_measure_psnr_matches_sigma():
  """clip(x + 0.3 n, -1, 1) of x ~ U[-0.5, 0.5]: the PSNR is 10 log10(4 /
  E[(y - x)^2]), with the clipped expectation in closed form (for x near 0.5
  clipping lowers the MSE: +0.09 dB over the unclipped 10 log10(4 /
  sigma^2), which holds without the clip)."""
  sigma = 0.3
  x = jax.random.uniform(jax.random.key(9), (1, 512, 512, 1), minval=-0.5,
                         maxval=0.5)
  y = jax.jit(lambda x: inverse.measure(jax.random.key(10), x, sigma))(x)
  assert y.dtype == x.dtype and float(jnp.abs(y).max()) <= 1.0
  psnr = float(inverse.image_metrics(y, x)["psnr"][0])
  mse = _expected_clipped_mse(np.asarray(x, np.float64), sigma).mean()
  assert abs(psnr - 10 * np.log10(4.0 / mse)) < 0.03
  free = inverse.measure(jax.random.key(10), x, sigma, clip=False)
  naive = 10 * np.log10(4.0 / sigma**2)
  assert abs(float(inverse.image_metrics(free, x)["psnr"][0]) - naive) < 0.03


def test_impute_restores_the_unclipped_noise_at_the_bound():
  """For x at the bound, y = clip(x + 0.3 n) is clipped half the time; the
  imputed y has the distribution of x + 0.3 n again (mean -1, std 0.3)."""
  op = inverse.make_operator("denoise", (28, 28, 1))
  problem = inverse.InverseProblem(op, sigma=0.3)
  x = jnp.full((64, 28, 28, 1), -1.0)
  y = problem.measure(jax.random.key(0), x)
  y_imp = np.asarray(problem.impute(jax.random.key(1), y))
  y = np.asarray(y)
  inside = np.abs(y) < 1
  np.testing.assert_array_equal(y_imp[inside], y[inside])
  assert np.all(y_imp[y <= -1] < -1)
  assert 0.45 < np.mean(y <= -1) < 0.55
  assert abs(y_imp.mean() + 1) < 0.005 and abs(y_imp.std() - 0.3) < 0.005
  # Upper bound too; the Gaussian model (clipping ignored) keeps y.
  y_hi = problem.measure(jax.random.key(2), -x)
  assert np.all(np.asarray(problem.impute(jax.random.key(1), y_hi))[
      np.asarray(y_hi) >= 1] > 1)
  plain = inverse.InverseProblem(op, sigma=0.3, noise_model="gaussian")
  np.testing.assert_array_equal(plain.impute(jax.random.key(1), y), y)


@pytest.mark.slow
def test_imputed_tweedie_averages_estimates_of_imputed_y(vp):
  """Tweedie with the clipped model: the mean over K imputations of the
  one-call estimate; K = 1 with the Gaussian model is one call on y."""
  op = inverse.make_operator("denoise", SHAPE)
  clipped = inverse.InverseProblem(op, sigma=SIG)
  gauss = inverse.InverseProblem(op, sigma=SIG, noise_model="gaussian")
  denoise_fn = _gaussian_denoiser(vp)
  x = jnp.full((4, *SHAPE), -0.95)
  y = clipped.measure(jax.random.key(5), x)
  assert float(jnp.mean(y <= -1)) > 0.2
  settings = inverse.MethodSettings(clip_output=False, impute_samples=3)
  key = jax.random.key(7)
  est = inverse.make_method("tweedie", vp, clipped, settings)(denoise_fn, y,
                                                              key)
  plain = inverse.make_method("tweedie", vp, gauss, settings)
  one = lambda yy: plain(denoise_fn, yy, key)
  expected = jnp.mean(jnp.stack([one(clipped.impute(k, y)) for k in
                                 jax.random.split(key, 3)]), axis=0)
  np.testing.assert_allclose(est, expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(est, one(y), atol=1e-3)


def test_bad_noise_settings_say_what_to_do():
  op = inverse.make_operator("denoise", SHAPE)
  with pytest.raises(ValueError, match="must be > 0"):
    inverse.InverseProblem(op, sigma=0.0)
  with pytest.raises(ValueError, match="Known: clipped, gaussian"):
    inverse.InverseProblem(op, noise_model="laplace")


# ------------------------------------------------------------ matched time


def test_matched_time_matches_the_noise_level(vp):
  t = inverse.matched_time(vp, 0.3)
  np.testing.assert_allclose(float(vp.sigma(t) / vp.alpha(t)), 0.3, rtol=1e-5)
  ve = sde_lib.make_sde("ve", sigma_min=0.01, sigma_max=50.0)
  np.testing.assert_allclose(inverse.matched_time(ve, 0.3),
                             math.log(30) / math.log(5000), rtol=1e-5)
  with pytest.raises(ValueError, match="outside the process's range"):
    inverse.matched_time(ve, 0.001)
  chain = sde_lib.make_sde("vp", schedule="linear", num_steps=1000)
  t_chain = inverse.matched_time(chain, 0.3)
  assert t_chain * 1000 == round(t_chain * 1000)
  # Between two steps without snapping; 'nearest' is its rounding.
  t_free = inverse.matched_time(chain, 0.3, snap="none")
  np.testing.assert_allclose(float(chain.sigma(t_free) / chain.alpha(t_free)),
                             0.3, rtol=1e-5)
  assert t_chain == round(t_free * 1000) / 1000


def test_gaussian_only_methods_refuse_the_gamma_process(gaussian_case):
  """DDGM's noise is a centred gamma: y = x + sigma n is not x_t / alpha for
  it, so every method, DPS and the Tweedie estimate say so in one line."""
  problem, _, y, _ = gaussian_case
  ddgm = gamma.make_gamma_process(num_steps=100)
  denoise_fn = denoiser.eps_denoiser(ddgm, lambda x, t: 0.1 * x)
  for name in inverse.METHODS.names():
    with pytest.raises(ValueError, match="assumes Gaussian noise") as error:
      inverse.make_method(name, ddgm, problem)
    assert "\n" not in str(error.value) and "GammaProcess" in str(error.value)
  with pytest.raises(ValueError, match="^DPS assumes Gaussian noise"):
    inverse.dps_stepper("ddpm", ddgm, denoise_fn, problem, y, zeta=1.0)
  with pytest.raises(ValueError, match="Tweedie .* assumes Gaussian noise"):
    inverse.tweedie(ddgm, denoise_fn, y, 0.1)


# ------------------------------------------------- methods on Gaussian data


def test_tweedie_at_matched_time_is_the_exact_posterior_mean(vp,
                                                             gaussian_case):
  problem, _, y, exact = gaussian_case
  for sde in (vp, sde_lib.make_sde("vp", schedule="linear")):
    method = inverse.make_method(
        "tweedie", sde, problem, inverse.MethodSettings(clip_output=False))
    est = jax.jit(lambda y_, m=method, s=sde: m(_gaussian_denoiser(s), y_,
                                                jax.random.key(0)))(y)
    np.testing.assert_allclose(est, exact, atol=2e-5)


def _check_posterior_draws(method, denoise_fn, y, exact, *, mean_tol, var_tol):
  """256 draws of `method` have the exact posterior's mean and variance
  (standard error of each pixel's mean: about 0.012-0.016)."""
  draws = jax.jit(lambda y_: jax.vmap(lambda k: method(denoise_fn, y_, k))(
      jax.random.split(jax.random.key(3), 256)))(y)  # [256, 4, 8, 8, 1]
  post_var = S2 * SIG**2 / (S2 + SIG**2)
  assert float(jnp.abs(draws.mean(0) - exact).mean()) < mean_tol
  assert abs(float(draws.var(0).mean()) / post_var - 1) < var_tol


def test_matched_sampling_draws_the_exact_posterior(vp, gaussian_case):
  """Sampling from alpha(t*) y at t* samples p(x | y): mean exact, variance
  close (DDPM's ancestral step is exact in the mean for Gaussian data)."""
  problem, _, y, exact = gaussian_case
  settings = inverse.MethodSettings(steps=50, clip_output=False)
  method = inverse.make_method("matched", vp, problem, settings)
  _check_posterior_draws(method, _gaussian_denoiser(vp), y, exact,
                         mean_tol=0.025, var_tol=0.15)


def test_dps_posterior_mean_is_close_to_the_exact_one(vp, gaussian_case):
  """DPS is approximate; with zeta=0.3 and 50 DDPM steps its mean recovers
  most of the way from the prior mean to the exact posterior mean."""
  problem, _, y, exact = gaussian_case
  settings = inverse.MethodSettings(steps=50, zeta=0.3, num_posterior=128,
                                    clip_output=False)
  method = inverse.make_method("posterior_mean", vp, problem, settings)
  est = jax.jit(lambda y_: method(_gaussian_denoiser(vp), y_,
                                  jax.random.key(3)))(y)
  err = float(jnp.abs(est - exact).mean())
  assert err < 0.7 * float(jnp.abs(y - exact).mean())
  assert err < 0.3 * float(jnp.abs(MU - exact).mean())


@pytest.mark.parametrize("sampler,var_tol", [("euler_maruyama", 0.05),
                                             ("ddpm", 0.1)])
def test_likelihood_weighted_dps_samples_the_exact_posterior(
    vp, gaussian_case, sampler, var_tol):
  """For Gaussian data the 'likelihood' weighting with prior_var = S2 is the
  exact conditional score: sampling from pure noise draws p(x | y), whose
  mean and variance are known in closed form (DDPM's variance converges
  more slowly in the number of steps: 0.80 of it at 50 steps, 0.93 at 200)."""
  problem, _, y, exact = gaussian_case
  settings = inverse.MethodSettings(sampler=sampler, steps=200, zeta=1.0,
                                    clip_output=False,
                                    dps_weighting="likelihood", prior_var=S2)
  method = inverse.make_method("dps", vp, problem, settings)
  denoise_fn = _gaussian_denoiser(vp)
  _check_posterior_draws(method, denoise_fn, y, exact, mean_tol=0.02,
                         var_tol=var_tol)
  # The paper's normalised step with the same zeta is far from it.
  normalised = inverse.make_method(
      "posterior_mean", vp, problem, inverse.MethodSettings(
          steps=100, zeta=1.0, clip_output=False, num_posterior=64))
  est = jax.jit(lambda y_: normalised(denoise_fn, y_, jax.random.key(3)))(y)
  assert float(jnp.abs(est - exact).mean()) > 0.05


def test_dps_weighting_is_checked(vp, gaussian_case):
  problem, _, y, _ = gaussian_case
  denoise_fn = _gaussian_denoiser(vp)
  with pytest.raises(ValueError, match="weighting"):
    inverse.dps_stepper("ddpm", vp, denoise_fn, problem, y, zeta=1.0,
                        weighting="paper")
  with pytest.raises(ValueError, match="prior_var"):
    inverse.dps_stepper("ddpm", vp, denoise_fn, problem, y, zeta=1.0,
                        weighting="likelihood", prior_var=0.0)


@pytest.mark.parametrize("group", [1, 2])
def test_posterior_draws_in_groups_equal_all_at_once(vp, gaussian_case, group):
  """posterior_batch only changes how the K draws are scheduled (lax.map
  over groups instead of one vmap): draw k keeps its key, so the mean is the
  same."""
  problem, _, y, _ = gaussian_case
  denoise_fn = _gaussian_denoiser(vp)
  est = {}
  for batch in (0, group):
    settings = inverse.MethodSettings(steps=6, zeta=0.3, num_posterior=4,
                                      posterior_batch=batch)
    method = inverse.make_method("posterior_mean", vp, problem, settings)
    est[batch] = jax.jit(lambda y_, m=method: m(denoise_fn, y_,
                                                jax.random.key(3)))(y)
  np.testing.assert_allclose(est[group], est[0], atol=1e-5)
  assert float(jnp.abs(est[0] - y).mean()) > 0.05  # not a copy of y
  with pytest.raises(ValueError, match="posterior_batch"):
    inverse.make_method("posterior_mean", vp, problem,
                        inverse.MethodSettings(posterior_batch=-1))


def test_antithetic_pair_mean_is_the_exact_posterior_mean(vp, gaussian_case):
  """For Gaussian data every matched-start draw is affine in its noise, so
  an antithetic pair (the same key, the noise negated) averages to the
  exact posterior mean E[x | y]; two independent draws do not. Each draw of
  the pair is still a posterior draw (see the test of `matched` above)."""
  problem, _, y, exact = gaussian_case
  denoise_fn = _gaussian_denoiser(vp)
  est = {}
  for antithetic in (True, False):
    settings = inverse.MethodSettings(steps=20, num_posterior=2,
                                      posterior_of="matched",
                                      antithetic=antithetic,
                                      clip_output=False)
    method = inverse.make_method("posterior_mean", vp, problem, settings)
    est[antithetic] = jax.jit(lambda y_, m=method: m(denoise_fn, y_,
                                                     jax.random.key(3)))(y)
  np.testing.assert_allclose(est[True], exact, atol=1e-4)
  assert float(jnp.abs(est[False] - exact).mean()) > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("k", [3, 4])
def test_antithetic_draws_pair_up_by_key_and_sign(vp, gaussian_case, k):
  """Draw j and j + K - K // 2 (j < K // 2) share a key with opposite
  noise; an odd K's middle draw is unpaired. The DPS mean equals the mean of the draws made
  one by one with the same keys and signs."""
  problem, _, y, _ = gaussian_case
  denoise_fn = _gaussian_denoiser(vp)
  settings = inverse.MethodSettings(steps=6, zeta=0.3, num_posterior=k,
                                    antithetic=True, clip_output=False)
  mean = inverse.make_method("posterior_mean", vp, problem, settings)
  one = inverse.make_method("dps", vp, problem, settings)
  keys = jax.random.split(jax.random.key(3), k)
  half = k // 2
  draws = [one(denoise_fn, y, keys[j], noise_sign=1.0) for j in range(k - half)]
  draws += [one(denoise_fn, y, keys[j], noise_sign=-1.0) for j in range(half)]
  np.testing.assert_allclose(mean(denoise_fn, y, jax.random.key(3)),
                             jnp.mean(jnp.stack(draws), 0), atol=1e-5)
  assert float(jnp.abs(draws[0] - draws[k - half]).mean()) > 0.05


def test_dps_step_is_the_normalised_residual_gradient(vp, gaussian_case):
  """For Gaussian data x0_hat(x) = c1 x + c0, so a DPS step adds exactly
  zeta c1 (y - x0_hat) / ||y - x0_hat|| to the base step (per image)."""
  problem, _, y, _ = gaussian_case
  denoise_fn = _gaussian_denoiser(vp)
  x = jax.random.normal(jax.random.key(4), y.shape)
  t, s, key, zeta = 0.6, 0.5, jax.random.key(5), 0.7
  base = samplers.make_sampler("ddpm", vp, denoise_fn)
  dps = inverse.dps_stepper("ddpm", vp, denoise_fn, problem, y, zeta=zeta)
  noise = samplers.Noise(key)
  got = dps.step({"x": x}, jnp.float32(t), jnp.float32(s), noise)["x"]
  ref = base.step({"x": x}, jnp.float32(t), jnp.float32(s), noise)["x"]
  a, sg = float(vp.alpha(t)), float(vp.sigma(t))
  c1 = a * S2 / (a**2 * S2 + sg**2)
  x0 = c1 * x + (1 - a * c1) * MU
  r = np.asarray(y - x0)
  norm = np.sqrt((r**2).sum(axis=(1, 2, 3), keepdims=True))
  np.testing.assert_allclose(got - ref, zeta * c1 * r / norm, atol=1e-5)


def test_clipped_likelihood_dps_finds_the_censored_posterior_mean(vp):
  """Dark Gaussian data, y = clip(x + SIG n, -1, 1): a quarter of the pixels
  clip. For a clipped pixel E[x | y = -1] = MU + g (E[z | z <= -1] - MU) with
  z = x + SIG n, g = S2 / (S2 + SIG^2) (x and z are jointly Gaussian). DPS
  with the censored likelihood gets much closer to it than with the plain
  Gaussian one, which treats y = -1 as an exact reading."""
  mu, s2 = -0.7, 0.09
  op = inverse.make_operator("denoise", SHAPE)
  x = mu + math.sqrt(s2) * jax.random.normal(jax.random.key(1), (4, *SHAPE))
  y = np.asarray(inverse.InverseProblem(op, SIG).measure(jax.random.key(2), x))
  v = s2 + SIG**2
  g = s2 / v
  a = (-1 - mu) / math.sqrt(v)
  below = mu - math.sqrt(v) * stats.norm.pdf(a) / stats.norm.cdf(a)
  exact = np.where(y <= -1, mu + g * (below - mu), mu + g * (y - mu))
  assert 0.15 < (y <= -1).mean() < 0.4 and (y >= 1).sum() == 0

  denoise_fn = denoiser.eps_denoiser(vp, _gaussian_eps(vp, mu, s2))

  errors = {}
  for noise_model in ("gaussian", "clipped"):
    problem = inverse.InverseProblem(op, SIG, noise_model=noise_model)
    method = inverse.make_method("posterior_mean", vp, problem,
                                 inverse.MethodSettings(
                                     steps=50, zeta=0.3, num_posterior=64,
                                     clip_output=False))
    est = jax.jit(lambda y_, m=method: m(denoise_fn, y_, jax.random.key(3)))(
        jnp.asarray(y))
    errors[noise_model] = float(np.mean((np.asarray(est) - exact)**2))
  assert errors["clipped"] < 0.3 * errors["gaussian"], errors
  assert errors["clipped"] < 0.1 * float(np.mean((y - exact)**2)), errors


@pytest.mark.parametrize("sampler", ["ddpm", "heun", "dpm_solver_pp"])
def test_dps_with_zeta_zero_is_the_base_sampler(vp, gaussian_case, sampler):
  problem, _, y, _ = gaussian_case
  denoise_fn = _gaussian_denoiser(vp)
  settings = inverse.MethodSettings(sampler=sampler, steps=6, zeta=0.0,
                                    clip_output=False)
  method = inverse.make_method("dps", vp, problem, settings)
  key = jax.random.key(7)
  got = jax.jit(lambda y_: method(denoise_fn, y_, key))(y)
  ref = jax.jit(lambda: samplers.sample(
      sampler, vp, denoise_fn, key, y.shape, steps=6, grid=settings.grid))()
  np.testing.assert_allclose(got, ref, atol=1e-5)


def _exact_network(sde, param):
  """A "network" (params, x_in, t, y) -> F whose output is the exact target
  of `param` for N(MU, S2 I) data: the same denoiser as `_gaussian_denoiser`
  written in another parameterization (its input scaled by c_in, if any)."""
  eps_fn = _gaussian_eps(sde)

  def apply_fn(params, x_in, t, y=None):
    del params, y
    x = x_in
    if param.input_scale is not None:
      x = x_in / sde_lib.bcast(param.input_scale(sde, t), x_in)
    p = denoiser.from_eps(sde, x, t, eps_fn(x, t))
    return param.target(sde, p.x0, p.eps, t)

  return apply_fn


@pytest.mark.parametrize("prediction", ["x0", "v", "velocity", "edm"])
def test_tweedie_and_dps_see_only_the_prediction(vp, gaussian_case,
                                                 prediction):
  """A network that predicts x0, v, the flow velocity or EDM's F exactly
  gives the same Tweedie estimate and DPS reconstructions (normalised and
  likelihood weighting) as the equivalent eps network."""
  problem, _, y, _ = gaussian_case
  param = denoiser.make_parameterization(prediction)
  other = denoiser.model_denoiser(_exact_network(vp, param), None, vp, param)
  eps_net = denoiser.model_denoiser(
      _exact_network(vp, denoiser.eps_prediction()), None, vp,
      denoiser.eps_prediction())
  key = jax.random.key(3)
  runs = [("tweedie", inverse.MethodSettings(clip_output=False))]
  if prediction in ("v", "edm"):  # the DPS runs (slower): two of the four
    runs += [(name, inverse.MethodSettings(
        steps=6, zeta=0.5, clip_output=False, dps_weighting=weighting,
        prior_var=S2)) for name, weighting in (
            ("dps", "normalised"), ("dps_matched", "likelihood"))]
  for name, settings in runs:
    method = inverse.make_method(name, vp, problem, settings)
    run = jax.jit(lambda y_, f, m=method: m(f, y_, key), static_argnums=1)
    ref = run(y, eps_net)
    np.testing.assert_allclose(run(y, other), ref, rtol=1e-4, atol=1e-4,
                               err_msg=f"{name} ({prediction})")
    if name != "tweedie":
      assert float(jnp.abs(ref - y).mean()) > 0.01  # a real reconstruction


def test_dps_is_deterministic_for_a_key(vp, gaussian_case):
  problem, _, y, _ = gaussian_case
  method = inverse.make_method(
      "dps", vp, problem, inverse.MethodSettings(steps=5, zeta=0.5))
  run = jax.jit(lambda y_, k: method(_gaussian_denoiser(vp), y_, k))
  a = run(y, jax.random.key(0))
  np.testing.assert_array_equal(a, run(y, jax.random.key(0)))
  assert float(jnp.abs(a - run(y, jax.random.key(1))).max()) > 1e-3
  assert float(a.min()) >= -1 and float(a.max()) <= 1  # clip_output


@pytest.mark.parametrize("operator", ["sr2", "blur"])
def test_dps_reduces_the_residual_for_other_operators(vp, operator):
  """Guidance pulls samples towards the measurement: ||y - A x|| is smaller
  with zeta > 0 than without (same key)."""
  op = inverse.make_operator(operator, (12, 12, 1), box_size=4)
  problem = inverse.InverseProblem(op, sigma=0.05, noise_model="gaussian")
  x = MU + math.sqrt(S2) * jax.random.normal(jax.random.key(1), (4, 12, 12, 1))
  y = problem.measure(jax.random.key(2), x)

  def residual(zeta):
    method = inverse.make_method("dps", vp, problem, inverse.MethodSettings(
        steps=20, zeta=zeta, clip_output=False))
    est = method(_gaussian_denoiser(vp), y, jax.random.key(3))
    return float(jnp.mean(problem.residual(y, est)))

  assert residual(1.0) < 0.6 * residual(0.0)


# ------------------------------------------------------------------ protocol


@pytest.mark.parametrize("c", [0.05, 0.2])
def test_protocol_psnr_of_a_constant_offset(c):
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-0.5,
                         maxval=0.5)
  m = inverse.image_metrics(x + c, x)
  np.testing.assert_allclose(m["psnr"], 10 * np.log10(4.0 / c**2), atol=1e-3)
  np.testing.assert_allclose(inverse.image_metrics(x, x)["ssim"], 1.0,
                             atol=1e-5)


def test_protocol_ssim_is_dm_pix_with_max_value_two():
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1), minval=-1)
  y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), -1, 1)
  np.testing.assert_allclose(inverse.image_metrics(y, x)["ssim"],
                             dm_pix.ssim(y, x, max_val=2.0), atol=1e-5)


def test_denoise_settings_errors_say_what_to_do():
  import ml_collections  # pylint: disable=g-import-not-at-top
  bad = ml_collections.ConfigDict({"denoise": {"method": "dps"}})
  with pytest.raises(ValueError, match="Unknown config.denoise keys"):
    settings_lib.section(bad, "denoise")
  with pytest.raises(ValueError, match="use 'method:N'"):
    inverse.check_settings(DenoiseSettings(method_num_images="dps=3"))
  with pytest.raises(ValueError, match="Unknown inverse method 'dsp'"):
    inverse.check_settings(DenoiseSettings(methods="tweedie,dsp"))
  with pytest.raises(ValueError, match="Unknown operator 'blurr'"):
    inverse.check_settings(DenoiseSettings(operator="blurr"))
  with pytest.raises(ValueError, match="set it to False"):
    inverse.method_settings(DenoiseSettings(sampler="heun"))
  settings = inverse.method_settings(
      DenoiseSettings(sampler="heun", clip_denoised=False))
  assert settings.sampler_options == ()


def test_denoise_settings_reach_the_method_settings():
  """The posterior-mean keys and the sampler's options reach MethodSettings;
  config.denoise.clip_denoised replaces config.sampling's."""
  from configs import organamnist  # pylint: disable=g-import-not-at-top
  config = organamnist.get_config("cpu")
  config.denoise.antithetic = True
  config.denoise.posterior_of = "matched"
  config.denoise.posterior_batch = 2
  config.denoise.sampler = "ddim"
  config.denoise.clip_denoised = False
  config.sampling.eta = 0.5
  ds = settings_lib.section(config, "denoise")
  settings = inverse.method_settings(
      ds, {"eta": 0.5, "clip_denoised": True})
  assert settings.antithetic and settings.posterior_of == "matched"
  assert settings.posterior_batch == 2 and settings.sampler == "ddim"
  assert dict(settings.sampler_options) == {"eta": 0.5,
                                            "clip_denoised": False}


def _expected_clipped_mse(x, s):
  """E[(clip(x + s n, -1, 1) - x)^2] in closed form, per pixel."""
  a, b = (-1 - x) / s, (1 - x) / s
  pdf = lambda z: np.exp(-z * z / 2) / np.sqrt(2 * np.pi)
  inside = s * s * (sp_special.ndtr(b) - sp_special.ndtr(a)
                    - (b * pdf(b) - a * pdf(a)))
  return (inside + (1 + x)**2 * sp_special.ndtr(a)
          + (1 - x)**2 * (1 - sp_special.ndtr(b)))


def test_noisy_input_scores_on_the_first_300_test_images(real_data_dir):
  """The protocol's noisy input: about 17.2 dB and SSIM 0.54 (reference
  system: 17.21 dB). The PSNR agrees with the closed-form expectation."""
  from jaxdiff import data  # pylint: disable=g-import-not-at-top
  ds = data.load("organamnist", "test", data_dir=real_data_dir, limit=300)
  x = ds.images.astype(np.float32) / 127.5 - 1.0
  problem = inverse.InverseProblem(
      inverse.make_operator("denoise", x.shape[1:]), sigma=0.3)
  y = jax.jit(problem.measure)(jax.random.key(0), jnp.asarray(x))
  m = jax.jit(inverse.image_metrics)(y, jnp.asarray(x))
  psnr, ssim = float(m["psnr"].mean()), float(m["ssim"].mean())
  expected = np.mean(10 * np.log10(
      4.0 / _expected_clipped_mse(x.astype(np.float64), 0.3).mean((1, 2, 3))))
  assert abs(psnr - expected) < 0.03, (psnr, expected)
  assert abs(psnr - 17.21) < 0.06, psnr
  assert abs(ssim - 0.54) < 0.01, ssim


# ------------------------------------------------------------- end to end


def _write_initial_checkpoint(config, workdir):
  """A checkpoint of the freshly initialised model, in train's format.

  (Compiling a real training step costs over a minute of CPU here; the mode
  only needs a restorable checkpoint.)
  """
  # pylint: disable=g-import-not-at-top
  from jaxdiff import checkpoint
  from jaxdiff import config as config_lib
  from jaxdiff import train
  # pylint: enable=g-import-not-at-top
  s = settings_lib.from_config(config)
  model = config_lib.build_model(s)
  state = train.init_state(model, train.make_optimizer(s.training),
                           jax.random.key(0), s.data.image_shape)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(2, state.replace(step=jnp.asarray(2, jnp.int32)),
            config_lib.to_json(config), force=True)
  ckpt.close()


@pytest.mark.slow
def test_denoise_mode_end_to_end(tmp_path):
  from configs import organamnist  # pylint: disable=g-import-not-at-top
  from jaxdiff import run  # pylint: disable=g-import-not-at-top
  config = organamnist.get_config("tiny")
  config.data.name = "organamnist_small"
  workdir = str(tmp_path / "run")
  _write_initial_checkpoint(config, workdir)
  config.denoise.num_images = 6  # 2 batches of 4, the second padded
  config.denoise.steps = 3
  # posterior_mean vmaps DPS over K = 2: it covers the network under DPS.
  config.denoise.methods = "tweedie,posterior_mean"
  config.denoise.method_num_images = "posterior_mean:4"
  run.main(config, workdir, "denoise")  # the mode, by name

  out = os.path.join(workdir, "denoise")
  with open(os.path.join(out, "metrics.json")) as f:
    report = json.load(f)
  methods = ["tweedie", "posterior_mean"]
  assert list(report["results"]) == ["noisy"] + methods
  for name in methods:
    r = report["results"][name]
    n = 4 if name == "posterior_mean" else 6
    assert r["num_images"] == n and len(r["psnr"]) == n == len(r["ssim"])
    np.testing.assert_allclose(r["psnr_mean"], np.mean(r["psnr"]), rtol=1e-6)
    assert r["wall_time_s"] > 0 and r["compile_time_s"] > 0

  # The noisy input, recomputed from the protocol's definition.
  from jaxdiff import data  # pylint: disable=g-import-not-at-top
  x = data.load("organamnist_small", "test", limit=6).images / 127.5 - 1.0
  noise = np.stack([np.asarray(jax.random.normal(
      jax.random.fold_in(jax.random.key(0), i), (28, 28, 1)))
                    for i in range(6)])
  y = np.clip(x + 0.3 * noise, -1, 1)
  psnr = 10 * np.log10(4.0 / ((y - x)**2).mean(axis=(1, 2, 3)))
  np.testing.assert_allclose(report["results"]["noisy"]["psnr"], psnr,
                             atol=1e-3)
  # The initial U-Net's output layer is zero, so eps = 0 and Tweedie at the
  # matched time returns y itself.
  np.testing.assert_allclose(report["results"]["tweedie"]["psnr"], psnr,
                             atol=1e-3)
  assert report["checkpoint_step"] == 2

  with open(os.path.join(out, "metrics.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 + 6 * 2 + 4
  means = {r["method"]: float(r["psnr"]) for r in rows if r["image"] == "mean"}
  for name in methods:
    np.testing.assert_allclose(means[name],
                               report["results"][name]["psnr_mean"],
                               atol=1e-3)
  with Image.open(os.path.join(out, "comparison.png")) as im:
    assert im.format == "PNG" and min(im.size) > 100
  recon = np.load(os.path.join(out, "reconstructions.npz"))
  assert recon["posterior_mean"].shape == (4, 28, 28, 1)
  assert recon["tweedie"].shape == (6, 28, 28, 1)
  assert recon["tweedie"].dtype == np.uint8
