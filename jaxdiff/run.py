"""Modes of the command line, by name: train, sample, ... .

`main(config, workdir, mode)` is what `launch.py` calls. Each mode is a
function (config, workdir) registered in MODES; errors a user can fix are
printed as one line.
"""
from __future__ import annotations

import os
import re
import sys

import jax
import numpy as np

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import distributed
from jaxdiff import train as train_lib
from jaxdiff.registry import Registry

MODES = Registry("mode")


@MODES.register("train")
def train(config, workdir):
  train_lib.train_and_evaluate(config, workdir)


def restore_params(config, workdir, *, use_ema=True):
  """(model, params, step) from the newest readable checkpoint in workdir.

  Raises:
    CheckpointError: no checkpoint, none readable, or one that does not fit
      the model the config describes (the message says what to do).
  """
  model = config_lib.build_model(config)
  tx = train_lib.make_optimizer(config.training)
  target = train_lib.abstract_state(model, tx, train_lib.image_shape(config))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise ckpt_lib.CheckpointError(
        f"No checkpoints in {ckpt_dir}; train first with --mode train "
        "and the same --workdir.")
  with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise ckpt_lib.CheckpointError(
          f"No checkpoints in {ckpt_dir}; train first with --mode train "
          "and the same --workdir.")
    state = ckpt.restore(target)
  return model, (state.ema_params if use_ema else state.params), int(state.step)


@MODES.register("sample")
def sample(config, workdir):
  """Writes a sample grid (one row per class when conditional) and an npz."""
  from jaxdiff import viz  # pylint: disable=g-import-not-at-top
  process = config_lib.build_process(config)
  train_lib.check_sampling(config)
  model, params, step = restore_params(config, workdir,
                                       use_ema=config.sampling.use_ema)
  mesh, params = train_lib.spread_for_sampling(config, params)
  sample_fn = train_lib.make_sample_fn(config, model, process, mesh=mesh)
  sc = config.sampling
  labels, row_labels = None, None
  num = sc.num_samples
  if config.training.conditional:
    classes = ([int(c) for c in sc.classes.split(",")] if sc.classes
               else list(range(config.data.num_classes)))
    per_class = max(1, num // len(classes))
    labels = np.repeat(np.asarray(classes), per_class)
    num = len(labels)
    names = data_lib.class_names(config.data.name)
    row_labels = [names[c] if names and c < len(names) else str(c)
                  for c in classes]
  images = train_lib.generate(config, sample_fn, params,
                              jax.random.key(config.seed + 1), num, labels)
  name = f"samples_{sc.method}_{sc.steps}"
  out = os.path.join(workdir, name + ".png")
  ncol = (num // len(row_labels)) if row_labels else None
  viz.save_grid(out, images, ncol=ncol, row_labels=row_labels)
  np.savez_compressed(os.path.join(workdir, name + ".npz"),
                      images=viz.to_uint8(images),
                      labels=labels if labels is not None else np.zeros(0))
  print(f"jaxdiff: {num} samples from step {step} ({sc.method}, "
        f"{sc.steps} steps) -> {out}")


# Modules that register further modes (denoise, eval, classify, viz) with
# `@MODES.register(...)` from `jaxdiff.run`. Imported on first use.
_MODE_MODULES = ("jaxdiff.inverse", "jaxdiff.evaluation", "jaxdiff.classifier",
                 "jaxdiff.figures")


def load_modes():
  import importlib  # pylint: disable=g-import-not-at-top
  for name in _MODE_MODULES:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise


_USER_ERRORS = (ValueError, FileNotFoundError, ckpt_lib.CheckpointError,
                train_lib.TrainingError)


def fail(message: str, code: int = 2):
  """Prints `jaxdiff: error: <message>` as one line on stderr and exits."""
  text = " ".join(str(message).split())
  print(f"jaxdiff: error: {text}", file=sys.stderr, flush=True)
  sys.exit(code)


def _last_error_line(text: str) -> str:
  """The `SomeError: message` line of an embedded traceback, else the text."""
  lines = [l.strip() for l in str(text).splitlines() if l.strip()]
  errors = [l for l in lines if re.match(r"^[A-Za-z_.]*(Error|Exception):", l)]
  return errors[-1] if errors else (lines[-1] if lines else "")


def parse_flags(argv):
  """absl flag parsing whose errors are one line saying what to fix.

  For `app.run(main, flags_parser=parse_flags)`: an unknown config key
  (`--config.training.batchsize=8`), a value of the wrong type or a config
  file that cannot be loaded otherwise end in a traceback or a two-line absl
  message.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  fix = ("See --helpfull for the flags; the config keys and their types are "
         "in configs/base.py.")
  try:
    args = flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback" in text:  # A config file that raised.
      head = text.split(":", 1)[0]
      fail(f"{head}: {_last_error_line(text)}")
    fail(f"{text.rstrip('.')}. {fix}")
  except (AttributeError, KeyError) as e:  # An unknown config key.
    text = str(e)
    key = re.search(r"'([A-Za-z0-9_]+)", text)
    hint = re.search(r'Did you mean "([A-Za-z0-9_]+)"', text)
    key = key.group(1) if key else text
    culprit = next((a.split("=")[0] for a in argv[1:]
                    if a.startswith("--config.")
                    and key in a.split("=")[0].split(".")[1:]),
                   f"--config...{key}")
    fail(f"Unknown config key {culprit}"
         + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
         + ". The keys are in configs/base.py.")
  if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
    try:
      flags.FLAGS.config.get("seed")  # Loading is lazy: fail here, clearly.
    except (IOError, OSError) as e:
      fail(f"Cannot load the --config file ({_last_error_line(e)}). Give a "
           "config file, e.g. --config configs/organamnist.py:tiny.")
  return args


def main(config, workdir, mode):
  """Runs a mode; user errors become one line on stderr and exit code 2."""
  try:
    distributed.set_cpu_devices(config.get("cpu_devices", 0),
                                config.training.batch_size)
    distributed.initialize()
    load_modes()
    if mode not in MODES:
      raise ValueError(f"Unknown --mode {mode!r}; use one of: "
                       f"{', '.join(MODES.names())}.")
    MODES.get(mode)(config, workdir)
  except _USER_ERRORS as e:
    fail(str(e))
