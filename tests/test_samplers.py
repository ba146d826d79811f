"""Tests for jaxdiff.samplers with an exact score.

For Gaussian data x0 ~ N(mu, s2) every marginal is Gaussian,
x_t ~ N(alpha mu, alpha^2 s2 + sigma^2), so the exact noise prediction is

    eps(x, t) = sigma (x - alpha mu) / (alpha^2 s2 + sigma^2),

and the probability-flow ODE maps x_t = alpha mu + sqrt(alpha^2 s2 + sigma^2) z
along a line of constant z. Every sampler is checked against these facts.
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff import sde as sde_lib

MU, S2 = 0.5, 0.25
SDE_SPECS = {
    "vp_linear": ("vp", {}),
    "vp_cosine": ("vp", {"schedule": "cosine"}),
    "subvp": ("subvp", {}),
    "ve": ("ve", {}),
}
DISCRETE_T = 1000
STOCHASTIC = {"ddpm", "euler_maruyama", "pc"}
DETERMINISTIC = {"ddim", "euler", "heun", "dpm_solver_pp"}  # ddim: eta = 0.
ODE_ORDERS = {"euler": 1, "ddim": 1, "heun": 2, "dpm_solver_pp": 2}


def _make_sde(spec: str) -> sde_lib.SDE:
  if spec == "vp_discrete":
    return sde_lib.make_sde("vp", num_steps=DISCRETE_T)
  name, kwargs = SDE_SPECS[spec]
  return sde_lib.make_sde(name, **kwargs)


def gaussian_eps_fn(sde, mu=MU, s2=S2):
  """Exact eps for data N(mu, s2) (s2 = 0: a point mass at mu)."""
  def eps_fn(x, t):
    a, sg = sde_lib.bcast(sde.alpha(t), x), sde_lib.bcast(sde.sigma(t), x)
    return sg * (x - a * mu) / (a**2 * s2 + sg**2)
  return eps_fn


def exact_flow(sde, t, z, mu=MU, s2=S2):
  """The probability-flow solution at time t for the standardised point z."""
  a, sg = sde.alpha(t), sde.sigma(t)
  return a * mu + jnp.sqrt(a**2 * s2 + sg**2) * z


def _accepts_gaussian_sdes(name: str) -> bool:
  """False for samplers of other processes (e.g. DDGM's gamma sampler)."""
  try:
    samplers.make_sampler(name, _make_sde("vp_linear"), lambda x, t: x)
  except ValueError:
    return False
  return True


# The registered samplers for the Gaussian SDEs, in registry order.
GAUSSIAN_SAMPLERS = [n for n in samplers.SAMPLERS.names()
                     if _accepts_gaussian_sdes(n)]


def test_sampler_sets_cover_registry():
  # A newly registered Gaussian sampler must be classified here to be tested;
  # the others must refuse every Gaussian SDE with a ValueError.
  assert STOCHASTIC | DETERMINISTIC == set(GAUSSIAN_SAMPLERS)
  for name in set(samplers.SAMPLERS.names()) - set(GAUSSIAN_SAMPLERS):
    for spec in SDE_SPECS:
      with pytest.raises(ValueError):
        samplers.make_sampler(name, _make_sde(spec), lambda x, t: x)


# ----------------------------------------- (1) exact score -> data moments

# Steps and grid per sampler, chosen so that the discretisation bias in the
# variance (measured with 4e5 samples) stays below ~1 Monte-Carlo standard
# error. Ancestral sampling ignores Var(x0 | x_t) and under-disperses on
# coarse grids, so the SDE samplers get 1000 steps; Euler on the VE ODE needs
# many steps (its relative error is ~ sum (log(sigma_max/sigma_min) dt)^2 / 2).
SAMPLE_SETTINGS = {
    "ddpm": (1000, "uniform"),
    "euler_maruyama": (1000, "uniform"),
    "pc": (1000, "uniform"),
    "ddim": (500, "logsnr"),
    "euler": (500, "logsnr"),
    "heun": (200, "logsnr"),
    "dpm_solver_pp": (100, "logsnr"),
}
SAMPLE_OVERRIDES = {("ve", "euler"): 2000, ("vp_discrete", "ddpm"): DISCRETE_T}
N_SAMPLES, DIM = 4000, 4


@pytest.mark.parametrize("spec", list(SDE_SPECS) + ["vp_discrete"])
def test_exact_score_reproduces_data_moments(spec):
  sde = _make_sde(spec)
  eps_fn = gaussian_eps_fn(sde)
  names = ["ddpm", "ddim"] if spec == "vp_discrete" else GAUSSIAN_SAMPLERS

  @jax.jit  # One compilation for all samplers of this SDE.
  def run(key):
    out = {}
    for name in names:
      steps, grid = SAMPLE_SETTINGS[name]
      steps = SAMPLE_OVERRIDES.get((spec, name), steps)
      out[name] = samplers.sample(name, sde, eps_fn, key, (N_SAMPLES, DIM),
                                  steps=steps, grid=grid)
    return out

  n = N_SAMPLES * DIM  # i.i.d. coordinates (eps_fn is elementwise)
  # 5 Monte-Carlo standard errors: Var(mean) = s2/n, Var(var) = 2 s2^2/n.
  # The prior's missing mean (alpha(1) mu, or mu/sigma_max for VE) shifts the
  # mean by at most 0.005 < 1.3 standard errors and is covered.
  tol_mean = 5 * math.sqrt(S2 / n)           # ~0.020
  tol_var = 5 * S2 * math.sqrt(2.0 / n)      # ~0.014
  failures = []
  for name, x in run(jax.random.key(0)).items():
    x = np.asarray(x, np.float64)
    assert x.shape == (N_SAMPLES, DIM) and np.all(np.isfinite(x)), name
    want_var = S2
    if name == "pc":
      # A Langevin step x + e score + sqrt(2e) z with e = 2 (snr |z|/|score|)^2
      # has the fixed point Var = s2 (1 + snr^2) (snr = 0.16): a known bias of
      # the corrector at finite snr, not of the integrator.
      want_var = S2 * (1 + 0.16**2)
    if (abs(x.mean() - MU) > tol_mean or abs(x.var() - want_var) > tol_var):
      failures.append((name, x.mean(), x.var(), want_var))
  assert not failures, failures


def test_ddpm_step_is_the_posterior_q():
  """A DDPM step on the chain draws from q(x_{t-1} | x_t, x0_hat) (Ho et al.)."""
  sde = _make_sde("vp_discrete")
  betas = sde.schedule.betas
  abar = np.cumprod(1 - betas)
  x0_hat, x_t, n, steps = 0.3, 0.7, 20000, (2, 10, 500, 1000)
  # eps such that (x_t - sigma_t eps) / alpha_t = x0_hat.
  eps = {i: (x_t - np.sqrt(abar[i - 1]) * x0_hat) / np.sqrt(1 - abar[i - 1])
         for i in steps}

  @jax.jit
  def run():
    out = {}
    for i in steps:
      stepper = samplers.make_sampler(
          "ddpm", sde, lambda x, t, e=eps[i]: jnp.full_like(x, e))
      out[i] = stepper.step({"x": jnp.full((n, 1), x_t)},
                            jnp.float32(i / DISCRETE_T),
                            jnp.float32((i - 1) / DISCRETE_T),
                            samplers.Noise(jax.random.key(i)))["x"]
    return out

  for i, out in run().items():
    abar_prev = abar[i - 2]
    c0 = np.sqrt(abar_prev) * betas[i - 1] / (1 - abar[i - 1])
    ct = np.sqrt(1 - betas[i - 1]) * (1 - abar_prev) / (1 - abar[i - 1])
    var = (1 - abar_prev) / (1 - abar[i - 1]) * betas[i - 1]
    z = (np.asarray(out, np.float64) - (c0 * x0_hat + ct * x_t)) / np.sqrt(var)
    # 5 standard errors, plus float32 rounding of x_t - mean at tiny var.
    assert abs(z.mean()) < 5 / np.sqrt(n) + 2e-3, (i, z.mean())
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * n) + 2e-3, (i, z.std())


