"""Tests for jaxdiff.data: loaders on generated files, bad inputs, real data."""
from __future__ import annotations

import ast
import gzip
import hashlib
import io
import os
import pathlib
import struct
import sys
import tarfile
import types

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # Running pytest from a checkout, not installed.
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxdiff import data
from jaxdiff.data import datasets
from jaxdiff.data import make_small_subset
# pylint: enable=g-import-not-at-top,wrong-import-position


# ------------------------------------------------------------------ fixtures


@pytest.fixture(name="no_downloads", autouse=True)
def fixture_no_downloads(monkeypatch):
  """Makes the optional download packages unimportable, for determinism."""
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setitem(sys.modules, "medmnist", None)


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
  """IDX encoding written independently of the library's writer."""
  array = np.asarray(array, np.uint8)
  if magic is None:
    magic = 0x0800 + array.ndim
  header = struct.pack(">I", magic) + struct.pack(
      f">{array.ndim}I", *array.shape)
  return header + array.tobytes()


def _write_gz(path: pathlib.Path, payload: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, "wb") as f:
    f.write(payload)


def _mnist_arrays(n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)  # [N, H, W]
  labels = rng.integers(0, 10, (n,), dtype=np.uint8)
  return images, labels


def _write_mnist(root: pathlib.Path, name: str = "mnist", n: int = 7,
                 prefix: str = "train", gz: bool = True):
  images, labels = _mnist_arrays(n)
  d = root / name
  d.mkdir(parents=True, exist_ok=True)
  img_bytes, lbl_bytes = _idx_bytes(images), _idx_bytes(labels)
  if gz:
    _write_gz(d / f"{prefix}-images-idx3-ubyte.gz", img_bytes)
    _write_gz(d / f"{prefix}-labels-idx1-ubyte.gz", lbl_bytes)
  else:
    (d / f"{prefix}-images-idx3-ubyte").write_bytes(img_bytes)
    (d / f"{prefix}-labels-idx1-ubyte").write_bytes(lbl_bytes)
  return images, labels


def _cifar_records(n: int, seed: int):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (n,), dtype=np.uint8)
  raw = b"".join(bytes([l]) + im[:, :, 0].tobytes() + im[:, :, 1].tobytes()
                 + im[:, :, 2].tobytes() for im, l in zip(images, labels))
  return images, labels, raw


def _write_cifar_bins(bin_dir: pathlib.Path):
  bin_dir.mkdir(parents=True, exist_ok=True)
  all_images, all_labels = [], []
  for i in range(1, 6):
    images, labels, raw = _cifar_records(i, seed=i)  # 1+2+3+4+5 = 15 records
    (bin_dir / f"data_batch_{i}.bin").write_bytes(raw)
    all_images.append(images)
    all_labels.append(labels)
  test_images, test_labels, raw = _cifar_records(3, seed=99)
  (bin_dir / "test_batch.bin").write_bytes(raw)
  return (np.concatenate(all_images), np.concatenate(all_labels),
          test_images, test_labels)


def _jpeg_bytes(color, size=(32, 32)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, tuple(color)).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _write_npz(path: pathlib.Path, splits=("train", "val", "test"), rgb=False,
               num_classes=11, **overrides):
  rng = np.random.default_rng(1)
  arrays = {}
  for i, split in enumerate(splits):
    n = 4 + i
    shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
    arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
    arrays[f"{split}_labels"] = rng.integers(0, num_classes, (n, 1),
                                             dtype=np.uint8)
  arrays.update(overrides)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  return arrays


# ---------------------------------------------------------------- MNIST / IDX


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_reads_exact_values(tmp_path, name):
  images, labels = _write_mnist(tmp_path, name, n=7, prefix="t10k")
  ds = data.load(name, "test", data_dir=str(tmp_path))
  assert ds.images.shape == (7, 5, 4, 1) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (7,) and ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.labels, labels)
  assert ds.num_classes == 10 and len(ds.class_names) == 10
  if name == "fashion_mnist":
    assert ds.class_names[9] == "Ankle boot"


