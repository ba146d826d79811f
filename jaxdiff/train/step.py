"""Training: a pure, data-parallel `train_step` and its jitted dispatch.

The whole training split lives on every device as uint8; each step draws its
global batch there from (seed, step) alone, so a resumed run sees exactly the
batches an uninterrupted one would, on any number of devices or hosts.
`steps_per_dispatch` train steps run inside one jitted `lax.scan`, and the
batch is sharded over a 1-D mesh ("data") of every device of every host.

Why the data set is replicated rather than split by host: the data sets here
are at most 150 MB of uint8 (CIFAR-10: 50k x 32 x 32 x 3), a small fraction of
one accelerator's memory, and each host reads its own copy once. In exchange
no host feeds batches during training (no input pipeline, no host round-trip
per step) and the batch of a step does not depend on how many processes or
devices there are. The SPMD partitioner gathers on each device only its slice
of the batch.

Faults: SIGTERM / SIGINT finish the current dispatch, save a checkpoint and
return normally; a non-finite loss, gradient or update skips the step (the
state stays the last good one) and `max_nonfinite` skipped steps in a row
raise `TrainingError` without saving the stuck state.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import config as config_lib
from jaxdiff import losses
from jaxdiff.settings import Settings
from jaxdiff.train.state import TrainState, run_keys
from jaxdiff.data import to_model_range

Array = jax.Array


def draw_batch(images: Array, labels: Array, key: Array, step: Array, *,
               batch_size: int, random_flip: bool) -> Tuple[Array, Array]:
  """The batch of `step`: epoch-wise permutations from (key, epoch).

  Args:
    images: [N, H, W, C] uint8, on the device.
    labels: [N] int32.
    key: data key (fixed for the run).
    step: global step.
    batch_size: the global batch size B.
    random_flip: flip each image horizontally with probability 1/2.

  Returns:
    x [B, H, W, C] float32 in [-1, 1], y [B] int32.
  """
  n = images.shape[0]
  per_epoch = n // batch_size
  epoch, i = step // per_epoch, step % per_epoch
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
  idx = jax.lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
  x = to_model_range(images[idx])
  if random_flip:
    flip_key = jax.random.fold_in(key, np.uint32(0xFFFFFFFF))
    flip = jax.random.bernoulli(jax.random.fold_in(flip_key, step), 0.5,
                                (batch_size, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
  return x, labels[idx]


def ema_decay_at(step: Array, ema_decay: float) -> Array:
  """The EMA's decay at a step: min(ema_decay, (1 + step) / (10 + step)).

  Without the warm-up a decay of 0.999 leaves 0.999^n of the random
  initialisation in the average after n steps: 45% after 800 steps, so a
  short run's EMA weights are far worse than its raw ones.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, x0: Array, labels: Optional[Array],
               key: Array, *, apply_fn, tx, process, ema_decay: float,
               loss_kwargs: Dict[str, Any]) -> Tuple[TrainState, Dict]:
  """One optimisation step; skips the update if it is not finite.

  The step is skipped (params, EMA and optimiser state kept, `nonfinite`
  incremented) when the loss, the gradient norm or the update's norm is NaN
  or infinite. (The update's norm, rather than `isfinite` of every new
  parameter: the same guarantee, and the latter makes XLA compile the step
  about four times slower.)

  Args:
    state: the train state.
    x0: [B, H, W, C] images in [-1, 1].
    labels: [B] or None.
    key: the run's key; the step's key is fold_in(key, step).
    apply_fn: (params, x, t, y, train, rngs) -> the network's output.
    tx: the optimiser.
    process: the forward process.
    ema_decay: decay of the parameter EMA (reached after a warm-up, see
      `ema_decay_at`).
    loss_kwargs: extra arguments of `losses.diffusion_loss`.

  Returns:
    (new state, metrics dict of scalars).
  """
  step_key = jax.random.fold_in(key, state.step)
  loss_fn = functools.partial(losses.diffusion_loss, apply_fn, process=process,
                              x0=x0, key=step_key, labels=labels, **loss_kwargs)
  (loss, metrics), grads = jax.value_and_grad(
      lambda p: loss_fn(p), has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = ema_decay_at(state.step, ema_decay)
  ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p,
                     state.ema_params, params)
  ok = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        & jnp.isfinite(optax.tree.norm(updates)))
  keep = lambda new, old: jax.tree.map(
      lambda a, b: jnp.where(ok, a, b), new, old)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      ema_params=keep(ema, state.ema_params),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite=jnp.where(ok, 0, state.nonfinite + 1))
  metrics = dict(metrics, grad_norm=grad_norm,
                 skipped=(~ok).astype(jnp.float32))
  return new_state, metrics


