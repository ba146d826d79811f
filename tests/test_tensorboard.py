"""Tests for jaxdiff.tensorboard: the event files of training and the modes.

Event files are read back without TensorFlow or TensorBoard: the TFRecord
framing (length, masked CRC-32C, data, masked CRC-32C) is parsed here and
the records decoded with the protobuf classes tensorboardX ships.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import logging
import os
import struct
import sys
import tempfile

import jax
import numpy as np
from PIL import Image
import pytest

from configs import organamnist
from jaxdiff import distributed
from jaxdiff import tensorboard as tensorboard_lib
from jaxdiff import train
from jaxdiff import viz
from jaxdiff.modes import sample as sample_mode

record_writer = pytest.importorskip("tensorboardX.record_writer")
event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


@pytest.fixture(scope="module", autouse=True)
def fixture_compile_cache():
  """JAX's persistent compilation cache (shared with tests/test_train.py)."""
  path = os.environ.get("JAXDIFF_TEST_JIT_CACHE") or os.path.join(
      tempfile.gettempdir(), "jaxdiff_test_jit_cache")
  old = jax.config.jax_compilation_cache_dir
  if old is None:
    jax.config.update("jax_compilation_cache_dir", path)
  yield
  jax.config.update("jax_compilation_cache_dir", old)