def test_pc_corrector_stationary_variance():
  """Langevin steps at a fixed t keep the marginal's mean, variance v(1+snr^2).

  With s = t the predictor is the identity, so the pc step is the corrector
  x + e score + sqrt(2e) z, e = 2 (snr |z| / |score|)^2 = 2 snr^2 v^2 / V for
  the exact score -(x - m)/v; its fixed point solves V = (1 - e/v)^2 V + 2e,
  i.e. V = v (1 + snr^2).
  """
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)
  t, n = 0.3, 20000
  ts = np.full(20, t, np.float32)  # 19 corrector steps at the same time
  a, sg = float(sde.alpha(t)), float(sde.sigma(t))
  m, v = a * MU, a**2 * S2 + sg**2
  x = m + math.sqrt(v) * jax.random.normal(jax.random.key(0), (n, DIM))
  snrs = (0.16, 0.5)

  @jax.jit
  def run(x):
    return [samplers.integrate(samplers.make_sampler("pc", sde, eps_fn,
                                                     snr=snr),
                               x, ts, jax.random.key(1)) for snr in snrs]

  for snr, out in zip(snrs, run(x)):
    out = np.asarray(out, np.float64)
    want = v * (1 + snr**2)
    assert abs(out.mean() - m) < 5 * math.sqrt(want / out.size), snr
    assert abs(out.var() - want) < 5 * want * math.sqrt(2 / out.size), (
        snr, out.var(), want)


