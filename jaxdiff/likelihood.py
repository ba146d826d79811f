"""Exact likelihoods: the probability-flow ODE and the DDPM chain's bound.

Two estimators of how well a model explains data, both pure functions (no
I/O, explicit PRNG keys, jittable with every option static):

* `ode_log_likelihood`: the instantaneous change of variables along the
  probability-flow ODE dx/dt = f(t) x - 1/2 g^2(t) score(x, t) of any
  Gaussian process x_t = alpha(t) x0 + sigma(t) n (Song et al. 2021, app. D):

      log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^{T} div(drift)(x_t, t) dt,

  solved from t_eps up to T = process.t_max with diffrax (Dopri5 or Tsit5,
  adaptive PID steps), the batch and its per-example log-determinants as one
  ODE state. The divergence is `exact` (D forward-mode products; small D)
  or Hutchinson's `eps^T J eps` with one Rademacher or Gaussian probe per
  example per solve, fixed along the trajectory (Grathwohl et al. 2019).
  The prior p_T is N(0, prior_std^2 I), the law `SDE.prior_sample` draws
  the sampler's start from (prior_std: VP and sub-VP 1, VE sigma_max, the
  flow sigma(t_max)); it ignores the alpha(T) x0 part of the true marginal,
  so it is exact only where alpha(T) ~ 0. Pass `prior_logp` to use another.
  The result is the density of x_{t_eps} (the data blurred by sigma(t_eps)),
  t_eps defaulting to the process's smallest training time t_min. Use a
  continuous schedule: the T-step chain's piecewise-constant beta(t) makes
  the adaptive solver stop at every jump.
  NFE counts evaluations of the augmented vector field (one denoiser call
  plus its divergence pass): Dopri5 and Tsit5 are 7-stage FSAL schemes, so
  each attempted step (accepted or rejected) costs 6 and the first stage of
  the first step 1: NFE = 6 num_steps + 1 (the first step is (t_max -
  t_eps)/100, set here, so no evaluations go into choosing it).
* `chain_bound`: the variational bound of the T-step DDPM chain (Ho et al.
  2020, eq. 5) on -log P(x0) of discrete data,
  L = L_T + sum_{t=2}^{T} L_{t-1} + L_0.

Units. Log-densities are in nats per example. `dequantize` maps 8-bit
pixels x in {0..255} to y = lo + (hi - lo)/256 (x + u), u ~ U[0,1)^D, in the
model's data range [lo, hi] (default [-1, 1]); z = x + u lives in [0, 256)^D
where the discrete data have probability P(x) = int_{[0,1)^D} p_z(x + u) du
>= exp E_u log p_z(x + u) (uniform dequantization, q(u|x) = 1). With
a = (hi - lo)/256, p_z(z) = p_y(y) a^D, so

    bpd = -(log p_y(y) + D log a) / (D ln 2),

i.e. -log p_y/(D ln 2) + 7 in [-1, 1] and + 8 in [0, 1] (score_sde's
offsets). With K dequantization samples, log P(x) >= logsumexp_k log
p_z(x + u_k) - log K (`importance_weighted`, tighter than the mean as K
grows; the Jacobian constant commutes with it). Without dequantization a
continuous density on discrete data can grow without bound, which shows as
negative bits/dim (score_sde issue 24): always dequantize for the ODE. The
training data x/127.5 - 1 sit on a grid of step 2/255, the dequantized
y on [-1, 1) with step 2/256, score_sde's convention. The chain bound needs
no dequantization: its decoder is already discrete (bins of width 2/255
about the 256 levels of [-1, 1], the outer edges at +-inf), so its
bits/dim is -log P(x0)'s bound / (D ln 2) with no offset.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import chex
import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, logsumexp

from jaxdiff import sde as sde_lib
from jaxdiff.denoiser import DenoiseFn

Array = jax.Array
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
SOLVERS = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5}
VARIANCES = ("posterior", "beta")
NEW_EVALS_PER_STEP = 6  # Dopri5/Tsit5: 7 stages, the first shared (FSAL)
START_EVALS = 1         # the first step's first stage


class LikelihoodResult(NamedTuple):
  """The probability-flow ODE's answer, per example (nats)."""
  log_px: Array       # [B] log p_{t_eps}(x) = prior_logp + delta_logp
  prior_logp: Array   # [B] log p_T(x_T)
  delta_logp: Array   # [B] int_{t_eps}^{T} div(drift) dt
  x_t_max: Array      # [B, ...] the ODE's end point x_T
  nfe: Array          # int32 scalar: vector-field evaluations (module doc)
  num_steps: Array    # int32 scalar: attempted steps (accepted + rejected)
  ok: Array           # bool scalar: the solve succeeded (False: max_steps)


