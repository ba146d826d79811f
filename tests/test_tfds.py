"""Tests for the source "tfds" (`data.load(..., source="tfds")`), offline.

TFDS's own mock data (`tfds.testing.mock_data`) stands in for the real data
sets; one test prepares a small data set in TFDS's array_record format
without TensorFlow and reads it back; a socket guard fails any test that
tries the network.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import socket
import sys
import types

import numpy as np
import pytest
from PIL import Image

# pylint: disable=g-import-not-at-top
tfds = pytest.importorskip("tensorflow_datasets")
from tensorflow_datasets.testing import mocking as tfds_mocking

from configs import mnist_ddpm
from jaxdiff import data
from jaxdiff import settings as settings_lib
from jaxdiff import train
from jaxdiff.data import download
# pylint: enable=g-import-not-at-top

_NO_TF = importlib.util.find_spec("tensorflow") is None


@pytest.fixture(name="offline", autouse=True)
def fixture_offline(tmp_path, monkeypatch):
  """No network, and TFDS's default data dir inside tmp_path."""
  def refuse(*args, **kwargs):
    raise OSError(f"test_tfds: network access attempted: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))


def _getitems(*args, generator, serialized=False):
  """tfds 4.9.10's mock binds its batched read without `self`, so
  `data_source.__getitems__(keys)` fails; this one takes either form."""
  del serialized
  return [generator[k] for k in args[-1]]


@contextlib.contextmanager
def mock_tfds(tmp_path, monkeypatch, num_examples: int):
  """`tfds.testing.mock_data` from the builders' code (no metadata files)."""
  monkeypatch.setattr(tfds_mocking, "_getitems", _getitems)
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE,
                              data_dir=str(tmp_path / "tfds_mock")):
    yield


# ------------------------------------------------------------- mock data


@pytest.mark.parametrize("name, split, shape, num_classes", [
    ("mnist", "train", (28, 28, 1), 10),
    ("fashion_mnist", "test", (28, 28, 1), 10),
    ("cifar10", "train", (32, 32, 3), 10),
    ("pneumoniamnist", "val", (28, 28, 1), 2),  # TFDS: pneumonia_mnist
])
def test_tfds_source_gives_uint8_arrays(name, split, shape, num_classes,
                                        tmp_path, monkeypatch):
  with mock_tfds(tmp_path, monkeypatch, 12):
    ds = data.load(name, split, data_dir=str(tmp_path), source="tfds")
    limited = data.load(name, split, data_dir=str(tmp_path), source="tfds",
                        limit=5)
  assert ds.images.dtype == np.uint8 and ds.images.shape == (12, *shape)
  assert ds.labels.dtype == np.int32 and ds.labels.shape == (12,)
  assert 0 <= ds.labels.min() and ds.labels.max() < num_classes
  assert ds.num_classes == num_classes
  assert ds.class_names == data.class_names(name)
  assert limited.images.shape == (5, *shape)
  np.testing.assert_array_equal(limited.images, ds.images[:5])
  np.testing.assert_array_equal(limited.labels, ds.labels[:5])


def test_limit_reads_only_the_first_records(tmp_path, monkeypatch):
  read = []

  def counting(*args, generator, serialized=False):
    read.extend(args[-1])
    return _getitems(*args, generator=generator, serialized=serialized)

  with mock_tfds(tmp_path, monkeypatch, 5000):
    monkeypatch.setattr(tfds_mocking, "_getitems", counting)
    ds = data.load("mnist", "train", data_dir=str(tmp_path), source="tfds",
                   limit=3)
  assert len(ds.labels) == 3 and read == [0, 1, 2]


def test_config_split_checks_the_shape(tmp_path, monkeypatch):
  d = settings_lib.DataSettings(name="cifar10", source="tfds",
                                data_dir=str(tmp_path), image_size=32,
                                channels=3)
  with mock_tfds(tmp_path, monkeypatch, 4):
    assert data.config_split(d, "test").images.shape == (4, 32, 32, 3)
    wrong = settings_lib.DataSettings(name="cifar10", source="tfds",
                                      data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="32x32x3 but the config asks for "
                       "28x28x1"):
      data.config_split(wrong, "test")