def test_idx_uncompressed_and_limit(tmp_path):
  images, labels = _write_mnist(tmp_path, gz=False)
  ds = data.load("mnist", data_dir=str(tmp_path), limit=3)
  np.testing.assert_array_equal(ds.images[..., 0], images[:3])
  np.testing.assert_array_equal(ds.labels, labels[:3])


def test_idx_writer_roundtrip(tmp_path):
  images, _ = _mnist_arrays(3)
  data.write_idx(str(tmp_path / "x.gz"), images)
  assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == _idx_bytes(images)
  np.testing.assert_array_equal(data.read_idx(str(tmp_path / "x.gz"), 2051),
                                images)


def test_data_dir_defaults_to_env(tmp_path, monkeypatch):
  _write_mnist(tmp_path)
  monkeypatch.setenv("JAXDIFF_DATA_DIR", str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  assert len(data.load("mnist").labels) == 7
  monkeypatch.delenv("JAXDIFF_DATA_DIR")
  assert data.default_data_dir() == os.path.join(
      os.path.expanduser("~"), ".cache", "jaxdiff", "data")


def test_idx_bad_magic(tmp_path):
  _write_mnist(tmp_path)
  images, _ = _mnist_arrays(7)
  _write_gz(tmp_path / "mnist/train-images-idx3-ubyte.gz",
            _idx_bytes(images, magic=2049))
  with pytest.raises(data.DataError,
                     match=r"train-images-idx3-ubyte\.gz.*magic.*2051"):
    data.load("mnist", data_dir=str(tmp_path))


def test_idx_truncated_gzip(tmp_path):
  _write_mnist(tmp_path)
  path = tmp_path / "mnist/train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(data.DataError, match=r"train-images.*gzip.*download"):
    data.load("mnist", data_dir=str(tmp_path))


def test_idx_not_gzip(tmp_path):
  _write_mnist(tmp_path)
  (tmp_path / "mnist/train-labels-idx1-ubyte.gz").write_bytes(
      b"<html>404</html>")
  with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz"):
    data.load("mnist", data_dir=str(tmp_path))


def test_idx_truncated_payload(tmp_path):
  _write_mnist(tmp_path)
  images, _ = _mnist_arrays(7)
  _write_gz(tmp_path / "mnist/train-images-idx3-ubyte.gz",
            _idx_bytes(images)[:-5])
  with pytest.raises(data.DataError, match="truncated"):
    data.load("mnist", data_dir=str(tmp_path))


def test_idx_count_mismatch(tmp_path):
  _write_mnist(tmp_path)
  _write_gz(tmp_path / "mnist/train-labels-idx1-ubyte.gz",
            _idx_bytes(np.zeros(6, np.uint8)))
  with pytest.raises(data.DataError, match="7 images but 6 labels"):
    data.load("mnist", data_dir=str(tmp_path))


def test_idx_label_out_of_range(tmp_path):
  _write_mnist(tmp_path)
  _write_gz(tmp_path / "mnist/train-labels-idx1-ubyte.gz",
            _idx_bytes(np.full(7, 10, np.uint8)))
  with pytest.raises(data.DataError, match="10 classes"):
    data.load("mnist", data_dir=str(tmp_path))


def test_idx_missing_names_file_dir_and_remedy(tmp_path):
  with pytest.raises(data.DataNotFoundError) as err:
    data.load("mnist", "test", data_dir=str(tmp_path))
  msg = str(err.value)
  assert "t10k-images-idx3-ubyte.gz" in msg
  assert "t10k-labels-idx1-ubyte.gz" in msg
  assert str(tmp_path / "mnist") in msg
  assert "https://" in msg and "pip install tensorflow-datasets" in msg
  assert isinstance(err.value, FileNotFoundError)


def test_tfds_fallback_writes_canonical_files(tmp_path, monkeypatch):
  images, labels = _mnist_arrays(4)
  calls = []

  def fake_load(name, split, batch_size, data_dir):
    calls.append((name, split, batch_size, data_dir))
    return {"image": images[..., None], "label": labels.astype(np.int64)}

  fake = types.SimpleNamespace(load=fake_load, as_numpy=lambda x: x)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  ds = data.load("mnist", "test", data_dir=str(tmp_path))
  assert calls == [("mnist", "test", -1, str(tmp_path / "tfds"))]
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.labels, labels)
  # The canonical files now exist and are read without tfds.
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  again = data.load("mnist", "test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(again.images, ds.images)


def test_tfds_failure_is_reported_not_raised(tmp_path, monkeypatch):
  def fake_load(*args, **kwargs):
    raise ConnectionError("no internet")

  fake = types.SimpleNamespace(load=fake_load, as_numpy=lambda x: x)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  with pytest.raises(data.DataNotFoundError, match="no internet"):
    data.load("cifar10", data_dir=str(tmp_path))


# ------------------------------------------------------------------- CIFAR-10


def test_cifar_binary_batches(tmp_path):
  train_x, train_y, test_x, test_y = _write_cifar_bins(
      tmp_path / "cifar10/cifar-10-batches-bin")
  ds = data.load("cifar10", "train", data_dir=str(tmp_path))
  assert ds.images.shape == (15, 32, 32, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.images, train_x)
  np.testing.assert_array_equal(ds.labels, train_y)
  assert ds.class_names == data.CIFAR10_CLASSES
  test = data.load("cifar10", "test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(test.images, test_x)
  np.testing.assert_array_equal(test.labels, test_y)
  limited = data.load("cifar10", "train", data_dir=str(tmp_path), limit=4)
  np.testing.assert_array_equal(limited.images, train_x[:4])


def test_cifar_truncated_batch(tmp_path):
  bin_dir = tmp_path / "cifar10/cifar-10-batches-bin"
  _write_cifar_bins(bin_dir)
  raw = (bin_dir / "test_batch.bin").read_bytes()
  (bin_dir / "test_batch.bin").write_bytes(raw[:-100])
  with pytest.raises(data.DataError, match=r"test_batch\.bin.*3073"):
    data.load("cifar10", "test", data_dir=str(tmp_path))


def test_cifar_official_archive_is_extracted(tmp_path):
  src = tmp_path / "src"
  _, _, test_x, test_y = _write_cifar_bins(src / "cifar-10-batches-bin")
  (tmp_path / "root/cifar10").mkdir(parents=True)
  archive = tmp_path / "root/cifar10/cifar-10-binary.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
  ds = data.load("cifar10", "test", data_dir=str(tmp_path / "root"))
  np.testing.assert_array_equal(ds.images, test_x)
  np.testing.assert_array_equal(ds.labels, test_y)


def test_cifar_jpeg_tar_order_and_pixels(tmp_path):
  members = {  # name -> color; added out of order on purpose.
      "test/truck/0001.jpg": (250, 10, 10),
      "test/airplane/0001.jpg": (10, 250, 10),
      "test/truck/0000.jpg": (10, 10, 250),
      "test/airplane/0000.jpg": (200, 200, 200),
      "train/cat/0000.jpg": (0, 0, 0),
  }
  (tmp_path / "cifar10").mkdir()
  with tarfile.open(tmp_path / "cifar10/cifar10-jpeg.tar.gz", "w:gz") as tar:
    for name, color in members.items():
      _add_bytes(tar, name, _jpeg_bytes(color))
  ds = data.load("cifar10", "test", data_dir=str(tmp_path))
  order = ["test/airplane/0000.jpg", "test/truck/0000.jpg",
           "test/airplane/0001.jpg", "test/truck/0001.jpg"]
  assert ds.images.shape == (4, 32, 32, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.labels, [0, 9, 0, 9])
  expected = np.array([members[n] for n in order], np.int16)[:, None, None, :]
  assert np.abs(ds.images.astype(np.int16) - expected).max() <= 3
  train = data.load("cifar10", "train", data_dir=str(tmp_path))
  np.testing.assert_array_equal(train.labels, [3])
  assert len(data.load("cifar10", "test", data_dir=str(tmp_path),
                       limit=1).labels) == 1


def test_cifar_jpeg_tar_bad_members(tmp_path):
  (tmp_path / "cifar10").mkdir()
  path = tmp_path / "cifar10/cifar10-jpeg.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    _add_bytes(tar, "test/unicorn/0000.jpg", _jpeg_bytes((1, 2, 3)))
  with pytest.raises(data.DataError, match="unicorn"):
    data.load("cifar10", "test", data_dir=str(tmp_path))
  with tarfile.open(path, "w:gz") as tar:
    _add_bytes(tar, "test/cat/0000.jpg", _jpeg_bytes((1, 2, 3), (16, 16)))
  with pytest.raises(data.DataError, match="16x16, expected 32x32"):
    data.load("cifar10", "test", data_dir=str(tmp_path))
  path.write_bytes(path.read_bytes()[:200])
  with pytest.raises(data.DataError, match="cifar10-jpeg.tar.gz"):
    data.load("cifar10", "test", data_dir=str(tmp_path))


def test_cifar_missing(tmp_path):
  with pytest.raises(data.DataNotFoundError) as err:
    data.load("cifar10", "test", data_dir=str(tmp_path))
  msg = str(err.value)
  assert "test_batch.bin" in msg
  assert str(tmp_path / "cifar10" / "cifar-10-batches-bin") in msg
  assert "cifar-10-binary.tar.gz" in msg and "tensorflow-datasets" in msg


# ------------------------------------------------------------------- MedMNIST


def test_medmnist_gray_all_splits(tmp_path):
  arrays = _write_npz(tmp_path / "medmnist/organamnist.npz")
  for split in ("train", "val", "test"):
    ds = data.load("organamnist", split, data_dir=str(tmp_path))
    n = len(arrays[f"{split}_labels"])
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images[..., 0], arrays[f"{split}_images"])
    np.testing.assert_array_equal(ds.labels, arrays[f"{split}_labels"][:, 0])
  assert ds.num_classes == 11 and ds.class_names[10] == "spleen"
  limited = data.load("organamnist", data_dir=str(tmp_path), limit=2)
  assert len(limited.labels) == 2


def test_medmnist_rgb_flag(tmp_path):
  arrays = _write_npz(tmp_path / "medmnist/pathmnist.npz", rgb=True,
                      num_classes=9)
  ds = data.load("pathmnist", "val", data_dir=str(tmp_path))
  assert ds.images.shape == (5, 28, 28, 3) and ds.num_classes == 9
  np.testing.assert_array_equal(ds.images, arrays["val_images"])


def test_medmnist_all_2d_flags_registered():
  for flag in ("pathmnist", "chestmnist", "dermamnist", "octmnist",
               "pneumoniamnist", "retinamnist", "breastmnist", "bloodmnist",
               "tissuemnist", "organamnist", "organcmnist", "organsmnist"):
    assert flag in data.DATASETS


@pytest.mark.parametrize("key,value,match", [
    ("train_images", np.zeros((4, 28, 28), np.float32),
     "float32; expected uint8"),
    ("train_images", np.zeros((4, 784), np.uint8), r"shape \(4, 784\)"),
    ("train_labels", np.zeros((3, 1), np.uint8), "4 images but 3 labels"),
    ("train_labels", np.zeros((4, 1), np.float64), "expected integers"),
    ("train_labels", np.zeros((4, 14), np.uint8), "multi-label"),
    ("train_labels", np.full((4, 1), 11, np.uint8), "11 classes"),
])
def test_medmnist_bad_arrays(tmp_path, key, value, match):
  _write_npz(tmp_path / "medmnist/organamnist.npz", **{key: value})
  with pytest.raises(data.DataError, match=match):
    data.load("organamnist", data_dir=str(tmp_path))


_UNPICKLED = []


def _record_unpickle():
  _UNPICKLED.append(True)
  return 0


class _Evil:
  def __reduce__(self):
    return (_record_unpickle, ())


def test_medmnist_object_array_is_not_unpickled(tmp_path):
  path = tmp_path / "medmnist/organamnist.npz"
  _write_npz(path, train_images=np.array([_Evil()], dtype=object))
  with pytest.raises(data.DataError, match="organamnist.npz.*unpickling"):
    data.load("organamnist", data_dir=str(tmp_path))
  assert not _UNPICKLED


def test_medmnist_not_an_npz_or_missing_key(tmp_path):
  path = tmp_path / "medmnist/organamnist.npz"
  path.parent.mkdir(parents=True)
  path.write_bytes(b"PK\x03\x04garbage")
  with pytest.raises(data.DataError, match="organamnist.npz"):
    data.load("organamnist", data_dir=str(tmp_path))
  _write_npz(path, splits=("train", "test"))
  with pytest.raises(data.DataError, match="no val_images"):
    data.load("organamnist", "val", data_dir=str(tmp_path))


def test_medmnist_missing(tmp_path):
  with pytest.raises(data.DataNotFoundError) as err:
    data.load("dermamnist", "test", data_dir=str(tmp_path))
  msg = str(err.value)
  assert "dermamnist.npz" in msg and str(tmp_path / "medmnist") in msg
  assert "pip install medmnist" in msg and "zenodo" in msg


def _fake_medmnist(md5_of_payload: bool):
  payload = io.BytesIO()
  np.savez(payload, train_images=np.zeros((2, 28, 28), np.uint8),
           train_labels=np.ones((2, 1), np.uint8))
  raw = payload.getvalue()
  md5 = hashlib.md5(raw).hexdigest() if md5_of_payload else "0" * 32

  class FakeOrganAMNIST:
    def __init__(self, split, download, root):
      assert download and split == "train"
      pathlib.Path(root, "organamnist.npz").write_bytes(raw)

  return types.SimpleNamespace(
      INFO={"organamnist": {"python_class": "FakeOrganAMNIST", "MD5": md5}},
      FakeOrganAMNIST=FakeOrganAMNIST)


def test_medmnist_download_verified(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "medmnist", _fake_medmnist(True))
  ds = data.load("organamnist", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.labels, [1, 1])


def test_medmnist_download_bad_md5_rejected(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "medmnist", _fake_medmnist(False))
  with pytest.raises(data.DataError, match="md5 checksum mismatch"):
    data.load("organamnist", data_dir=str(tmp_path))
  assert not (tmp_path / "medmnist/organamnist.npz").exists()


# ----------------------------------------------------------------- embedded


def test_embedded_subset():
  train = data.load("organamnist_small", "train", data_dir="/nonexistent")
  test = data.load("organamnist_small", "test")
  assert train.images.shape == (2000, 28, 28, 1)
  assert test.images.shape == (200, 28, 28, 1)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.num_classes == 11
  assert train.class_names == data.ORGANAMNIST_CLASSES
  assert set(train.labels.tolist()) == set(range(11))
  asset = datasets._SMALL_ASSET  # pylint: disable=protected-access
  assert os.path.getsize(asset) < 2_000_000
  with pytest.raises(ValueError, match="Unknown split 'val'"):
    data.load("organamnist_small", "val")


def test_make_small_subset_is_deterministic(tmp_path):
  src = tmp_path / "medmnist/organamnist.npz"
  arrays = _write_npz(src)
  out1, out2 = tmp_path / "a.npz", tmp_path / "b.npz"
  assert make_small_subset.main([str(tmp_path), "--out", str(out1),
                                 "--train", "3", "--test", "2"]) == 0
  make_small_subset.make_subset(str(src), str(out2), 3, 2)
  assert out1.read_bytes() == out2.read_bytes()
  with np.load(out1, allow_pickle=False) as z:
    assert sorted(z.files) == ["test_images", "test_labels", "train_images",
                               "train_labels"]
    np.testing.assert_array_equal(z["train_images"], arrays["train_images"][:3])
    assert z["test_labels"].shape == (2, 1)
    assert z["test_labels"].dtype == np.uint8


# ---------------------------------------------------------------------- folder


def _write_folder(root: pathlib.Path, mode: str = "RGB"):
  pixels = {}
  rng = np.random.default_rng(3)
  for cls in ("dog", "cat"):
    for name in ("b.png", "a.png"):
      shape = (6, 5, 3) if mode == "RGB" else (6, 5)
      arr = rng.integers(0, 256, shape, dtype=np.uint8)
      (root / cls).mkdir(parents=True, exist_ok=True)
      Image.fromarray(arr, mode).save(root / cls / name)
      pixels[f"{cls}/{name}"] = arr
  (root / "cat" / "notes.txt").write_text("not an image")
  return pixels


def test_folder_rgb_exact(tmp_path):
  pixels = _write_folder(tmp_path / "imgs")
  ds = data.load("folder", path=str(tmp_path / "imgs"))
  assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
  assert ds.images.shape == (4, 6, 5, 3) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1])
  order = ["cat/a.png", "cat/b.png", "dog/a.png", "dog/b.png"]
  np.testing.assert_array_equal(ds.images, np.stack([pixels[o] for o in order]))
  gray = data.load("folder", path=str(tmp_path / "imgs"), channels=1)
  assert gray.images.shape == (4, 6, 5, 1)


