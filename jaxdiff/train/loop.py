"""The training loop: jitted dispatches of `train.step` with periodic hooks
(`train.hooks`: console, metrics, checkpoints, samples) around them.

    state = jaxdiff.train.train_and_evaluate(config, workdir)

The config becomes typed `Settings` once, here; nothing below sees it.
"""
from __future__ import annotations

import contextlib
import functools
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
from jaxdiff import pretrained as pretrained_lib
from jaxdiff import trained as trained_lib
from jaxdiff import workdir as workdir_lib
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
  return data_lib.config_split(d, d.split, d.limit)


class StopFlag:
  """Turns SIGTERM/SIGINT into a request to stop after the current step
  (with several processes, at the next step they agree on: `StopAgreement`).

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


class StopAgreement:
  """When the training loop stops on a stop request (`StopFlag`).

  One process stops as soon as it is asked to: `stopping` is its own
  `stop.requested`, read when the loop looks, without a collective.

  Several processes must stop after the same step and save the same
  checkpoint, but a signal reaches each at its own time (or only one). They
  exchange their requests (`distributed.any_process`, a collective that
  waits for the devices and the other hosts) only before the first dispatch
  and after each dispatch that reaches a multiple of `every`. In between,
  `stopping` stays False without waiting on anything, so the host keeps
  dispatching ahead of the devices. The price is the stop latency: a stop
  takes effect up to `every` steps after the request (one dispatch, if
  that is longer). The training loop passes
  `config.training.stop_sync_every`, by default `log_every`, steps at which
  it waits for the metrics anyway; on a cluster keep that many steps well
  within the grace period between SIGTERM and the kill.

  When the processes agree to stop, `stop.requested` is set on every
  process, so the code after the loop decides the same everywhere.
  """

  def __init__(self, stop: StopFlag, every: int = 1):
    if every < 1:
      raise ValueError(f"StopAgreement: every={every} must be >= 1.")
    self.stop, self.every = stop, every
    self.one_process = jax.process_count() == 1
    self.agreed = False

  def update(self, step: int, n: int) -> None:
    """Called after the dispatch of `n` steps that ended at `step` (`n` = 0:
    before the first). On several processes at an agreement step, every
    process must call it (a collective)."""
    if self.one_process or not (n == 0 or step % self.every < n):
      return
    self.agreed = distributed.any_process(self.stop.requested)
    if self.agreed:
      self.stop.requested = True

  @property
  def stopping(self) -> bool:
    """Whether the loop stops after the current dispatch (the same on every
    process)."""
    return self.stop.requested if self.one_process else self.agreed


def run_loop(state: TrainState, dispatch: Dispatch,
             hooks: Sequence[hooks_lib.Hook], *, total: int,
             per_dispatch: int, max_nonfinite: int, stop: StopFlag,
             ckpt, agree_every: int = 1) -> Tuple[TrainState, int]:
  """Trains from `state.step` to `total`, calling the hooks when due.

  The metrics stay on the devices until a hook due at a step needs them;
  then they are summarised, checked (`check_finite`) and handed to every
  hook due. A stop request ends the loop after the current dispatch on one
  process; on several, every process ends after the same dispatch, the
  first after the request that reaches a multiple of `agree_every`
  (`StopAgreement`). The hooks due at that step run, except those that do
  not `run_when_stopping`.

  Returns:
    (the last state, its step).
  """
  step = int(state.step)
  agreement = StopAgreement(stop, agree_every)
  agreement.update(step, 0)
  pending = []
  while step < total and not agreement.stopping:
    n = min(per_dispatch, total - step)
    state, metrics = dispatch(state, n)
    step += n
    pending.append(metrics)
    agreement.update(step, n)
    due = [hook for hook in hooks if hook.due(step, n, total)
           and (hook.run_when_stopping or not agreement.stopping)]
    record = None
    if any(hook.needs_record for hook in due):
      record, pending = summarise(pending), []
      check_finite(record, step, max_nonfinite, ckpt)
    for hook in due:
      hook(step, state, record)
  return state, step


def _init_fn(s: Settings, model, tx, target: TrainState,
             replicated: NamedSharding) -> Callable[[], TrainState]:
  """The fresh state of a new run: random, or with `config.init_from`'s
  pretrained weights as parameters and EMA (fine-tuning)."""
  init = jax.jit(lambda: init_state(model, tx, run_keys(s.seed)[0],
                                    s.data.image_shape),
                 out_shardings=replicated)
  shipped = pretrained_lib.for_config(s)
  if shipped is None:
    return init
  params = shipped[0]
  pretrained_lib.check_shapes(params, target.params, s.init_from)

  def init_pretrained() -> TrainState:
    p = jax.device_put(params, replicated)
    if distributed.is_main():
      print(f"jaxdiff: starting from {s.init_from}.", flush=True)
    return init().replace(params=p,
                          ema_params=jax.tree.map(lambda a: a.copy(), p))
  return init_pretrained


def _initial_state(ckpt, target, init: Callable[[], TrainState]
                   ) -> TrainState:
  """The newest readable checkpoint (unreadable ones set aside), else
  `init()`.

  Raises:
    CheckpointError: the checkpoint holds NaN/Inf (saved by an older version
      from a diverged run); the message says what to do.
  """
  if ckpt.latest_step() is None:
    return init()
  state = ckpt.restore(target)
  if ckpt.unreadable:
    ckpt.set_aside_unreadable(move=distributed.is_main())
    distributed.sync("jaxdiff_set_aside")
    ckpt.reload()
  trained_lib.refuse_nonfinite(
      (state.params, state.ema_params, state.opt_state), int(state.step),
      ckpt.directory, "parameters, EMA or optimiser state")
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


def _hooks(s: Settings, workdir: str, ckpt, config_json: dict, apply_fn,
           process, mesh, step: int) -> List[hooks_lib.Hook]:
  """Clock, log, progress bar, checkpoints and samples, in this order."""
  tc = s.training
  console = hooks_lib.Console(tc.num_train_steps, step)
  clock = hooks_lib.Clock(console, tc.batch_size, step)
  log = hooks_lib.Log(workdir, tc.log_every, tc.num_train_steps,
                      lr_schedule(tc), clock, console, initial=step)
  return [clock, log, console,
          hooks_lib.Save(ckpt, tc.checkpoint_every, config_json, console),
          hooks_lib.Sample(s, workdir, apply_fn, process, mesh, clock,
                           board=log.board)]


def _announce(s: Settings, ds, n_params: int) -> None:
  if distributed.is_main():
    print(f"jaxdiff: model {s.model.name} with {n_params:,} parameters; "
          f"{len(ds.images)} training images of {ds.images.shape[1:]}; "
          f"{jax.device_count()} device(s) ({jax.devices()[0].platform}) on "
          f"{jax.process_count()} process(es).", flush=True)


@contextlib.contextmanager
def _training_lock(workdir: str):
  """Holds `workdir`'s lock while training (`jaxdiff.workdir.Lock`).

  Process 0 takes it (the processes of one run share the workdir); when it
  cannot, every process raises.
  """
  lock, error = workdir_lib.Lock(workdir), None
  if distributed.is_main():
    try:
      lock.acquire()
    except workdir_lib.WorkdirError as e:
      error = e
  if distributed.any_process(error is not None):
    raise error or workdir_lib.WorkdirError(
        f"Process 0 could not lock --workdir {workdir}; see its error.")
  try:
    yield lock
  finally:
    lock.release()


def resume_config(config, workdir: str, allow_changes: bool = False) -> dict:
  """The run's config JSON, checked against the one `workdir` was trained
  with; process 0 then writes it to `<workdir>/config.json`.

  A workdir with a checkpoint is resumed. Its saved config
  (`<workdir>/config.json`, else the newest checkpoint's) is compared with
  `config`: every change is printed, and a change of a key that changes
  results (any but `jaxdiff.workdir.RESUMABLE`) is refused unless
  `allow_changes`. Keys the saved config lacks are no change.

  Raises:
    ValueError: naming the changes and what to do; config.json is left as
      it was.
  """
  config_json = config_lib.to_json(config)
  if trained_lib.has_checkpoint(workdir):
    saved = (workdir_lib.read_config(workdir) or ckpt_lib.read_config(
        os.path.join(workdir, "checkpoints")) or {})
    changes = workdir_lib.config_changes(saved, config_json)
    refused = [c for c in changes if not workdir_lib.is_resumable(c[0])]
    if refused and not allow_changes:
      raise ValueError(
          f"--workdir {workdir} holds a run trained with another config: "
          f"{workdir_lib.format_changes(refused)}. Resume with the config it "
          "was trained with, use a fresh --workdir, or pass "
          "--config.training.resume_with_changes=True to go on with these "
          "changes.")
    if changes and distributed.is_main():
      print("jaxdiff: resuming with config changes: "
            f"{workdir_lib.format_changes(changes)}.", flush=True)
  if distributed.is_main():
    workdir_lib.write_config(workdir, config_json)
  return config_json


def _state_bytes(target: TrainState) -> int:
  """Bytes of a state's arrays: about the size of one checkpoint."""
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(target)))


