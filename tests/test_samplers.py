"""Tests for jaxdiff.samplers with an exact denoiser.

For Gaussian data x0 ~ N(mu, s2) every marginal is Gaussian,
x_t ~ N(alpha mu, alpha^2 s2 + sigma^2), so the exact noise prediction is

    eps(x, t) = sigma (x - alpha mu) / (alpha^2 s2 + sigma^2),

E[x0 | x_t] = mu + alpha s2 (x - alpha mu) / (alpha^2 s2 + sigma^2), and the
probability-flow ODE maps x_t = alpha mu + sqrt(alpha^2 s2 + sigma^2) z along
a line of constant z. Every sampler is checked against these facts, through
every parameterization of the network (`jaxdiff.denoiser`).
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import denoiser
from jaxdiff import samplers
from jaxdiff import sde as sde_lib

MU, S2 = 0.5, 0.25
SDE_SPECS = {
    "vp_linear": ("vp", {}),
    "vp_cosine": ("vp", {"schedule": "cosine"}),
    "subvp": ("subvp", {}),
    "ve": ("ve", {}),
    "flow": ("flow", {}),
}
DISCRETE_T = 1000
STOCHASTIC = {"ddpm", "euler_maruyama", "pc", "euler_ancestral"}
# ddim: eta = 0; edm: s_churn = 0 (with churn it is stochastic, tested below).
DETERMINISTIC = {"ddim", "euler", "heun", "edm", "dpm_solver_pp",
                 "dpm_solver_pp_3m"}
ODE_ORDERS = {"euler": 1, "ddim": 1, "heun": 2, "edm": 2, "dpm_solver_pp": 2,
              "dpm_solver_pp_3m": 3}
PARAMS = denoiser.PARAMETERIZATIONS.names()


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


def gaussian_denoiser(sde, mu=MU, s2=S2):
  """The exact denoiser of N(mu, s2) data, as an eps network."""
  return denoiser.eps_denoiser(sde, gaussian_eps_fn(sde, mu, s2))


def exact_network(sde, param, mu=MU, s2=S2):
  """The exact denoiser of N(mu, s2) data as a network of parameterization
  `param`, bound by `model_denoiser`: its apply_fn receives c_in x and
  returns param.target at E[x0 | x_t] and E[eps | x_t]."""
  def apply_fn(params, x_in, t, y):
    del params, y
    x = x_in
    if param.input_scale is not None:  # undo model_denoiser's c_in
      x = x_in / sde_lib.bcast(param.input_scale(sde, t), x_in)
    a, sg = sde_lib.bcast(sde.alpha(t), x), sde_lib.bcast(sde.sigma(t), x)
    var = a**2 * s2 + sg**2
    x0 = mu + a * s2 * (x - a * mu) / var
    eps = sg * (x - a * mu) / var
    return param.target(sde, x0, eps, t)
  return denoiser.model_denoiser(apply_fn, None, sde, param)


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
  assert set(ODE_ORDERS) == DETERMINISTIC
  for name in set(samplers.SAMPLERS.names()) - set(GAUSSIAN_SAMPLERS):
    for spec in SDE_SPECS:
      with pytest.raises(ValueError):
        samplers.make_sampler(name, _make_sde(spec), lambda x, t: x)


# ----------------------------------------- (1) exact denoiser -> data moments

# Steps and grid per sampler, chosen so that the discretisation bias in the
# variance stays below ~1 Monte-Carlo standard error. Ancestral sampling
# ignores Var(x0 | x_t) and under-disperses on coarse grids, so the SDE
# samplers get 1000 steps; Euler on the ODE needs many steps (its relative
# error is ~ sum (dlog r)^2 / 2 over the grid's noise levels r).
SAMPLE_SETTINGS = {
    "ddpm": (1000, "uniform"),
    "euler_maruyama": (1000, "uniform"),
    "pc": (1000, "uniform"),
    "euler_ancestral": (1000, "logsnr"),
    "ddim": (1000, "logsnr"),
    "euler": (1000, "logsnr"),
    "heun": (100, "logsnr"),
    "edm": (100, "logsnr"),
    "dpm_solver_pp": (100, "logsnr"),
    "dpm_solver_pp_3m": (40, "logsnr"),
}
CHURN = {"s_churn": 20.0}  # gamma = 0.2 per step at 100 steps
N_SAMPLES, DIM = 2000, 4


def _moment_failures(out, n_copies=1):
  """(name, mean, var) of the outputs [.., N, DIM] that miss N(MU, S2)."""
  n = N_SAMPLES * DIM  # i.i.d. coordinates (the denoisers are elementwise)
  # 5 Monte-Carlo standard errors: Var(mean) = s2/n, Var(var) = 2 s2^2/n
  # (~0.028 and ~0.020). The prior's missing mean (alpha(t_max) mu, or
  # mu / sigma_max for VE) shifts the mean by at most 0.01 and is covered.
  tol_mean, tol_var = 5 * math.sqrt(S2 / n), 5 * S2 * math.sqrt(2.0 / n)
  failures = []
  for name, xs in out.items():
    xs = np.asarray(xs, np.float64).reshape(n_copies, N_SAMPLES, DIM)
    for i, x in enumerate(xs):
      want = S2 * (1 + 0.16**2) if name == "pc" else S2
      # pc: a Langevin step x + e score + sqrt(2e) z with e = 2 (snr |z| /
      # |score|)^2 has the fixed point Var = s2 (1 + snr^2) (snr = 0.16): a
      # known bias of the corrector at finite snr, not of the integrator.
      if not (np.all(np.isfinite(x)) and abs(x.mean() - MU) < tol_mean
              and abs(x.var() - want) < tol_var):
        failures.append((name, i, x.mean(), x.var(), want))
  return failures


@pytest.mark.parametrize("spec", ["vp_linear", "ve", "flow"])
def test_every_sampler_with_every_parameterization(spec):
  """The exact network in each parameterization (eps, x0, v, velocity, edm)
  through `model_denoiser`, sampled by every sampler: data moments. The
  parameterizations are vmapped over (one compilation per process) and share
  the prior draw and every step's noise."""
  sde = _make_sde(spec)
  # EDM's sigma_data = 0.3: at the data's std (0.5) the exact network is
  # constant in x, and at 1 VP's c_in is 1; either would leave c_in untested.
  options = {"edm": {"sigma_data": 0.3}}
  nets = [exact_network(sde, denoiser.make_parameterization(
      p, **options.get(p, {}))) for p in PARAMS]

  @jax.jit
  def run(key):
    out = {}
    for name in GAUSSIAN_SAMPLERS + ["edm_churn"]:
      sampler = "edm" if name == "edm_churn" else name
      steps, grid = SAMPLE_SETTINGS[sampler]
      churn = CHURN if name == "edm_churn" else {}

      def one(i, sampler=sampler, steps=steps, grid=grid, churn=churn):
        denoise_fn = lambda x, t: jax.lax.switch(i, nets, x, t)
        return samplers.sample(sampler, sde, denoise_fn, key,
                               (N_SAMPLES, DIM), steps=steps, grid=grid,
                               **churn)

      out[name] = jax.vmap(one)(jnp.arange(len(nets)))
    return out

  failures = _moment_failures(run(jax.random.key(0)), len(nets))
  assert not failures, [(f[0], PARAMS[f[1]]) + f[2:] for f in failures]


