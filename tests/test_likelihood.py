"""Tests for jaxdiff.likelihood against closed forms and direct Monte Carlo.

For Gaussian data x0 ~ N(mu, diag(s2)) every marginal is Gaussian, x_t ~
N(alpha mu, alpha^2 s2 + sigma^2) =: N(m_t, v_t), the exact eps is
sigma (x - alpha mu) / v_t, and the probability-flow ODE is the affine map
x_t = m_t + sqrt(v_t) z along constant z. The ODE likelihood started at
t_eps is the density of x_{t_eps}, log N(x; m_eps, v_eps), exactly when the
prior at t_max is the true marginal N(m_T, v_T); with the processes' own
prior N(0, prior_std^2) the answer is the pushforward's,
log N(x_T; 0, prior_std^2) + delta_logp with the same delta_logp. So each
solve is checked twice: the true marginal at the returned x_T plus
delta_logp against log N(x; m_eps, v_eps), and the default prior at x_T.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxdiff import denoiser
from jaxdiff import likelihood as lk
from jaxdiff import sde as sde_lib

MU = np.array([[0.5, -0.3, 0.1, 0.8]], np.float32)    # [1, D]
S2 = np.array([[0.25, 0.09, 0.5, 0.04]], np.float32)  # [1, D]
T_EPS = 1e-5
TOL = dict(rtol=1e-6, atol=1e-6)


def gaussian_denoiser(sde, counter=None):
  """The exact denoiser of N(MU, S2) data; counts its calls in `counter`."""
  def eps_fn(x, t):
    if counter is not None:
      jax.debug.callback(lambda: counter.append(1))
    a, sg = sde_lib.bcast(sde.alpha(t), x), sde_lib.bcast(sde.sigma(t), x)
    return sg * (x - a * MU) / (a**2 * S2 + sg**2)
  return denoiser.eps_denoiser(sde, eps_fn)


def marginal(sde, t):
  """(m_t [1, D], v_t [1, D]) of x_t for N(MU, S2) data."""
  a, s = float(sde.alpha(t)), float(sde.sigma(t))
  return a * MU, a**2 * S2 + s**2


def _points(key, sde, n):
  m, v = marginal(sde, T_EPS)
  return m + np.sqrt(v) * np.asarray(jax.random.normal(key, (n, 4)))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "flow"])
def test_ode_likelihood_of_gaussian_data_is_exact(name):
  sde = sde_lib.make_sde(name)
  calls = []
  solve = jax.jit(functools.partial(
      lk.ode_log_likelihood, sde, gaussian_denoiser(sde, calls),
      divergence="exact", t_eps=T_EPS, **TOL))
  x = _points(jax.random.key(0), sde, 3)
  res = solve(x, jax.random.key(1))
  assert bool(res.ok)
  m_e, v_e = marginal(sde, T_EPS)
  m_t, v_t = marginal(sde, sde.t_max)
  want = lk.normal_log_prob(x, m_e, v_e)
  got = lk.normal_log_prob(res.x_t_max, m_t, v_t) + res.delta_logp
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
  # The flow keeps z: x_T = m_T + sqrt(v_T) (x - m_eps) / sqrt(v_eps).
  np.testing.assert_allclose(
      res.x_t_max, m_t + np.sqrt(v_t / v_e) * (x - m_e), atol=1e-3, rtol=1e-4)
  # The default prior is prior_sample's law, N(0, prior_std^2).
  prior = lk.normal_log_prob(res.x_t_max, 0.0, sde.prior_std**2)
  np.testing.assert_allclose(res.prior_logp, prior, rtol=1e-6)
  np.testing.assert_allclose(res.log_px, prior + res.delta_logp, rtol=1e-6)
  # delta_logp is the log-Jacobian of the affine flow: sum 1/2 log(v_T/v_eps).
  np.testing.assert_allclose(res.delta_logp,
                             np.full(3, 0.5 * np.log(v_t / v_e).sum()),
                             atol=1e-3, rtol=0)
  # NFE counts every denoiser call: 6 per attempted step + 1.
  assert int(res.nfe) == len(calls) == 6 * int(res.num_steps) + 1


def _nonlinear(x):  # [B, 2, 3] -> [B, 2, 3], no coupling across examples
  w = jnp.linspace(-1.0, 1.0, 36).reshape(2, 3, 2, 3)
  return jnp.tanh(jnp.einsum("bij,ijkl->bkl", x, w)) + x**2 * x[:, :1]


def test_exact_divergence_is_the_jacobian_trace():
  x = jax.random.normal(jax.random.key(0), (3, 2, 3))
  y, div = jax.jit(lk.value_and_divergence, static_argnums=0)(_nonlinear, x)
  jac = jax.vmap(jax.jacfwd(lambda v: _nonlinear(v[None])[0]))(x)
  np.testing.assert_allclose(y, _nonlinear(x), rtol=1e-6)
  np.testing.assert_allclose(
      div, jnp.trace(jac.reshape(3, 6, 6), axis1=1, axis2=2), rtol=1e-5)


@pytest.mark.parametrize("probe", lk.PROBES)
def test_hutchinson_is_unbiased(probe):
  x = jax.random.normal(jax.random.key(0), (3, 2, 3))
  _, exact = lk.value_and_divergence(_nonlinear, x)
  probes = lk.draw_probe(jax.random.key(1), (4000,) + x.shape, probe)
  est = jax.vmap(lambda v: lk.value_and_divergence(_nonlinear, x, v)[1])(
      probes)  # [N, B]
  se = est.std(axis=0) / math.sqrt(est.shape[0])
  assert np.all(np.abs(est.mean(axis=0) - exact) < 3 * se), (
      est.mean(axis=0), exact, se)
  assert np.all(se > 0)


def test_hutchinson_ode_likelihood_is_unbiased():
  """Gaussian probes through the ODE (with the true-marginal prior passed):
  the mean over 256 probes of one point is log N(x; m_eps, v_eps)."""
  sde = sde_lib.make_sde("vp")
  m_t, v_t = marginal(sde, sde.t_max)
  solve = jax.jit(functools.partial(
      lk.ode_log_likelihood, sde, gaussian_denoiser(sde), probe="gaussian",
      t_eps=T_EPS, prior_logp=lambda z: lk.normal_log_prob(z, m_t, v_t),
      solver="tsit5", **TOL))
  x = np.repeat(_points(jax.random.key(0), sde, 1), 256, axis=0)
  res = solve(x, jax.random.key(2))
  want = lk.normal_log_prob(x[:1], *marginal(sde, T_EPS))[0]
  se = float(res.log_px.std()) / math.sqrt(x.shape[0])
  assert 0 < se and abs(float(res.log_px.mean()) - want) < 3 * se


def test_dequantize_stays_in_its_bin():
  x = jnp.array([[0, 255], [128, 7]], jnp.uint8)
  y = lk.dequantize(jax.random.key(0), x, 5)
  assert y.shape == (5, 2, 2) and y.dtype == jnp.float32
  level = jnp.floor((y + 1.0) * 128.0)
  np.testing.assert_array_equal(level, np.broadcast_to(x, (5, 2, 2)))
  assert float(y.min()) >= -1.0 and float(y.max()) < 1.0


def test_bits_per_dim_is_the_same_in_every_unit():
  """One model density written in [-1, 1], [0, 1] and [0, 256) gives one
  bits/dim once each space's Jacobian is counted."""
  d = 6
  x = jax.random.randint(jax.random.key(0), (4, d), 0, 256).astype(jnp.uint8)
  y = lk.dequantize(jax.random.key(1), x)[0]             # [-1, 1)
  log_py = lk.normal_log_prob(y, 0.1, 0.3)
  log_p01 = log_py + d * math.log(2.0)                   # y01 = (y + 1)/2
  log_pz = log_py + d * math.log(2.0 / 256.0)            # z = 128 (y + 1)
  bpd = lk.bits_per_dim(log_py, d)
  np.testing.assert_allclose(
      lk.bits_per_dim(log_p01, d, data_range=(0.0, 1.0)), bpd, rtol=1e-6)
  np.testing.assert_allclose(
      lk.bits_per_dim(log_pz, d, data_range=(0.0, 256.0)), bpd, rtol=1e-6)
  np.testing.assert_allclose(bpd, -log_pz / (d * math.log(2.0)), rtol=1e-6)
  np.testing.assert_allclose(bpd, -log_py / (d * math.log(2.0)) + 7,
                             rtol=1e-6)
  np.testing.assert_allclose(
      lk.bits_per_dim(log_p01, d, data_range=(0.0, 1.0)),
      -log_p01 / (d * math.log(2.0)) + 8, rtol=1e-6)
  # The uniform density on [-1, 1]^D is 8 bits/dim of 8-bit data.
  np.testing.assert_allclose(lk.bits_per_dim(-d * math.log(2.0), d), 8.0)