def _check_space(workdir: str, state_bytes: int, keep: int) -> None:
  """Raises WorkdirError unless the disk holds the checkpoints to come.

  Orbax writes a new checkpoint before it deletes the oldest: `keep` + 1
  of them at a time, less those already there, and 1 MiB for the rest.
  """
  ckpt_dir = os.path.join(workdir, "checkpoints")
  there = sum(name.isdigit() for name in os.listdir(ckpt_dir)
              ) if os.path.isdir(ckpt_dir) else 0
  n = max(max(keep, 1) + 1 - there, 1)
  workdir_lib.check_space(workdir, n * state_bytes + 2**20,
                          f"{n} more checkpoint(s) of this model")


def _report_stop(directory: str, resumed: bool, start: int, step: int
                 ) -> None:
  """The last line of a run stopped by a signal (process 0)."""
  if step > start:
    print(f"jaxdiff: stopped by signal at step {step}; checkpoint saved in "
          f"{directory}/{step}. Run the same command to resume.", flush=True)
  elif not resumed:
    print("jaxdiff: stopped by signal before the first step; nothing to "
          "save yet. Run the same command to start again.", flush=True)
  else:
    print(f"jaxdiff: stopped by signal before the first step; nothing new "
          f"to save (checkpoint {start} in {directory} is unchanged). "
          "Run the same command to resume.", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains per config, writing checkpoints, metrics and samples to workdir.

  Resumes from the newest readable checkpoint in `<workdir>/checkpoints`
  (with the config it was trained with: `resume_config`). Holds the
  workdir's lock (`jaxdiff.workdir.Lock`) from the start: a second run on
  it fails at once. A stop signal (SIGTERM, Ctrl-C) from the start on ends
  the run after the current step with a checkpoint, or before the first
  with nothing saved; with several processes, after the first step past
  the signal that is a multiple of `stop_sync_every` (default `log_every`;
  `StopAgreement`), the
  same on every process. Every process of a multi-host run calls this;
  process 0 writes the logs, metrics.jsonl, loss.png, config.json and
  sample grids.

  Args:
    config: the run's config (see configs/base.py; `Settings` also do).
    workdir: the run directory.

  Returns:
    The final TrainState (replicated over every device).

  Raises:
    ValueError / FileNotFoundError: bad config or data, or a resume with a
      config that changes results (the message says what to change).
    WorkdirError: the workdir is a file, cannot be written, lacks the space
      for a checkpoint, or is in use by another training run.
    CheckpointError: the checkpoints in workdir do not fit the model or
      hold NaN/Inf.
    TrainingError: `max_nonfinite` non-finite steps in a row, or a last
      state after non-finite steps; the checkpoints written before stay as
      they were.
  """
  with StopFlag() as stop:
    s = config_lib.typed(config)
    s.training.validate()
    config_lib.check_model(s)
    workdir_lib.prepare(workdir, create=True)
    with _training_lock(workdir):
      config_json = resume_config(config, workdir,
                                  s.training.resume_with_changes)
      return _train(s, workdir, config_json, stop)


def _train(s: Settings, workdir: str, config_json: dict,
           stop: StopFlag) -> TrainState:
  """`train_and_evaluate` in a prepared, locked workdir."""
  tc = s.training
  model = config_lib.build_model(s)
  process = config_lib.build_process(s)  # Registers its own samplers.
  trained_lib.check_sampler(s.sampling.method, s.sampling.grid)
  s.sampling.validate()
  tx = make_optimizer(tc)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  target = abstract_state(model, tx, s.data.image_shape, replicated)
  _check_space(workdir, _state_bytes(target), tc.keep_checkpoints)
  ds = load_train_data(s.data)
  check_batch(tc.batch_size, jax.device_count(), len(ds.images))
  apply_fn = make_apply_fn(model)
  _announce(s, ds, count_params(target.params))
  init = _init_fn(s, model, tx, target, replicated)

  with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                             max_to_keep=tc.keep_checkpoints) as ckpt:
    state = _initial_state(ckpt, target, init)
    hooks_lib.unsaved_reason(state)  # Compiles the NaN/Inf check untimed.
    start, resumed = int(state.step), ckpt.latest_step() is not None
    dispatch = _dispatcher(s, ds, apply_fn, tx, process, mesh)
    hooks = _hooks(s, workdir, ckpt, config_json, apply_fn, process, mesh,
                   start)
    try:
      state, step = run_loop(
          state, dispatch, hooks, total=tc.num_train_steps,
          per_dispatch=tc.steps_per_dispatch,
          max_nonfinite=tc.max_nonfinite, stop=stop, ckpt=ckpt,
          agree_every=tc.stop_sync_every or tc.log_every)
      if step > start or not stop.requested:
        for hook in hooks:
          hook.finish(step, state)
    finally:
      for hook in hooks:
        hook.close()
  if distributed.is_main():
    hooks_lib.write_loss_curve(workdir)
    if stop.requested:
      _report_stop(ckpt.directory, resumed, start, step)
  return state