@pytest.mark.parametrize("spec", ["vp_cosine", "subvp", "vp_discrete"])
def test_exact_score_reproduces_data_moments(spec):
  sde = _make_sde(spec)
  denoise_fn = gaussian_denoiser(sde)
  names = ["ddpm", "ddim"] if spec == "vp_discrete" else GAUSSIAN_SAMPLERS

  @jax.jit  # One compilation for all samplers of this SDE.
  def run(key):
    out = {}
    for name in names:
      steps, grid = SAMPLE_SETTINGS[name]
      if spec == "vp_discrete":
        steps = DISCRETE_T
      out[name] = samplers.sample(name, sde, denoise_fn, key,
                                  (N_SAMPLES, DIM), steps=steps, grid=grid)
    return out

  failures = _moment_failures(run(jax.random.key(0)))
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
      denoise_fn = denoiser.eps_denoiser(
          sde, lambda x, t, e=eps[i]: jnp.full_like(x, e))
      stepper = samplers.make_sampler("ddpm", sde, denoise_fn)
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
  denoise_fn = gaussian_denoiser(sde)
  t, n = 0.3, 20000
  ts = np.full(20, t, np.float32)  # 19 corrector steps at the same time
  a, sg = float(sde.alpha(t)), float(sde.sigma(t))
  m, v = a * MU, a**2 * S2 + sg**2
  x = m + math.sqrt(v) * jax.random.normal(jax.random.key(0), (n, DIM))
  snrs = (0.16, 0.5)

  @jax.jit
  def run(x):
    return [samplers.integrate(samplers.make_sampler("pc", sde, denoise_fn,
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
  denoise_fn = denoiser.eps_denoiser(sde, lambda x, t: 0 * x)
  run = jax.jit(lambda k: samplers.sample("pc", sde, denoise_fn, k, (4, 3),
                                          steps=5))
  assert np.all(np.isfinite(run(jax.random.key(0))))


# ------------------------------------------------ (2) convergence order

# (sde, grid) pairs in the asymptotic regime at 64 -> 128 steps.
ORDER_CASES = [("vp_linear", "logsnr"), ("vp_cosine", "uniform"),
               ("subvp", "uniform"), ("ve", "uniform")]


@pytest.mark.parametrize("spec,grid", ORDER_CASES)
def test_ode_solvers_convergence_order(spec, grid):
  """Max error against the exact flow at t_min > 0 halves like h^order.

  DPM-Solver++(3M) is third order (3.0 on vp_cosine's grid). With the
  reference code's second-derivative term, half the Taylor one, it measured
  2.1 on the grids uniform in log-SNR (vp_linear's, ve's). On those grids
  this Gaussian flow converges faster still (3.7-3.9 at 64 -> 128 steps), so
  its upper bound is loose. Its first two steps (orders 1 and 2) are at the
  top noise levels, where x0_hat barely moves: they do not lower the order.
  """
  sde = _make_sde(spec)
  denoise_fn = gaussian_denoiser(sde)
  z = jax.random.normal(jax.random.key(1), (64, DIM))
  grids = {n: samplers.time_grid(sde, n, kind=grid, t_min=1e-2,
                                 end_at_zero=False) for n in (64, 128)}

  @jax.jit
  def errors(z):
    out = {}
    for name in ODE_ORDERS:
      stepper = samplers.make_sampler(name, sde, denoise_fn)
      for n, ts in grids.items():
        x = samplers.integrate(stepper, exact_flow(sde, ts[0], z), ts,
                               jax.random.key(0))
        out[name, n] = jnp.max(jnp.abs(x - exact_flow(sde, ts[-1], z)))
    return out

  errs = errors(z)
  for name, order in ODE_ORDERS.items():
    measured = math.log2(float(errs[name, 64]) / float(errs[name, 128]))
    slack = 1.2 if order == 3 else 0.3
    assert order - 0.3 < measured < order + slack, (name, errs, measured)


# ------------------------------------------- (3) few-step accuracy

# Variance ratio Var(samples) / s2 for x0 ~ N(0.3, 0.5^2) with each sampler's
# default grid, 4096 x 16 samples from one key (Monte-Carlo error ~0.6%, the
# same prior draw for every sampler). The requirement (None below): every
# deterministic sampler of order >= 2 within 3% at 25 (and 50) steps.
# DPM-Solver++ 2M and 3M meet it on VP, sub-VP, VE and flow (whose grid
# starts at r = sigma/alpha = 80; from r = 999, 2M gave 1.036).
# Heun (EDM's Algorithm 1 on Karras's grid, rho = 7; 49 network calls at 25
# steps) cannot on EDM's grids: second order in r, its error is large where
# the flow bends (r ~ the data's std). On VP no rho gets it under 4.4% (the
# log-SNR grid, rho -> inf: 1.045), nor does EDM's own sigma range [0.002,
# 80] (1.054); a grid quadratic in t does on VP (1.019), not on VE (1.080).
# Its measured ratios are recorded, like the first-order samplers' (ddim on
# the uniform grid, euler on Karras's), within +- 0.02. `edm` without churn
# is `heun` (the same stepper).
FEW_STEP_MU, FEW_STEP_SD = 0.3, 0.5
FEW_STEP_STEPS = (25, 50)
_FEW_STEP_SPECS = ("vp_linear", "subvp", "ve", "flow")
# sampler -> (ratios at 25 and 50 steps per spec, in _FEW_STEP_SPECS order).
FEW_STEP_RECORDED = {
    "dpm_solver_pp": (None, None, None, None),
    "dpm_solver_pp_3m": (None, None, None, None),
    "heun": ((1.062, 1.016), (1.072, 1.018), (1.040, 1.011), (1.057, 1.015)),
    "ddim": ((0.792, 0.893), (0.810, 0.903), (0.839, 0.919), (0.888, 0.945)),
    "euler": ((0.782, 0.888), (0.768, 0.880), (0.821, 0.909), (0.791, 0.893)),
}


@pytest.mark.parametrize("spec", _FEW_STEP_SPECS)
def test_few_step_variance(spec):
  sde = _make_sde(spec)
  denoise_fn = gaussian_denoiser(sde, FEW_STEP_MU, FEW_STEP_SD**2)

  @jax.jit
  def run(key):
    return {(name, n): jnp.var(samplers.sample(
        name, sde, denoise_fn, key, (4096, 16), steps=n))
            for name in FEW_STEP_RECORDED for n in FEW_STEP_STEPS}

  ratios = {k: float(v) / FEW_STEP_SD**2
            for k, v in run(jax.random.key(0)).items()}
  bad = []
  for name, recorded in FEW_STEP_RECORDED.items():
    got = tuple(ratios[name, n] for n in FEW_STEP_STEPS)
    want = recorded[_FEW_STEP_SPECS.index(spec)]
    if want is None:  # the requirement: within 3% at 25 steps
      if not (abs(got[0] - 1) < 0.03 and abs(got[1] - 1) < 0.03):
        bad.append((name, got, "within 3%"))
    elif not np.allclose(got, want, atol=0.02):
      bad.append((name, got, want))
  assert not bad, bad


# ------------------------------------------------------- (4) EDM's sampler


def test_edm_without_churn_is_heun_and_churn_is_stochastic():
  """s_churn = 0: Heun's steps exactly; with churn the key matters, the
  churn is capped at the process's top noise level, and s_min/s_max window
  it (a window containing no grid level gives Heun again)."""
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)
  ts = samplers.time_grid(sde, 12, kind="karras")
  x_t = sde.prior_sample(jax.random.key(0), (64, DIM))
  cases = {"heun": ("heun", {}), "edm": ("edm", {}),
           "churn": ("edm", {"s_churn": 40.0}),
           "window": ("edm", {"s_churn": 40.0, "s_min": 1e3, "s_max": 2e3})}

  @jax.jit
  def run(key):
    return {c: samplers.integrate(samplers.make_sampler(
        name, sde, denoise_fn, steps=12, **o), x_t, ts, key,
                                  denoise_fn=denoise_fn)
            for c, (name, o) in cases.items()}

  a, b = run(jax.random.key(1)), run(jax.random.key(2))
  np.testing.assert_array_equal(a["edm"], a["heun"])
  # (Up to rounding: the window case still rescales x by alpha / alpha.)
  np.testing.assert_allclose(a["window"], a["heun"], atol=1e-3)
  np.testing.assert_array_equal(a["edm"], b["edm"])
  assert np.all(np.isfinite(a["churn"]))
  assert not np.allclose(a["churn"], b["churn"])
  assert not np.allclose(a["churn"], a["heun"])
  with pytest.raises(ValueError, match="steps"):
    samplers.make_sampler("edm", sde, denoise_fn, s_churn=1.0)
  with pytest.raises(ValueError):
    samplers.make_sampler("edm", sde, denoise_fn, s_noise=0.0)


def test_edm_churn_stays_in_the_process_range():
  """At the top of the grid r_hat = (1 + gamma) r_t would leave the process:
  the step raises the noise only up to r(t_max) (no churn at t_max)."""
  sde = _make_sde("ve")
  denoise_fn = gaussian_denoiser(sde)
  x = jnp.full((4, 2), 3.0)
  t, s = jnp.float32(1.0), jnp.float32(0.9)
  churn = samplers.make_sampler("edm", sde, denoise_fn, steps=4, s_churn=4.0)
  heun = samplers.make_sampler("heun", sde, denoise_fn)
  noise = samplers.Noise(jax.random.key(0))
  np.testing.assert_allclose(churn.step({"x": x}, t, s, noise)["x"],
                             heun.step({"x": x}, t, s, noise)["x"],
                             rtol=1e-6)


# ---------------------------------------------- (5) DDIM is an invertible map


@pytest.mark.parametrize("spec", ["vp_linear", "ve"])
def test_ddim_inverts_exactly_for_point_mass(spec):
  """For a point mass eps is constant along the flow: DDIM is exact both ways.

  DDIM's step also runs forward in time (s > t), so the reversed grid maps
  x_tmin back to x_tmax.
  """
  sde = _make_sde(spec)
  stepper = samplers.make_sampler("ddim", sde, gaussian_denoiser(sde, s2=0.0))
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
  stepper = samplers.make_sampler("ddim", sde, gaussian_denoiser(sde))
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


# ------------------------------------------------------- (6) determinism


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm_solver_pp",
                                  "dpm_solver_pp_3m"])