def test_importance_weighted_bound_is_above_the_single_sample_bound():
  x = jax.random.randint(jax.random.key(0), (50, 4), 0, 256)
  y = lk.dequantize(jax.random.key(1), x, 16)            # [K, B, D]
  log_p = jax.jit(jax.vmap(lambda v: lk.normal_log_prob(v, 0.0, 0.5)))(y)
  iw = jax.jit(lk.importance_weighted)(log_p)  # log_p: [K, B]
  assert np.all(iw >= log_p.mean(axis=0) - 1e-5)
  assert float(iw.mean()) > float(log_p.mean())
  np.testing.assert_allclose(lk.importance_weighted(log_p[:1]), log_p[0])


def test_ode_bits_per_dim_is_the_dequantized_density():
  """K = 2 samples, Rademacher probes (exact for the diagonal Jacobian of
  this model), the true-marginal prior: the closed form at the same
  dequantized points, importance-weighted, in bits/dim."""
  sde = sde_lib.make_sde("vp")
  m_t, v_t = marginal(sde, sde.t_max)
  x = jax.random.randint(jax.random.key(0), (3, 4), 0, 256).astype(jnp.uint8)
  key = jax.random.key(3)
  out = jax.jit(functools.partial(
      lk.ode_bits_per_dim, sde, gaussian_denoiser(sde), num_samples=2,
      t_eps=T_EPS, prior_logp=lambda z: lk.normal_log_prob(z, m_t, v_t),
      **TOL))(x, key)
  y = lk.dequantize(jax.random.split(key)[0], x, 2)
  log_p = jax.vmap(lambda v: lk.normal_log_prob(v, *marginal(sde, T_EPS)))(y)
  want = lk.bits_per_dim(lk.importance_weighted(log_p), 4)
  np.testing.assert_allclose(out.bpd, want, atol=1e-3 / (4 * math.log(2)))
  assert out.samples.log_px.shape == (6,)