def test_tiny_training_run_on_tfds_source(tmp_path, monkeypatch):
  config = mnist_ddpm.get_config("tiny")
  config.data.source = "tfds"  # --config.data.source=tfds
  config.data.data_dir = str(tmp_path / "data")
  config.training.num_train_steps = 2
  config.training.log_every = 1
  config.training.sample_every = 0
  config.training.checkpoint_every = 2
  with mock_tfds(tmp_path, monkeypatch, 64), \
      contextlib.redirect_stdout(io.StringIO()):
    state = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert int(state.step) == 2
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f if line.strip()]
  assert [r["step"] for r in records] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in records)
  # The source "files" would have kept the split as IDX files here.
  assert not os.path.exists(tmp_path / "data" / "mnist")


# ----------------------------------------------- real files, no TensorFlow


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buf, format="PNG")
  return buf.getvalue()


class _SmallMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """MNIST's name, version and features, 30 images given as PNG bytes (so
  that preparing it needs no TensorFlow): pixel [0, 0] is the example's
  index, the label its index mod 10."""
  name = "mnist"
  VERSION = tfds.core.Version("3.0.1")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"test": self._generate_examples(30)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(0)
    for i in range(n):
      image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
      image[0, 0, 0] = i
      yield i, {"image": _png(image), "label": i % 10}


def test_reads_prepared_array_record_files(tmp_path):
  _SmallMnist(data_dir=str(tmp_path / "tfds"),
              file_format="array_record").download_and_prepare()
  ds = data.load("mnist", "test", data_dir=str(tmp_path), source="tfds")
  assert ds.images.shape == (30, 28, 28, 1) and ds.images.dtype == np.uint8
  index = ds.images[:, 0, 0, 0].astype(np.int32)  # TFDS shuffles the order.
  assert sorted(index) == list(range(30))
  np.testing.assert_array_equal(ds.labels, index % 10)
  assert ds.class_names == data.class_names("mnist")
  if _NO_TF:
    assert "tensorflow" not in sys.modules


# ------------------------------------------------------------------ errors


def _one_line(err) -> str:
  msg = str(err.value)
  assert "\n" not in msg
  return msg


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(data.DataNotFoundError) as err:
    data.load("mnist", data_dir=str(tmp_path), source="tfds")
  assert 'pip install -e ".[download]"' in _one_line(err)


def test_unprepared_without_tensorflow_says_what_to_do(tmp_path,
                                                       monkeypatch):
  monkeypatch.setattr(download, "_tensorflow_installed", lambda: False)
  with pytest.raises(data.DataNotFoundError) as err:
    data.load("cifar10", "test", data_dir=str(tmp_path), source="tfds")
  msg = _one_line(err)
  assert "not prepared in " + str(tmp_path / "tfds") in msg
  assert "pip install tensorflow-cpu" in msg


@pytest.mark.parametrize("name", ["organamnist", "organamnist_small"])
def test_data_set_tfds_lacks_is_a_value_error(name, tmp_path):
  with pytest.raises(ValueError, match="source 'files'") as err:
    data.load(name, data_dir=str(tmp_path), source="tfds")
  assert "TFDS has no data set" in _one_line(err)


def test_folder_options_and_unknown_source_are_value_errors(tmp_path):
  with pytest.raises(ValueError, match="takes no path"):
    data.load("folder", source="tfds", path=str(tmp_path))
  with pytest.raises(ValueError, match="'files' or 'tfds'"):
    data.load("mnist", data_dir=str(tmp_path), source="tfrecords")


def _fake_tfds(data_source_error: Exception, calls: list):
  images = np.arange(4 * 28 * 28, dtype=np.uint8).reshape(4, 28, 28, 1)

  def data_source(*args, **kwargs):
    raise data_source_error

  def load(name, split, batch_size, data_dir):
    calls.append((name, split, batch_size, data_dir))
    return {"image": images, "label": np.arange(4, dtype=np.int64)}

  return types.SimpleNamespace(data_source=data_source, load=load,
                               as_numpy=lambda x: x), images


def test_tfds_load_only_when_tensorflow_is_installed(tmp_path, monkeypatch):
  calls = []
  fake, images = _fake_tfds(NotImplementedError("TFRecord"), calls)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  monkeypatch.setattr(download, "_tensorflow_installed", lambda: True)
  ds = data.load("mnist", "test", data_dir=str(tmp_path), source="tfds")
  assert calls == [("mnist", "test", -1, os.path.join(tmp_path, "tfds"))]
  np.testing.assert_array_equal(ds.images, images)
  monkeypatch.setattr(download, "_tensorflow_installed", lambda: False)
  with pytest.raises(data.DataNotFoundError) as err:
    data.load("mnist", "test", data_dir=str(tmp_path), source="tfds")
  assert "TFRecord" in _one_line(err) and len(calls) == 1