def test_pc_zero_score_is_finite():
  """A zero network output (zero-initialised last layer) must not give NaN."""
  sde = _make_sde("vp_linear")
  run = jax.jit(lambda k: samplers.sample("pc", sde, lambda x, t: 0 * x, k,
                                          (4, 3), steps=5))
  assert np.all(np.isfinite(run(jax.random.key(0))))


# ------------------------------------------------ (2) convergence order

# (sde, grid) pairs in the asymptotic regime at 64 -> 128 steps.
ORDER_CASES = [("vp_linear", "logsnr"), ("vp_cosine", "uniform"),
               ("subvp", "uniform"), ("ve", "uniform")]


@pytest.mark.parametrize("spec,grid", ORDER_CASES)
def test_ode_solvers_convergence_order(spec, grid):
  """Max error against the exact flow at t_min > 0 halves like h^order."""
  sde = _make_sde(spec)
  eps_fn = gaussian_eps_fn(sde)
  z = jax.random.normal(jax.random.key(1), (64, DIM))
  grids = {n: samplers.time_grid(sde, n, kind=grid, t_min=1e-2,
                                 end_at_zero=False) for n in (64, 128)}

  @jax.jit
  def errors(z):
    out = {}
    for name in ODE_ORDERS:
      stepper = samplers.make_sampler(name, sde, eps_fn)
      for n, ts in grids.items():
        x = samplers.integrate(stepper, exact_flow(sde, ts[0], z), ts,
                               jax.random.key(0))
        out[name, n] = jnp.max(jnp.abs(x - exact_flow(sde, ts[-1], z)))
    return out

  errs = errors(z)
  for name, order in ODE_ORDERS.items():
    measured = math.log2(float(errs[name, 64]) / float(errs[name, 128]))
    assert abs(measured - order) < 0.3, (name, errs, measured)


# ---------------------------------------------- (3) DDIM is an invertible map


