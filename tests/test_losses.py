"""Tests for jaxdiff.losses: the FFT L1, its 'snr' weighting, label dropout,
the noise MSE, every loss weighting on every parameterization's target, the
rectified-flow loss and the law of the training times, against closed forms.

The networks here are analytic stand-ins: an `apply_fn` that recomputes the
true noise eps = (x_t - alpha x0) / sigma from x_t (it closes over x0 and the
process) and adds a known error, so every loss has a closed form.
The log-normal law's default parameters are tested in tests/test_sde.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import denoiser
from jaxdiff import losses
from jaxdiff import sde as sde_lib


def _sde(spec: str):
  if spec == "vp_cosine":
    return sde_lib.make_sde("vp", schedule="cosine")
  if spec == "vp_discrete":
    return sde_lib.make_sde("vp", schedule="linear", num_steps=1000,
                            schedule_kwargs=dict(beta_start=1e-4,
                                                 beta_end=0.02))
  if spec == "ve":
    return sde_lib.make_sde("ve", sigma_min=0.01, sigma_max=50.0)
  raise ValueError(spec)


class _FixedTimes:
  """A process whose training times are the given t [B]; else `process`."""

  def __init__(self, process, t):
    self.process = process
    self.t = jnp.asarray(t, jnp.float32)

  def sample_time(self, key, batch):
    del key
    assert batch == self.t.shape[0]
    return self.t

  def __getattr__(self, name):
    return getattr(self.process, name)


def _noise_oracle(process, x0, error_fn=lambda eps, y: jnp.zeros_like(eps)):
  """apply_fn returning the true noise of x_t plus error_fn(eps, labels)."""
  def apply_fn(params, x_t, t, y, train, rngs):
    del params, train, rngs
    alpha = sde_lib.bcast(process.alpha(t), x_t)
    sigma = sde_lib.bcast(process.sigma(t), x_t)
    eps = (x_t - alpha * x0) / sigma
    return eps + error_fn(eps, y)
  return apply_fn


# ------------------------------------------------------------ frequency L1


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (3, 5, 6, 3), (1, 28, 28, 1)])
def test_frequency_l1_equals_numpy_orthonormal_fft(shape):
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, shape)
  b = jax.random.uniform(kb, shape, minval=-1.0, maxval=1.0)
  got = jax.jit(losses.frequency_l1)(a, b)                      # [B]
  diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  spectrum = np.fft.fft2(diff, axes=(1, 2), norm="ortho")
  want = np.abs(spectrum).mean(axis=(1, 2, 3))
  assert got.shape == (shape[0],)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_frequency_l1_of_a_constant_error_is_its_dc_term():
  # A constant error c has one orthonormal Fourier coefficient, c sqrt(HW),
  # at frequency 0: the mean modulus over H x W x C is |c| / sqrt(HW).
  h, w = 6, 10
  c = jnp.array([0.5, -2.0, 0.0])
  x0 = jax.random.normal(jax.random.key(1), (3, h, w, 2))
  got = jax.jit(losses.frequency_l1)(x0 + c[:, None, None, None], x0)
  np.testing.assert_allclose(np.asarray(got), np.abs(c) / np.sqrt(h * w),
                             rtol=1e-5, atol=1e-6)


# ----------------------------------------------- noise MSE and 'snr' weights


@pytest.mark.parametrize("spec", ["vp_cosine", "vp_discrete", "ve"])
@pytest.mark.parametrize("time_sampling", ["uniform", "lognormal"])
def test_loss_is_zero_for_the_true_noise(spec, time_sampling):
  process = _sde(spec)
  x0 = jax.random.uniform(jax.random.key(0), (16, 4, 4, 1), minval=-1.0,
                          maxval=1.0)
  apply_fn = _noise_oracle(process, x0)

  @jax.jit
  def loss(key):
    return losses.diffusion_loss(apply_fn, {}, process, x0, key,
                                 lambda_freq=0.1, time_sampling=time_sampling)
  value, metrics = loss(jax.random.key(3))
  # float32 recomputation of eps divides by sigma(t_min) ~ 1e-3 at worst.
  assert float(value) < 1e-6
  assert float(metrics["mse"]) < 1e-6 and float(metrics["freq"]) < 1e-3


@pytest.mark.parametrize("freq_weighting", ["none", "snr"])
def test_loss_with_a_constant_noise_error_has_its_closed_form(freq_weighting):
  # eps_hat = eps + c_b (a constant image per example) gives
  #   mse_b  = c_b^2,
  #   x0_hat = x0 - (sigma/alpha) c_b, so freq_b = (sigma/alpha) |c_b| / sqrt(HW)
  # ('none'), times min(1, alpha/sigma) ('snr'): min(sigma/alpha, 1) |c_b| /
  # sqrt(HW). Times on both sides of sigma/alpha = 1 (t = 0.5 for the cosine
  # schedule) tell the two weightings apart.
  process = _sde("vp_cosine")
  t = jnp.array([0.1, 0.3, 0.7, 0.9])
  c = jnp.array([0.5, -1.0, 2.0, -0.25])
  h, w, lambda_freq = 4, 6, 0.3
  x0 = jax.random.uniform(jax.random.key(0), (4, h, w, 1), minval=-1.0,
                          maxval=1.0)
  apply_fn = _noise_oracle(process, x0,
                           lambda eps, y: jnp.broadcast_to(
                               c[:, None, None, None], eps.shape))

  @jax.jit
  def loss(key):
    return losses.diffusion_loss(apply_fn, {}, _FixedTimes(process, t), x0,
                                 key, lambda_freq=lambda_freq,
                                 freq_weighting=freq_weighting)
  value, metrics = loss(jax.random.key(1))

  ratio = np.asarray(process.sigma(t) / process.alpha(t), np.float64)
  assert ratio[0] < 1 < ratio[-1]
  weight = np.minimum(ratio, 1.0) if freq_weighting == "snr" else ratio
  c = np.asarray(c, np.float64)
  mse = c**2
  freq = weight * np.abs(c) / np.sqrt(h * w)
  np.testing.assert_allclose(float(metrics["mse"]), mse.mean(), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["freq"]), freq.mean(), rtol=1e-4)
  np.testing.assert_allclose(float(value),
                             np.mean(mse + lambda_freq * freq), rtol=1e-4)


def test_unknown_freq_weighting_raises():
  process = _sde("vp_cosine")
  x0 = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="freq_weighting 'snr2'"):
    losses.diffusion_loss(_noise_oracle(process, x0), {}, process, x0,
                          jax.random.key(0), lambda_freq=0.1,
                          freq_weighting="snr2")


# ------------------------------------------------------------ label dropout


_NUM_CLASSES = 10


def _dropped_fraction(p_uncond, *, draws=16, batch=4096):
  """Fraction of labels the network sees as the null class, over draws.

  The oracle adds 1 to eps where the label is the null class K and 100
  where it is neither K nor the true label: mse = fraction replaced by K,
  and one label changed to anything else adds at least 1e4 / (draws B).
  """
  process = _sde("vp_cosine")
  x0 = jnp.zeros((batch, 1, 1, 1))
  labels = jnp.arange(batch, dtype=jnp.int32) % _NUM_CLASSES

  def error(eps, y):
    e = jnp.where(y == _NUM_CLASSES, 1.0, jnp.where(y == labels, 0.0, 100.0))
    return jnp.broadcast_to(e[:, None, None, None], eps.shape)

  apply_fn = _noise_oracle(process, x0, error)

  @jax.jit
  def mse(keys):
    return jax.vmap(lambda k: losses.diffusion_loss(
        apply_fn, {}, process, x0, k, labels=labels,
        num_classes=_NUM_CLASSES, p_uncond=p_uncond)[1]["mse"])(keys)
  keys = jax.random.split(jax.random.key(7), draws)
  return float(jnp.mean(mse(keys))), draws * batch


@pytest.mark.parametrize("p_uncond", [0.1, 0.5])
def test_label_dropout_replaces_the_expected_fraction_by_the_null_class(
    p_uncond):
  fraction, n = _dropped_fraction(p_uncond)
  # Binomial(n = 65536, p): std <= 0.002; 0.02 is 10 std away.
  assert np.sqrt(p_uncond * (1 - p_uncond) / n) < 0.002
  assert abs(fraction - p_uncond) < 0.02, fraction


@pytest.mark.parametrize("p_uncond", [0.0, 1.0])
def test_label_dropout_extremes_keep_or_drop_every_label(p_uncond):
  fraction, _ = _dropped_fraction(p_uncond, draws=2, batch=64)
  assert fraction == pytest.approx(p_uncond, abs=1e-6)


def test_unconditional_network_gets_no_labels():
  process = _sde("vp_cosine")
  x0 = jnp.zeros((4, 2, 2, 1))
  seen = []

  def apply_fn(params, x_t, t, y, train, rngs):
    seen.append(y)
    return _noise_oracle(process, x0)(params, x_t, t, y, train, rngs)
  jax.jit(lambda k: losses.diffusion_loss(apply_fn, {}, process, x0, k,
                                          p_uncond=0.5)[0])(jax.random.key(0))
  assert seen == [None]


# ------------------------------------------------------------ training times


def test_uniform_time_sampling_is_the_process_law():
  for spec in ("vp_cosine", "vp_discrete"):
    process = _sde(spec)
    key = jax.random.key(4)
    got = jax.jit(lambda k, p=process: losses.sample_time(p, k, 64))(key)
    np.testing.assert_array_equal(np.asarray(got),
                                  np.asarray(process.sample_time(key, 64)))


@pytest.mark.parametrize("mean,std", [(0.3, 0.5), (-2.0, 0.8)])
def test_lognormal_times_follow_the_requested_parameters(mean, std):
  # tests/test_sde.py checks the default (-1.2, 1.2); other values must not
  # be ignored. Both laws lie well inside the cosine schedule's range.
  process = _sde("vp_cosine")
  t = jax.jit(lambda k: losses.sample_time(
      process, k, 20_000, time_sampling="lognormal", lognormal_mean=mean,
      lognormal_std=std))(jax.random.key(5))
  u = np.log(np.asarray(process.sigma(t) / process.alpha(t), np.float64))
  # Standard errors of the mean and std: std / 141 and std / 200.
  assert abs(u.mean() - mean) < 0.03 and abs(u.std() - std) < 0.03


@pytest.mark.parametrize("std", [0.0, -1.0])
def test_lognormal_std_must_be_positive(std):
  with pytest.raises(ValueError, match="lognormal_std"):
    losses.sample_time(_sde("vp_cosine"), jax.random.key(0), 4,
                       time_sampling="lognormal", lognormal_std=std)


# ------------------------------------------- parameterizations and weightings


_PROCESSES = ("vp_cosine", "ve", "flow")
_T = jnp.array([0.05, 0.2, 0.4, 0.7, 0.95])


def _process(spec: str):
  return sde_lib.make_sde("flow") if spec == "flow" else _sde(spec)


def _param(name: str, sigma_data: float = 0.5):
  options = {"sigma_data": sigma_data} if name == "edm" else {}
  return denoiser.make_parameterization(name, **options)


def _draws(shape=(5, 4, 3, 1), seed=0):
  """(x0, eps, F): data, noise and an arbitrary network output."""
  k = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.uniform(k[0], shape, minval=-1.0, maxval=1.0),
          jax.random.normal(k[1], shape), jax.random.normal(k[2], shape))


def _mse(a):
  return jnp.mean(a**2, axis=(1, 2, 3))


@pytest.mark.parametrize("spec", _PROCESSES)
@pytest.mark.parametrize("name", sorted(denoiser.PARAMETERIZATIONS.names()))
def test_every_weighting_converts_to_every_target(spec, name):
  # w_F |F - F*|^2 = lambda_eps |eps_hat - eps|^2 for one prediction.
  process, param = _process(spec), _param(name)
  x0, eps, f = _draws()
  options = dict(min_snr_gamma=2.0, sigmoid_bias=1.0, sigma_data=0.5)

  @jax.jit
  def both(t):
    x_t = (sde_lib.bcast(process.alpha(t), x0) * x0
           + sde_lib.bcast(process.sigma(t), x0) * eps)
    target_mse = _mse(f - param.target(process, x0, eps, t))
    eps_mse = _mse(param.predict(process, x_t, t, f).eps - eps)
    return {w: (losses.target_weight(w, param, process, t, **options)
                * target_mse,
                losses.eps_weight(w, process, t, **options) * eps_mse)
            for w in losses.WEIGHTINGS.names()}
  for w, (lhs, rhs) in both(_T).items():
    np.testing.assert_allclose(np.asarray(lhs), np.asarray(rhs), rtol=2e-4,
                               err_msg=w)


def test_weighting_names_cover_the_documented_table():
  assert losses.weighting_names() == [
      "none", "edm", "eps", "min_snr", "sigmoid", "snr_trunc", "v", "x0"]


@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_min_snr_has_its_closed_forms_on_vp(gamma):
  # Hang et al. 2023: min(SNR, gamma)/SNR on eps, min(SNR, gamma) on x0,
  # min(SNR, gamma)/(SNR + 1) on v (VP: alpha^2 + sigma^2 = 1).
  process = _sde("vp_cosine")
  a = np.asarray(process.alpha(_T), np.float64)
  s = np.asarray(process.sigma(_T), np.float64)
  snr = a**2 / s**2
  assert snr.min() < min(gamma, 1.0) and snr.max() > gamma
  clipped = np.minimum(snr, gamma)
  want = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}
  for name, expected in want.items():
    got = jax.jit(lambda t, p=_param(name): losses.target_weight(
        "min_snr", p, process, t, min_snr_gamma=gamma))(_T)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize("spec", _PROCESSES)
@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_edm_weighting_on_edm_preconditioning_is_the_unit_mse(spec,
                                                              sigma_data):
  process = _process(spec)
  got = jax.jit(lambda t: losses.target_weight(
      "edm", _param("edm", sigma_data), process, t,
      sigma_data=sigma_data))(_T)
  np.testing.assert_allclose(np.asarray(got), 1.0, rtol=1e-5)


def test_v_weighting_is_the_v_mse_and_none_is_one():
  # VP: the v-MSE is (SNR + 1)/SNR times the eps-MSE; 'none' weighs every
  # target's own MSE by 1, and each target's namesake weighting does too.
  process = _sde("vp_cosine")
  snr = np.asarray(jnp.exp(process.log_snr(_T)), np.float64)
  got = losses.eps_weight("v", process, _T)
  np.testing.assert_allclose(np.asarray(got), (snr + 1) / snr, rtol=1e-4)
  for name in denoiser.PARAMETERIZATIONS.names():
    np.testing.assert_array_equal(np.asarray(losses.target_weight(
        "none", _param(name), process, _T)), 1.0)
  for name in ("eps", "x0", "v"):
    np.testing.assert_allclose(np.asarray(losses.target_weight(
        name, _param(name), process, _T)), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="'none'"):
    losses.eps_weight("none", process, _T)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weighting="snr"), "weighting 'snr' .*use one of none, edm, eps"),
    (dict(weighting="min_snr", min_snr_gamma=0.0), "min_snr_gamma"),
    (dict(weighting="edm", sigma_data=-1.0), "sigma_data"),
    (dict(weighting="sigmoid", sigmoid_bias=float("nan")), "sigmoid_bias"),
])
def test_bad_weighting_is_a_one_line_error(kwargs, match):
  process = _sde("vp_cosine")
  x0 = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match=match) as info:
    losses.diffusion_loss(_noise_oracle(process, x0), {}, process, x0,
                          jax.random.key(0), **kwargs)
  assert "\n" not in str(info.value)


# -------------------------------------- the losses against explicit formulas


def _net(params, x, t, y=None, *, train=False, rngs=None):
  """An arbitrary smooth network output."""
  del params, y, train, rngs
  return jnp.tanh(0.7 * x) + sde_lib.bcast(t, x)


def _loss_draws(process, key, x0):
  """(t, x_t, n) as `diffusion_loss` draws them from `key`."""
  t_key, n_key, _, _ = jax.random.split(key, 4)
  t = process.sample_time(t_key, x0.shape[0])
  x_t, n = process.perturb(n_key, x0, t)
  return t, x_t, n


@pytest.mark.parametrize("lambda_freq", [0.0, 0.2])
def test_plain_eps_loss_is_the_noise_mse(lambda_freq):
  # Today's objective, bit for bit: mean (eps_hat - n)^2 (+ the FFT L1 of
  # the Tweedie x0_hat), with and without the explicit defaults.
  process = _sde("vp_discrete")
  x0, _, _ = _draws((6, 4, 4, 1), seed=3)
  key = jax.random.key(11)

  @jax.jit
  def explicit():
    t, x_t, n = _loss_draws(process, key, x0)
    eps_hat = _net({}, x_t, t)
    mse = jnp.mean((eps_hat - n)**2, axis=(1, 2, 3))
    freq = losses.frequency_l1(process.eps_to_x0(x_t, eps_hat, t), x0)
    return jnp.mean(mse + lambda_freq * freq if lambda_freq else mse)
  want = explicit()
  for kwargs in ({}, dict(param=denoiser.eps_prediction(), weighting="none")):
    loss, metrics = jax.jit(lambda k, kw=kwargs: losses.diffusion_loss(
        _net, {}, process, x0, k, lambda_freq=lambda_freq, **kw))(key)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(want))
    assert float(metrics["mse"]) == float(metrics["eps_mse"])
  if lambda_freq:
    assert "freq" in metrics
  else:
    assert float(metrics["mse"]) == float(loss) and "freq" not in metrics


def test_flow_velocity_loss_is_the_rectified_flow_loss():
  # weighting 'none' with the velocity target on the flow process is
  # mean (F - (n - x0))^2.
  process = _process("flow")
  x0, _, _ = _draws((6, 4, 4, 1), seed=4)
  key = jax.random.key(12)

  @jax.jit
  def explicit():
    t, x_t, n = _loss_draws(process, key, x0)
    return jnp.mean((_net({}, x_t, t) - (n - x0))**2)
  loss, metrics = jax.jit(lambda k: losses.diffusion_loss(
      _net, {}, process, x0, k, param=_param("velocity")))(key)
  np.testing.assert_allclose(float(loss), float(explicit()), rtol=1e-6)
  assert float(metrics["mse"]) == pytest.approx(float(loss), rel=1e-6)


def test_flow_velocity_error_closed_forms():
  # F = (n - x0) + c_b: mse = c^2; eps_hat = (1 - t) F + x_t = n + (1 - t) c,
  # so eps_mse = ((1 - t) c)^2, and the eps-weighted loss w_F = (1 - t)^2.
  process = _process("flow")
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  c = jnp.array([0.5, -1.0, 2.0, -0.25])
  x0, _, _ = _draws((4, 3, 5, 1), seed=5)

  def apply_fn(params, x_t, t, y, train, rngs):
    del params, y, train, rngs
    tt = sde_lib.bcast(t, x_t)
    n = (x_t - (1 - tt) * x0) / tt
    return n - x0 + c[:, None, None, None]

  fixed = _FixedTimes(process, t)
  out = {w: jax.jit(lambda k, w=w: losses.diffusion_loss(
      apply_fn, {}, fixed, x0, k, param=_param("velocity"),
      weighting=w))(jax.random.key(0)) for w in ("none", "eps")}
  c, t = np.asarray(c, np.float64), np.asarray(t, np.float64)
  loss, metrics = out["none"]
  np.testing.assert_allclose(float(loss), np.mean(c**2), rtol=1e-4)
  np.testing.assert_allclose(float(metrics["eps_mse"]),
                             np.mean(((1 - t) * c)**2), rtol=1e-4)
  np.testing.assert_allclose(float(out["eps"][0]), np.mean(((1 - t) * c)**2),
                             rtol=1e-4)


# ------------------------------------------------- the flow's training times


def test_flow_uniform_times_are_uniform_on_its_range():
  process = _process("flow")
  t = np.asarray(jax.jit(lambda k: losses.sample_time(
      process, k, 4096))(jax.random.key(2)))
  assert process.t_min <= t.min() and t.max() <= process.t_max < 1.0
  assert abs(t.mean() - 0.5) < 0.02


@pytest.mark.parametrize("mean,std", [(-1.2, 1.2), (0.0, 1.0), (9.0, 1.0)])
def test_flow_lognormal_times_are_logit_normal(mean, std):
  # sigma/alpha = t / (1 - t): log-normal ratio = logit-normal t, clamped
  # to [t_min, t_max] (mean 9 puts most draws past t_max).
  process = _process("flow")
  key = jax.random.key(6)
  t = jax.jit(lambda k: losses.sample_time(
      process, k, 2048, time_sampling="lognormal", lognormal_mean=mean,
      lognormal_std=std))(key)
  u = mean + std * np.asarray(jax.random.normal(key, (2048,)), np.float64)
  want = np.clip(1 / (1 + np.exp(-u)), process.t_min, process.t_max)
  np.testing.assert_allclose(np.asarray(t), want, atol=2e-6)
  assert float(jnp.min(process.alpha(t))) > 0
