"""Denoising side by side: the noisy images, the one-step Tweedie estimate
at the matched noise level and the reconstructions of the inverse methods,
each with the protocol's per-image metrics."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import inverse
from jaxdiff import trained as trained_lib
from jaxdiff.inverse import protocol

Array = jax.Array

ONE_STEP = "Tweedie (1 step)"


def denoising_columns(trained: trained_lib.Trained,
                      problem: inverse.InverseProblem, y: Array,
                      methods: Sequence[str],
                      settings: inverse.MethodSettings,
                      keys: Sequence[Array]
                      ) -> Tuple[Dict[str, np.ndarray], float]:
  """Reconstructions of y by the one-step Tweedie estimate and `methods`.

  The one-step column reads y as x_t / alpha(t) at the matched time t of
  the problem's sigma (`protocol.matched_time`: nearest step of a chain) and
  clips the estimate to [-1, 1]. The method 'tweedie' (which also imputes
  clipped pixels under the clipped noise model) replaces that column.

  Args:
    trained: the trained network (a Gaussian process).
    problem: the identity operator with the noise of y.
    y: [N, H, W, C] measurements.
    methods: names of `inverse.METHODS`.
    settings: the methods' settings, as `--mode denoise` runs them.
    keys: one PRNG key per method.

  Returns:
    ({'noisy': y, 'Tweedie (1 step)': ..., method: ...}, each
    [N, H, W, C] float32; the matched time t).
  """
  process = trained.process
  t = protocol.matched_time(process, problem.sigma)
  one_step = jax.jit(lambda p, y: jnp.clip(protocol.tweedie(
      process, trained.denoise_fn(params=p), y, t), -1.0, 1.0))
  y = jnp.asarray(y)
  columns = {"noisy": y, ONE_STEP: one_step(trained.params, y)}
  for name, key in zip(methods, keys, strict=True):
    method = inverse.make_method(name, process, problem, settings)
    run = jax.jit(lambda p, y, key, method=method: method(
        trained.denoise_fn(params=p), y, key))
    columns[ONE_STEP if name == "tweedie" else name] = run(
        trained.params, y, key)
  return {k: np.asarray(v) for k, v in columns.items()}, t


def column_metrics(columns: Dict[str, np.ndarray], clean: np.ndarray
                   ) -> Dict[str, Dict[str, np.ndarray]]:
  """Per-image protocol metrics of every column against the clean images:
  column -> {'psnr': [N] dB (data range 2), 'ssim': [N]}."""
  return {name: {k: np.asarray(v) for k, v in
                 protocol.image_metrics(jnp.asarray(images), clean).items()}
          for name, images in columns.items()}
