"""The training loop: the pure step of `train.step` with logging, saving and
sampling around it."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import distributed
from jaxdiff import samplers
from jaxdiff.train.state import (TrainState, TrainingError, abstract_state,
                                 count_params, init_state, lr_schedule,
                                 make_apply_fn, make_mesh, make_optimizer,
                                 run_keys)
from jaxdiff.train.step import make_train_fn


def check_batch(batch_size: int, n_devices: int, n_images: int):
  if batch_size % n_devices:
    raise ValueError(
        f"config.training.batch_size={batch_size} is not divisible by the "
        f"{n_devices} devices; use a multiple of {n_devices}.")
  if n_images < batch_size:
    raise ValueError(f"The data set has {n_images} images, fewer than "
                     f"config.training.batch_size={batch_size}.")


def check_sampling(config) -> None:
  """Raises ValueError (saying what to use) for an unknown sampler or grid."""
  sc = config.sampling
  if sc.method not in samplers.SAMPLERS:
    raise ValueError(
        f"Unknown config.sampling.method {sc.method!r}; use one of "
        f"{', '.join(samplers.SAMPLERS.names())}.")
  if sc.grid not in samplers.GRIDS:
    raise ValueError(
        f"Unknown config.sampling.grid {sc.grid!r}; use one of "
        f"{', '.join(samplers.GRIDS.names())}.")
  if sc.steps < 1 or sc.batch_size < 1 or sc.num_samples < 1:
    raise ValueError("config.sampling.steps, batch_size and num_samples must "
                     "be >= 1.")


def check_training(config) -> None:
  """Raises ValueError for training settings that cannot work."""
  tc = config.training
  if tc.steps_per_dispatch < 1:
    raise ValueError("config.training.steps_per_dispatch must be >= 1.")
  if tc.log_every < 1:
    raise ValueError("config.training.log_every must be >= 1.")
  if tc.max_nonfinite < 1:
    raise ValueError("config.training.max_nonfinite must be >= 1.")
  for name in ("num_train_steps", "checkpoint_every", "sample_every"):
    if tc[name] < 0:
      raise ValueError(f"config.training.{name} must be >= 0.")


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
  """Turns SIGTERM/SIGINT into a request to stop after the current step.

  A second SIGINT raises KeyboardInterrupt (an impatient Ctrl-C).
  """

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


class _Log:
  """Progress bar, console lines and metrics.jsonl, on process 0 only."""

  def __init__(self, workdir: str, total: int, initial: int):
    self.main = distributed.is_main()
    self.bar = None
    self.file = None
    if self.main:
      self.file = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True,
                        desc="train", mininterval=1.0, file=sys.stderr)
      except ImportError:
        pass

  def line(self, text: str):
    if not self.main:
      return
    if self.bar is not None:
      self.bar.write(text, file=sys.stdout)
    else:
      print(text, flush=True)
    sys.stdout.flush()

  def record(self, record: Dict[str, float]):
    if self.main:
      self.file.write(json.dumps(record) + "\n")
      self.file.flush()

  def advance(self, step: int, loss: Optional[float] = None):
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      if loss is not None:
        self.bar.set_postfix(loss=f"{loss:.4f}")

  def close(self):
    if self.bar is not None:
      self.bar.close()
    if self.file is not None:
      self.file.close()


def _summarise(pending: List[Dict[str, Any]]) -> Dict[str, float]:
  """Host copies of per-dispatch metrics -> one record (nonfinite: max)."""
  host = jax.device_get(pending)
  record = {k: float(np.mean([m[k] for m in host])) for k in host[0]
            if k != "nonfinite"}
  record["nonfinite"] = int(max(int(m["nonfinite"]) for m in host))
  return record


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains per config, writing checkpoints, metrics and samples to workdir.

  Resumes from the newest readable checkpoint in `<workdir>/checkpoints`.
  Every process of a multi-host run calls this; process 0 writes the logs,
  metrics.jsonl, loss.png, config.json and sample grids.

  Args:
    config: the run's config (see configs/base.py).
    workdir: the run directory.

  Returns:
    The final TrainState (replicated over every device).

  Raises:
    ValueError / FileNotFoundError: bad config or data (the message says what
      to change).
    CheckpointError: the checkpoints in workdir do not fit the model.
    TrainingError: `max_nonfinite` non-finite steps in a row; the checkpoints
      written before stay as they were.
  """
  tc = config.training
  check_training(config)
  model = config_lib.build_model(config)
  process = config_lib.build_process(config)  # Registers its own samplers.
  check_sampling(config)
  tx = make_optimizer(tc)
  lr_at = lr_schedule(tc)
  main = distributed.is_main()
  os.makedirs(workdir, exist_ok=True)
  ds = load_train_data(config)
  mesh = make_mesh()
  check_batch(tc.batch_size, jax.device_count(), len(ds.images))

  apply_fn = make_apply_fn(model)
  replicated = NamedSharding(mesh, P())
  target = abstract_state(model, tx, image_shape(config), replicated)
  n_params = count_params(target.params)
  if main:
    print(f"jaxdiff: model {config.model.name} with {n_params:,} parameters; "
          f"{len(ds.images)} training images of {ds.images.shape[1:]}; "
          f"{jax.device_count()} device(s) ({jax.devices()[0].platform}) on "
          f"{jax.process_count()} process(es).", flush=True)
  config_json = config_lib.to_json(config)

  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             max_to_keep=tc.keep_checkpoints) as ckpt:
    if ckpt.latest_step() is not None:
      state = ckpt.restore(target)
      if ckpt.unreadable:
        ckpt.set_aside_unreadable(move=main)
        distributed.sync("jaxdiff_set_aside")
        ckpt.reload()
      if main:
        print(f"jaxdiff: resumed from step {int(state.step)}.", flush=True)
    else:
      state = jax.jit(lambda: init_state(model, tx, run_keys(config.seed)[0],
                                         image_shape(config)),
                      out_shardings=replicated)()
    if main:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_json, f, indent=2)

    images = distributed.replicate(ds.images, replicated)
    labels = distributed.replicate(ds.labels.astype(np.int32), replicated)
    train_fns = {}

    def train_fn(n):
      if n not in train_fns:
        train_fns[n] = make_train_fn(config, apply_fn, tx, process, mesh,
                                     length=n)
      return train_fns[n]

    sample_fn = make_sample_fn(config, model, process, mesh=mesh)
    sample_key = run_keys(config.seed)[2]
    step = int(state.step)
    log = _Log(workdir, tc.num_train_steps, step)
    pending = []
    t_last, step_last = None, step
    t_first = time.time()
    try:
      with _StopFlag() as stop:
        while step < tc.num_train_steps:
          if distributed.any_process(stop.requested):
            break
          n = min(tc.steps_per_dispatch, tc.num_train_steps - step)
          state, metrics = train_fn(n)(state, images, labels)
          step += n
          pending.append(metrics)
          if t_last is None:  # The first dispatch compiles: time it apart.
            jax.block_until_ready(metrics)
            log.line(f"jaxdiff: compiled and ran the first {n} step(s) in "
                     f"{time.time() - t_first:.1f} s.")
            t_last, step_last = time.time(), step
          log_now = step % tc.log_every < n or step >= tc.num_train_steps
          save_now = bool(tc.checkpoint_every) and (
              step % tc.checkpoint_every < n)
          if log_now or save_now:
            record = _summarise(pending)
            pending = []
            if record["nonfinite"] >= tc.max_nonfinite:
              last = ckpt.latest_step()
              where = (f"the last good checkpoint is step {last} in "
                       f"{ckpt.directory}" if last is not None
                       else "no checkpoint was written")
              raise TrainingError(
                  f"{record['nonfinite']} non-finite (NaN/Inf) steps in a row "
                  f"before step {step}; stopped without saving them and "
                  f"{where}. Lower config.training.lr or set "
                  "config.training.grad_clip, and check the data for "
                  "NaNs.")
            now = time.time()
            timed = step - step_last
            record["step"] = step
            record["lr"] = float(lr_at(step))
            if timed > 0:
              record["s_per_step"] = (now - t_last) / timed
              record["images_per_s"] = timed * tc.batch_size / max(
                  now - t_last, 1e-9)
            t_last, step_last = now, step
            if log_now:
              log.record(record)
              log.line(_log_line(record, tc.num_train_steps))
            log.advance(step, record["loss"])
          else:
            log.advance(step)
          if save_now:
            streak = int(state.nonfinite)
            if streak:  # Only states right after a good step are saved.
              log.line(f"jaxdiff: no checkpoint at step {step}: the last "
                       f"{streak} step(s) were non-finite and skipped.")
            else:
              ckpt.save(step, state, config_json)
          if (tc.sample_every and step % tc.sample_every < n
              and not stop.requested):
            _write_samples(config, sample_fn, state,
                           jax.random.fold_in(sample_key, step),
                           os.path.join(workdir, "samples",
                                        f"step_{step:07d}.png"))
            if main:
              _write_loss_curve(workdir)
            t_last, step_last = time.time(), step  # Time training alone.
        if ckpt.latest_step() != step:
          ckpt.save(step, state, config_json, force=True)
        ckpt.wait()
    finally:
      log.close()
  if main:
    _write_loss_curve(workdir)
    if stop.requested:
      print(f"jaxdiff: stopped by signal at step {step}; checkpoint saved in "
            f"{ckpt.directory}/{step}. Run the same command to resume.",
            flush=True)
  return state


