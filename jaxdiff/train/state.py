"""The train state, the optimiser and its learning-rate schedule, the mesh."""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.settings import TrainingSettings

Array = jax.Array


class TrainState(flax.struct.PyTreeNode):
  step: Array             # [] int32
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite: Array        # [] int32: consecutive skipped (NaN/Inf) steps


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps)."""


def make_optimizer(tc: TrainingSettings) -> optax.GradientTransformation:
  """AdamW with the learning rate of `lr_schedule` after gradient clipping.

  The state has one structure for every `grad_clip`: global-norm clipping
  and its stand-in when `grad_clip = 0`, `optax.identity` (which leaves the
  gradients bit for bit as they are), both keep an empty state. A run can
  therefore resume with clipping switched on or off.

  Raises:
    ValueError: a negative or non-finite `grad_clip`.
  """
  if not (np.isfinite(tc.grad_clip) and tc.grad_clip >= 0):
    raise ValueError(f"config.training.grad_clip must be a finite number >= 0 "
                     f"(0 disables clipping), got {tc.grad_clip}.")
  clip = (optax.clip_by_global_norm(tc.grad_clip) if tc.grad_clip > 0
          else optax.identity())
  return optax.chain(clip, optax.adamw(lr_schedule(tc),
                                       weight_decay=tc.weight_decay))


def lr_schedule(tc: TrainingSettings) -> optax.Schedule:
  """Learning rate against the optimizer's step count.

  Linear warm-up from 0 over `warmup_steps`, then constant `lr`; with
  `lr_decay="cosine"` a cosine decay from `lr` to `lr * lr_end_factor` over
  the steps from `lr_decay_start` to `num_train_steps`. Because the step
  count lives in the optimizer state, a run resumed with a larger
  `num_train_steps` and `lr_decay_start` at its current step keeps its
  constant phase and decays over the new steps only.

  Raises:
    ValueError: a non-positive lr, an unknown `lr_decay`, or a decay that
      starts at or after `num_train_steps`.
  """
  if not (np.isfinite(tc.lr) and tc.lr > 0):
    raise ValueError(f"config.training.lr must be a finite number > 0, got "
                     f"{tc.lr}.")
  if tc.lr_decay not in ("none", "cosine"):
    raise ValueError(f"config.training.lr_decay must be 'none' or 'cosine', "
                     f"got {tc.lr_decay!r}.")
  warmup = max(int(tc.warmup_steps), 0)
  # join_schedules hands each piece the steps since its own boundary.
  pieces, boundaries = [], []
  if warmup:
    pieces.append(optax.linear_schedule(0.0, float(tc.lr), warmup))
    boundaries.append(warmup)
  pieces.append(optax.constant_schedule(float(tc.lr)))
  if tc.lr_decay == "cosine":
    start = max(int(tc.lr_decay_start), warmup)
    length = int(tc.num_train_steps) - start
    if length <= 0:
      raise ValueError(
          f"config.training.lr_decay_start ({start}, after warm-up) must be "
          f"below num_train_steps ({tc.num_train_steps}).")
    pieces.append(optax.cosine_decay_schedule(
        float(tc.lr), length, alpha=float(tc.lr_end_factor)))
    boundaries.append(start)
  if len(pieces) == 1:
    return pieces[0]
  return optax.join_schedules(pieces, boundaries)


def make_apply_fn(model: nn.Module) -> Callable:
  """(params, x, t, y, train, rngs) -> the network's raw output F (what it
  means: `jaxdiff.denoiser`)."""
  def apply_fn(params, x, t, y=None, *, train=False, rngs=None):
    return model.apply({"params": params}, x, t, y, train=train, rngs=rngs)
  return apply_fn


def init_state(model: nn.Module, tx, key, image_shape) -> TrainState:
  """A fresh TrainState (jittable; `jax.eval_shape` gives its shapes)."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  params = model.init({"params": key}, x, t)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params),
                    nonfinite=jnp.zeros((), jnp.int32))


def abstract_state(model: nn.Module, tx, image_shape,
                   sharding: Optional[jax.sharding.Sharding] = None
                   ) -> TrainState:
  """The TrainState's shapes and dtypes (no computation), optionally placed."""
  shapes = jax.eval_shape(
      lambda k: init_state(model, tx, k, image_shape), jax.random.key(0))
  if sharding is None:
    return shapes
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


def run_keys(seed: int) -> Tuple[Array, Array, Array]:
  """(init, train, sample) keys of a run: functions of the seed alone."""
  init_key, train_key, sample_key = jax.random.split(jax.random.key(seed), 3)
  return init_key, train_key, sample_key


def count_params(params) -> int:
  """The number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh ("data") over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), ("data",),
                           axis_types=(jax.sharding.AxisType.Auto,))