def _sum_per_example(v: Array) -> Array:
  return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def normal_log_prob(x: Array, mean, var) -> Array:
  """log N(x; mean, var I) summed per example: [B] from x [B, ...]."""
  var = jnp.broadcast_to(jnp.asarray(var, x.dtype), x.shape)
  return _sum_per_example(-0.5 * ((x - mean)**2 / var + jnp.log(var)
                                  + math.log(2 * math.pi)))


def prior_log_prob(process, x: Array) -> Array:
  """log N(x; 0, prior_std^2 I) per example: the density of `prior_sample`."""
  sde_lib.check_gaussian(process, "The ODE likelihood's default prior")
  return normal_log_prob(x, 0.0, float(process.prior_std)**2)


def draw_probe(key, shape, probe: str = "rademacher", dtype=jnp.float32):
  """A Hutchinson probe: entries +-1, or standard normal (E[v v^T] = I)."""
  if probe == "rademacher":
    return jax.random.rademacher(key, shape, dtype)
  if probe == "gaussian":
    return jax.random.normal(key, shape, dtype)
  raise ValueError(f"Unknown probe {probe!r}; use one of {PROBES}.")


def value_and_divergence(fn: Callable[[Array], Array], x: Array,
                         probe: Optional[Array] = None) -> Tuple[Array, Array]:
  """(fn(x), div) with div [B] the per-example divergence of fn at x.

  fn maps [B, ...] to [B, ...] with no coupling across examples. With
  `probe` None, the exact trace: D Jacobian-vector products with the basis
  vectors (shared by all examples), vectorised, so memory grows with D.
  Otherwise Hutchinson's estimate probe^T J probe from one forward-mode
  Jacobian-vector product, unbiased when E[probe probe^T] = I. Forward
  mode, not a vector-Jacobian product: inside the adaptive solver's loop
  on XLA:CPU the VJP cost 5.4 times as much per evaluation (33 against
  6.2 ms per 28x28 image on the OrganAMNIST U-Net), for the same number.
  """
  if probe is not None:
    y, jv = jax.jvp(fn, (x,), (probe,))
    return y, _sum_per_example(jv * probe)
  b, d = x.shape[0], x[0].size
  y, jvp_fn = jax.linearize(fn, x)
  basis = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
  cols = jax.vmap(lambda e: jvp_fn(jnp.broadcast_to(e, x.shape)))(basis)
  return y, jnp.einsum("dbd->b", cols.reshape(d, b, d))


def _vector_field(process, denoise_fn: DenoiseFn, probe: Optional[Array]):
  """The augmented field (x, logdet) -> (drift, div drift) of the flow."""
  score_fn = lambda x, t: denoise_fn(x, t).score(process, t)

  def field(t, y, args):
    del args
    x = y[0]
    tb = jnp.full((x.shape[0],), t, jnp.float32)
    drift = lambda z: process.reverse_drift(score_fn, z, tb,
                                            probability_flow=True)
    return value_and_divergence(drift, x, probe)

  return field