@pytest.mark.parametrize("spec", ["vp_linear", "ve"])
def test_ddim_inverts_exactly_for_point_mass(spec):
  """For a point mass eps is constant along the flow: DDIM is exact both ways.

  DDIM's step also runs forward in time (s > t), so the reversed grid maps
  x_tmin back to x_tmax.
  """
  sde = _make_sde(spec)
  eps_fn = gaussian_eps_fn(sde, s2=0.0)
  stepper = samplers.make_sampler("ddim", sde, eps_fn)
  ts = samplers.time_grid(sde, 10, kind="karras", t_min=1e-2,
                          end_at_zero=False)
  z = jax.random.normal(jax.random.key(0), (32, DIM))
  x_max = exact_flow(sde, ts[0], z, s2=0.0)

  @jax.jit
  def run(x_max):
    x_min = samplers.integrate(stepper, x_max, ts, jax.random.key(0))
    return x_min, samplers.integrate(stepper, x_min, ts[::-1],
                                     jax.random.key(1))

  x_min, back = run(x_max)
  np.testing.assert_allclose(x_min, exact_flow(sde, ts[-1], z, s2=0.0),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(back, x_max, rtol=1e-4, atol=1e-4 * sde.prior_std)


def test_ddim_inversion_round_trip_converges():
  """Gaussian data: x_T -> x_tmin -> x_T recovers x_T with O(1/N) error."""
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)
  stepper = samplers.make_sampler("ddim", sde, eps_fn)
  x_max = sde.prior_sample(jax.random.key(0), (64, DIM))
  grids = [samplers.time_grid(sde, n, kind="logsnr", t_min=1e-2,
                              end_at_zero=False) for n in (100, 200)]

  @jax.jit
  def round_trip_errors(x_max):
    errs = []
    for ts in grids:
      x_min = samplers.integrate(stepper, x_max, ts, jax.random.key(1))
      back = samplers.integrate(stepper, x_min, ts[::-1], jax.random.key(2))
      errs.append(jnp.max(jnp.abs(back - x_max)))
    return errs

  errs = [float(e) for e in round_trip_errors(x_max)]
  assert errs[1] < 0.1, errs
  assert abs(math.log2(errs[0] / errs[1]) - 1) < 0.3, errs


# ------------------------------------------------------- (4) determinism


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm_solver_pp"])
def test_clip_denoised_bounds_x0_estimate(name):
  """A point mass inside [-1, 1] is reached with or without clipping; one at
  3 (outside the data range the clip assumes) is pulled to the bound."""
  sde = _make_sde("vp_cosine")
  ts = samplers.time_grid(sde, 20, t_min=1e-4, end_at_zero=False)
  x_t = sde.prior_sample(jax.random.key(0), (16, DIM))

  @functools.partial(jax.jit, static_argnums=1)
  def run(mu, clip):
    eps_fn = gaussian_eps_fn(sde, mu=mu, s2=0.0)
    stepper = samplers.make_sampler(name, sde, eps_fn, clip_denoised=clip)
    return samplers.integrate(stepper, x_t, ts, jax.random.key(1))

  for clip in (False, True):
    np.testing.assert_allclose(run(0.5, clip), 0.5, atol=2e-2)
  np.testing.assert_allclose(run(3.0, False), 3.0, atol=2e-2)
  np.testing.assert_allclose(run(3.0, True), 1.0, atol=2e-2)


def test_determinism_per_key():
  """Same key -> same samples; a new key changes only stochastic samplers
  (from a fixed x_T), and through the prior draw any sampler in sample()."""
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)
  ts = samplers.time_grid(sde, 8)
  x_t = sde.prior_sample(jax.random.key(0), (8, 2, 2, 1))
  names = GAUSSIAN_SAMPLERS

  @jax.jit
  def run(key):
    out = {}
    for name in names:
      stepper = samplers.make_sampler(name, sde, eps_fn)
      out[name, "integrate"] = samplers.integrate(stepper, x_t, ts, key,
                                                  sde=sde, eps_fn=eps_fn)
    for name in ("euler", "ddpm"):  # the prior draw is sampler-independent
      out[name, "sample"] = samplers.sample(name, sde, eps_fn, key, (8, 2),
                                            steps=5)
    return out

  a, a2, b = run(jax.random.key(1)), run(jax.random.key(1)), run(
      jax.random.key(2))
  for (name, how), x in a.items():
    np.testing.assert_array_equal(x, a2[name, how])
    if how == "sample":
      assert not np.allclose(x, b[name, how]), name
    elif name in STOCHASTIC:
      assert x.shape == x_t.shape
      assert not np.allclose(x, b[name, how]), name
    else:  # DDIM (eta = 0) and the ODE solvers ignore the key.
      assert x.shape == x_t.shape
      np.testing.assert_array_equal(x, b[name, how])


