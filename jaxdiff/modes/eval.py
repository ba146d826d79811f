"""`--mode eval`: the feature-space Frechet distance
(`jaxdiff.feature_distance`) of `config.eval.num_samples` samples drawn with
`config.sampling` (method, steps, grid) from the newest checkpoint.

Writes `<workdir>/eval_<method>_<steps>.json` and, beside it, a grid of the
first (up to) 64 scored samples `eval_<method>_<steps>.png`; the numbers
go to TensorBoard too (`<workdir>/tensorboard/eval`, scalars
`<method>_<steps>/fd`, ... at the checkpoint step). The feature
classifier is cached in `<config.eval.cache_dir or workdir/cache>/
classifier_<dataset>/`.
"""
import os
import time
from typing import Any, Callable, Dict, List

import jax
import numpy as np

from jaxdiff import data as data_lib
from jaxdiff import feature_distance
from jaxdiff import files
from jaxdiff import settings as settings_lib
from jaxdiff import tensorboard
from jaxdiff import trained as trained_lib
from jaxdiff import viz


# The result's numbers that go to TensorBoard (absent ones are left out).
_BOARD_KEYS = ("fd", "floor", "confidence", "real_confidence",
               "label_agreement", "images_per_second")


class _TimedSampleFn:
  """Wraps a sample function, recording the wall time of each call (the
  first includes compilation)."""

  def __init__(self, fn: Callable):
    self.fn = fn
    self.seconds: List[float] = []

  def __call__(self, *args):
    t0 = time.time()
    out = jax.block_until_ready(self.fn(*args))
    self.seconds.append(time.time() - t0)
    return out


def run(config, workdir: str) -> Dict[str, Any]:
  """Samples from the trained model and scores them; writes a JSON file.

  Returns:
    The result dict written to `<workdir>/eval_<method>_<steps>.json`.
  """
  s = settings_lib.from_config(config)
  es, sc = s.eval.validate(), s.sampling
  n = es.num_samples
  data_dir = s.data.data_dir or None
  trained = trained_lib.restore(s, workdir, use_ema=sc.use_ema)
  sample_fn = _TimedSampleFn(trained.sample_fn())
  labels = None
  if s.training.conditional:
    labels = np.arange(n) % s.data.num_classes
  t0 = time.time()
  samples = trained.generate(jax.random.key(es.seed), n, labels,
                             sample_fn=sample_fn)
  sample_seconds = time.time() - t0

  test = data_lib.load(s.data.name, "test", data_dir=data_dir,
                       **s.data.load_kwargs())
  train = data_lib.load(s.data.name, "train", data_dir=data_dir,
                        **s.data.load_kwargs())
  clf = feature_distance.load_or_train_classifier(
      os.path.join(es.cache_dir or os.path.join(workdir, "cache"),
                   f"classifier_{s.data.name}"),
      es, dataset=s.data.name, train=train, test=test)
  result = feature_distance.sample_quality(
      clf, samples, test.images,
      feature_distance.floor_images(train.images, n, es.seed), labels=labels,
      batch_size=es.feature_batch_size)
  later = sample_fn.seconds[1:]
  result.update(
      dataset=s.data.name, step=trained.step, method=sc.method,
      steps=int(sc.steps), grid=sc.grid,
      sample_seconds=sample_seconds,
      first_batch_seconds=sample_fn.seconds[0],  # includes compilation
      images_per_second=(sc.batch_size * len(later) / sum(later)
                         if later else None),
      classifier_test_accuracy=clf.test_accuracy,
      classifier_path=clf.path)
  name = os.path.join(workdir, f"eval_{sc.method}_{sc.steps}")
  result["grid"] = viz.save_grid(name + ".png", np.asarray(samples)[:64])
  files.write_json(name + ".json", result)
  with tensorboard.Writer.for_mode(workdir, "eval") as board:
    board.scalars(trained.step, {k: result.get(k) for k in _BOARD_KEYS},
                  prefix=f"{sc.method}_{sc.steps}/")
  print(f"jaxdiff: eval {sc.method}/{sc.steps} at step {trained.step}: "
        f"FD {result['fd']:.3f} (floor {result['floor']:.3f}), confidence "
        f"{result['confidence']:.3f}, histogram {result['histogram']}, "
        f"{sample_seconds:.1f} s for {n} samples -> {name}.json", flush=True)
  return result