def ode_log_likelihood(
    process, denoise_fn: DenoiseFn, x: Array, key: Array, *,
    divergence: str = "hutchinson", probe: str = "rademacher",
    solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    t_eps: Optional[float] = None, max_steps: int = 4096,
    prior_logp: Optional[Callable[[Array], Array]] = None
) -> LikelihoodResult:
  """log p_{t_eps}(x) by the probability-flow ODE (see the module doc).

  Jittable (wrap it in `jax.jit` with the options bound, e.g. by
  functools.partial, to compile once); diffrax's failure at max_steps is
  reported in `ok`, not raised.

  Args:
    process: a Gaussian process (`jaxdiff.sde.SDE`).
    denoise_fn: (x [B, ...], t [B]) -> Prediction; its score drives the ODE.
    x: [B, ...] points in the model's data space (dequantized data).
    key: draws the Hutchinson probes (unused for `exact`).
    divergence: 'exact' or 'hutchinson'.
    probe: 'rademacher' or 'gaussian' (Hutchinson only).
    solver: 'dopri5' or 'tsit5'.
    rtol, atol: the PID controller's tolerances (on x and the log-det).
    t_eps: the start time; None: process.t_min.
    max_steps: the solver's step budget.
    prior_logp: x_T [B, ...] -> [B]; None: `prior_log_prob(process, .)`.

  Returns:
    A `LikelihoodResult`.
  """
  if divergence not in DIVERGENCES:
    raise ValueError(f"Unknown divergence {divergence!r}; use one of "
                     f"{DIVERGENCES}.")
  if solver not in SOLVERS:
    raise ValueError(f"Unknown solver {solver!r}; use one of "
                     f"{sorted(SOLVERS)}.")
  sde_lib.check_gaussian(process, "The probability-flow likelihood")
  chex.assert_type(x, float, custom_message=(
      "ode_log_likelihood: x must be float points in the data space; for "
      "integer levels (uint8) use ode_bits_per_dim, which dequantizes"))
  x = jnp.asarray(x, jnp.float32)
  v = (None if divergence == "exact" else draw_probe(key, x.shape, probe))
  t0 = float(process.t_min if t_eps is None else t_eps)
  t1 = float(process.t_max)
  if not 0 <= t0 < t1:
    raise ValueError(f"Need 0 <= t_eps < t_max = {t1}, got t_eps = {t0}.")
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(_vector_field(process, denoise_fn, v)),
      SOLVERS[solver](), t0=t0, t1=t1, dt0=0.01 * (t1 - t0),
      y0=(x, jnp.zeros((x.shape[0],), jnp.float32)),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
      saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
  x_t, delta = sol.ys[0][0], sol.ys[1][0]
  prior = (prior_log_prob(process, x_t) if prior_logp is None
           else prior_logp(x_t))
  steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
  return LikelihoodResult(
      prior + delta, prior, delta, x_t,
      NEW_EVALS_PER_STEP * steps + START_EVALS, steps,
      sol.result == diffrax.RESULTS.successful)


def dequantize(key: Array, x: Array, num_samples: int = 1, *,
               data_range: Tuple[float, float] = (-1.0, 1.0),
               num_bins: int = 256) -> Array:
  """Uniform dequantization: y = lo + (hi - lo)/num_bins (x + u), u ~ U[0,1).

  Args:
    key: draws u.
    x: [B, ...] integer levels in {0, ..., num_bins - 1} (e.g. uint8).
    num_samples: K draws of u per example.
    data_range: (lo, hi), the model's data range.
    num_bins: the number of levels (256 for 8-bit data).

  Returns:
    y [K, B, ...] float32 in [lo, hi); log |dy/dz| = D log((hi-lo)/num_bins)
    is `log_jacobian`'s.
  """
  u = jax.random.uniform(key, (num_samples,) + x.shape, jnp.float32)
  lo, hi = data_range
  return lo + (hi - lo) / num_bins * (jnp.asarray(x, jnp.float32)[None] + u)


def log_jacobian(dim: int, data_range=(-1.0, 1.0), num_bins: int = 256):
  """D log a, a = (hi - lo)/num_bins: log |dy/dz| from z in [0, num_bins)."""
  lo, hi = data_range
  return dim * math.log((hi - lo) / num_bins)