def test_folder_gray_split_resize_limit(tmp_path):
  pixels = _write_folder(tmp_path / "imgs/test", mode="L")
  _write_folder(tmp_path / "imgs/train", mode="L")
  ds = data.load("folder", "test", path=str(tmp_path / "imgs"))
  assert ds.images.shape == (4, 6, 5, 1)
  np.testing.assert_array_equal(ds.images[0, ..., 0], pixels["cat/a.png"])
  rgb = data.load("folder", "test", path=str(tmp_path / "imgs"), channels=3,
                  image_size=(8, 10), limit=3)
  assert rgb.images.shape == (3, 8, 10, 3)
  assert data.load("folder", "test", path=str(tmp_path / "imgs"),
                   image_size=4).images.shape == (4, 4, 4, 1)
  with pytest.raises(ValueError, match="Unknown split 'val'.*train, test"):
    data.load("folder", "val", path=str(tmp_path / "imgs"))


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="path="):
    data.load("folder")
  with pytest.raises(data.DataNotFoundError, match="does not exist"):
    data.load("folder", path=str(tmp_path / "nope"))
  (tmp_path / "empty/cls").mkdir(parents=True)
  with pytest.raises(data.DataNotFoundError, match="no images"):
    data.load("folder", path=str(tmp_path / "empty"))
  _write_folder(tmp_path / "mixed")
  Image.new("RGB", (7, 7)).save(tmp_path / "mixed/dog/c.png")
  with pytest.raises(data.DataError, match="image_size"):
    data.load("folder", path=str(tmp_path / "mixed"))
  (tmp_path / "mixed/dog/c.png").write_bytes(b"not a png")
  with pytest.raises(data.DataError, match="c.png"):
    data.load("folder", path=str(tmp_path / "mixed"), image_size=4)