@pytest.mark.slow
def test_noise_sign_negates_every_gaussian_draw():
  """noise_sign=+1 is the plain run; with -1 the stochastic samplers see -z.

  For Gaussian data the exact eps is affine, so a DDPM run is affine in its
  noise and the antithetic pair's mean is the run with every draw set to
  zero (noise_sign=0, the run's mean). Deterministic samplers
  ignore the sign.
  """
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)
  ts = samplers.time_grid(sde, 8)
  x_t = sde.prior_sample(jax.random.key(0), (64, 2, 2, 1))
  key = jax.random.key(1)

  @functools.partial(jax.jit, static_argnums=0)
  def run(name, sign):
    stepper = samplers.make_sampler(name, sde, eps_fn)
    return samplers.integrate(stepper, x_t, ts, key, sde=sde, eps_fn=eps_fn,
                              noise_sign=sign)

  for name in GAUSSIAN_SAMPLERS:
    plain = samplers.integrate(samplers.make_sampler(name, sde, eps_fn), x_t,
                               ts, key, sde=sde, eps_fn=eps_fn)
    np.testing.assert_allclose(run(name, 1.0), plain, atol=1e-6)
    if name in STOCHASTIC:
      assert not np.allclose(run(name, -1.0), plain), name
    else:
      np.testing.assert_allclose(run(name, -1.0), plain, atol=1e-6)

  # Sign 0 drops every draw: the DDPM chain's mean path.
  zero_noise = run("ddpm", 0.0)
  pair = 0.5 * (run("ddpm", 1.0) + run("ddpm", -1.0))
  np.testing.assert_allclose(pair, zero_noise, atol=1e-5)
  assert float(jnp.abs(run("ddpm", 1.0) - zero_noise).mean()) > 0.05


def test_a_step_fed_the_network_output_equals_the_step_calling_it():
  """`step(..., eps)` with eps = eps_fn(x, t) is the plain step; for a
  one-call step, eps replaces the network entirely (a wrong network is
  never called), and a multi-call step still calls it after the first."""
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)
  wrong = lambda x, t: eps_fn(x, t) + 1.0
  x = sde.prior_sample(jax.random.key(0), (16, 2, 2, 1))
  t, s = jnp.float32(0.7), jnp.float32(0.55)
  noise = samplers.Noise(jax.random.key(3))
  eps = eps_fn(x, jnp.full((16,), t))
  for name in GAUSSIAN_SAMPLERS:
    plain = samplers.make_sampler(name, sde, eps_fn)
    state = plain.init(x)
    ref = plain.step(state, t, s, noise)["x"]
    np.testing.assert_allclose(plain.step(state, t, s, noise, eps)["x"], ref,
                               rtol=1e-6, atol=1e-6, err_msg=name)
    fed = samplers.make_sampler(name, sde, wrong)
    got = fed.step(fed.init(x), t, s, noise, eps)["x"]
    if fed.nfe_per_step == 1:
      np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6,
                                 err_msg=name)
    else:
      assert not np.allclose(got, ref), name


def test_noise_draws_from_the_step_key():
  """noise(x) is normal(key, x.shape); j folds in; split is jax's split;
  the sign multiplies every draw."""
  key = jax.random.key(5)
  x = jnp.zeros((3, 4))
  noise = samplers.Noise(key)
  np.testing.assert_array_equal(noise(x), jax.random.normal(key, (3, 4)))
  np.testing.assert_array_equal(
      noise(x, j=2), jax.random.normal(jax.random.fold_in(key, 2), (3, 4)))
  a, b = noise.split()
  ka, kb = jax.random.split(key)
  np.testing.assert_array_equal(a(x), jax.random.normal(ka, (3, 4)))
  np.testing.assert_array_equal(b(x), jax.random.normal(kb, (3, 4)))
  np.testing.assert_array_equal(samplers.Noise(key, -1.0)(x), -noise(x))


# ------------------------------------------------------- (5) trajectories


