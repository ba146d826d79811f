"""`--mode sample`: a sample grid (one row per class when conditional) and
the images as an npz, from the newest checkpoint; the grid also goes to
TensorBoard (`<workdir>/tensorboard/sample`, image `<method>_<steps>`)."""
import os

import jax
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff import files
from jaxdiff import settings as settings_lib
from jaxdiff import tensorboard
from jaxdiff import trained as trained_lib
from jaxdiff import viz


def class_rows(s: settings_lib.Settings):
  """(labels [num], row names) of a conditional grid; (None, None) else."""
  sc = s.sampling
  if not s.training.conditional:
    return None, None
  classes = sc.class_list() or list(range(s.data.num_classes))
  per_class = max(1, sc.num_samples // len(classes))
  labels = np.repeat(np.asarray(classes), per_class)
  names = data_lib.class_names(s.data.name)
  rows = [names[c] if names and c < len(names) else str(c) for c in classes]
  return labels, rows


def run(config, workdir: str):
  s = settings_lib.from_config(config)
  sc = s.sampling.validate()
  trained_lib.check_sampler(sc.method, sc.grid)
  trained = trained_lib.restore(s, workdir, use_ema=sc.use_ema)
  labels, rows = class_rows(s)
  num = len(labels) if labels is not None else sc.num_samples
  images = trained.generate(jax.random.key(s.seed + 1), num, labels)
  name = f"samples_{sc.method}_{sc.steps}"
  out = os.path.join(workdir, name + ".png")
  ncol = (num // len(rows)) if rows else None
  viz.save_grid(out, images, ncol=ncol, row_labels=rows)
  with tensorboard.Writer.for_mode(workdir, "sample") as board:
    board.image(trained.step, f"{sc.method}_{sc.steps}",
                viz.make_grid(images, ncol=ncol))
  with files.atomic_write(os.path.join(workdir, name + ".npz")) as f:
    np.savez_compressed(f, images=viz.to_uint8(images),
                        labels=labels if labels is not None else np.zeros(0))
  print(f"jaxdiff: {num} samples from step {trained.step} ({sc.method}, "
        f"{sc.steps} steps) -> {out}")