# -------------------------------------------------------- names, splits, API


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet'.*mnist"):
    data.load("imagenet")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10",
                                  "organamnist", "pathmnist"])
def test_unknown_split(tmp_path, name):
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    data.load(name, "validation", data_dir=str(tmp_path))


def test_val_split_only_for_medmnist(tmp_path):
  with pytest.raises(ValueError, match="Unknown split 'val'.*train, test"):
    data.load("mnist", "val", data_dir=str(tmp_path))


def test_bad_limit(tmp_path):
  _write_mnist(tmp_path)
  with pytest.raises(ValueError, match="limit"):
    data.load("mnist", data_dir=str(tmp_path), limit=-1)


def test_registry_loader_signature(tmp_path):
  _write_mnist(tmp_path)
  ds = data.DATASETS.get("mnist")(str(tmp_path), "train")
  assert isinstance(ds, data.Dataset) and ds._fields == (
      "images", "labels", "num_classes", "class_names")


def test_data_layer_imports_no_jax_and_no_shared_paths():
  allowed = {"__future__", "argparse", "gzip", "hashlib", "importlib", "io",
             "os", "posixpath", "sys", "tarfile", "typing", "urllib",
             "warnings", "zipfile", "zlib", "numpy", "PIL", "jaxdiff"}
  for path in (REPO / "jaxdiff" / "data").glob("*.py"):
    source = path.read_text()
    assert "/shared" not in source and "shared/data" not in source, path
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      else:
        continue
      for name in names:
        assert name.split(".")[0] in allowed, (path, name)
        if name.startswith("jaxdiff"):
          assert name.startswith(("jaxdiff.data", "jaxdiff.registry")), name