def test_clip_denoised_bounds_x0_estimate(name):
  """A point mass inside [-1, 1] is reached with or without clipping; one at
  3 (outside the data range the clip assumes) is pulled to the bound."""
  sde = _make_sde("vp_cosine")
  ts = samplers.time_grid(sde, 20, t_min=1e-4, end_at_zero=False)
  x_t = sde.prior_sample(jax.random.key(0), (16, DIM))

  @functools.partial(jax.jit, static_argnums=1)
  def run(mu, clip):
    denoise_fn = gaussian_denoiser(sde, mu=mu, s2=0.0)
    stepper = samplers.make_sampler(name, sde, denoise_fn, clip_denoised=clip)
    return samplers.integrate(stepper, x_t, ts, jax.random.key(1))

  for clip in (False, True):
    np.testing.assert_allclose(run(0.5, clip), 0.5, atol=2e-2)
  np.testing.assert_allclose(run(3.0, False), 3.0, atol=2e-2)
  np.testing.assert_allclose(run(3.0, True), 1.0, atol=2e-2)


def test_determinism_per_key():
  """Same key -> same samples; a new key changes only stochastic samplers
  (from a fixed x_T), and through the prior draw any sampler in sample()."""
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)
  ts = samplers.time_grid(sde, 8)
  x_t = sde.prior_sample(jax.random.key(0), (8, 2, 2, 1))
  names = GAUSSIAN_SAMPLERS

  @jax.jit
  def run(key):
    out = {}
    for name in names:
      stepper = samplers.make_sampler(name, sde, denoise_fn)
      out[name, "integrate"] = samplers.integrate(
          stepper, x_t, ts, key, denoise_fn=denoise_fn)
    for name in ("euler", "ddpm"):  # the prior draw is sampler-independent
      out[name, "sample"] = samplers.sample(name, sde, denoise_fn, key, (8, 2),
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
  denoise_fn = gaussian_denoiser(sde)
  ts = samplers.time_grid(sde, 8)
  x_t = sde.prior_sample(jax.random.key(0), (64, 2, 2, 1))
  key = jax.random.key(1)

  @jax.jit
  def run(sign):
    return {name: samplers.integrate(
        samplers.make_sampler(name, sde, denoise_fn), x_t, ts, key,
        denoise_fn=denoise_fn, noise_sign=sign) for name in GAUSSIAN_SAMPLERS}

  plain = jax.jit(lambda: {name: samplers.integrate(
      samplers.make_sampler(name, sde, denoise_fn), x_t, ts, key,
      denoise_fn=denoise_fn) for name in GAUSSIAN_SAMPLERS})()
  runs = {sign: run(sign) for sign in (1.0, -1.0, 0.0)}
  for name in GAUSSIAN_SAMPLERS:
    np.testing.assert_allclose(runs[1.0][name], plain[name], atol=1e-6)
    if name in STOCHASTIC:
      assert not np.allclose(runs[-1.0][name], plain[name]), name
    else:
      np.testing.assert_allclose(runs[-1.0][name], plain[name], atol=1e-6)

  # Sign 0 drops every draw: the DDPM chain's mean path.
  zero_noise = runs[0.0]["ddpm"]
  pair = 0.5 * (runs[1.0]["ddpm"] + runs[-1.0]["ddpm"])
  np.testing.assert_allclose(pair, zero_noise, atol=1e-5)
  assert float(jnp.abs(runs[1.0]["ddpm"] - zero_noise).mean()) > 0.05


def test_a_step_fed_the_network_output_equals_the_step_calling_it():
  """`step(..., pred)` with pred = denoise_fn(x, t) is the plain step; for a
  one-call step, pred replaces the network entirely (a wrong network is
  never called), and a multi-call step still calls it after the first."""
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)
  wrong = denoiser.eps_denoiser(sde,
                                lambda x, t: gaussian_eps_fn(sde)(x, t) + 1.0)
  x = sde.prior_sample(jax.random.key(0), (16, 2, 2, 1))
  t, s = jnp.float32(0.7), jnp.float32(0.55)
  noise = samplers.Noise(jax.random.key(3))
  pred = denoise_fn(x, jnp.full((16,), t))
  for name in GAUSSIAN_SAMPLERS:
    plain = samplers.make_sampler(name, sde, denoise_fn)
    state = plain.init(x)
    ref = plain.step(state, t, s, noise)["x"]
    np.testing.assert_allclose(plain.step(state, t, s, noise, pred)["x"], ref,
                               rtol=1e-6, atol=1e-6, err_msg=name)
    fed = samplers.make_sampler(name, sde, wrong)
    got = fed.step(fed.init(x), t, s, noise, pred)["x"]
    if fed.nfe_per_step == 1:
      np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6,
                                 err_msg=name)
    else:
      assert not np.allclose(got, ref), name
  churn = samplers.make_sampler("edm", sde, denoise_fn, steps=10, s_churn=1.0)
  with pytest.raises(ValueError, match="precomputed"):
    churn.step(churn.init(x), t, s, noise, pred)


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