def bits_per_dim(log_p: Array, dim: int, *,
                 data_range: Tuple[float, float] = (-1.0, 1.0),
                 num_bins: int = 256) -> Array:
  """Bits/dim of the discrete data from a log-density in the model's space.

  bpd = -(log p_y + D log((hi - lo)/num_bins)) / (D ln 2): the density of
  the dequantized levels z = x + u in [0, num_bins), per dimension, in bits.

  Args:
    log_p: log p_y(y) [...] in nats, y = `dequantize`'s output.
    dim: D, the number of dimensions of one example.
    data_range: (lo, hi) of y: (-1, 1) gives +7 bits, (0, 1) gives +8.
    num_bins: levels per dimension (256).
  """
  log_pz = log_p + log_jacobian(dim, data_range, num_bins)
  return -log_pz / (dim * math.log(2.0))


def importance_weighted(log_p: Array) -> Array:
  """logsumexp_k log_p[k] - log K over K dequantization samples [K, B]: a
  lower bound on log P(x) (q(u|x) = 1), >= the mean over k."""
  return logsumexp(log_p, axis=0) - math.log(log_p.shape[0])


class DequantizedLikelihood(NamedTuple):
  """Bits/dim of discrete data: an upper bound on -log2 P(x) / D, up to
  the ODE solver's error (and Hutchinson's noise, which is unbiased in
  log p, not in the bound)."""
  bpd: Array                 # [B] bits/dim of the discrete data
  log_px: Array              # [B] importance-weighted log p_y, nats
  samples: LikelihoodResult  # the solve, fields [K * B, ...] (k major)


def ode_bits_per_dim(process, denoise_fn: DenoiseFn, x: Array, key: Array,
                     *, num_samples: int = 1,
                     data_range: Tuple[float, float] = (-1.0, 1.0),
                     num_bins: int = 256, **ode_options
                     ) -> DequantizedLikelihood:
  """Bits/dim of integer data by the ODE with K dequantization samples.

  Args:
    process, denoise_fn: as `ode_log_likelihood`.
    x: [B, ...] integer levels (uint8).
    key: split into (dequantization key, probe key).
    num_samples: K; the K B points are solved as one batch.
    data_range, num_bins: as `dequantize`.
    **ode_options: `ode_log_likelihood`'s keyword options.
  """
  chex.assert_type(x, int, custom_message=(
      "ode_bits_per_dim: x must be integer levels (uint8 images); for "
      "points in the data space use ode_log_likelihood"))
  k_deq, k_probe = jax.random.split(key)
  y = dequantize(k_deq, x, num_samples, data_range=data_range,
                 num_bins=num_bins)
  res = ode_log_likelihood(process, denoise_fn, y.reshape((-1,) + x.shape[1:]),
                           k_probe, **ode_options)
  log_px = importance_weighted(res.log_px.reshape(num_samples, x.shape[0]))
  bpd = bits_per_dim(log_px, x[0].size, data_range=data_range,
                     num_bins=num_bins)
  return DequantizedLikelihood(bpd, log_px, res)


# The discrete chain's bound.


class ChainBound(NamedTuple):
  """The DDPM bound L on -log P(x0) per example; L = prior + diffusion +
  decoder, each an unbiased estimate of its term."""
  nats: Array       # [B] L
  bpd: Array        # [B] L / (D ln 2)
  prior: Array      # [B] L_T = KL(q(x_T | x0) || N(0, I)), exact
  diffusion: Array  # [B] sum_{t=2}^{T} KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))
  decoder: Array    # [B] L_0 = -log p(x0 | x1)


def _chain_tables(betas, variance: str):
  """Per-step tables (index t-1) in float64, then float32."""
  b = np.asarray(betas, np.float64)
  abar = np.cumprod(1.0 - b)
  prev = np.concatenate([[1.0], abar[:-1]])
  q_var = b * (1.0 - prev) / (1.0 - abar)  # beta_tilde; 0 at t = 1
  p_var = q_var.copy() if variance == "posterior" else b.copy()
  # Ho et al.'s code: p(x0 | x1) has variance beta_tilde_2 for both choices.
  p_var[0] = q_var[1] if len(b) > 1 else b[0]
  q_var[0] = p_var[0]  # unused (no KL at t = 1); keeps the logs finite
  tables = dict(abar=abar, q_var=q_var, p_var=p_var,
                c_x0=np.sqrt(prev) * b / (1.0 - abar),
                c_xt=np.sqrt(1.0 - b) * (1.0 - prev) / (1.0 - abar))
  return {k: jnp.asarray(v, jnp.float32) for k, v in tables.items()}