def test_trajectory_shapes_and_frames():
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)
  stepper = samplers.make_sampler("euler", sde, eps_fn)
  x_t = sde.prior_sample(jax.random.key(0), (5, 3))
  cases = [(k, z) for k in (1, 3, 4) for z in (True, False)]
  grids = {z: samplers.time_grid(sde, 10, end_at_zero=z)  # 9 transitions
           for z in (True, False)}
  go = lambda x, ts, k: samplers.integrate(
      stepper, x, ts, jax.random.key(0), sde=sde, eps_fn=eps_fn,
      trajectory_every=k)

  @jax.jit
  def run(x):
    out = {(k, z): go(x, grids[z], k) for k, z in cases}
    plain = {z: go(x, grids[z], 0) for z in (True, False)}
    # x after i steps, by integrating the grid's first i + 1 times.
    prefix = {i: go(x, grids[False][:i + 1], 0) for i in range(1, 10)}
    return out, plain, prefix

  out, plain, prefix = run(x_t)
  for (k, end_at_zero), (x, traj) in out.items():
    n_chunks = 9 // k
    assert traj.shape == (1 + n_chunks + int(end_at_zero), 5, 3)
    np.testing.assert_array_equal(traj[0], x_t)
    np.testing.assert_array_equal(traj[-1], x)
    np.testing.assert_allclose(x, plain[end_at_zero], rtol=1e-6, atol=1e-6)
    # Frames are aligned with the end of the grid: frame j follows step
    # 9 - (n_chunks - j) k.
    for j in range(1, n_chunks + 1):
      np.testing.assert_allclose(traj[j], prefix[9 - (n_chunks - j) * k],
                                 rtol=1e-5, atol=1e-5)


# -------------------------------------------------------- (6) time grids


@pytest.mark.parametrize("kind", samplers.GRIDS.names())
@pytest.mark.parametrize("spec", ["vp_linear", "ve", "vp_discrete"])
def test_time_grid(kind, spec):
  sde = _make_sde(spec)
  for steps in (1, 7, 50):
    ts = samplers.time_grid(sde, steps, kind=kind)
    assert ts.dtype == np.float32 and ts[-1] == 0.0 and ts[0] == 1.0
    assert np.all(np.diff(ts) < 0)
    if spec == "vp_discrete":
      i = ts * DISCRETE_T
      np.testing.assert_allclose(i, np.round(i), atol=1e-3)
      assert len(ts) <= steps + 1
    else:
      assert len(ts) == steps + 1
      if steps > 1:
        np.testing.assert_allclose(ts[-2], sde.t_min, rtol=1e-6)
    no_zero = samplers.time_grid(sde, steps, kind=kind, end_at_zero=False)
    np.testing.assert_array_equal(no_zero, ts[:-1])


def test_time_grid_spacings():
  sde = _make_sde("vp_cosine")
  lam = lambda t: np.log(sde.alpha(t)) - np.log(sde.sigma(t))
  ts = samplers.time_grid(sde, 12, kind="logsnr", end_at_zero=False)
  np.testing.assert_allclose(np.diff(lam(ts)), np.diff(lam(ts)).mean(),
                             rtol=1e-3)
  ts = samplers.time_grid(sde, 12, kind="karras", end_at_zero=False, rho=7.0)
  r = (sde.sigma(ts) / sde.alpha(ts))**(1 / 7.0)
  np.testing.assert_allclose(np.diff(r), np.diff(r).mean(), rtol=1e-3)
  ts = samplers.time_grid(sde, 12, kind="quadratic", end_at_zero=False)
  np.testing.assert_allclose(np.diff(np.sqrt(ts)), np.diff(np.sqrt(ts))[0],
                             rtol=1e-4)


def test_time_grid_snaps_and_dedups_for_chain():
  sde = _make_sde("vp_discrete")
  ts = samplers.time_grid(sde, 5000)  # more steps than the chain has
  np.testing.assert_allclose(ts[:-1] * DISCRETE_T,
                             np.arange(DISCRETE_T, 0, -1), atol=1e-3)
  ts = samplers.time_grid(sde, 10)
  np.testing.assert_allclose(ts[-2], 1 / DISCRETE_T)


def test_every_grid_works_under_jit():
  sde = _make_sde("vp_linear")
  run = jax.jit(lambda k: [samplers.sample(
      "ddim", sde, gaussian_eps_fn(sde), k, (4, 2), steps=6, grid=kind)
                           for kind in samplers.GRIDS.names()])
  assert np.all(np.isfinite(run(jax.random.key(0))))


@pytest.mark.parametrize("kwargs", [
    {"steps": 0}, {"steps": -3}, {"steps": 2.5}, {"steps": 5, "kind": "cubic"},
    {"steps": 5, "t_min": 0.5, "t_max": 0.1}, {"steps": 5, "t_min": 0.0},
    {"steps": 5, "t_max": 1.5}])
