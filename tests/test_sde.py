"""Tests for jaxdiff.schedules and jaxdiff.sde against closed forms.

Every check compares with an independent analytic fact (a telescoping product,
a derivative identity, a quadrature, a simulation of the forward SDE), never
with a number the code under test produced itself.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import losses
from jaxdiff import schedules
from jaxdiff import sde as sde_lib

T = 1000

# name -> (sde name, make_sde kwargs). The discrete chain is the VP-SDE with a
# 1000-step DiscreteSchedule.
SDE_SPECS = {
    "vp_linear": ("vp", {}),
    "vp_cosine": ("vp", {"schedule": "cosine"}),
    "subvp": ("subvp", {}),
    "ve": ("ve", {}),
    "vp_discrete": ("vp", {"num_steps": T}),
    "flow": ("flow", {}),
}


def _make(spec_name: str) -> sde_lib.SDE:
  name, kwargs = SDE_SPECS[spec_name]
  return sde_lib.make_sde(name, **kwargs)


def test_specs_cover_registries():
  # A newly registered SDE or beta schedule must be added to the checks here.
  assert {name for name, _ in SDE_SPECS.values()} == set(sde_lib.SDES.names())
  assert set(schedules.BETAS.names()) == {"linear", "cosine"}


# ---------------------------------------------------------- discrete betas


def test_linear_betas_closed_form():
  betas = schedules.linear_betas(T)
  assert betas.shape == (T,)
  np.testing.assert_allclose(betas[0], 1e-4, rtol=1e-12)
  np.testing.assert_allclose(betas[-1], 0.02, rtol=1e-12)
  # Linear: constant increments (0.02 - 1e-4) / (T - 1).
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / (T - 1),
                             rtol=1e-9)


def test_cosine_betas_closed_form():
  s = 0.008
  betas = schedules.cosine_betas(T, s=s)
  f = lambda i: np.cos((i / T + s) / (1 + s) * np.pi / 2)**2
  i = np.arange(1, T + 1)
  # Before clipping, prod_{j<=i} (1 - beta_j) telescopes to f(i) / f(0).
  unclipped = betas < 0.999
  n = int(np.argmin(unclipped)) if not unclipped.all() else T
  assert n >= T - 1  # Only the last step(s) (f(T) = 0) get clipped.
  np.testing.assert_allclose(np.cumprod(1 - betas)[:n], (f(i) / f(0))[:n],
                             rtol=1e-10)
  assert np.all(betas <= 0.999) and np.all(betas > 0)


def test_discrete_schedule_alphabar_is_cumprod():
  for name in ("linear", "cosine"):
    betas = schedules.BETAS.get(name)(T)
    sched = schedules.DiscreteSchedule(betas)
    t = jnp.arange(1, T + 1, dtype=jnp.float32) / T  # [T]
    got = np.asarray(schedules.alphabar(sched, t))
    want = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(float(schedules.alphabar(sched, 0.0)), 1.0)
    # And through the SDE: alpha(i/T)^2 = alphabar_i, sigma^2 = 1 - alphabar_i.
    sde = sde_lib.make_sde("vp", schedule=name, num_steps=T)
    np.testing.assert_allclose(np.asarray(sde.alpha(t))**2, want, rtol=3e-5,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(sde.sigma(t))**2, 1 - want,
                               rtol=3e-5, atol=1e-6)


# ------------------------------------------------------ continuous schedules


def test_linear_int_beta_closed_form():
  sched = schedules.LinearSchedule(beta_min=0.1, beta_max=20.0)
  # int_0^t (b0 + s (b1 - b0)) ds = b0 t + (b1 - b0) t^2 / 2.
  t = np.linspace(0, 1, 11)
  np.testing.assert_allclose(np.asarray(sched.int_beta(t)),
                             0.1 * t + 9.95 * t**2, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(schedules.alphabar(sched, 1.0)),
                             math.exp(-10.05), rtol=1e-5)


@pytest.mark.parametrize("sched", [
    schedules.LinearSchedule(), schedules.CosineSchedule(),
    schedules.LinearSchedule(beta_min=1.0, beta_max=5.0)], ids=str)
def test_int_beta_is_integral_of_beta(sched):
  # Gauss-Legendre quadrature of beta on [0, t] (independent of int_beta).
  nodes, weights = np.polynomial.legendre.leggauss(40)
  for t in (0.1, 0.5, 0.97):
    s = 0.5 * t * (nodes + 1)
    quad = 0.5 * t * np.sum(weights * np.asarray(sched.beta(s), np.float64))
    np.testing.assert_allclose(float(sched.int_beta(t)), quad, rtol=1e-5)


def test_cosine_schedule_endpoints():
  sched = schedules.CosineSchedule(s=0.008, alphabar_min=1e-4)
  np.testing.assert_allclose(float(schedules.alphabar(sched, 0.0)), 1.0,
                             atol=1e-6)
  np.testing.assert_allclose(float(schedules.alphabar(sched, 1.0)), 1e-4,
                             rtol=1e-3)
  # Nichol & Dhariwal's alphabar at u = t t_max: f(u) / f(0).
  f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2)**2
  for t in (0.2, 0.5, 0.8):
    np.testing.assert_allclose(float(schedules.alphabar(sched, t)),
                               f(t * sched.t_max) / f(0.0), rtol=1e-4)


# ----------------------------------------------------------------- SDEs

# Times away from the discrete grid i/T (where beta jumps).
_TIMES = (0.0373, 0.2115, 0.5004 + 3e-4, 0.7777, 0.9123)


@pytest.mark.parametrize("spec", sorted(SDE_SPECS))
def test_drift_and_diffusion_match_marginals(spec):
  """f = d log(alpha)/dt and g^2 = d sigma^2/dt - 2 f sigma^2 (via jax.grad)."""
  sde = _make(spec)
  dlog_alpha = jax.jit(jax.grad(lambda t: jnp.log(sde.alpha(t))))
  dsigma2 = jax.jit(jax.grad(lambda t: sde.sigma(t)**2))
  for t in _TIMES:
    t = jnp.float32(t)
    f, g2 = float(sde.f(t)), float(sde.g2(t))
    np.testing.assert_allclose(f, float(dlog_alpha(t)), rtol=2e-3, atol=1e-6)
    want_g2 = float(dsigma2(t)) - 2 * f * float(sde.sigma(t))**2
    np.testing.assert_allclose(g2, want_g2, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("spec", sorted(SDE_SPECS))
def test_marginals_match_simulation(spec):
  """Euler-Maruyama paths of dx = f x dt + g dW from a fixed x0, at t=0.5."""
  sde = _make(spec)
  n_paths, n_steps, t_end, x0 = 20000, 500, 0.5, 1.5
  dt = t_end / n_steps  # 1e-3 = 1/T: steps align with the discrete chain.

  @jax.jit
  def simulate(key):
    def body(x, inp):
      i, k = inp
      t = (i + 0.5) * dt  # midpoint coefficients (beta is piecewise constant)
      drift, g = sde.sde(x, jnp.full(x.shape[:1], t))
      return x + drift * dt + g * jnp.sqrt(dt) * jax.random.normal(
          k, x.shape), None
    x = jnp.full((n_paths, 1), x0, jnp.float32)
    keys = jax.random.split(key, n_steps)
    x, _ = jax.lax.scan(body, x, (jnp.arange(n_steps), keys))
    return x[:, 0]

  x = np.asarray(simulate(jax.random.key(0)), np.float64)
  mean, std = sde.marginal_prob(jnp.full((1, 1), x0), jnp.full((1,), t_end))
  mean, std = float(mean.squeeze()), float(std.squeeze())
  # Monte-Carlo standard errors of the sample mean and std, 5 sigma, plus 1%
  # for the O(dt) Euler-Maruyama weak error.
  tol_mean = 5 * std / math.sqrt(n_paths) + 0.01 * abs(mean)
  tol_std = 5 * std / math.sqrt(2 * n_paths) + 0.01 * std
  assert abs(x.mean() - mean) < tol_mean, (x.mean(), mean)
  assert abs(x.std() - std) < tol_std, (x.std(), std)


@pytest.mark.parametrize("spec", sorted(SDE_SPECS))
def test_sde_basic_properties(spec):
  sde = _make(spec)
  t = jnp.linspace(0.01, sde.t_max, 50)  # flow: alpha(1) = 0, t_max < 1
  alpha, sigma = np.asarray(sde.alpha(t)), np.asarray(sde.sigma(t))
  assert np.all(sigma > 0) and np.all(alpha > 0)
  # The noise-to-signal ratio increases with t (on the chain's steps).
  assert np.all(np.diff(sigma / alpha) > 0)
  if spec.startswith("vp"):
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-5)
  if spec == "subvp":
    np.testing.assert_allclose(sigma, 1 - alpha**2, rtol=1e-5, atol=1e-6)
  if spec == "ve":
    np.testing.assert_allclose(alpha, 1.0)
    np.testing.assert_allclose(float(sde.sigma(0.0)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(sde.sigma(1.0)), 50.0, rtol=1e-5)
  if spec == "flow":  # the straight line x_t = (1 - t) x0 + t n
    np.testing.assert_allclose(alpha + sigma, 1.0, rtol=1e-6)
    np.testing.assert_allclose(sigma, np.asarray(t), rtol=1e-6)
    assert sde.t_max < 1 and sde.prior_std == pytest.approx(sde.t_max)
  # Tweedie inversion of the perturbation: eps_to_x0(x_t, eps) == x0.
  x0 = jax.random.normal(jax.random.key(0), (4, 3, 3, 1))
  tt = jnp.array([0.1, 0.3, 0.6, 0.9])
  xt, eps = sde.perturb(jax.random.key(1), x0, tt)
  np.testing.assert_allclose(np.asarray(sde.eps_to_x0(xt, eps, tt)),
                             np.asarray(x0), atol=2e-4 * sde.prior_std)


def test_discrete_sample_time_on_grid():
  sde = _make("vp_discrete")
  t = np.asarray(sde.sample_time(jax.random.key(0), 4096))
  i = t * T
  np.testing.assert_allclose(i, np.round(i), atol=1e-3)
  assert i.min() >= 1 - 1e-3 and i.max() <= T + 1e-3


def test_lognormal_time_inverts_ve_sigma_exactly():
  # VE: log sigma(t) = log sigma_min + t log(sigma_max / sigma_min), alpha = 1,
  # so the time of a log-ratio u is (u - log sigma_min) / log(max / min).
  sde = _make("ve")
  t = losses.sample_time(sde, jax.random.key(0), 512, time_sampling="lognormal",
                         lognormal_mean=-1.2, lognormal_std=1.2)
  u = jax.random.normal(jax.random.key(0), (512,)) * 1.2 - 1.2  # the same draw
  lo, hi = math.log(sde.sigma_min), math.log(sde.sigma_max)
  expected = np.clip((np.asarray(u) - lo) / (hi - lo), 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(t), expected, atol=2e-4)


@pytest.mark.parametrize("spec", ["vp_cosine", "vp_linear", "subvp"])
def test_lognormal_time_has_the_requested_log_ratio_law(spec):
  sde = _make(spec)
  t = losses.sample_time(sde, jax.random.key(1), 20_000,
                         time_sampling="lognormal", lognormal_mean=-1.2,
                         lognormal_std=1.2)
  u = np.log(np.asarray(sde.sigma(t) / sde.alpha(t)))
  # N(-1.2, 1.2^2) stays inside every schedule's range (clamping is rare).
  assert abs(u.mean() + 1.2) < 0.03 and abs(u.std() - 1.2) < 0.03
  assert 0.0 < float(t.min()) and float(t.max()) <= 1.0


def test_lognormal_time_on_the_discrete_grid():
  sde = _make("vp_discrete")
  t = np.asarray(losses.sample_time(sde, jax.random.key(2), 4096,
                                    time_sampling="lognormal"))
  i = t * T
  np.testing.assert_allclose(i, np.round(i), atol=1e-3)
  assert i.min() >= 1 - 1e-3 and i.max() <= T + 1e-3
  u = np.log(np.asarray(sde.sigma(t) / sde.alpha(t)))
  assert abs(np.median(u) + 1.2) < 0.05


# ------------------------------------------------------------ time_of_ratio


def test_time_of_ratio_inverts_ve_in_closed_form():
  """VE: sigma/alpha = sigma_min (sigma_max/sigma_min)^t, so t = log(r /
  sigma_min) / log(sigma_max / sigma_min); outside the range, the ends."""
  sde = _make("ve")
  r = np.array([0.02, 0.3, 1.0, 7.5, 49.0])
  expected = (np.log(r / sde.sigma_min)
              / math.log(sde.sigma_max / sde.sigma_min))
  t = jax.jit(lambda r: sde_lib.time_of_ratio(sde, r))(jnp.asarray(r))
  np.testing.assert_allclose(np.asarray(t), expected, atol=2e-6)
  np.testing.assert_allclose(sde.time_of_ratio(1e-4), 0.0, atol=1e-6)
  np.testing.assert_allclose(sde.time_of_ratio(1e4), 1.0, atol=1e-6)
  np.testing.assert_allclose(sde_lib.ratio_range(sde),
                             (sde.sigma_min, sde.sigma_max), rtol=1e-5)


def test_time_of_ratio_snap_rules_on_a_chain():
  """On the T-step chain, 'none' is the continuous inverse, 'nearest' its
  rounding to a step i/T and 'up' the first step with at least that noise."""
  chain = _make("vp_discrete")
  abar = np.cumprod(1 - chain.schedule.betas)
  steps = np.array([1, 7, 250, 999])
  # Ratios a quarter of the way between steps i and i + 1.
  ratio = np.sqrt((1 - abar) / abar)
  r = ratio[steps - 1] + 0.25 * (ratio[steps] - ratio[steps - 1])
  t = {snap: np.asarray(sde_lib.time_of_ratio(chain, r, snap=snap)) * T
       for snap in sde_lib.SNAP_RULES}
  assert np.all((t["none"] > steps) & (t["none"] < steps + 1))
  np.testing.assert_allclose(t["nearest"], steps, atol=1e-3)
  np.testing.assert_allclose(t["up"], steps + 1, atol=1e-3)
  with pytest.raises(ValueError, match="snap rule"):
    sde_lib.time_of_ratio(chain, 0.3, snap="down")


def test_unknown_time_sampling_raises():
  with pytest.raises(ValueError, match="time_sampling"):
    losses.sample_time(_make("vp_cosine"), jax.random.key(0), 4,
                       time_sampling="beta")


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("make", [
    lambda: schedules.linear_betas(T, beta_start=0.02, beta_end=1e-4),
    lambda: schedules.cosine_betas(T, s=-0.1),
    lambda: schedules.linear_betas(0),
    lambda: schedules.CosineSchedule(s=-0.1),
    lambda: schedules.LinearSchedule(beta_min=20.0, beta_max=0.1),
    lambda: schedules.DiscreteSchedule(np.array([0.1, 1.5])),
    lambda: schedules.make_schedule("quartic"),
    lambda: sde_lib.make_sde("vp", schedule="cosine", num_steps=T,
                             schedule_kwargs={"s": -1.0}),
    lambda: sde_lib.make_sde("ve", sigma_min=50.0, sigma_max=50.0),
    lambda: sde_lib.make_sde("ve", sigma_min=10.0, sigma_max=1.0),
    lambda: sde_lib.make_sde("edm"),
], ids=["beta_start>beta_end", "negative_s", "zero_steps", "cosine_neg_s",
        "beta_min>beta_max", "discrete_beta>1", "unknown_schedule",
        "make_sde_neg_s", "sigma_min==sigma_max", "sigma_min>sigma_max",
        "unknown_sde"])
def test_bad_arguments_raise(make):
  with pytest.raises(ValueError):
    make()