# ------------------------------------------------------- (7) trajectories


def test_trajectory_shapes_and_frames():
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)
  stepper = samplers.make_sampler("euler", sde, denoise_fn)
  x_t = sde.prior_sample(jax.random.key(0), (5, 3))
  cases = [(k, z) for k in (1, 3, 4) for z in (True, False)]
  grids = {z: samplers.time_grid(sde, 10, end_at_zero=z)  # 9 transitions
           for z in (True, False)}
  go = lambda x, ts, k: samplers.integrate(
      stepper, x, ts, jax.random.key(0), denoise_fn=denoise_fn,
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


# -------------------------------------------------------- (8) time grids


@pytest.mark.parametrize("kind", samplers.GRIDS.names())
@pytest.mark.parametrize("spec", ["vp_linear", "ve", "vp_discrete", "subvp",
                                  "flow"])
def test_time_grid(kind, spec):
  sde = _make_sde(spec)
  t_max = getattr(sde, "t_max", 1.0)
  for steps in (1, 7, 50):
    ts = samplers.time_grid(sde, steps, kind=kind)
    assert ts.dtype == np.float32 and ts[-1] == 0.0
    np.testing.assert_allclose(ts[0], t_max, rtol=1e-7)
    assert np.all(np.diff(ts) < 0)
    if spec == "vp_discrete":
      i = ts * DISCRETE_T
      np.testing.assert_allclose(i, np.round(i), atol=1e-3)
      assert len(ts) <= steps + 1
    else:
      assert len(ts) == steps + 1
      if steps > 1:
        np.testing.assert_allclose(ts[-2], samplers.default_t_min(sde),
                                   rtol=1e-6)
    no_zero = samplers.time_grid(sde, steps, kind=kind, end_at_zero=False)
    np.testing.assert_array_equal(no_zero, ts[:-1])


@pytest.mark.parametrize("spec", ["vp_linear", "vp_cosine", "subvp", "ve",
                                  "flow", "vp_discrete"])
def test_default_t_min_is_the_noise_floor(spec):
  """The default last time is the process's t_min where its noise level
  r = sigma/alpha is >= R_MIN (VP, VE), else the time of r = R_MIN (sub-VP,
  flow), and 1/T on a chain; never above t_max."""
  sde = _make_sde(spec)
  t = samplers.default_t_min(sde)
  r = float(sde.sigma(t) / sde.alpha(t))
  r_min = float(sde.sigma(sde.t_min) / sde.alpha(sde.t_min))
  if spec == "vp_discrete":
    assert t == 1 / DISCRETE_T
    return
  if r_min >= samplers.R_MIN:
    assert t == sde.t_min and spec in ("vp_linear", "vp_cosine", "ve")
  else:
    assert spec in ("subvp", "flow") and t > sde.t_min
    np.testing.assert_allclose(r, samplers.R_MIN, rtol=1e-4)
  # A t_max below the floor's time keeps the grid valid (t_min <= t_max).
  tiny = 0.5 * t
  assert samplers.default_t_min(sde, tiny) <= tiny
  assert samplers.time_grid(sde, 3, t_max=tiny)[0] == np.float32(tiny)


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
  denoise_fn = gaussian_denoiser(sde)
  run = jax.jit(lambda k: [samplers.sample(
      "ddim", sde, denoise_fn, k, (4, 2), steps=6, grid=kind)
                           for kind in samplers.GRIDS.names()])
  assert np.all(np.isfinite(run(jax.random.key(0))))


def test_sample_uses_the_samplers_default_grid():
  """grid=None (or "default") is the sampler's own; each sampler names its
  paper's grid."""
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)
  want = {"ddim": "uniform", "ddpm": "uniform", "euler_maruyama": "uniform",
          "pc": "uniform", "euler": "karras", "heun": "karras",
          "edm": "karras", "euler_ancestral": "karras",
          "dpm_solver_pp": "logsnr", "dpm_solver_pp_3m": "logsnr"}
  assert {n: samplers.make_sampler(n, sde, denoise_fn).grid
          for n in GAUSSIAN_SAMPLERS} == want
  run = jax.jit(lambda k: [samplers.sample("heun", sde, denoise_fn, k, (4, 2),
                                           steps=6, grid=g)
                           for g in (None, "default", "karras", "uniform")])
  a, b, c, d = run(jax.random.key(0))
  np.testing.assert_array_equal(a, c)
  np.testing.assert_array_equal(b, c)
  assert not np.allclose(a, d)