# The discrete chain.

def _linear_eps(x, t):  # an arbitrary fixed "network"
  return 0.4 * x - 0.2 + sde_lib.bcast(0.3 * t, x)


def _chain(num_steps, beta_start, beta_end):
  return sde_lib.make_sde("vp", num_steps=num_steps, schedule_kwargs=dict(
      beta_start=beta_start, beta_end=beta_end))


LEVELS = np.array([[0, 255, 128], [17, 200, 90], [255, 3, 0]])
X0 = LEVELS / 127.5 - 1.0  # [B=3, D=3] on the data grid


def _direct_mc(betas, variance, n, rng):
  """E_q[log q(x_1, x_2 | x0) - log p(x_0, x_1, x_2)] by sampling the
  forward chain (float64, Ho et al.'s eq. 11 mean from eps)."""
  b1, b2 = betas
  abar2 = (1 - b1) * (1 - b2)
  btil2 = b2 * b1 / (1 - abar2)
  var2 = btil2 if variance == "posterior" else b2
  x0 = X0[None]                                            # [1, B, D]
  x1 = np.sqrt(1 - b1) * x0 + np.sqrt(b1) * rng.standard_normal((n,) + X0.shape)
  x2 = np.sqrt(1 - b2) * x1 + np.sqrt(b2) * rng.standard_normal(x1.shape)
  eps = lambda x, t: 0.4 * x - 0.2 + 0.3 * t
  mu2 = (x2 - b2 / np.sqrt(1 - abar2) * eps(x2, 1.0)) / np.sqrt(1 - b2)
  mu1 = (x1 - b1 / np.sqrt(b1) * eps(x1, 0.5)) / np.sqrt(1 - b1)
  s1 = np.sqrt(btil2)  # the decoder's variance, beta_tilde_2
  hi = np.where(x0 > 1 - 1 / 255, np.inf, (x0 + 1 / 255 - mu1) / s1)
  lo = np.where(x0 < -1 + 1 / 255, -np.inf, (x0 - 1 / 255 - mu1) / s1)
  log_dec = np.log(stats.norm.cdf(hi) - stats.norm.cdf(lo))
  ratio = (stats.norm.logpdf(x1, np.sqrt(1 - b1) * x0, np.sqrt(b1))
           + stats.norm.logpdf(x2, np.sqrt(1 - b2) * x1, np.sqrt(b2))
           - stats.norm.logpdf(x2) - stats.norm.logpdf(x1, mu2, np.sqrt(var2))
           - log_dec).sum(axis=-1)                         # [n, B]
  return ratio.mean(axis=0), ratio.std(axis=0) / np.sqrt(n)


