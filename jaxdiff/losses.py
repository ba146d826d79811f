"""Training objectives: noise-prediction MSE plus an optional frequency loss.

    loss = E_t,eps || eps_hat - eps ||^2
           + lambda_freq * E | FFT2(x0_hat) - FFT2(x0) |      (L1, per pixel)

where x0_hat = (x_t - sigma eps_hat) / alpha is the network's Tweedie estimate.
The forward process (Gaussian SDE or the DDGM gamma chain) is any object with
`sample_time(key, B)`, `perturb(key, x0, t) -> (x_t, eps)` and `eps_to_x0`.

Training times come from the process (`time_sampling='uniform'`: uniform t)
or from a log-normal law on the noise-to-signal ratio sigma/alpha
(`'lognormal'`, Karras et al. 2022's noise-level distribution), mapped back
to t through the schedule: `sample_time`.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib


def frequency_l1(x0_hat: jax.Array, x0: jax.Array) -> jax.Array:
  """Mean |FFT2(x0_hat) - FFT2(x0)| over H, W, C, orthonormal FFT -> [B]."""
  diff = jnp.fft.fft2(x0_hat - x0, axes=(1, 2), norm="ortho")  # linear
  return jnp.mean(jnp.abs(diff), axis=(1, 2, 3))


def _time_of_log_ratio(process, log_ratio: jax.Array) -> jax.Array:
  """t with log(sigma(t) / alpha(t)) = log_ratio (`sde.time_of_ratio`).

  Clamped to [max(t_min, 1e-5), 1]; rounded up to the chain's grid i/T when
  the process is discrete (`num_steps` set): at least the drawn noise.
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
    time_sampling: 'uniform' (the process's own law: uniform t, or uniform
      steps i/T for a discrete chain) or 'lognormal': log(sigma/alpha) ~
      N(lognormal_mean, lognormal_std^2). The defaults (-1.2, 1.2) are
      Karras et al.'s; they put the most weight near sigma/alpha = 0.3 and
      1.9x uniform-t's density there under the cosine schedule (where
      uniform t gives log(sigma/alpha) nearly a hyperbolic-secant law, mean
      0, std 1.44) and 8x less mass above sigma/alpha = 3.3.
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


def diffusion_loss(apply_fn: Callable, params, process, x0: jax.Array,
                   key: jax.Array, *, labels: Optional[jax.Array] = None,
                   num_classes: Optional[int] = None, p_uncond: float = 0.0,
                   lambda_freq: float = 0.0, freq_weighting: str = "none",
                   time_sampling: str = "uniform",
                   lognormal_mean: float = -1.2, lognormal_std: float = 1.2,
                   train: bool = True):
  """Per-batch loss and metrics.

  Args:
    apply_fn: (params, x, t, y, train, rngs) -> eps_hat.
    params: network parameters.
    process: the forward process (an SDE or the gamma chain).
    x0: [B, H, W, C] clean images in [-1, 1].
    key: PRNG key.
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
    (loss scalar, metrics dict of scalars).
  """
  t_key, n_key, d_key, u_key = jax.random.split(key, 4)
  b = x0.shape[0]
  t = sample_time(process, t_key, b, time_sampling=time_sampling,
                  lognormal_mean=lognormal_mean,
                  lognormal_std=lognormal_std)            # [B]
  x_t, eps = process.perturb(n_key, x0, t)                # [B, H, W, C]
  if labels is not None and p_uncond > 0:
    drop = jax.random.bernoulli(u_key, p_uncond, (b,))
    labels = jnp.where(drop, num_classes, labels)
  eps_hat = apply_fn(params, x_t, t, labels, train=train,
                     rngs={"dropout": d_key})
  mse = jnp.mean((eps_hat - eps)**2, axis=(1, 2, 3))      # [B]
  loss = mse
  metrics = {"mse": jnp.mean(mse)}
  if lambda_freq:
    freq = frequency_l1(process.eps_to_x0(x_t, eps_hat, t), x0)  # [B]
    if freq_weighting == "snr":
      freq = freq * jnp.minimum(1.0, process.alpha(t) / process.sigma(t))
    elif freq_weighting != "none":
      raise ValueError(f"Unknown freq_weighting {freq_weighting!r}; use "
                       "'none' or 'snr'.")
    loss = loss + lambda_freq * freq
    metrics["freq"] = jnp.mean(freq)
  loss = jnp.mean(loss)
  metrics["loss"] = loss
  return loss, metrics
