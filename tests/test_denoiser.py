"""Tests for jaxdiff.denoiser: every parameterization on every process.

x_t = alpha x0 + sigma n for VP, sub-VP, VE and the rectified flow; each
parameterization's target F* must give back (n, x0) through `predict`, its
`eps_factor` must be how |F - F*|^2 scales with |eps_hat - n|^2 at fixed x_t,
EDM's coefficients must be Karras et al.'s (2022, Table 1) for VE, v on VP
must be EDM with sigma_data = 1 (up to sign), the flow's velocity must be
n - x0, and classifier-free guidance must combine both fields.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import denoiser
from jaxdiff import sde as sde_lib

PROCESSES = ("vp", "subvp", "ve", "flow")
PARAMS = denoiser.PARAMETERIZATIONS.names()


def _process(name):
  return sde_lib.make_sde(name)


def _times(process):
  """[5] times across the process's range, away from its ends."""
  return jnp.linspace(0.05, 0.95, 5) * process.t_max


def _draws(seed=0, shape=(5, 3, 2)):
  """(x0, n): data and noise, one row per time of `_times`."""
  k0, k1 = jax.random.split(jax.random.key(seed))
  return (jax.random.uniform(k0, shape, minval=-1.0, maxval=1.0),
          jax.random.normal(k1, shape))


def _x_t(process, x0, n, t):
  a = sde_lib.bcast(process.alpha(t), x0)
  return a * x0 + sde_lib.bcast(process.sigma(t), x0) * n


def test_registry_holds_the_five_parameterizations():
  assert set(PARAMS) == {"eps", "x0", "v", "velocity", "edm"}
  with pytest.raises(ValueError, match="sigma_data"):
    denoiser.make_parameterization("edm", sigma_data=0.0)
  with pytest.raises(ValueError):
    denoiser.make_parameterization("v", sigma_data=0.5)  # edm's option only
  with pytest.raises(ValueError):
    denoiser.make_parameterization("score")


@pytest.mark.parametrize("process_name", PROCESSES)
def test_predict_inverts_target(process_name):
  """predict(x_t, target(x0, n)) = (n, x0) for every parameterization."""
  process = _process(process_name)
  x0, n = _draws()
  t = _times(process)

  @jax.jit
  def run(x0, n):
    x = _x_t(process, x0, n, t)
    out = {}
    for name in PARAMS:
      param = denoiser.make_parameterization(name)
      out[name] = param.predict(process, x, t, param.target(process, x0, n, t))
    return out

  for name, pred in run(x0, n).items():
    assert isinstance(pred, denoiser.Prediction), name
    np.testing.assert_allclose(pred.eps, n, rtol=1e-4, atol=1e-4,
                               err_msg=name)
    np.testing.assert_allclose(pred.x0, x0, rtol=1e-4, atol=1e-4,
                               err_msg=name)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_eps_factor_is_the_target_error_per_noise_error(process_name):
  """At fixed x_t, a network output F = F* + d gives eps_hat with
  |F - F*|^2 = eps_factor |eps_hat - n|^2, for any d."""
  process = _process(process_name)
  x0, n = _draws(1)
  d = jax.random.normal(jax.random.key(2), x0.shape)
  t = _times(process)

  @jax.jit
  def run(x0, n, d):
    x = _x_t(process, x0, n, t)
    out = {}
    for name in PARAMS:
      param = denoiser.make_parameterization(name)
      f = param.target(process, x0, n, t)
      eps_hat = param.predict(process, x, t, f + d).eps
      measured = jnp.sum(d**2, (1, 2)) / jnp.sum((eps_hat - n)**2, (1, 2))
      out[name] = (measured, param.eps_factor(process, t))
    return out

  for name, (measured, factor) in run(x0, n, d).items():
    assert factor.shape == t.shape, name
    np.testing.assert_allclose(measured, factor, rtol=2e-3, err_msg=name)


def test_edm_matches_karras_table_1_for_ve():
  """alpha = 1: c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd /
  sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2), and the training
  target is (x0 - c_skip x) / c_out."""
  process = _process("ve")
  t = jnp.linspace(0.0, 1.0, 7)
  sigma = np.asarray(process.sigma(t), np.float64)  # 0.01 .. 50
  x0, n = _draws(3, (7, 2))

  for sd in (0.5, 1.3):
    param = denoiser.make_parameterization("edm", sigma_data=sd)
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / np.sqrt(sigma**2 + sd**2)
    c_in = 1 / np.sqrt(sigma**2 + sd**2)

    @jax.jit
    def run(x0, n, param=param):
      x = _x_t(process, x0, n, t)
      ones = jnp.ones_like(x)
      return (param.input_scale(process, t),
              param.predict(process, ones, t, 0 * ones).x0[:, 0],  # c_skip
              param.predict(process, 0 * ones, t, ones).x0[:, 0],  # c_out
              x, param.target(process, x0, n, t))

    got_in, got_skip, got_out, x, target = run(x0, n)
    np.testing.assert_allclose(got_in, c_in, rtol=1e-5)
    np.testing.assert_allclose(got_skip, c_skip, rtol=1e-5)
    np.testing.assert_allclose(got_out, c_out, rtol=1e-5)
    np.testing.assert_allclose(
        target, (x0 - c_skip[:, None] * x) / c_out[:, None], rtol=1e-4,
        atol=1e-4)