def normal_kl(m1, v1, m2, v2) -> Array:
  """KL(N(m1, v1) || N(m2, v2)) elementwise."""
  return 0.5 * (jnp.log(v2) - jnp.log(v1) + (v1 + (m1 - m2)**2) / v2 - 1.0)


def _log_ndtr_diff(a: Array, b: Array) -> Array:
  """log(Phi(b) - Phi(a)) for a < b, stable in both tails."""
  flip = a + b > 0  # upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
  lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  la, lb = log_ndtr(lo), log_ndtr(hi)
  return lb + jnp.log(-jnp.expm1(jnp.minimum(la - lb, 0.0)))


def discretized_gaussian_log_prob(x: Array, mean: Array, var,
                                  num_bins: int = 256) -> Array:
  """log P(x) elementwise for x on the num_bins levels of [-1, 1]: the
  N(mean, var) mass of x's bin, width 2/(num_bins - 1), the outer edges at
  -inf and +inf (Ho et al. 2020, eq. 13)."""
  half = 1.0 / (num_bins - 1)
  std = jnp.sqrt(var)
  lo = jnp.where(x < -1 + half, -jnp.inf, (x - half - mean) / std)
  hi = jnp.where(x > 1 - half, jnp.inf, (x + half - mean) / std)
  return _log_ndtr_diff(lo, hi)


def _chain_term(process, denoise_fn, tables, num_bins, x0, i, key):
  """L_{i-1} [B] at steps i [B] (1..T), one draw of x_i ~ q(x_i | x0)."""
  num_steps = len(process.schedule.betas)
  g = lambda name: sde_lib.bcast(tables[name][i - 1], x0)
  x_t = (jnp.sqrt(g("abar")) * x0 + jnp.sqrt(1.0 - g("abar"))
         * jax.random.normal(key, x0.shape, x0.dtype))
  pred = denoise_fn(x_t, i.astype(jnp.float32) / num_steps)
  mean_p = g("c_x0") * pred.x0 + g("c_xt") * x_t
  mean_q = g("c_x0") * x0 + g("c_xt") * x_t
  kl = _sum_per_example(normal_kl(mean_q, g("q_var"), mean_p, g("p_var")))
  nll = -_sum_per_example(discretized_gaussian_log_prob(
      x0, mean_p, g("p_var"), num_bins))
  return jnp.where(i == 1, nll, kl)