def _log_line(record: Dict[str, float], total: int) -> str:
  """`jaxdiff: step 200/1000 | loss 0.0412 | 0.035 s/step | 3657 img/s`."""
  parts = [f"jaxdiff: step {record['step']}/{total}",
           f"loss {record['loss']:.4f}"]
  if "s_per_step" in record:
    parts += [f"{record['s_per_step']:.4f} s/step",
              f"{record['images_per_s']:.0f} img/s"]
  if record.get("skipped"):
    parts.append(f"skipped {record['skipped']:.0%} (non-finite)")
  return " | ".join(parts)


def _write_samples(config, sample_fn, state, key, path):
  """Samples on every process (the computation spans them); 0 writes."""
  from jaxdiff import viz  # pylint: disable=g-import-not-at-top
  num = config.sampling.num_samples
  params = state.ema_params if config.sampling.use_ema else state.params
  labels = None
  if config.training.conditional:
    labels = np.arange(num) % config.data.num_classes
  images = generate(config, sample_fn, params, key, num, labels)
  if distributed.is_main():
    viz.save_grid(path, images)


def _write_loss_curve(workdir):
  """loss.png from metrics.jsonl (rewritten at every sample time)."""
  try:
    from jaxdiff import viz  # pylint: disable=g-import-not-at-top
    records = viz.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if records:
      viz.loss_curves(os.path.join(workdir, "loss.png"), records,
                      keys=("loss",))
  except (ImportError, OSError) as e:
    logging.warning("Could not write loss.png: %s", e)