# ------------------------------------------------------------- safe_extract


def test_safe_extract_ok(tmp_path):
  archive = tmp_path / "ok.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    _add_bytes(tar, "a/b.txt", b"hello")
    link = tarfile.TarInfo("a/link")
    link.type, link.linkname = tarfile.SYMTYPE, "b.txt"
    tar.addfile(link)
  names = data.safe_extract(str(archive), str(tmp_path / "out"))
  assert "a/b.txt" in names
  assert (tmp_path / "out/a/b.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("member,linkname", [
    ("../evil", None),
    ("a/../../evil", None),
    ("/tmp/evil", None),
    ("a/link", "../../evil"),
    ("a/link", "/etc/passwd"),
])
def test_safe_extract_refuses_escapes(tmp_path, member, linkname):
  archive = tmp_path / "bad.tar"
  with tarfile.open(archive, "w") as tar:
    _add_bytes(tar, "fine.txt", b"ok")
    if linkname is None:
      _add_bytes(tar, member, b"evil")
    else:
      info = tarfile.TarInfo(member)
      info.type, info.linkname = tarfile.SYMTYPE, linkname
      tar.addfile(info)
  with pytest.raises(data.DataError, match="bad.tar"):
    data.safe_extract(str(archive), str(tmp_path / "out"))
  assert not (tmp_path / "evil").exists()
  assert not (tmp_path / "out" / "fine.txt").exists()  # Nothing written.