def chain_bound(process, denoise_fn: DenoiseFn, x0: Array, key: Array, *,
                variance: str = "posterior", num_terms: Optional[int] = None,
                batch_size: int = 1, num_bins: int = 256) -> ChainBound:
  """Ho et al. (2020)'s bound on -log P(x0) for the T-step chain.

  p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), sigma_t^2) with mu q's posterior
  mean at the denoiser's x0_hat (the `ddpm` sampler's step) and sigma_t^2
  = beta_tilde_t ('posterior', the sampler's) or beta_t ('beta'); the
  decoder p(x0 | x1) is discretized with variance beta_tilde_2 either way
  (Ho et al.'s code). Every L_{t-1} costs one denoiser call at x_t ~ q(x_t |
  x0) with fresh noise, at network time t/T.

  Args:
    process: the VP chain (`make_sde('vp', num_steps=T)`).
    denoise_fn: (x [B, ...], t [B]) -> Prediction.
    x0: [B, ...] data on the levels of [-1, 1] (uint8 / 127.5 - 1).
    key: the draws of x_t (and of the subsampled steps).
    variance: 'posterior' or 'beta'.
    num_terms: None: all T terms; k: L_0 plus (T - 1) x the mean of k
      KL terms at steps uniform on {2..T}, drawn per example.
    batch_size: terms evaluated per network call (lax.map's batch_size).
    num_bins: the data's levels (256).
  """
  if not getattr(process, "discrete", False):
    raise ValueError("chain_bound needs the discrete VP chain "
                     "(make_sde('vp', num_steps=T)).")
  if variance not in VARIANCES:
    raise ValueError(f"Unknown variance {variance!r}; use one of "
                     f"{VARIANCES}.")
  chex.assert_type(x0, float, custom_message=(
      "chain_bound: x0 must be float data on the levels of [-1, 1] (uint8 "
      "images: x / 127.5 - 1)"))
  betas = process.schedule.betas
  num, b = len(betas), x0.shape[0]
  tables = _chain_tables(betas, variance)
  k_steps, k_terms = jax.random.split(key)
  if num_terms is None or num == 1:
    steps = jnp.broadcast_to(jnp.arange(1, num + 1)[:, None], (num, b))
    weights = jnp.ones((num,), jnp.float32)
  else:
    drawn = jax.random.randint(k_steps, (num_terms, b), 2, num + 1)
    steps = jnp.concatenate([jnp.ones((1, b), jnp.int32), drawn])
    weights = jnp.full((num_terms + 1,), (num - 1) / num_terms).at[0].set(1.0)
  keys = jax.random.split(k_terms, steps.shape[0])
  terms = jax.lax.map(
      lambda a: _chain_term(process, denoise_fn, tables, num_bins, x0, *a),
      (steps, keys), batch_size=batch_size)  # [N, B]
  abar_t = tables["abar"][-1]
  prior = _sum_per_example(normal_kl(jnp.sqrt(abar_t) * x0, 1.0 - abar_t,
                                     0.0, 1.0))
  decoder = terms[0]
  diffusion = jnp.sum(weights[1:, None] * terms[1:], axis=0)
  nats = prior + diffusion + decoder
  return ChainBound(nats, nats / (x0[0].size * math.log(2.0)), prior,
                    diffusion, decoder)


def pixel_categorical_log_probs(train: np.ndarray, alpha: float = 1.0,
                                num_bins: int = 256,
                                chunk: int = 4096) -> np.ndarray:
  """The simple baseline: independent categoricals, one per pixel.

  Fitted to integer training images by counting, Laplace-smoothed:
  p_d(v) = (count_d(v) + alpha) / (N + num_bins alpha). It is what a model
  that ignores every correlation between pixels can reach; its bits/dim
  (`pixel_categorical_bits_per_dim`) is the reference the diffusion
  models' figures are read against.

  Args:
    train: [N, ...] integer levels in {0, ..., num_bins - 1} (e.g. uint8).
    alpha: the smoothing count added to every level (> 0 keeps unseen
      levels possible).
    num_bins: the number of levels.
    chunk: images counted at a time (bounds the memory).

  Returns:
    log p_d(v) in nats, float64 [D, num_bins].
  """
  if alpha <= 0:
    raise ValueError(f"alpha must be > 0 (unseen levels), got {alpha}.")
  train = np.asarray(train)
  n, dim = len(train), int(np.prod(train.shape[1:]))
  flat = train.reshape(n, dim)
  offsets = np.arange(dim, dtype=np.int64) * num_bins
  counts = np.zeros(dim * num_bins, np.int64)
  for lo in range(0, n, chunk):
    idx = flat[lo:lo + chunk].astype(np.int64) + offsets
    counts += np.bincount(idx.ravel(), minlength=dim * num_bins)
  counts = counts.reshape(dim, num_bins).astype(np.float64)
  return np.log(counts + alpha) - math.log(n + num_bins * alpha)


def pixel_categorical_bits_per_dim(log_probs: np.ndarray,
                                   x: np.ndarray) -> np.ndarray:
  """Bits/dim [B] of integer images x [B, ...] under the fitted
  `pixel_categorical_log_probs` table [D, num_bins]: -sum_d log2 p_d(x_d) / D.
  Discrete, so no dequantization and no offset (as the chain bound)."""
  flat = np.asarray(x).reshape(len(x), -1).astype(np.int64)
  dim = log_probs.shape[0]
  if flat.shape[1] != dim:
    raise ValueError(f"images have {flat.shape[1]} dimensions, the table "
                     f"{dim}.")
  logp = log_probs[np.arange(dim), flat]        # [B, D]
  return -logp.sum(axis=1) / (dim * math.log(2.0))