# ------------------------------------------------------------------ sampling


def make_sample_fn(config, model, process, *, method=None, steps=None,
                   mesh=None):
  """jitted (params, key, labels) -> images [B, H, W, C] in [-1, 1].

  With a `mesh` whose size divides the sampling batch, the batch is split
  over its devices (params replicated), instead of every device computing
  all of it. Not across processes: the images could not be gathered on one.
  """
  sc = config.sampling
  method = method or sc.method
  steps = steps or sc.steps
  if method not in samplers.SAMPLERS:
    raise ValueError(
        f"Unknown sampler {method!r} (config.sampling.method); use one of "
        f"{', '.join(samplers.SAMPLERS.names())}.")
  apply_fn = make_apply_fn(model)
  conditional = config.training.conditional
  shape = (sc.batch_size, *image_shape(config))
  options = config_lib.sampler_options(config, method)

  jit_kwargs = {}
  if (mesh is not None and mesh.size > 1 and jax.process_count() == 1
      and sc.batch_size % mesh.size == 0):
    jit_kwargs = dict(out_shardings=NamedSharding(mesh, P("data")))

  @functools.partial(jax.jit, **jit_kwargs)
  def sample_fn(params, key, labels=None):
    eps_fn = samplers.model_eps_fn(
        apply_fn, params, labels=labels if conditional else None,
        num_classes=config.data.num_classes,
        guidance_scale=sc.guidance_scale)
    return samplers.sample(method, process, eps_fn, key, shape, steps=steps,
                           grid=sc.grid, **options)

  return sample_fn


def spread_for_sampling(config, params, batch_size=None):
  """(mesh, params) for `make_sample_fn`: the batch split over local devices.

  With several devices on one process (e.g. `config.cpu_devices`) whose count
  divides `batch_size` (default `config.sampling.batch_size`), the params are
  replicated on them and the mesh is returned; otherwise (None, params) and
  one device samples.
  """
  n = jax.local_device_count()
  batch_size = batch_size or config.sampling.batch_size
  if n < 2 or jax.process_count() > 1 or batch_size % n:
    return None, params
  mesh = make_mesh(jax.local_devices())
  return mesh, jax.device_put(params, NamedSharding(mesh, P()))


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
