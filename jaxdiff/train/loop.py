"""The training loop: jitted dispatches of `train.step` with periodic hooks
(`train.hooks`: console, metrics, checkpoints, samples) around them.

    state = jaxdiff.train.train_and_evaluate(config, workdir)

The config becomes typed `Settings` once, here; nothing below sees it.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import distributed
from jaxdiff import trained as trained_lib
from jaxdiff.settings import DataSettings, Settings
from jaxdiff.train import hooks as hooks_lib
from jaxdiff.train.state import (TrainState, TrainingError, abstract_state,
                                 count_params, init_state, lr_schedule,
                                 make_apply_fn, make_mesh, make_optimizer,
                                 run_keys)
from jaxdiff.train.step import make_train_fn

# (state, n) -> (state, metrics) of n train steps.
Dispatch = Callable[[TrainState, int], Tuple[TrainState, Dict[str, Any]]]


def check_batch(batch_size: int, n_devices: int, n_images: int):
  """Raises ValueError unless the batch splits over the devices and the
  data set holds at least one batch."""
  if batch_size % n_devices:
    raise ValueError(
        f"config.training.batch_size={batch_size} is not divisible by the "
        f"{n_devices} devices; use a multiple of {n_devices}.")
  if n_images < batch_size:
    raise ValueError(f"The data set has {n_images} images, fewer than "
                     f"config.training.batch_size={batch_size}.")


def load_train_data(d: DataSettings) -> data_lib.Dataset:
  """The training images (uint8 [N, H, W, C]) and labels of `d`."""
  ds = data_lib.load(d.name, d.split, data_dir=d.data_dir or None,
                     limit=d.limit or None)
  _, h, w, c = ds.images.shape
  if (h, w, c) != d.image_shape:
    raise ValueError(
        f"Data set {d.name!r} has images {h}x{w}x{c} but the config asks for "
        f"{d.image_size}x{d.image_size}x{d.channels}; set "
        "config.data.image_size / config.data.channels.")
  return ds


class StopFlag:
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


def summarise(pending: List[Dict[str, Any]]) -> Dict[str, float]:
  """Host copies of per-dispatch metrics -> one record (nonfinite: max)."""
  host = jax.device_get(pending)
  record = {k: float(np.mean([m[k] for m in host])) for k in host[0]
            if k != "nonfinite"}
  record["nonfinite"] = int(max(int(m["nonfinite"]) for m in host))
  return record


def check_finite(record: Dict[str, float], step: int, max_nonfinite: int,
                 ckpt) -> None:
  """Raises TrainingError after `max_nonfinite` non-finite steps in a row."""
  if record["nonfinite"] < max_nonfinite:
    return
  last = ckpt.latest_step()
  where = (f"the last good checkpoint is step {last} in {ckpt.directory}"
           if last is not None else "no checkpoint was written")
  raise TrainingError(
      f"{record['nonfinite']} non-finite (NaN/Inf) steps in a row before "
      f"step {step}; stopped without saving them and {where}. Lower "
      "config.training.lr or set config.training.grad_clip, and check the "
      "data for NaNs.")


def run_loop(state: TrainState, dispatch: Dispatch,
             hooks: Sequence[hooks_lib.Hook], *, total: int,
             per_dispatch: int, max_nonfinite: int, stop: StopFlag,
             ckpt) -> Tuple[TrainState, int]:
  """Trains from `state.step` to `total`, calling the hooks when due.

  The metrics stay on the devices until a hook due at a step needs them;
  then they are summarised, checked (`check_finite`) and handed to every
  hook due. A stop request (on any process) ends the loop before the next
  dispatch.

  Returns:
    (the last state, its step).
  """
  step = int(state.step)
  pending = []
  while step < total:
    if distributed.any_process(stop.requested):
      break
    n = min(per_dispatch, total - step)
    state, metrics = dispatch(state, n)
    step += n
    pending.append(metrics)
    due = [hook for hook in hooks if hook.due(step, n, total)]
    record = None
    if any(hook.needs_record for hook in due):
      record, pending = summarise(pending), []
      check_finite(record, step, max_nonfinite, ckpt)
    for hook in due:
      hook(step, state, record)
  return state, step


def _initial_state(ckpt, target, init: Callable[[], TrainState]
                   ) -> TrainState:
  """The newest readable checkpoint (unreadable ones set aside), else
  `init()`."""
  if ckpt.latest_step() is None:
    return init()
  state = ckpt.restore(target)
  if ckpt.unreadable:
    ckpt.set_aside_unreadable(move=distributed.is_main())
    distributed.sync("jaxdiff_set_aside")
    ckpt.reload()
  if distributed.is_main():
    print(f"jaxdiff: resumed from step {int(state.step)}.", flush=True)
  return state


def _dispatcher(s: Settings, ds, apply_fn, tx, process, mesh) -> Dispatch:
  """`dispatch(state, n)`: n steps on the data set, replicated on the mesh
  (one jitted function per n)."""
  replicated = NamedSharding(mesh, P())
  images = distributed.replicate(ds.images, replicated)
  labels = distributed.replicate(ds.labels.astype(np.int32), replicated)
  train_fn = functools.lru_cache(maxsize=None)(
      lambda n: make_train_fn(s, apply_fn, tx, process, mesh, length=n))
  return lambda state, n: train_fn(n)(state, images, labels)


def _hooks(s: Settings, workdir: str, ckpt, config_json: dict, stop,
           apply_fn, process, mesh, step: int) -> List[hooks_lib.Hook]:
  """Clock, log, progress bar, checkpoints and samples, in this order."""
  tc = s.training
  console = hooks_lib.Console(tc.num_train_steps, step)
  clock = hooks_lib.Clock(console, tc.batch_size, step)
  return [clock,
          hooks_lib.Log(workdir, tc.log_every, tc.num_train_steps,
                        lr_schedule(tc), clock, console),
          console,
          hooks_lib.Save(ckpt, tc.checkpoint_every, config_json, console),
          hooks_lib.Sample(s, workdir, apply_fn, process, mesh, stop, clock)]


def _announce(s: Settings, ds, n_params: int) -> None:
  if distributed.is_main():
    print(f"jaxdiff: model {s.model.name} with {n_params:,} parameters; "
          f"{len(ds.images)} training images of {ds.images.shape[1:]}; "
          f"{jax.device_count()} device(s) ({jax.devices()[0].platform}) on "
          f"{jax.process_count()} process(es).", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains per config, writing checkpoints, metrics and samples to workdir.

  Resumes from the newest readable checkpoint in `<workdir>/checkpoints`.
  Every process of a multi-host run calls this; process 0 writes the logs,
  metrics.jsonl, loss.png, config.json and sample grids.

  Args:
    config: the run's config (see configs/base.py; `Settings` also do).
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
  s = config_lib.typed(config)
  tc = s.training.validate()
  model = config_lib.build_model(s)
  process = config_lib.build_process(s)  # Registers its own samplers.
  trained_lib.check_sampler(s.sampling.method, s.sampling.grid)
  s.sampling.validate()
  tx = make_optimizer(tc)
  os.makedirs(workdir, exist_ok=True)
  ds = load_train_data(s.data)
  mesh = make_mesh()
  check_batch(tc.batch_size, jax.device_count(), len(ds.images))
  apply_fn = make_apply_fn(model)
  replicated = NamedSharding(mesh, P())
  target = abstract_state(model, tx, s.data.image_shape, replicated)
  _announce(s, ds, count_params(target.params))
  config_json = config_lib.to_json(config)
  init = jax.jit(lambda: init_state(model, tx, run_keys(s.seed)[0],
                                    s.data.image_shape),
                 out_shardings=replicated)

  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             max_to_keep=tc.keep_checkpoints) as ckpt:
    state = _initial_state(ckpt, target, init)
    if distributed.is_main():
      with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_json, f, indent=2)
    dispatch = _dispatcher(s, ds, apply_fn, tx, process, mesh)
    with StopFlag() as stop:
      hooks = _hooks(s, workdir, ckpt, config_json, stop, apply_fn, process,
                     mesh, int(state.step))
      try:
        state, step = run_loop(
            state, dispatch, hooks, total=tc.num_train_steps,
            per_dispatch=tc.steps_per_dispatch,
            max_nonfinite=tc.max_nonfinite, stop=stop, ckpt=ckpt)
        for hook in hooks:
          hook.finish(step, state)
      finally:
        for hook in hooks:
          hook.close()
  if distributed.is_main():
    hooks_lib.write_loss_curve(workdir)
    if stop.requested:
      print(f"jaxdiff: stopped by signal at step {step}; checkpoint saved in "
            f"{ckpt.directory}/{step}. Run the same command to resume.",
            flush=True)
  return state