def test_download_file_verifies_sha256(tmp_path):
  src = tmp_path / "src.bin"
  src.write_bytes(b"payload")
  good = hashlib.sha256(b"payload").hexdigest()
  dest = tmp_path / "dl/dest.bin"
  data.download_file(src.as_uri(), str(dest), sha256=good)
  assert dest.read_bytes() == b"payload"
  dest2 = tmp_path / "dl/dest2.bin"
  with pytest.raises(data.DataError, match="checksum mismatch"):
    data.download_file(src.as_uri(), str(dest2), sha256="0" * 64)
  assert not dest2.exists() and not (tmp_path / "dl/dest2.bin.part").exists()


# ------------------------------------------------------------------ real data


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx(real_data_dir, name):
  for split, n in (("train", 60000), ("test", 10000)):
    ds = data.load(name, split, data_dir=real_data_dir)
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.images.min() == 0 and ds.images.max() == 255
    assert set(np.unique(ds.labels).tolist()) == set(range(10))
    assert 0.1 < ds.images.mean() / 255 < 0.4


def test_real_organamnist(real_data_dir):
  sizes = {"train": 34561, "val": 6491, "test": 17778}
  for split, n in sizes.items():
    ds = data.load("organamnist", split, data_dir=real_data_dir)
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    assert set(np.unique(ds.labels).tolist()) == set(range(11))
    assert ds.images.max() > 200
  small = data.load("organamnist_small", "train")
  full = data.load("organamnist", "train", data_dir=real_data_dir, limit=2000)
  np.testing.assert_array_equal(small.images, full.images)
  np.testing.assert_array_equal(small.labels, full.labels)