@pytest.mark.parametrize("kwargs", [
    {"steps": 0}, {"steps": -3}, {"steps": 2.5}, {"steps": 5, "kind": "cubic"},
    {"steps": 5, "t_min": 0.5, "t_max": 0.1}, {"steps": 5, "t_min": 0.0},
    {"steps": 5, "t_max": 1.5}])
def test_time_grid_bad_arguments(kwargs):
  with pytest.raises(ValueError):
    samplers.time_grid(_make_sde("vp_linear"), **kwargs)


def test_bad_sampler_arguments():
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)
  with pytest.raises(ValueError):
    samplers.make_sampler("ddim", sde, denoise_fn, eta=-1.0)
  with pytest.raises(ValueError):
    samplers.make_sampler("heun", sde, denoise_fn, snr=0.1)
  with pytest.raises(ValueError):
    samplers.make_sampler("rk45", sde, denoise_fn)
  with pytest.raises(ValueError):  # a grid ending at 0 needs denoise_fn
    samplers.integrate(samplers.make_sampler("euler", sde, denoise_fn),
                       jnp.zeros((2, 2)), samplers.time_grid(sde, 4),
                       jax.random.key(0))


# ------------------------------------------- (9) no retrace; NFE accounting


def test_jitted_sampler_does_not_retrace():
  sde = _make_sde("vp_linear")
  denoise_fn = gaussian_denoiser(sde)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draw(key):
    return samplers.sample("dpm_solver_pp", sde, denoise_fn, key, (4, 3),
                           steps=6)

  a = draw(jax.random.key(0))
  b = draw(jax.random.key(1))  # a new key: same trace, new numbers
  assert not np.allclose(a, b)


