"""The training step with every parameterization and loss weighting: the
objective of `config.model.prediction` and `config.training.weighting`
reaches `losses.diffusion_loss` through `train.make_train_fn`, trains a tiny
network to a finite loss, and a bad weighting fails before compiling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_ddpm
from jaxdiff import config as config_lib
from jaxdiff import train

_SIZE, _N = 8, 16


def _settings(prediction, sde, weighting, **training):
  c = mnist_ddpm.get_config("tiny")
  c.data.image_size = _SIZE
  c.training.batch_size = 4
  c.model.prediction = prediction
  c.diffusion.sde = sde
  if sde != "vp":
    c.diffusion.num_steps = 0
  c.training.weighting = weighting
  for k, v in training.items():
    c.training[k] = v
  return config_lib.typed(c)


def _one_step(s):
  model = config_lib.build_model(s)
  apply_fn = train.make_apply_fn(model)
  tx = train.make_optimizer(s.training)
  process = config_lib.build_process(s)
  fn = train.make_train_fn(s, apply_fn, tx, process, train.make_mesh(),
                           length=1)
  state = train.init_state(model, tx, jax.random.key(0), s.data.image_shape)
  before = jax.tree.map(np.asarray, state.params)
  images = jax.random.randint(jax.random.key(1), (_N, _SIZE, _SIZE, 1), 0,
                              256).astype(jnp.uint8)
  labels = jnp.zeros((_N,), jnp.int32)
  state, metrics = fn(state, images, labels)
  return before, state, jax.tree.map(float, metrics)


@pytest.mark.parametrize("prediction,sde,weighting", [
    ("eps", "vp", "none"),
    ("x0", "vp", "min_snr"),
    ("v", "vp", "snr_trunc"),
    ("velocity", "flow", "none"),
    ("edm", "ve", "edm"),
])
def test_every_parameterization_trains(prediction, sde, weighting):
  before, state, metrics = _one_step(_settings(prediction, sde, weighting,
                                               time_sampling="lognormal"))
  assert {"loss", "mse", "eps_mse", "grad_norm", "skipped"} <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert metrics["skipped"] == 0.0 and int(state.step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)),
                         before, state.params)
  assert any(jax.tree.leaves(changed))
  if weighting == "none":
    assert metrics["loss"] == pytest.approx(metrics["mse"], rel=1e-6)


@pytest.mark.parametrize("training,match", [
    (dict(weighting="snr"), "Unknown loss weighting 'snr'"),
    (dict(weighting="min_snr", min_snr_gamma=-1.0), "min_snr_gamma"),
])
def test_bad_weighting_fails_before_compiling(training, match):
  s = _settings("eps", "vp", **training)
  with pytest.raises(ValueError, match=match) as info:
    train.make_train_fn(s, None, None, None, train.make_mesh())
  assert "\n" not in str(info.value)
