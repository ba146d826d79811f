"""Training: a pure, data-parallel `train_step` and the loop around it.

The whole training split lives on the device as uint8; each step draws its
batch there from (seed, step) alone, so a resumed run sees exactly the batches
an uninterrupted one would. `steps_per_dispatch` train steps run inside one
jitted `lax.scan`, and the batch is sharded over every device of the mesh.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import losses
from jaxdiff import samplers

Array = jax.Array


class TrainState(flax.struct.PyTreeNode):
  step: Array             # [] int32
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite: Array        # [] int32: consecutive skipped (NaN/Inf) steps


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. too many non-finite steps)."""


def make_optimizer(tc: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup and optional global-norm clipping."""
  if tc.lr <= 0:
    raise ValueError(f"config.training.lr must be > 0, got {tc.lr}.")
  lr = tc.lr
  if tc.warmup_steps > 0:
    lr = optax.linear_schedule(0.0, tc.lr, tc.warmup_steps)
  parts = []
  if tc.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(tc.grad_clip))
  parts.append(optax.adamw(lr, weight_decay=tc.weight_decay))
  return optax.chain(*parts)


def make_apply_fn(model: nn.Module) -> Callable:
  """(params, x, t, y, train, rngs) -> eps_hat."""
  def apply_fn(params, x, t, y=None, *, train=False, rngs=None):
    return model.apply({"params": params}, x, t, y, train=train, rngs=rngs)
  return apply_fn


def init_state(model: nn.Module, tx, key, image_shape) -> TrainState:
  x = jnp.zeros((1, *image_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  params = model.init({"params": key}, x, t)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params),
                    nonfinite=jnp.zeros((), jnp.int32))


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def draw_batch(images: Array, labels: Array, key: Array, step: Array, *,
               batch_size: int, random_flip: bool) -> Tuple[Array, Array]:
  """The batch of `step`: epoch-wise permutations from (key, epoch).

  Args:
    images: [N, H, W, C] uint8, on the device.
    labels: [N] int32.
    key: data key (fixed for the run).
    step: global step.

  Returns:
    x [B, H, W, C] float32 in [-1, 1], y [B] int32.
  """
  n = images.shape[0]
  per_epoch = n // batch_size
  epoch, i = step // per_epoch, step % per_epoch
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
  idx = jax.lax.dynamic_slice(perm, (i * batch_size,), (batch_size,))
  x = images[idx].astype(jnp.float32) / 127.5 - 1.0
  if random_flip:
    flip = jax.random.bernoulli(
        jax.random.fold_in(jax.random.fold_in(key, -1), step), 0.5,
        (batch_size, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1], x)
  return x, labels[idx]


def train_step(state: TrainState, x0: Array, labels: Optional[Array],
               key: Array, *, apply_fn, tx, process, ema_decay: float,
               loss_kwargs: Dict[str, Any]) -> Tuple[TrainState, Dict]:
  """One optimisation step; skips the update if loss or grads are not finite.

  Args:
    state: the train state.
    x0: [B, H, W, C] images in [-1, 1].
    labels: [B] or None.
    key: the run's key; the step's key is fold_in(key, step).

  Returns:
    (new state, metrics dict of scalars).
  """
  step_key = jax.random.fold_in(key, state.step)
  loss_fn = functools.partial(losses.diffusion_loss, apply_fn, process=process,
                              x0=x0, key=step_key, labels=labels, **loss_kwargs)
  (loss, metrics), grads = jax.value_and_grad(
      lambda p: loss_fn(p), has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                     state.ema_params, params)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
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


def make_train_fn(config, apply_fn, tx, process, mesh):
  """A jitted function running `steps_per_dispatch` steps with one scan."""
  tc = config.training
  loss_kwargs = dict(
      lambda_freq=tc.lambda_freq,
      num_classes=config.data.num_classes if tc.conditional else None,
      p_uncond=tc.p_uncond if tc.conditional else 0.0)
  step_fn = functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                              process=process, ema_decay=tc.ema_decay,
                              loss_kwargs=loss_kwargs)
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())

  def run(state, images, labels, key):
    data_key, step_key = jax.random.split(key)

    def body(state, _):
      x, y = draw_batch(images, labels, data_key, state.step,
                        batch_size=tc.batch_size,
                        random_flip=config.data.random_flip)
      x = jax.lax.with_sharding_constraint(x, batch_sharding)
      y = jax.lax.with_sharding_constraint(y, batch_sharding)
      return step_fn(state, x, y if tc.conditional else None, step_key)

    state, metrics = jax.lax.scan(body, state, None,
                                  length=tc.steps_per_dispatch)
    return state, jax.tree.map(jnp.mean, metrics)

  return jax.jit(run, in_shardings=(replicated, replicated, replicated,
                                    replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_mesh():
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(batch_size: int, n_devices: int, n_images: int):
  if batch_size % n_devices:
    raise ValueError(
        f"config.training.batch_size={batch_size} is not divisible by the "
        f"{n_devices} devices; use a multiple of {n_devices}.")
  if n_images < batch_size:
    raise ValueError(f"The data set has {n_images} images, fewer than "
                     f"config.training.batch_size={batch_size}.")


def load_train_data(config):
  dc = config.data
  ds = data_lib.load(dc.name, dc.split, data_dir=dc.data_dir or None,
                     limit=dc.limit or None)
  _, h, w, c = ds.images.shape
  if (h, w, c) != (dc.image_size, dc.image_size, dc.channels):
    raise ValueError(
        f"Data set {dc.name!r} has images {h}x{w}x{c} but the config asks for "
        f"{dc.image_size}x{dc.image_size}x{dc.channels}; set "
        "config.data.image_size / config.data.channels.")
  return ds


def image_shape(config):
  return (config.data.image_size, config.data.image_size, config.data.channels)


class _StopFlag:
  """Turns SIGTERM/SIGINT into a request to stop after the current step."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning("Signal %d: finishing the current step, then saving.",
                    signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _progress(total, initial):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=total, initial=initial, dynamic_ncols=True,
                desc="train", mininterval=1.0)
  except ImportError:
    return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains per config, writing checkpoints, metrics and samples to workdir.

  Resumes from the newest checkpoint in `<workdir>/checkpoints` if present.
  """
  tc = config.training
  os.makedirs(workdir, exist_ok=True)
  ds = load_train_data(config)
  mesh = make_mesh()
  check_batch(tc.batch_size, jax.device_count(), len(ds.images))
  if tc.steps_per_dispatch < 1:
    raise ValueError("config.training.steps_per_dispatch must be >= 1.")

  model = config_lib.build_model(config)
  process = config_lib.build_process(config)
  tx = make_optimizer(tc)
  apply_fn = make_apply_fn(model)
  key = jax.random.key(config.seed)
  init_key, train_key, sample_key = jax.random.split(key, 3)
  state = init_state(model, tx, init_key, image_shape(config))
  n_params = count_params(state.params)
  print(f"jaxdiff: model {config.model.name} with {n_params:,} parameters; "
        f"{len(ds.images)} training images of {ds.images.shape[1:]}; "
        f"{jax.device_count()} device(s) ({jax.devices()[0].platform}).",
        flush=True)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=tc.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    print(f"jaxdiff: resumed from step {int(state.step)}.", flush=True)
  config_json = config_lib.to_json(config)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config_json, f, indent=2)

  replicated = NamedSharding(mesh, P())
  images = jax.device_put(ds.images, replicated)
  labels = jax.device_put(ds.labels.astype(np.int32), replicated)
  state = jax.device_put(state, replicated)
  train_fn = make_train_fn(config, apply_fn, tx, process, mesh)
  sample_fn = make_sample_fn(config, model, process)

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  step = int(state.step)
  k = tc.steps_per_dispatch
  bar = _progress(tc.num_train_steps, step)
  pending = []
  t_last, step_last = time.time(), step
  with _StopFlag() as stop, open(metrics_path, "a") as mfile:
    while step < tc.num_train_steps and not stop.requested:
      state, metrics = train_fn(state, images, labels, train_key)
      step += k
      pending.append(metrics)
      if step % tc.log_every < k or step >= tc.num_train_steps:
        host = jax.device_get(pending)
        pending = []
        now = time.time()
        record = {key_: float(np.mean([m[key_] for m in host]))
                  for key_ in host[0]}
        record["step"] = step
        record["images_per_s"] = (step - step_last) * tc.batch_size / max(
            now - t_last, 1e-9)
        t_last, step_last = now, step
        mfile.write(json.dumps(record) + "\n")
        mfile.flush()
        if bar is not None:
          bar.set_postfix(loss=f"{record['loss']:.4f}",
                          img_s=f"{record['images_per_s']:.0f}")
        if int(state.nonfinite) >= tc.max_nonfinite:
          raise TrainingError(
              f"{int(state.nonfinite)} non-finite steps in a row at step "
              f"{step}; stopping. The last good checkpoint is in "
              f"{ckpt.directory}. Lower config.training.lr or enable "
              "grad_clip.")
      if bar is not None:
        bar.update(min(k, tc.num_train_steps - bar.n))
      if tc.checkpoint_every and step % tc.checkpoint_every < k:
        ckpt.save(step, state, config_json)
      if tc.sample_every and step % tc.sample_every < k:
        save_samples(config, sample_fn, state,
                     jax.random.fold_in(sample_key, step),
                     os.path.join(workdir, "samples", f"step_{step:07d}.png"))
  if bar is not None:
    bar.close()
  if ckpt.latest_step() != step:
    ckpt.save(step, state, config_json, force=True)
  ckpt.close()
  if stop.requested:
    print(f"jaxdiff: stopped by signal at step {step}; checkpoint saved.",
          flush=True)
  _write_loss_curve(workdir)
  return state


def _write_loss_curve(workdir):
  try:
    from jaxdiff import viz  # pylint: disable=g-import-not-at-top
    records = viz.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if records:
      viz.loss_curves(os.path.join(workdir, "loss.png"), records,
                      keys=("loss",))
  except ImportError:
    pass


# ------------------------------------------------------------------ sampling


def make_sample_fn(config, model, process, *, method=None, steps=None):
  """jitted (params, key, labels) -> images [B, H, W, C] in [-1, 1]."""
  sc = config.sampling
  method = method or sc.method
  steps = steps or sc.steps
  apply_fn = make_apply_fn(model)
  conditional = config.training.conditional
  shape = (sc.batch_size, *image_shape(config))
  options = config_lib.sampler_options(config, method)

  @jax.jit
  def sample_fn(params, key, labels=None):
    eps_fn = samplers.model_eps_fn(
        apply_fn, params, labels=labels if conditional else None,
        num_classes=config.data.num_classes,
        guidance_scale=sc.guidance_scale)
    return samplers.sample(method, process, eps_fn, key, shape, steps=steps,
                           grid=sc.grid, **options)

  return sample_fn


def generate(config, sample_fn, params, key, num: int, labels=None):
  """Draws `num` images in batches; returns uint8-ready floats [num, ...]."""
  bs = config.sampling.batch_size
  out = []
  for i in range(-(-num // bs)):
    y = None
    if labels is not None:
      y = jnp.asarray(np.resize(labels[i * bs:(i + 1) * bs], bs), jnp.int32)
    out.append(np.asarray(sample_fn(params, jax.random.fold_in(key, i), y)))
  return np.concatenate(out)[:num]


def save_samples(config, sample_fn, state, key, path, num=None):
  from jaxdiff import viz  # pylint: disable=g-import-not-at-top
  num = num or config.sampling.num_samples
  params = state.ema_params if config.sampling.use_ema else state.params
  labels = None
  if config.training.conditional:
    labels = np.arange(num) % config.data.num_classes
  images = generate(config, sample_fn, params, key, num, labels)
  viz.save_grid(path, images)
  return images