@pytest.mark.parametrize("spec", ["vp_linear", "vp_discrete"])
def test_steps_for_nfe_is_the_closest_cost(spec):
  """steps_for_nfe hits every reachable NFE exactly, takes the cheaper of two
  equally close ones (2-evaluation steps only reach odd NFEs), and measures
  the cost on the grid: a discrete chain drops points that snap together
  (DPM-Solver++'s logSNR grid on T = 1000 does for 100 steps)."""
  sde = _make_sde(spec)
  for name in ["dpm_solver_pp", "euler", "heun"]:
    stepper = samplers.make_sampler(name, sde, lambda x, t: None)
    for target in [1, 10, 20, 50, 100]:
      steps = samplers.steps_for_nfe(stepper, sde, target)
      got = samplers.nfe(stepper, samplers.time_grid(sde, steps,
                                                     kind=stepper.grid))
      costs = {samplers.nfe(stepper, samplers.time_grid(
          sde, n, kind=stepper.grid)) for n in range(1, 2 * target + 3)}
      best = min(costs, key=lambda c: (abs(c - target), c))
      assert got == best, (name, target, steps, got, best)
      if stepper.nfe_per_step == 1:
        assert got == target, (name, target, got)
  heun = samplers.make_sampler("heun", sde, lambda x, t: None)
  assert samplers.nfe(heun, samplers.time_grid(
      sde, samplers.steps_for_nfe(heun, sde, 20), kind=heun.grid)) == 19
  with pytest.raises(ValueError, match="positive integer"):
    samplers.steps_for_nfe(heun, sde, 0)


def test_nfe_counts_network_calls():
  """nfe(stepper, ts) is the number of denoiser evaluations at run time."""
  sde = _make_sde("vp_linear")
  base = gaussian_denoiser(sde)
  ts = samplers.time_grid(sde, 7)
  names = GAUSSIAN_SAMPLERS
  calls = {name: [] for name in names}

  def counting(name):
    def denoise_fn(x, t):
      jax.debug.callback(lambda: calls[name].append(1))
      return base(x, t)
    return denoise_fn

  @jax.jit
  def run(x):
    return [samplers.integrate(samplers.make_sampler(name, sde, counting(name)),
                               x, ts, jax.random.key(0),
                               denoise_fn=counting(name)) for name in names]

  jax.block_until_ready(run(jnp.ones((2, 3))))
  jax.effects_barrier()
  for name in names:
    stepper = samplers.make_sampler(name, sde, base)
    assert len(calls[name]) == samplers.nfe(stepper, ts), name
    assert samplers.nfe(stepper, ts) == stepper.nfe_per_step * 6 + 1