@pytest.mark.slow
def test_real_cifar10_jpeg(real_data_dir):
  test = data.load("cifar10", "test", data_dir=real_data_dir)
  assert test.images.shape == (10000, 32, 32, 3)
  assert test.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
  assert test.images.min() == 0 and test.images.max() == 255
  assert 0.3 < test.images.mean() / 255 < 0.6
  train = data.load("cifar10", "train", data_dir=real_data_dir)  # ~5 s
  assert train.images.shape == (50000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
  # Classes interleaved: any prefix of 10 n images holds n of every class.
  np.testing.assert_array_equal(train.labels[:20], np.tile(np.arange(10), 2))
  np.testing.assert_array_equal(np.bincount(test.labels[:1000]), [100] * 10)


def test_real_checksums(real_data_dir):
  result = data.verify_data_dir(real_data_dir)
  assert set(result) == set(data.KNOWN_SHA256)
  if not os.environ.get("JAXDIFF_TEST_DATA_DIR"):  # The reference copies.
    assert all(ok in (True, None) for ok in result.values()), result


def test_class_names_without_loading():
  assert data.class_names("mnist") == tuple(str(i) for i in range(10))
  assert data.class_names("fashion_mnist")[9] == "Ankle boot"
  assert len(data.class_names("organamnist")) == 11
  assert data.class_names("no_such_set") is None