def make_train_fn(s: Settings, apply_fn, tx, process, mesh, *,
                  length: Optional[int] = None):
  """A jitted `(state, images, labels) -> (state, metrics)` of `length` steps.

  The steps run in one `lax.scan`; keys come from `s.seed`, batches from
  (seed, step). The batch is sharded over the mesh axis "data", everything
  else is replicated, and the state is donated.

  Args:
    s: the run's settings (training, model.prediction and sigma_data,
      data.num_classes, data.random_flip, seed). The objective (the
      parameterization, the loss weighting and its options) is checked here,
      before compiling.
    apply_fn: from `make_apply_fn`.
    tx: the optimiser.
    process: the forward process.
    mesh: a 1-D mesh with axis "data".
    length: steps per call; default `s.training.steps_per_dispatch`.

  Returns:
    The jitted function. Its metrics are means over the steps, except
    `nonfinite`: the longest run of skipped steps seen (int).
  """
  tc = s.training
  length = length or tc.steps_per_dispatch
  loss_kwargs = dict(
      param=config_lib.build_parameterization(s), weighting=tc.weighting,
      min_snr_gamma=tc.min_snr_gamma, sigmoid_bias=tc.sigmoid_bias,
      sigma_data=s.model.sigma_data,
      lambda_freq=tc.lambda_freq, freq_weighting=tc.freq_weighting,
      time_sampling=tc.time_sampling, lognormal_mean=tc.lognormal_mean,
      lognormal_std=tc.lognormal_std,
      num_classes=s.data.num_classes if tc.conditional else None,
      p_uncond=tc.p_uncond if tc.conditional else 0.0)
  losses.check_weighting(  # one-line errors before compiling
      tc.weighting, min_snr_gamma=tc.min_snr_gamma,
      sigmoid_bias=tc.sigmoid_bias, sigma_data=s.model.sigma_data)
  step_fn = functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                              process=process, ema_decay=tc.ema_decay,
                              loss_kwargs=loss_kwargs)
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())

  def run(state, images, labels):
    _, train_key, _ = run_keys(s.seed)
    data_key, step_key = jax.random.split(train_key)

    def body(state, _):
      x, y = draw_batch(images, labels, data_key, state.step,
                        batch_size=tc.batch_size,
                        random_flip=s.data.random_flip)
      x = jax.lax.with_sharding_constraint(x, batch_sharding)
      y = jax.lax.with_sharding_constraint(y, batch_sharding)
      state, metrics = step_fn(state, x, y if tc.conditional else None,
                               step_key)
      return state, dict(metrics, nonfinite=state.nonfinite)

    if length == 1:  # XLA:CPU runs convolutions inside loops much slower.
      state, metrics = body(state, None)
      metrics = jax.tree.map(lambda m: m[None], metrics)
    else:
      state, metrics = jax.lax.scan(body, state, None, length=length)
    nonfinite = jnp.max(metrics.pop("nonfinite"))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["nonfinite"] = nonfinite
    return state, metrics

  return jax.jit(run, in_shardings=(replicated, replicated, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))