def test_time_grid_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    samplers.time_grid(_make_sde("vp_linear"), **kwargs)


def test_bad_sampler_arguments():
  sde = _make_sde("vp_linear")
  with pytest.raises(ValueError):
    samplers.make_sampler("ddim", sde, gaussian_eps_fn(sde), eta=-1.0)
  with pytest.raises(ValueError):
    samplers.make_sampler("heun", sde, gaussian_eps_fn(sde), snr=0.1)
  with pytest.raises(ValueError):
    samplers.make_sampler("rk45", sde, gaussian_eps_fn(sde))
  with pytest.raises(ValueError):  # a grid ending at 0 needs sde and eps_fn
    samplers.integrate(samplers.make_sampler("euler", sde, gaussian_eps_fn(sde)),
                       jnp.zeros((2, 2)), samplers.time_grid(sde, 4),
                       jax.random.key(0))


# ------------------------------------------- (7) no retrace; NFE accounting


def test_jitted_sampler_does_not_retrace():
  sde = _make_sde("vp_linear")
  eps_fn = gaussian_eps_fn(sde)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draw(key):
    return samplers.sample("dpm_solver_pp", sde, eps_fn, key, (4, 3), steps=6)

  a = draw(jax.random.key(0))
  b = draw(jax.random.key(1))  # a new key: same trace, new numbers
  assert not np.allclose(a, b)


def test_nfe_counts_network_calls():
  """nfe(stepper, ts) is the number of eps_fn evaluations at run time."""
  sde = _make_sde("vp_linear")
  base = gaussian_eps_fn(sde)
  ts = samplers.time_grid(sde, 7)
  names = GAUSSIAN_SAMPLERS
  calls = {name: [] for name in names}

  def counting(name):
    def eps_fn(x, t):
      jax.debug.callback(lambda: calls[name].append(1))
      return base(x, t)
    return eps_fn

  @jax.jit
  def run(x):
    return [samplers.integrate(samplers.make_sampler(name, sde, counting(name)),
                               x, ts, jax.random.key(0), sde=sde,
                               eps_fn=counting(name)) for name in names]

  jax.block_until_ready(run(jnp.ones((2, 3))))
  jax.effects_barrier()
  for name in names:
    stepper = samplers.make_sampler(name, sde, base)
    assert len(calls[name]) == samplers.nfe(stepper, ts), name
    assert samplers.nfe(stepper, ts) == stepper.nfe_per_step * 6 + 1


# ---------------------------------------------- (8) classifier-free guidance


def _toy_apply(params, x, t, y):
  """eps = w x + t + emb[y]; y=None is the null class K (last row of emb)."""
  w, emb = params
  e = emb[-1] if y is None else emb[y][:, None]
  return w * x + t[:, None] + e


def test_model_eps_fn_guidance():
  num_classes = 3
  params = (jnp.float32(0.7), jnp.array([0.1, -0.4, 2.0, -1.5]))
  x = jax.random.normal(jax.random.key(0), (4, 5))
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  y = jnp.array([0, 2, 1, 2])
  cond = 0.7 * x + t[:, None] + params[1][y][:, None]
  uncond = 0.7 * x + t[:, None] + params[1][num_classes]
  plain = samplers.model_eps_fn(_toy_apply, params, labels=y,
                                num_classes=num_classes, guidance_scale=0.0)
  np.testing.assert_allclose(jax.jit(plain)(x, t), cond, rtol=1e-6, atol=1e-6)
  for w in (0.5, 3.0):
    guided = samplers.model_eps_fn(_toy_apply, params, labels=y,
                                   num_classes=num_classes, guidance_scale=w)
    np.testing.assert_allclose(jax.jit(guided)(x, t),
                               (1 + w) * cond - w * uncond, rtol=1e-5,
                               atol=1e-5)
  # No labels: the unconditional network, whatever the guidance scale.
  for w in (0.0, 2.0):
    no_labels = samplers.model_eps_fn(_toy_apply, params, guidance_scale=w)
    np.testing.assert_allclose(jax.jit(no_labels)(x, t), uncond, rtol=1e-6,
                               atol=1e-6)