def test_edm_stays_finite_as_alpha_vanishes():
  """Flow at t -> 1 (alpha -> 0): EDM's coefficients and prediction are
  finite, and the network input c_in x has unit scale."""
  process = _process("flow")
  param = denoiser.make_parameterization("edm")
  t = jnp.array([0.99, 0.999, 0.9999])
  x0, n = _draws(4, (3, 2))
  x = _x_t(process, x0, n, t)
  pred = jax.jit(lambda x: param.predict(process, x, t,
                                         param.target(process, x0, n, t)))(x)
  assert np.all(np.isfinite(pred.eps)) and np.all(np.isfinite(pred.x0))
  np.testing.assert_allclose(pred.eps, n, rtol=1e-3, atol=1e-3)
  c_in = param.input_scale(process, t)
  np.testing.assert_allclose(c_in * process.sigma(t), 1.0, rtol=1e-3)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_v_on_vp_is_edm_with_unit_sigma_data(schedule):
  """alpha^2 + sigma^2 = 1: EDM with sigma_data = 1 has c_in = 1 and target
  sigma x0 - alpha n = -v; the output -v predicts what v predicts."""
  process = sde_lib.make_sde("vp", schedule=schedule)
  v_param = denoiser.make_parameterization("v")
  edm = denoiser.make_parameterization("edm", sigma_data=1.0)
  x0, n = _draws(5)
  t = _times(process)

  @jax.jit
  def run(x0, n):
    x = _x_t(process, x0, n, t)
    v = v_param.target(process, x0, n, t)
    f = jax.random.normal(jax.random.key(6), x.shape)  # any network output
    return (v, edm.target(process, x0, n, t), edm.input_scale(process, t),
            v_param.predict(process, x, t, f), edm.predict(process, x, t, -f))

  v, f_edm, c_in, by_v, by_edm = run(x0, n)
  np.testing.assert_allclose(f_edm, -v, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(c_in, 1.0, rtol=1e-6)
  np.testing.assert_allclose(by_edm.eps, by_v.eps, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(by_edm.x0, by_v.x0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      v_param.eps_factor(process, t), edm.eps_factor(process, t), rtol=1e-5)


def test_flow_velocity_is_noise_minus_data():
  """For x_t = (1 - t) x0 + t n the velocity dx_t/dt is n - x0, and its
  error per noise error is 1 / alpha^2."""
  process = _process("flow")
  param = denoiser.make_parameterization("velocity")
  x0, n = _draws(7)
  t = _times(process)
  target = jax.jit(lambda x0, n: param.target(process, x0, n, t))(x0, n)
  np.testing.assert_allclose(target, n - x0, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(param.eps_factor(process, t),
                             1 / (1 - t)**2, rtol=1e-5)


def test_eps_and_x0_predictions_and_the_score():
  """from_eps is Tweedie's x0; from_x0 the matching noise; score = -eps/s."""
  process = _process("vp")
  x0, n = _draws(8)
  t = _times(process)
  x = _x_t(process, x0, n, t)
  by_eps = denoiser.from_eps(process, x, t, n)
  by_x0 = denoiser.from_x0(process, x, t, x0)
  np.testing.assert_allclose(by_eps.x0, x0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(by_x0.eps, n, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      by_eps.score(process, t), -n / process.sigma(t)[:, None, None],
      rtol=1e-6)
  fn = denoiser.eps_denoiser(process, lambda x, t: n)
  np.testing.assert_allclose(fn(x, t).x0, by_eps.x0, rtol=1e-6)


# ---------------------------------------------- classifier-free guidance


def _toy_apply(params, x, t, y):
  """F = w x + t + emb[y]; y=None is the null class K (last row of emb)."""
  w, emb = params
  e = emb[-1] if y is None else emb[y][:, None]
  return w * x + t[:, None] + e


@pytest.mark.parametrize("name", ["eps", "x0", "edm"])
def test_model_denoiser_guidance_combines_both_fields(name):
  """(1 + w) P(x, t, y) - w P(x, t, null) for eps and x0 alike; w = 0 or no
  labels: the plain (conditional / unconditional) prediction."""
  process = _process("vp")
  param = denoiser.make_parameterization(name)
  num_classes = 3
  params = (jnp.float32(0.7), jnp.array([0.1, -0.4, 2.0, -1.5]))
  x = jax.random.normal(jax.random.key(0), (4, 5))
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  y = jnp.array([0, 2, 1, 2])
  scaled = x
  if param.input_scale is not None:  # what the network sees: c_in x
    scaled = param.input_scale(process, t)[:, None] * x
  cond = param.predict(process, x, t, _toy_apply(params, scaled, t, y))
  uncond = param.predict(process, x, t, _toy_apply(params, scaled, t, None))

  def bound(**kwargs):
    return jax.jit(denoiser.model_denoiser(_toy_apply, params, process, param,
                                           num_classes=num_classes,
                                           **kwargs))(x, t)

  for field in ("eps", "x0"):
    want = lambda p, f=field: getattr(p, f)
    np.testing.assert_allclose(want(bound(labels=y)), want(cond), rtol=1e-5,
                               atol=1e-5)
    for w in (0.5, 3.0):
      np.testing.assert_allclose(
          want(bound(labels=y, guidance_scale=w)),
          (1 + w) * want(cond) - w * want(uncond), rtol=1e-4, atol=1e-4,
          err_msg=f"{field} w={w}")
    for w in (0.0, 2.0):  # no labels: the unconditional network
      np.testing.assert_allclose(want(bound(guidance_scale=w)), want(uncond),
                                 rtol=1e-5, atol=1e-5)
  # The guided prediction is still a consistent pair: x = alpha x0 + sigma eps.
  g = bound(labels=y, guidance_scale=3.0)
  np.testing.assert_allclose(
      process.alpha(t)[:, None] * g.x0 + process.sigma(t)[:, None] * g.eps, x,
      rtol=1e-4, atol=1e-4)
