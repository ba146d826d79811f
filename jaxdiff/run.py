"""Modes of the command line, by name: train, sample, ... .

`main(config, workdir, mode)` is what `launch.py` calls. Each mode is a
function (config, workdir) registered in MODES; errors a user can fix are
printed as one line.
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import data as data_lib
from jaxdiff import train as train_lib
from jaxdiff.registry import Registry

MODES = Registry("mode")


@MODES.register("train")
def train(config, workdir):
  train_lib.train_and_evaluate(config, workdir)


def restore_params(config, workdir, *, use_ema=True):
  """(model, params, step) from the newest checkpoint in workdir."""
  model = config_lib.build_model(config)
  tx = train_lib.make_optimizer(config.training)
  state = train_lib.init_state(model, tx, jax.random.key(0),
                               train_lib.image_shape(config))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise ckpt_lib.CheckpointError(
        f"No checkpoints in {ckpt_dir}; train first with --mode train "
        "and the same --workdir.")
  ckpt = ckpt_lib.Checkpointer(ckpt_dir)
  state = ckpt.restore(state)
  ckpt.close()
  return model, (state.ema_params if use_ema else state.params), int(state.step)


@MODES.register("sample")
def sample(config, workdir):
  """Writes a sample grid (one row per class when conditional) and an npz."""
  from jaxdiff import viz  # pylint: disable=g-import-not-at-top
  model, params, step = restore_params(config, workdir,
                                       use_ema=config.sampling.use_ema)
  process = config_lib.build_process(config)
  sample_fn = train_lib.make_sample_fn(config, model, process)
  sc = config.sampling
  labels, row_labels = None, None
  num = sc.num_samples
  if config.training.conditional:
    classes = ([int(c) for c in sc.classes.split(",")] if sc.classes
               else list(range(config.data.num_classes)))
    per_class = max(1, num // len(classes))
    labels = np.repeat(np.asarray(classes), per_class)
    num = len(labels)
    row_labels = [str(c) for c in classes]
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


_USER_ERRORS = (ValueError, FileNotFoundError, ckpt_lib.CheckpointError,
                train_lib.TrainingError)


def main(config, workdir, mode):
  """Runs a mode; user errors become one line on stderr and exit code 2."""
  try:
    MODES.get(mode)(config, workdir)
  except _USER_ERRORS as e:
    print(f"jaxdiff: error: {e}", file=sys.stderr)
    sys.exit(2)
