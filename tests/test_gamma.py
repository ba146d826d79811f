"""Tests for jaxdiff.gamma (DDGM) against closed forms and scipy's Gamma.

Facts checked, all independent of the code under test:
* centred gamma draws follow scipy's Gamma(k) for shapes 0.05 .. 2.5e10;
* one chain step adds noise of mean 0 and variance beta_t (numpy betas);
* `perturb` marginals have mean sqrt(alphabar) x0, variance kbar theta^2
  (= 1 - alphabar, a telescoping sum) and the Gamma(kbar, theta) law;
* a step-by-step simulation of a 50-step chain matches the closed form;
* one "ddgm" sampler step adds DDPM's posterior variance with the law of a
  standardised Gamma(kbar_s);
* with a zero network the training loss is E[eps^2] = 1.

Monte Carlo tolerances are 5 standard errors (SE from the gamma's moments).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import mnist_ddgm
from configs import mnist_ddpm
from jaxdiff import config as config_lib
from jaxdiff import denoiser
from jaxdiff import gamma
from jaxdiff import losses
from jaxdiff import samplers
from jaxdiff import sde as sde_lib

N = 40_000
T_SHORT = 50
SHORT = dict(beta_start=1e-3, beta_end=0.2)  # 50 steps to alphabar ~ 0.007
THETA_SHORT = 0.05   # small shapes: k_1 = 0.4, strongly skewed early steps


@pytest.fixture(name="short", scope="module")
def fixture_short():
  return gamma.make_gamma_process("linear", num_steps=T_SHORT,
                                  theta0=THETA_SHORT, **SHORT)


@pytest.fixture(name="ddgm", scope="module")
def fixture_ddgm():
  """The coursework chain: linear 1e-4..0.02, T = 1000, theta_0 = 0.001."""
  return gamma.make_gamma_process("linear", num_steps=1000, theta0=0.001,
                                  beta_start=1e-4, beta_end=0.02)


def _alphabar(betas):
  return np.cumprod(1.0 - np.asarray(betas, np.float64))


def _kbar(betas, theta0):
  """sum_{i<=t} beta_i / (alphabar_i theta0^2), float64 [T]."""
  return np.cumsum(betas / (_alphabar(betas) * theta0**2))


def _check_moments(x, mean, var, shape_k):
  """Sample mean/variance within 5 SE of a (shifted, scaled) Gamma(shape_k)."""
  x = np.asarray(x, np.float64).ravel()
  n = x.size
  assert abs(x.mean() - mean) < 5 * np.sqrt(var / n), (x.mean(), mean)
  # Var of the sample variance: (mu4 - var^2) / n, kurtosis 3 + 6/k.
  se_var = var * np.sqrt((2.0 + 6.0 / shape_k) / n)
  assert abs(x.var() - var) < 5 * se_var, (x.var(), var)


def _ks_gamma(standardised, k):
  """KS p-value of z = (g - k) / sqrt(k) against Gamma(k)."""
  g = np.asarray(standardised, np.float64).ravel() * np.sqrt(k) + k
  return stats.kstest(g, stats.gamma(k).cdf).pvalue


_centred = jax.jit(gamma.centred_gamma, static_argnums=(2,))


# ------------------------------------------------------------ gamma draws


@pytest.mark.parametrize("k", [0.05, 0.4, 1.0, 3.0, 100.0, 1e4, 1e8, 2.5e10])
def test_centred_gamma_follows_scipy_gamma(k):
  z = np.asarray(_centred(jax.random.key(3), jnp.float32(k), (N,)))
  if k < 1:  # float32 g - k rounds tiny g to -k: compare like with like.
    ref = (np.random.default_rng(0).gamma(k, size=N).astype(np.float32)
           - np.float32(k))
    assert stats.ks_2samp(z, ref).pvalue > 1e-3
  else:
    assert _ks_gamma(z / np.sqrt(k), k) > 1e-3
    # No float32 quantisation (jax.random.gamma gives ~224 values at 2.5e10).
    assert len(np.unique(z)) > 0.9 * N
  _check_moments(z, 0.0, k, k)


def test_centred_gamma_zero_shape_and_keys():
  z = _centred(jax.random.key(0), jnp.float32(0.0), (8,))
  np.testing.assert_array_equal(z, 0.0)
  a = _centred(jax.random.key(1), jnp.float32(5.0), (8,))
  b = _centred(jax.random.key(1), jnp.float32(5.0), (8,))
  c = _centred(jax.random.key(2), jnp.float32(5.0), (8,))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


# ------------------------------------------------------------ closed form


def test_parameters_match_definitions(ddgm):
  betas = np.linspace(1e-4, 0.02, 1000)
  ab = _alphabar(betas)
  t = np.arange(1, 1001) / 1000
  kbar, theta = map(np.asarray, ddgm.gamma_params(jnp.asarray(t)))
  np.testing.assert_allclose(kbar, _kbar(betas, 0.001), rtol=2e-5)
  np.testing.assert_allclose(theta, np.sqrt(ab) * 0.001, rtol=2e-5)
  # kbar theta^2 = 1 - alphabar: sum beta_i / alphabar_i telescopes.
  np.testing.assert_allclose(np.asarray(ddgm.variance(jnp.asarray(t))),
                             1.0 - ab, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(ddgm.sigma(jnp.asarray(t)))**2,
                             1.0 - ab, rtol=2e-5)


def test_variance_curves_and_the_alpha_reading():
  v = gamma.variance_curves(1000, 0.001)
  np.testing.assert_allclose(v["gamma"], v["gaussian"], rtol=1e-9)
  # k_t = beta_t / (alpha_t theta0^2) would leave x_T almost noise-free.
  betas = np.linspace(1e-4, 0.02, 1000)
  ab = _alphabar(betas)
  np.testing.assert_allclose(v["gamma_alpha"][-1],
                             ab[-1] * np.sum(betas / (1 - betas)), rtol=1e-9)
  assert v["gamma_alpha"][-1] < 1e-3


@pytest.mark.parametrize("which,steps", [("short", (1, 3, 10, 50)),
                                         ("ddgm", (1, 500, 1000))])
def test_one_step_noise_has_variance_beta(which, steps, request):
  proc = request.getfixturevalue(which)
  betas = np.asarray(proc.betas)
  theta0 = proc.theta0
  step = jax.jit(proc.forward_step)
  for i in steps:
    noise = step(jax.random.key(i), jnp.zeros((N,)), i)
    k_i = betas[i - 1] / (_alphabar(betas)[i - 1] * theta0**2)
    _check_moments(noise, 0.0, betas[i - 1], k_i)
    if k_i >= 1:
      z = np.asarray(noise, np.float64) / np.sqrt(betas[i - 1])
      assert _ks_gamma(z, k_i) > 1e-3


@pytest.mark.parametrize("which,steps", [("short", (1, 3, 10, 50)),
                                         ("ddgm", (1, 250, 1000))])
def test_perturb_marginals(which, steps, request):
  proc = request.getfixturevalue(which)
  betas = np.asarray(proc.betas)
  big_t = len(betas)
  ab = _alphabar(betas)
  kbar = _kbar(betas, proc.theta0)
  x0 = jnp.full((len(steps), N), 0.5)                    # [B, D]
  t = jnp.asarray(steps, jnp.float32) / big_t             # [B]
  x_t, eps = jax.jit(proc.perturb)(jax.random.key(7), x0, t)
  for row, i in enumerate(steps):
    var = kbar[i - 1] * ab[i - 1] * proc.theta0**2         # kbar theta^2
    _check_moments(x_t[row], np.sqrt(ab[i - 1]) * 0.5, var, kbar[i - 1])
    _check_moments(eps[row], 0.0, var / (1 - ab[i - 1]), kbar[i - 1])
    if kbar[i - 1] >= 1:
      assert _ks_gamma(eps[row], kbar[i - 1]) > 1e-3


def test_chain_simulation_matches_closed_form(short):
  """x_0 = 0.5 pushed through 50 single steps (one lax.scan)."""
  betas = np.asarray(short.betas)
  ab = _alphabar(betas)
  kbar = _kbar(betas, THETA_SHORT)
  key = jax.random.key(11)

  @jax.jit
  def simulate(x0):
    def body(x, i):
      x = short.forward_step(jax.random.fold_in(key, i), x, i)
      return x, x
    _, xs = jax.lax.scan(body, x0, jnp.arange(1, T_SHORT + 1))
    return xs                                             # [T, N]

  xs = np.asarray(simulate(jnp.full((N,), 0.5)), np.float64)
  for i in (1, 2, 5, 20, 50):
    var = kbar[i - 1] * ab[i - 1] * THETA_SHORT**2
    np.testing.assert_allclose(var, 1 - ab[i - 1], rtol=1e-9)
    _check_moments(xs[i - 1], np.sqrt(ab[i - 1]) * 0.5, var, kbar[i - 1])
    if kbar[i - 1] >= 1:
      z = (xs[i - 1] - np.sqrt(ab[i - 1]) * 0.5) / np.sqrt(var)
      assert _ks_gamma(z, kbar[i - 1]) > 1e-3


def test_prior_is_the_closed_form_at_T(ddgm):
  x = jax.jit(ddgm.prior_sample, static_argnums=1)(jax.random.key(5), (N,))
  ab_t = _alphabar(np.linspace(1e-4, 0.02, 1000))[-1]
  kbar_t = _kbar(np.linspace(1e-4, 0.02, 1000), 0.001)[-1]
  _check_moments(x, 0.0, 1 - ab_t, kbar_t)
  assert len(np.unique(np.asarray(x))) > 0.9 * N


# ------------------------------------------------------------ sampler


def test_ddgm_step_adds_posterior_variance_as_gamma(short):
  """With eps = 0, x_s = (alpha_s/alpha_t) x + c z: mean and law of c z."""
  zero_eps = denoiser.eps_denoiser(short, lambda x, t: jnp.zeros_like(x))
  stepper = samplers.make_sampler("ddgm", short, zero_eps)
  betas = np.asarray(short.betas)
  ab = _alphabar(betas)
  kbar = _kbar(betas, THETA_SHORT)
  x = jnp.full((N, 1), 0.3)
  for i in (3, 40):  # t = i/T -> s = (i-1)/T
    ts = np.array([i, i - 1], np.float32) / T_SHORT
    out = np.asarray(samplers.integrate(stepper, x, ts, jax.random.key(i)))
    # DDPM posterior variance beta-tilde_t = beta_t (1-ab_{t-1})/(1-ab_t).
    post_var = betas[i - 1] * (1 - ab[i - 2]) / (1 - ab[i - 1])
    mean = np.sqrt(ab[i - 2] / ab[i - 1]) * 0.3
    _check_moments(out, mean, post_var, kbar[i - 2])
    assert _ks_gamma((out.ravel() - mean) / np.sqrt(post_var),
                     kbar[i - 2]) > 1e-3


def test_ddgm_sampler_determinism(ddgm):
  denoise_fn = denoiser.eps_denoiser(ddgm, lambda x, t: 0.1 * x)
  run = jax.jit(lambda key: samplers.sample("ddgm", ddgm, denoise_fn, key,
                                            (2, 4, 4, 1), steps=20))
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(
      jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert np.all(np.isfinite(a))
  assert not np.allclose(a, c)


def test_ddgm_sampler_refuses_antithetic_draws(ddgm):
  """-z of a skewed gamma draw is not a gamma draw: noise_sign is refused."""
  denoise_fn = denoiser.eps_denoiser(ddgm, lambda x, t: 0.1 * x)
  stepper = samplers.make_sampler("ddgm", ddgm, denoise_fn)
  ts = samplers.time_grid(ddgm, 5)
  with pytest.raises(ValueError, match="noise is skewed"):
    samplers.integrate(stepper, jnp.zeros((2, 4)), ts, jax.random.key(0),
                       sde=ddgm, denoise_fn=denoise_fn, noise_sign=-1.0)


def test_ddgm_sampler_needs_gamma_process():
  vp = sde_lib.make_sde("vp", num_steps=1000)
  with pytest.raises(ValueError, match="noise='gamma'"):
    samplers.make_sampler("ddgm", vp, denoiser.eps_denoiser(vp,
                                                            lambda x, t: x))


def test_gamma_process_is_not_gaussian_but_has_the_chain_moments(ddgm):
  """Not an SDE (the Gaussian-only methods can tell), with DDPM's alpha and
  sigma: sqrt(alphabar_i) and sqrt(1 - alphabar_i) at t = i/T."""
  assert not isinstance(ddgm, sde_lib.SDE) and not sde_lib.is_gaussian(ddgm)
  ab = _alphabar(np.asarray(ddgm.betas))
  i = np.array([1, 10, 500, 1000])
  t = jnp.asarray(i / ddgm.num_steps, jnp.float32)
  np.testing.assert_allclose(ddgm.alpha(t), np.sqrt(ab[i - 1]), rtol=1e-5)
  np.testing.assert_allclose(ddgm.sigma(t), np.sqrt(1 - ab[i - 1]),
                             rtol=1e-4)


def test_gamma_process_needs_a_chain():
  with pytest.raises(ValueError, match="num_steps"):
    gamma.make_gamma_process("linear", num_steps=0, theta0=0.001)
  with pytest.raises(ValueError, match="theta0"):
    gamma.make_gamma_process("linear", num_steps=10, theta0=0.0)


# ------------------------------------------------------------ training


def test_loss_through_jit_with_gamma_noise(ddgm):
  """A one-parameter network eps_hat = w x_t, differentiated under jit."""
  x0 = jax.random.uniform(jax.random.key(0), (64, 28, 28, 1), minval=-1,
                          maxval=1)
  net = lambda w, x, t, y, train=True, rngs=None: w * x
  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda w, key: losses.diffusion_loss(net, w, ddgm, x0, key)[0]))
  loss, grad = loss_and_grad(jnp.float32(0.0), jax.random.key(1))
  # w = 0: loss = E[eps^2] = 1; Var[eps^2] = 2 + 6/kbar <= 2.06 (kbar >= 100).
  assert abs(float(loss) - 1.0) < 5 * np.sqrt(2.06 / x0.size)
  # d/dw E[(w x_t - eps)^2] at 0 = -2 E[x_t eps] = -2 E[sigma_t eps^2] < 0.
  assert np.isfinite(float(grad)) and float(grad) < 0
  loss_b, _ = loss_and_grad(jnp.float32(0.0), jax.random.key(2))
  assert float(loss_b) != float(loss)  # fresh gamma noise per key.


# ------------------------------------------------------------ config


@pytest.mark.parametrize("variant", ["", "tiny"])
def test_config_overrides_only_the_noise(variant):
  ddpm = mnist_ddpm.get_config(variant).to_dict()
  ddgm = mnist_ddgm.get_config(variant)
  assert ddgm.diffusion.noise == "gamma"
  assert ddgm.diffusion.gamma_theta0 == 0.001
  assert ddgm.sampling.method == "ddgm"
  got = ddgm.to_dict()
  got.pop("eval")   # the tiny DDGM variant evaluates on fewer samples.
  ddpm.pop("eval")
  ddpm["diffusion"].update(noise="gamma", gamma_theta0=0.001)
  ddpm["sampling"]["method"] = "ddgm"
  assert got == ddpm
  proc = config_lib.build_process(ddgm)
  assert isinstance(proc, gamma.GammaProcess)
  assert proc.num_steps == 1000 and proc.theta0 == 0.001
  np.testing.assert_allclose(proc.betas[[0, -1]], [1e-4, 0.02])
  ddgm.data.name = "fashion_mnist"  # the Fashion-MNIST override.
