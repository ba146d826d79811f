"""The training loop's periodic hooks: console, metrics, checkpoints, samples.

A hook is called by the loop as `hook(step, state, record)` after each
dispatch that reaches a multiple of its period `every` (0: never) and, with
`at_end`, after the last one. `record` summarises the metrics since the last
summary (host floats); it is None unless a hook due at this step
`needs_record`. A hook without `run_when_stopping` is skipped at the step
where a stop request ends the loop. Every process calls every hook; only
process 0 writes files and prints.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np

from jaxdiff import distributed
from jaxdiff import files
from jaxdiff import tensorboard as tensorboard_lib
from jaxdiff import trained as trained_lib
from jaxdiff.settings import Settings
from jaxdiff.train.state import TrainingError, run_keys

Record = Optional[Dict[str, float]]


class Hook:
  """A periodic action of the training loop (see the module docstring)."""
  every: int = 0
  at_end: bool = False
  needs_record: bool = True
  run_when_stopping: bool = True

  def due(self, step: int, n: int, total: int) -> bool:
    """Whether the dispatch of `n` steps that ended at `step` reached a
    multiple of `every` (or, with `at_end`, the last step `total`)."""
    return ((bool(self.every) and step % self.every < n)
            or (self.at_end and step >= total))

  def __call__(self, step: int, state, record: Record) -> None:
    raise NotImplementedError

  def finish(self, step: int, state) -> None:
    """Called once when the loop has ended without an error."""

  def close(self) -> None:
    """Called once after the loop, also when it raised."""


class Console(Hook):
  """The progress bar (advanced after every dispatch) and console lines."""
  every = 1
  needs_record = False

  def __init__(self, total: int, initial: int):
    self.main = distributed.is_main()
    self.bar = None
    if self.main:
      try:
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True,
                        desc="train", mininterval=1.0, file=sys.stderr)
      except ImportError:
        pass

  def line(self, text: str) -> None:
    """Prints a line on process 0 (above the bar, if there is one)."""
    if not self.main:
      return
    if self.bar is not None:
      self.bar.write(text, file=sys.stdout)
    else:
      print(text, flush=True)
    sys.stdout.flush()

  def __call__(self, step, state, record):
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      if record is not None:
        self.bar.set_postfix(loss=f"{record['loss']:.4f}")

  def close(self):
    if self.bar is not None:
      self.bar.close()


class Clock(Hook):
  """Seconds per training step, compilation and sampling left out.

  After the first dispatch (which compiles) it waits for the result and
  prints how long that took; timing starts from there, and `restart`
  leaves out time spent on something else (sampling).
  """
  every = 1
  needs_record = False

  def __init__(self, console: Console, batch_size: int, initial_step: int):
    self.console = console
    self.batch_size = batch_size
    self.started = time.time()
    self.t, self.step = None, initial_step

  def restart(self, step: int) -> None:
    self.t, self.step = time.time(), step

  def __call__(self, step, state, record):
    if self.t is not None:
      return
    jax.block_until_ready(state)
    self.console.line(f"jaxdiff: compiled and ran the first "
                      f"{step - self.step} step(s) in "
                      f"{time.time() - self.started:.1f} s.")
    self.restart(step)

  def stamp(self, record: Dict[str, float], step: int) -> None:
    """Adds s_per_step and images_per_s since the last stamp (if any)."""
    now = time.time()
    timed = step - self.step
    if timed > 0:
      record["s_per_step"] = (now - self.t) / timed
      record["images_per_s"] = timed * self.batch_size / max(now - self.t,
                                                             1e-9)
    self.restart(step)


def log_line(record: Dict[str, float], total: int) -> str:
  """`jaxdiff: step 200/1000 | loss 0.0412 | 0.035 s/step | 3657 img/s`."""
  parts = [f"jaxdiff: step {record['step']}/{total}",
           f"loss {record['loss']:.4f}"]
  if "s_per_step" in record:
    parts += [f"{record['s_per_step']:.4f} s/step",
              f"{record['images_per_s']:.0f} img/s"]
  if record.get("skipped"):
    parts.append(f"skipped {record['skipped']:.0%} (non-finite)")
  return " | ".join(parts)


def drop_records_after(path: str, step: int) -> int:
  """Rewrites a metrics file without the records of steps after `step`.

  A run killed after its last checkpoint logged steps that its resumed run
  logs again; dropping them keeps each step once. Lines that are not a
  record (one cut short by the kill) go too. The file is replaced
  atomically (a temporary file, then a rename).

  Returns:
    The number of lines dropped.
  """
  if not os.path.exists(path):
    return 0
  keep, dropped = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      if (isinstance(record, dict)
          and isinstance(record.get("step"), (int, float))
          and record["step"] <= step):
        keep.append(line if line.endswith("\n") else line + "\n")
      elif line.strip():
        dropped += 1
  if dropped:
    files.write_text(path, "".join(keep))
  return dropped


class Log(Hook):
  """Every `log_every` steps and at the end: a line, metrics.jsonl and the
  record's numbers as TensorBoard scalars `train/<key>` (`board`, which
  this hook closes; `Sample` adds its grids to it).

  metrics.jsonl keeps the records up to `initial` (the step the run starts
  from) and gets the new ones appended; TensorBoard drops the older events
  after `initial` likewise.
  """
  at_end = True

  def __init__(self, workdir: str, every: int, total: int,
               lr_at: Callable[[int], Any], clock: Clock, console: Console,
               initial: int = 0):
    self.every, self.total = every, total
    self.lr_at, self.clock, self.console = lr_at, clock, console
    self.file = None
    self.board = tensorboard_lib.Writer.for_training(workdir, initial)
    if distributed.is_main():
      path = os.path.join(workdir, "metrics.jsonl")
      dropped = drop_records_after(path, initial)
      if dropped:
        console.line(f"jaxdiff: dropped {dropped} line(s) past step "
                     f"{initial} from {path} (logged by an earlier run after "
                     "its last checkpoint).")
      self.file = open(path, "a", encoding="utf-8")

  def __call__(self, step, state, record):
    record = dict(record, step=step, lr=float(self.lr_at(step)))
    self.clock.stamp(record, step)
    if self.file is not None:
      self.file.write(json.dumps(record) + "\n")
      self.file.flush()
    self.board.scalars(step, {k: v for k, v in record.items() if k != "step"},
                       prefix="train/")
    self.console.line(log_line(record, self.total))

  def close(self):
    if self.file is not None:
      self.file.close()
    self.board.close()


def unsaved_reason(state) -> Optional[str]:
  """Why `state` must not be saved, or None: non-finite steps just before
  it, or a NaN/Inf in its parameters, EMA or optimiser state."""
  streak = int(state.nonfinite)
  if streak:
    return f"the last {streak} step(s) were non-finite and skipped"
  if not trained_lib.all_finite((state.params, state.ema_params,
                                 state.opt_state)):
    return "its parameters, EMA or optimiser state hold NaN/Inf"
  return None


class Save(Hook):
  """Every `checkpoint_every` steps, a checkpoint of a state right after a
  good step; `finish` saves the last step and waits for the writes.

  A state after non-finite steps, or with a NaN/Inf anywhere, is never
  saved: the periodic save is skipped with a note, and `finish` raises
  TrainingError instead of saving the last step.
  """

  def __init__(self, ckpt, every: int, config_json: dict, console: Console):
    self.ckpt, self.every = ckpt, every
    self.config_json, self.console = config_json, console

  def _last_good(self) -> str:
    last = self.ckpt.latest_step()
    return (f"the last good checkpoint is step {last}" if last is not None
            else "no checkpoint has been written")

  def __call__(self, step, state, record):
    reason = unsaved_reason(state)
    if reason:
      self.console.line(f"jaxdiff: no checkpoint at step {step}: {reason}; "
                        f"{self._last_good()}.")
    else:
      self.ckpt.save(step, state, self.config_json)

  def finish(self, step, state):
    if self.ckpt.latest_step() != step:
      reason = unsaved_reason(state)
      if reason:
        self.ckpt.wait()
        raise TrainingError(
            f"Training ended at step {step} without saving it: {reason}; "
            f"{self._last_good()} in {self.ckpt.directory}. Lower "
            "config.training.lr or set config.training.grad_clip, and check "
            "the data for NaNs.")
      self.ckpt.save(step, state, self.config_json, force=True)
    self.ckpt.wait()


def write_loss_curve(workdir: str) -> None:
  """loss.png from metrics.jsonl."""
  try:
    from jaxdiff import viz  # pylint: disable=g-import-not-at-top
    records = viz.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if records:
      viz.loss_curves(os.path.join(workdir, "loss.png"), records,
                      keys=("loss",))
  except (ImportError, OSError) as e:
    logging.warning("Could not write loss.png: %s", e)


class Sample(Hook):
  """Every `sample_every` steps (not when stopping): a grid of samples in
  `samples/step_XXXXXXX.png` (key: fold_in(sample key, step)), and loss.png;
  with a TensorBoard writer `board`, the grid as its image "train/samples".

  Sampling runs on every process (the computation spans them); with one
  process the batch is split over the training mesh.
  """
  needs_record = False
  run_when_stopping = False

  def __init__(self, s: Settings, workdir: str, apply_fn, process, mesh,
               clock: Clock, board: Optional[tensorboard_lib.Writer] = None):
    self.s, self.workdir, self.clock = s, workdir, clock
    self.board = board
    self.every = s.training.sample_every
    self.sample_fn = trained_lib.make_sample_fn(
        s, apply_fn, process, mesh=mesh if jax.process_count() == 1 else None)
    self.key = run_keys(s.seed)[2]

  def __call__(self, step, state, record):
    from jaxdiff import viz  # pylint: disable=g-import-not-at-top
    sc = self.s.sampling
    params = state.ema_params if sc.use_ema else state.params
    labels = None
    if self.s.training.conditional:
      labels = np.arange(sc.num_samples) % self.s.data.num_classes
    images = trained_lib.generate(
        self.sample_fn, params, jax.random.fold_in(self.key, step),
        sc.num_samples, sc.batch_size, labels)
    if distributed.is_main():
      viz.save_grid(os.path.join(self.workdir, "samples",
                                 f"step_{step:07d}.png"), images)
      if self.board is not None:
        self.board.image(step, "train/samples", viz.make_grid(images))
      write_loss_curve(self.workdir)
    self.clock.restart(step)  # Time training alone.
