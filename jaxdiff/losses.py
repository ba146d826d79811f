"""Training objectives: a weighted regression of the network's own target,
plus an optional frequency loss.

The network outputs F at (x_t, t); its `denoiser.Parameterization` (eps, x0,
v, velocity, edm) names its target F* and turns F into the prediction
(eps_hat, x0_hat). Per example,

    loss = w_F(t) * mean (F - F*)^2
           + lambda_freq * mean | FFT2(x0_hat) - FFT2(x0) |     (L1, per pixel)

A *weighting* (`WEIGHTINGS`, `config.training.weighting`) is stated once,
as lambda_eps(t): its weight on the eps-MSE |eps_hat - eps|^2. Since
|F - F*|^2 = k(t) |eps_hat - eps|^2 at fixed x_t (k = the
parameterization's `eps_factor`), the weight on the target's MSE is
w_F = lambda_eps / k, whatever the network outputs; `target_weight` is the
one place that converts. With SNR = alpha^2 / sigma^2, logSNR its log,
r = sigma / alpha = SNR^(-1/2) and sd = `sigma_data`:

  =========  =========================  ============================  ======
  name       lambda_eps (eps-MSE)       x0-MSE weight = SNR lambda    source
  =========  =========================  ============================  ======
  none       k (so w_F = 1)             SNR k                         [0]
  eps        1                          SNR                           [1]
  x0         1 / SNR                    1
  v          (a^2 + s^2)^2 / a^2        (a^2 + s^2)^2 / s^2           [2]
             (VP: (SNR + 1) / SNR)      (VP: SNR + 1)
  snr_trunc  max(1, 1 / SNR)            max(SNR, 1)                   [2]
  min_snr    min(1, gamma / SNR)        min(SNR, gamma)               [3]
  edm        (r^2 + sd^2) / sd^2        (r^2 + sd^2) / (r sd)^2       [4]
  sigmoid    sigmoid(bias - logSNR)     SNR sigmoid(bias - logSNR)    [5]
  =========  =========================  ============================  ======

  [0] the plain MSE of the network's own target: today's eps loss for eps,
      the rectified-flow loss |F - (n - x0)|^2 for velocity on the flow
      process, EDM's loss for edm (EDM's lambda = 1 / c_out^2 makes its
      weighted x0 loss the unit MSE of F).
  [1] Ho et al. 2020. [2] Salimans & Ho 2022 ('v' is the v-MSE: v's
      k = (a^2 + s^2)^2 / a^2; 'snr_trunc' their truncated SNR).
  [3] Hang et al. 2023, min-SNR-gamma; on a VP process the weight on the
      target's MSE is min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0
      and min(SNR, gamma) / (SNR + 1) for v (not min(SNR, gamma) / SNR,
      the pitfall of diffusers issue 3377).
  [4] Karras et al. 2022: lambda = (r^2 + sd^2) / (r sd)^2 on the x0-MSE;
      with the edm parameterization w_F = 1.
  [5] Kingma & Gao 2023, "Understanding diffusion objectives"; the weight
      multiplies each example as drawn by `sample_time`: their -dlogSNR/dt
      (the density of logSNR under uniform t) is not included.

x0_hat, the prediction's data estimate, feeds the frequency loss. The
forward process (Gaussian SDE, rectified flow or the DDGM gamma chain) is
any object with `alpha`, `sigma`, `sample_time(key, B)` and
`perturb(key, x0, t) -> (x_t, eps)`.

Training times come from the process (`time_sampling='uniform'`: uniform t
on [t_min, t_max], or the chain's steps) or from a log-normal law on the
noise-to-signal ratio sigma/alpha (`'lognormal'`, Karras et al. 2022's
noise-level distribution), mapped back to t through the schedule:
`sample_time`. For the rectified flow sigma/alpha = t / (1 - t), so the
log-normal law is a logit-normal law of t (Esser et al. 2024).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import chex
import jax
import jax.numpy as jnp

from jaxdiff import denoiser as denoiser_lib
from jaxdiff import sde as sde_lib
from jaxdiff.registry import Registry

Array = jax.Array
EPS_PREDICTION = denoiser_lib.eps_prediction()

# name -> (process, t [B], options) -> lambda_eps [B], the weight on the
# eps-MSE; options: min_snr_gamma, sigmoid_bias, sigma_data.
WEIGHTINGS = Registry("loss weighting")


def _inv_snr(process, t: Array) -> Array:
  """1 / SNR = (sigma / alpha)^2 [B], finite where alpha is small."""
  return (process.sigma(t) / process.alpha(t))**2


@WEIGHTINGS.register("eps")
def _eps_weight(process, t, options):
  del options
  return jnp.ones_like(_inv_snr(process, t))


@WEIGHTINGS.register("x0")
def _x0_weight(process, t, options):
  del options
  return _inv_snr(process, t)


@WEIGHTINGS.register("v")
def _v_weight(process, t, options):
  del options
  return denoiser_lib.v_prediction().eps_factor(process, t)


@WEIGHTINGS.register("snr_trunc")
def _snr_trunc_weight(process, t, options):
  del options
  return jnp.maximum(1.0, _inv_snr(process, t))


@WEIGHTINGS.register("min_snr")
def _min_snr_weight(process, t, options):
  return jnp.minimum(1.0, options["min_snr_gamma"] * _inv_snr(process, t))


@WEIGHTINGS.register("edm")
def _edm_weight(process, t, options):
  sd2 = options["sigma_data"]**2
  return (_inv_snr(process, t) + sd2) / sd2


@WEIGHTINGS.register("sigmoid")
def _sigmoid_weight(process, t, options):
  return jax.nn.sigmoid(options["sigmoid_bias"] - process.log_snr(t))


def weighting_names():
  """Every weighting name: 'none' and the `WEIGHTINGS`."""
  return ["none"] + WEIGHTINGS.names()


def check_weighting(weighting: str, *, min_snr_gamma: float = 5.0,
                    sigmoid_bias: float = 0.0, sigma_data: float = 0.5):
  """Raises a one-line ValueError for an unknown weighting or a bad option."""
  if weighting not in weighting_names():
    raise ValueError(f"Unknown loss weighting {weighting!r} "
                     "(config.training.weighting); use one of "
                     f"{', '.join(weighting_names())}.")
  if weighting == "min_snr" and not (math.isfinite(min_snr_gamma)
                                     and min_snr_gamma > 0):
    raise ValueError("config.training.min_snr_gamma must be a finite number "
                     f"> 0 for the min_snr weighting, got {min_snr_gamma}.")
  if weighting == "sigmoid" and not math.isfinite(sigmoid_bias):
    raise ValueError("config.training.sigmoid_bias must be finite, got "
                     f"{sigmoid_bias}.")
  if weighting == "edm" and not (math.isfinite(sigma_data) and sigma_data > 0):
    raise ValueError("config.model.sigma_data must be a finite number > 0 for "
                     f"the edm weighting, got {sigma_data}.")


def eps_weight(weighting: str, process, t: Array, **options) -> Array:
  """lambda_eps(t) [B]: the weight of a `WEIGHTINGS` entry on the eps-MSE.

  Args:
    weighting: a name in `WEIGHTINGS` ('none' depends on the target: see
      `target_weight`).
    process: the forward process.
    t: times [B].
    **options: min_snr_gamma, sigmoid_bias, sigma_data (defaults 5, 0, 0.5).
  """
  options = dict(dict(min_snr_gamma=5.0, sigmoid_bias=0.0, sigma_data=0.5),
                 **options)
  check_weighting(weighting, **options)
  if weighting == "none":
    raise ValueError("The 'none' weighting has no fixed eps weight; it is "
                     "the target's own MSE (target_weight gives 1).")
  return WEIGHTINGS.get(weighting)(process, t, options)


def target_weight(weighting: str, param: denoiser_lib.Parameterization,
                  process, t: Array, **options) -> Array:
  """w_F(t) [B]: the weight on the MSE of `param`'s target, for `weighting`.

  The one conversion: w_F = lambda_eps / k with k = param.eps_factor, since
  |F - F*|^2 = k |eps_hat - eps|^2; 'none' gives w_F = 1.

  Args:
    weighting: 'none' or a name in `WEIGHTINGS`.
    param: the network's `Parameterization`.
    process: the forward process.
    t: times [B].
    **options: min_snr_gamma, sigmoid_bias, sigma_data.
  """
  if weighting == "none":
    check_weighting(weighting, **options)
    return jnp.ones_like(jnp.asarray(t, jnp.float32))
  return (eps_weight(weighting, process, t, **options)
          / param.eps_factor(process, t))


def frequency_l1(x0_hat: jax.Array, x0: jax.Array) -> jax.Array:
  """Mean |FFT2(x0_hat) - FFT2(x0)| over H, W, C, orthonormal FFT -> [B]."""
  diff = jnp.fft.fft2(x0_hat - x0, axes=(1, 2), norm="ortho")  # linear
  return jnp.mean(jnp.abs(diff), axis=(1, 2, 3))


def _time_of_log_ratio(process, log_ratio: jax.Array) -> jax.Array:
  """t with log(sigma(t) / alpha(t)) = log_ratio (`sde.time_of_ratio`).

  Clamped to [max(t_min, 1e-5), t_max]; rounded up to the chain's grid i/T
  when the process is discrete (`num_steps` set): at least the drawn noise.
  """
  t_lo = max(float(getattr(process, "t_min", 0.0)), 1e-5)
  return sde_lib.time_of_ratio(process, jnp.exp(log_ratio), snap="up",
                               t_lo=t_lo)


def sample_time(process, key: jax.Array, batch: int, *,
                time_sampling: str = "uniform", lognormal_mean: float = -1.2,
                lognormal_std: float = 1.2) -> jax.Array:
  """Training times [B].

  Args:
    process: the forward process.
    key: PRNG key.
    batch: B.
    time_sampling: 'uniform' (the process's own law: uniform t on
      [t_min, t_max], or uniform steps i/T for a discrete chain) or
      'lognormal': log(sigma/alpha) ~ N(lognormal_mean, lognormal_std^2)
      (for the rectified flow, logit(t) ~ N: a logit-normal t). The
      defaults (-1.2, 1.2) are Karras et al.'s; they put the most weight
      near sigma/alpha = 0.3 and 1.9x uniform-t's density there under the
      cosine schedule (where uniform t gives log(sigma/alpha) nearly a
      hyperbolic-secant law, mean 0, std 1.44) and 8x less mass above
      sigma/alpha = 3.3.
    lognormal_mean: mean of log(sigma/alpha).
    lognormal_std: its standard deviation.
  """
  if time_sampling == "uniform":
    return process.sample_time(key, batch)
  if time_sampling == "lognormal":
    if lognormal_std <= 0:
      raise ValueError(f"lognormal_std must be > 0, got {lognormal_std}.")
    log_ratio = lognormal_mean + lognormal_std * jax.random.normal(
        key, (batch,))
    return _time_of_log_ratio(process, log_ratio)
  raise ValueError(f"Unknown time_sampling {time_sampling!r}; use 'uniform' "
                   "or 'lognormal'.")


def _per_example(sq: Array) -> Array:
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return jnp.mean(sq, axis=tuple(range(1, sq.ndim)))


def _freq_term(process, x0_hat, x0, t, freq_weighting: str) -> Array:
  """The frequency loss [B] (`diffusion_loss`'s freq_weighting)."""
  if freq_weighting not in ("none", "snr"):
    raise ValueError(f"Unknown freq_weighting {freq_weighting!r}; use "
                     "'none' or 'snr'.")
  freq = frequency_l1(x0_hat, x0)                         # [B]
  if freq_weighting == "snr":
    freq = freq * jnp.minimum(1.0, process.alpha(t) / process.sigma(t))
  return freq


def _check_inputs(x0: Array, labels: Optional[Array], lambda_freq: float):
  """`diffusion_loss`'s data: float x0 [B, ...] ([B, H, W, C] for the
  frequency loss), labels [B] (shapes and dtypes: free after tracing)."""
  chex.assert_type(x0, float, custom_message=(
      "diffusion_loss: x0 must be float images in [-1, 1] (uint8 data: "
      "x / 127.5 - 1)"))
  if lambda_freq:
    chex.assert_rank(x0, 4, custom_message=(
        "diffusion_loss: the frequency loss (lambda_freq > 0) needs x0 "
        "[B, H, W, C]"))
  if labels is not None:
    chex.assert_shape(labels, (jnp.shape(x0)[0],), custom_message=(
        "diffusion_loss: labels must be [B] class indices, one per image"))


def diffusion_loss(apply_fn: Callable, params, process, x0: jax.Array,
                   key: jax.Array, *,
                   param: denoiser_lib.Parameterization = EPS_PREDICTION,
                   weighting: str = "none", min_snr_gamma: float = 5.0,
                   sigmoid_bias: float = 0.0, sigma_data: float = 0.5,
                   labels: Optional[jax.Array] = None,
                   num_classes: Optional[int] = None, p_uncond: float = 0.0,
                   lambda_freq: float = 0.0, freq_weighting: str = "none",
                   time_sampling: str = "uniform",
                   lognormal_mean: float = -1.2, lognormal_std: float = 1.2,
                   train: bool = True):
  """Per-batch loss and metrics.

  Args:
    apply_fn: (params, x, t, y, train, rngs) -> F, the network's output.
    params: network parameters.
    process: the forward process (an SDE or the gamma chain).
    x0: [B, H, W, C] clean images in [-1, 1].
    key: PRNG key.
    param: the network's `denoiser.Parameterization` (default: eps).
    weighting: 'none' (the plain MSE of param's target) or a `WEIGHTINGS`
      name; see the module docstring.
    min_snr_gamma, sigmoid_bias, sigma_data: the weightings' options
      (min_snr's gamma, sigmoid's bias, edm's sd).
    labels: [B] int class labels, or None.
    num_classes: K; label K is the null class (label dropout target).
    p_uncond: probability of dropping a label to the null class.
    lambda_freq: weight of the frequency loss.
    freq_weighting: 'none' (the plain L1 of the FFTs) or 'snr' (each
      example's term times min(1, alpha/sigma)): x0_hat = x0 + (sigma/alpha)
      (eps - eps_hat) amplifies the noise error by sigma/alpha, up to 100x
      near t=1 for the cosine schedule, so the plain term is dominated by the
      noisiest times; 'snr' keeps it in x0 units where SNR >= 1 and in noise
      units elsewhere.
    time_sampling, lognormal_mean, lognormal_std: the law of the training
      times; see `sample_time`.
    train: dropout on.

  Returns:
    (loss scalar, metrics): "loss"; "mse", the unweighted MSE of param's
    target; "eps_mse", the prediction's noise MSE (comparable across
    parameterizations); "freq" when lambda_freq > 0. AssertionError (when
    traced) if x0 is not float ([B, H, W, C] with the frequency loss),
    labels not [B] or the network's output not of x_t's shape.
  """
  options = dict(min_snr_gamma=min_snr_gamma, sigmoid_bias=sigmoid_bias,
                 sigma_data=sigma_data)
  check_weighting(weighting, **options)
  _check_inputs(x0, labels, lambda_freq)
  t_key, n_key, d_key, u_key = jax.random.split(key, 4)
  b = x0.shape[0]
  t = sample_time(process, t_key, b, time_sampling=time_sampling,
                  lognormal_mean=lognormal_mean,
                  lognormal_std=lognormal_std)            # [B]
  x_t, eps = process.perturb(n_key, x0, t)                # [B, H, W, C]
  if labels is not None and p_uncond > 0:
    drop = jax.random.bernoulli(u_key, p_uncond, (b,))
    labels = jnp.where(drop, num_classes, labels)
  f = denoiser_lib.network_output(apply_fn, params, param, process, x_t, t,
                                  labels, train=train,
                                  rngs={"dropout": d_key})
  denoiser_lib.check_output(x_t, f, "diffusion_loss: the network's output")
  pred = param.predict(process, x_t, t, f)
  mse = _per_example((f - param.target(process, x0, eps, t))**2)  # [B]
  loss = mse
  if weighting != "none":  # 'none': w_F = 1, the target's plain MSE.
    loss = target_weight(weighting, param, process, t, **options) * mse
  metrics = {"mse": jnp.mean(mse),
             "eps_mse": jnp.mean(_per_example((pred.eps - eps)**2))}
  if lambda_freq:
    freq = _freq_term(process, pred.x0, x0, t, freq_weighting)
    loss = loss + lambda_freq * freq
    metrics["freq"] = jnp.mean(freq)
  loss = jnp.mean(loss)
  metrics["loss"] = loss
  return loss, metrics