def read_events(directory):
  """The events of `directory`'s event files (not its subfolders), in file
  order; a record cut short at a file's end ends that file (as TensorBoard
  reads it)."""
  events = []
  for path in sorted(glob.glob(os.path.join(str(directory),
                                            "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      header = data[pos:pos + 8]
      (n,) = struct.unpack("Q", header)
      (header_crc,) = struct.unpack("I", data[pos + 8:pos + 12])
      assert header_crc == record_writer.masked_crc32c(header), path
      if pos + 16 + n > len(data):
        break
      body = data[pos + 12:pos + 12 + n]
      (body_crc,) = struct.unpack("I", data[pos + 12 + n:pos + 16 + n])
      assert body_crc == record_writer.masked_crc32c(body), path
      events.append(event_pb2.Event.FromString(body))
      pos += 16 + n
  return events


def scalars(events):
  """{tag: {step: value}}."""
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, {})[e.step] = v.simple_value
  return out


def images(events):
  """{tag: {step: uint8 array}} (1-channel images as [H, W])."""
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField("image"):
        with Image.open(io.BytesIO(v.image.encoded_image_string)) as img:
          array = np.asarray(img)
        assert array.shape[:2] == (v.image.height, v.image.width)
        out.setdefault(v.tag, {})[e.step] = array
  return out


def _tiny(**training):
  """configs/organamnist.py:tiny on the embedded subset."""
  c = organamnist.get_config("tiny")
  c.data.name = "organamnist_small"
  c.training.log_every = 1
  c.training.sample_every = 0
  c.training.checkpoint_every = 2
  for k, v in training.items():
    c.training[k] = v
  return c


def _train(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()):
    return train.train_and_evaluate(config, str(workdir))


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _png(path):
  with Image.open(path) as img:
    return np.asarray(img)


@pytest.fixture(scope="module", name="run")
def fixture_run(tmp_path_factory):
  """3 steps of the tiny config, logged every step, sampled at step 2."""
  workdir = tmp_path_factory.mktemp("tb")
  config = _tiny(num_train_steps=3, sample_every=2)
  _train(config, workdir)
  return dict(workdir=workdir, config=config)


# ------------------------------------------------------------- training


def test_training_logs_every_metric_and_the_sample_grid(run):
  workdir = run["workdir"]
  events = read_events(workdir / "tensorboard")
  records = _metrics(workdir)
  assert [r["step"] for r in records] == [1, 2, 3]
  got = scalars(events)
  # Every number of every metrics.jsonl line, at its step.
  for r in records:
    for key, value in r.items():
      if key != "step":
        assert got[f"train/{key}"][r["step"]] == pytest.approx(
            np.float32(value), rel=1e-6, abs=1e-12), key
  assert {"train/loss", "train/lr"} <= set(got)
  assert sorted(got["train/loss"]) == [1, 2, 3]
  # The sample grid of step 2: samples/step_0000002.png before its x4
  # upscaling, 1-channel.
  grids = images(events)["train/samples"]
  assert list(grids) == [2]
  png = _png(workdir / "samples" / "step_0000002.png")
  np.testing.assert_array_equal(grids[2], png[::4, ::4])
  # A resumed run would drop the older events after its start (step 0).
  starts = [e.step for e in events if e.HasField("session_log")]
  assert starts == [1]


def test_sample_mode_writes_its_grid(run):
  workdir, config = run["workdir"], run["config"]
  with contextlib.redirect_stdout(io.StringIO()):
    sample_mode.run(config, str(workdir))
  sc = config.sampling
  name = f"{sc.method}_{sc.steps}"
  got = images(read_events(workdir / "tensorboard" / "sample"))
  assert list(got) == [name] and list(got[name]) == [3]  # The checkpoint.
  png = _png(workdir / f"samples_{name}.png")
  np.testing.assert_array_equal(got[name][3], png[::4, ::4])


def test_blocked_tensorboard_folder_warns_once_and_training_goes_on(
    tmp_path, caplog):
  (tmp_path / "tensorboard").write_text("in the way")
  with caplog.at_level(logging.WARNING):
    _train(_tiny(num_train_steps=2), tmp_path)
  assert [r["step"] for r in _metrics(tmp_path)] == [1, 2]
  assert os.listdir(tmp_path / "checkpoints")
  warnings = [r.getMessage() for r in caplog.records
              if "TensorBoard" in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert str(tmp_path / "tensorboard") in warnings[0]


# --------------------------------------------------------------- writer


class _LimitedFile:
  """A file whose writes fail with ENOSPC past `room` bytes in total."""

  def __init__(self, f, room):
    self._f, self._room = f, room

  def write(self, data):
    self._room -= len(data)
    if self._room < 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return self._f.write(data)

  def __getattr__(self, name):
    return getattr(self._f, name)


def test_full_disk_warns_once_and_keeps_what_was_written(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(record_writer, "open", lambda path, mode: _LimitedFile(
      open(path, mode), 1000), raising=False)  # pylint: disable=consider-using-with
  board = tensorboard_lib.Writer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    for step in range(100):
      board.scalars(step, {"loss": step / 10})
    board.image(100, "grid", np.zeros((4, 4, 3), np.uint8))
    board.close()
  assert not board.enabled
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and "No space left" in warnings[0], warnings
  kept = scalars(read_events(tmp_path))["loss"]
  assert len(kept) > 3 and sorted(kept) == list(range(len(kept)))
  assert kept[3] == pytest.approx(0.3)


def test_numbers_images_and_the_purge_event(tmp_path):
  with tensorboard_lib.Writer.for_training(str(tmp_path), 5) as board:
    board.scalars(6, {"a": 1, "b": np.float32(2.5), "c": True, "d": "text",
                      "e": [1, 2], "f": None, "g": np.array(3.0)}, prefix="p/")
    rgb = np.linspace(-1, 1, 2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    board.image(6, "rgb", rgb)
    board.image(7, "gray", np.full((2, 3, 1), 200, np.uint8))
  assert board.path.startswith(str(tmp_path / "tensorboard"))
  events = read_events(tmp_path / "tensorboard")
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 6 and (events[1].session_log.status
                                  == event_pb2.SessionLog.START)
  assert scalars(events) == {"p/a": {6: 1.0}, "p/b": {6: 2.5},
                             "p/c": {6: 1.0}, "p/g": {6: 3.0}}
  got = images(events)
  np.testing.assert_array_equal(got["rgb"][6], viz.to_uint8(rgb))
  np.testing.assert_array_equal(got["gray"][7], np.full((2, 3), 200))
  with tensorboard_lib.Writer.for_mode(str(tmp_path), "eval") as board:
    board.scalars(3, {"fd": 1.5})
  assert scalars(read_events(tmp_path / "tensorboard" / "eval")) == {
      "fd": {3: 1.5}}


def test_without_tensorboardx_or_off_process_0_nothing_is_written(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)
  monkeypatch.setattr(tensorboard_lib, "_warned_missing", False)
  with caplog.at_level(logging.WARNING):
    for mode in ("sample", "eval"):
      with tensorboard_lib.Writer.for_mode(str(tmp_path), mode) as board:
        board.scalars(1, {"x": 1.0})
        board.image(1, "grid", np.zeros((4, 4, 1), np.uint8))
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1 and "pip install tensorboardX" in warnings[0]
  monkeypatch.undo()
  monkeypatch.setattr(distributed, "is_main", lambda: False)
  with tensorboard_lib.Writer.for_training(str(tmp_path)) as board:
    board.scalars(1, {"x": 1.0})
  assert os.listdir(tmp_path) == []
