"""The command line's modes, by name: an explicit table of `jaxdiff/modes/`.

`main(config, workdir, mode)` is what `launch.py` calls. Each mode is a
module of `jaxdiff/modes/` with a `run(config, workdir)`; errors a user can
fix, file-system faults among them (read-only, disk full, a file where a
directory belongs), are printed as one line.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import distributed
from jaxdiff import workdir as workdir_lib
from jaxdiff.train import TrainingError

# Mode name -> the module of `jaxdiff/modes/` whose `run(config, workdir)`
# carries it out. Adding a mode is one file there and one line here.
MODES = {
    "train": "jaxdiff.modes.train",
    "sample": "jaxdiff.modes.sample",
    "denoise": "jaxdiff.modes.denoise",
    "eval": "jaxdiff.modes.eval",
    "classify": "jaxdiff.modes.classify",
    "viz": "jaxdiff.modes.viz",
    "likelihood": "jaxdiff.modes.likelihood",
    "demo": "jaxdiff.modes.demo",
}


def mode_fn(mode: str):
  """The `run(config, workdir)` function of a mode."""
  if mode not in MODES:
    raise ValueError(f"Unknown --mode {mode!r}; use one of: "
                     f"{', '.join(MODES)}.")
  return importlib.import_module(MODES[mode]).run


# Errors whose message says what to do, in the order they are looked for:
# these first, then a file-system fault anywhere in the chain of causes
# (`workdir.os_error_in`), then bad values.
_RUN_ERRORS = (ckpt_lib.CheckpointError, TrainingError,
               workdir_lib.WorkdirError)
_VALUE_ERRORS = (ValueError, FileNotFoundError)


def fail(message: str, code: int = 2):
  """Prints `jaxdiff: error: <message>` as one line on stderr and exits."""
  text = " ".join(str(message).split())
  print(f"jaxdiff: error: {text}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv):
  """absl flag parsing whose errors are one line saying what to fix.

  For `app.run(main, flags_parser=parse_flags)`: an unknown config key
  (`--config.training.batchsize=8`), a value of the wrong type or a config
  file that cannot be loaded otherwise end in a traceback or a two-line absl
  message (`config.config_error` words them, as for the benchmarks).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  fix = ("See --helpfull for the flags; the config keys and their types are "
         "in configs/base.py.")
  try:
    args = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      flags.FLAGS.config.get("seed")  # Loading is lazy: fail here, clearly.
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    text = config_lib.config_error(e, argv[1:], fix)
    if isinstance(e, OSError):
      text += (". Give a config file, e.g. --config "
               "configs/organamnist.py:tiny.")
    fail(text)
  return args


def check_workdir(config, workdir: str, mode: str) -> None:
  """Before a mode that reads a run: the workdir is a directory (or absent)
  that takes the mode's files, and a note when a run is training there.

  Training checks and locks its workdir itself (`train.train_and_evaluate`).

  Raises:
    WorkdirError: the workdir is a file, or read-only, full or not writable
      for this user, or the config gives the run's network another meaning
      (`workdir.MEANING`: prediction, process, conditioning) than it was
      trained with.
  """
  if mode == "train":
    return
  if config.get("init_from"):  # A shipped model: the workdir takes outputs.
    workdir_lib.prepare(workdir, create=True)
    return
  saved = workdir_lib.read_config(workdir) if os.path.isdir(workdir) else None
  changes = workdir_lib.meaning_changes(saved or {}, config_lib.to_json(config))
  if changes:
    fix = " ".join(f"--config.{k}={json.dumps(a)}" for k, a, _ in changes)
    raise workdir_lib.WorkdirError(
        f"The run in {workdir} was trained with other settings "
        f"({workdir_lib.format_changes(changes)}; saved -> given); pass the "
        f"run's own: {fix}")
  elsewhere = mode in ("denoise", "likelihood") and bool(
      (config.get(mode) or {}).get("out_dir"))
  workdir_lib.prepare(workdir, create=False, writable=not elsewhere)
  holder = workdir_lib.training_holder(workdir)
  if holder and distributed.is_main():
    print(f"jaxdiff: training is running in {workdir} ({holder}); using its "
          "newest checkpoint.", flush=True)


class _NoFileSystemTracebacks(logging.Filter):
  """Background writers (Orbax's save thread) log a file-system fault with
  its traceback before it reaches `main`, which prints it as one line: their
  log line keeps the message and drops the traceback."""

  def filter(self, record):
    exc = record.exc_info[1] if record.exc_info else None
    os_error = workdir_lib.os_error_in(exc) if exc is not None else None
    if os_error is not None:
      record.msg = f"{record.getMessage()} ({os_error.strerror})"
      record.args, record.exc_info, record.exc_text = (), None, None
    return True


_FILE_SYSTEM_FILTER = _NoFileSystemTracebacks()


def main(config, workdir, mode):
  """Runs a mode; user errors become one line on stderr and exit code 2."""
  logging.getLogger("absl").addFilter(_FILE_SYSTEM_FILTER)  # Once.
  try:
    distributed.set_cpu_devices(config.get("cpu_devices", 0),
                                config.training.batch_size)
    distributed.initialize()
    run = mode_fn(mode)
    check_workdir(config, workdir, mode)
    return run(config, workdir)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, _RUN_ERRORS):
      fail(str(e))
    os_error = workdir_lib.os_error_in(e)
    if os_error is not None:
      fail(workdir_lib.describe_os_error(os_error, workdir))
    if isinstance(e, _VALUE_ERRORS):
      fail(str(e))
    raise