@pytest.mark.parametrize("variance", lk.VARIANCES)
def test_chain_bound_is_the_direct_monte_carlo_of_a_two_step_chain(variance):
  sde = _chain(2, 0.1, 0.3)
  reps = 16000
  x0 = jnp.asarray(np.tile(X0, (reps, 1)), jnp.float32)
  bound = jax.jit(functools.partial(
      lk.chain_bound, sde, denoiser.eps_denoiser(sde, _linear_eps),
      variance=variance))(x0, jax.random.key(0))
  np.testing.assert_allclose(
      bound.nats, bound.prior + bound.diffusion + bound.decoder, rtol=1e-6)
  np.testing.assert_allclose(bound.bpd, bound.nats / (3 * math.log(2)),
                             rtol=1e-6)
  per = np.asarray(bound.nats, np.float64).reshape(reps, 3)
  ours, ours_se = per.mean(0), per.std(0) / math.sqrt(reps)
  want, want_se = _direct_mc((0.1, 0.3), variance, 200_000,
                             np.random.default_rng(0))
  assert np.all(np.abs(ours - want) < 4 * np.hypot(ours_se, want_se)), (
      ours, want, ours_se, want_se)


def test_subsampled_chain_bound_is_unbiased():
  sde = _chain(8, 0.05, 0.4)
  dn = denoiser.eps_denoiser(sde, _linear_eps)
  x0 = jnp.asarray(np.tile(X0, (2000, 1)), jnp.float32)
  full = jax.jit(functools.partial(lk.chain_bound, sde, dn, batch_size=4))(
      x0, jax.random.key(0))
  sub = jax.jit(functools.partial(lk.chain_bound, sde, dn, num_terms=1))(
      x0, jax.random.key(1))
  np.testing.assert_allclose(sub.prior, full.prior)
  se = math.hypot(float(full.nats.std()), float(sub.nats.std()))
  se /= math.sqrt(x0.shape[0])
  assert abs(float(full.nats.mean()) - float(sub.nats.mean())) < 4 * se


def test_discretized_gaussian_sums_to_one_over_the_levels():
  levels = jnp.arange(256, dtype=jnp.float32)[:, None] / 127.5 - 1.0
  mean = jnp.array([[0.0, 0.999, -3.0, 5.0, 0.3]])
  var = jnp.array([[1e-6, 0.01, 0.5, 0.02, 4.0]])
  logp = jax.jit(lk.discretized_gaussian_log_prob)(levels, mean, var)
  assert np.all(np.isfinite(logp[:, [1, 2, 4]]))
  np.testing.assert_allclose(jnp.exp(logp).sum(axis=0), 1.0, rtol=1e-5)
  # Far in the upper tail the top bin holds all the mass: log P = 0.
  np.testing.assert_allclose(logp[-1, 3], 0.0, atol=1e-6)


def test_bad_options_are_refused():
  sde = sde_lib.make_sde("vp")
  dn, x, key = gaussian_denoiser(sde), jnp.zeros((1, 4)), jax.random.key(0)
  with pytest.raises(ValueError, match="divergence"):
    lk.ode_log_likelihood(sde, dn, x, key, divergence="trace")
  with pytest.raises(ValueError, match="solver"):
    lk.ode_log_likelihood(sde, dn, x, key, solver="euler")
  with pytest.raises(ValueError, match="probe"):
    lk.draw_probe(key, (2,), "sphere")
  with pytest.raises(ValueError, match="discrete VP chain"):
    lk.chain_bound(sde, dn, x, key)
  with pytest.raises(ValueError, match="variance"):
    lk.chain_bound(_chain(2, 0.1, 0.3), dn, x, key, variance="learned")


def test_pixel_categorical_baseline_matches_its_closed_form():
  # Two 2-pixel training images: pixel 0 always level 3, pixel 1 levels 0
  # and 1; 4 levels, alpha = 1: p_0(3) = 3/6, p_1(0) = p_1(1) = 2/6.
  train = np.array([[3, 0], [3, 1]], np.uint8)
  table = lk.pixel_categorical_log_probs(train, alpha=1.0, num_bins=4)
  np.testing.assert_allclose(np.exp(table).sum(axis=1), 1.0)
  np.testing.assert_allclose(np.exp(table[0]), [1 / 6, 1 / 6, 1 / 6, 3 / 6])
  bpd = lk.pixel_categorical_bits_per_dim(table, np.array([[3, 1], [0, 2]]))
  np.testing.assert_allclose(
      bpd, [-(np.log2(3 / 6) + np.log2(2 / 6)) / 2,
            -(np.log2(1 / 6) + np.log2(1 / 6)) / 2])
  # Counting in chunks gives the same table; no data -> uniform: 8 bits.
  np.testing.assert_allclose(
      lk.pixel_categorical_log_probs(train, num_bins=4, chunk=1), table)
  uniform = lk.pixel_categorical_log_probs(np.zeros((0, 5), np.uint8))
  np.testing.assert_allclose(
      lk.pixel_categorical_bits_per_dim(uniform, np.zeros((3, 5), np.uint8)),
      8.0)
  with pytest.raises(ValueError, match="alpha must be > 0"):
    lk.pixel_categorical_log_probs(train, alpha=0.0)
