"""Output files are whole or absent, and hostile data files give one line.

Disk-full and read-only faults are provoked for real on a small tmpfs where
this process may mount one; elsewhere the write (or the open) is made to
fail with the same errno.
"""
import errno
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zlib

import numpy as np
from PIL import Image
import pytest

from jaxdiff import data as data_lib
from jaxdiff import feature_distance as fd
from jaxdiff import files
from jaxdiff import viz
from jaxdiff.data import formats
from jaxdiff.data import imagefiles

REPO = pathlib.Path(__file__).resolve().parents[1]
DISK_BYTES = 1 << 20


class _LimitedFile:
  """A file whose writes fail with ENOSPC past `room` bytes in total."""

  def __init__(self, f, room):
    self._f, self._room = f, room

  def write(self, data):
    self._room -= len(data)
    if self._room < 0:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return self._f.write(data)

  def fileno(self):  # So that PIL writes through write(), not the fd.
    raise io.UnsupportedOperation("fileno")

  def __getattr__(self, name):
    return getattr(self._f, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return self._f.__exit__(*exc)


def _mount(directory, options):
  out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs",
                        str(directory)], capture_output=True, check=False)
  return out.returncode == 0


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
  """A folder on a 1 MiB file system (a tmpfs, else a write limit)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  if _mount(disk, f"size={DISK_BYTES}"):
    yield disk
    subprocess.run(["umount", str(disk)], check=True)
    return
  fdopen = os.fdopen
  monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _LimitedFile(
      fdopen(fd, *a, **k), DISK_BYTES))
  yield disk


@pytest.fixture
def read_only(tmp_path, monkeypatch):
  """A read-only folder (a read-only tmpfs, else an open that says so)."""
  disk = tmp_path / "ro"
  disk.mkdir()
  if _mount(disk, "ro,size=64k"):
    yield disk
    subprocess.run(["umount", str(disk)], check=True)
    return
  os_open = os.open

  def refuse(path, *args, **kwargs):
    if str(path).startswith(str(disk)):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return os_open(path, *args, **kwargs)
  monkeypatch.setattr(os, "open", refuse)
  yield disk


def _noise(n=64, size=28, channels=3, seed=0):
  """Random uint8 images: they do not compress, so their PNG is large."""
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


# ------------------------------------------------------------ atomic_write


def test_atomic_write_on_a_full_disk_leaves_no_file(full_disk):
  path = full_disk / "big.bin"
  with pytest.raises(OSError) as e:
    files.write_bytes(path, b"x" * (2 * DISK_BYTES))
  assert e.value.errno == errno.ENOSPC
  assert e.value.filename == str(path)  # the file meant, not the temporary
  assert os.listdir(full_disk) == []


def test_a_failed_write_keeps_the_old_file(full_disk):
  path = full_disk / "result.json"
  files.write_json(path, {"fd": 1.5})
  with pytest.raises(OSError):
    files.write_bytes(path, b"x" * (2 * DISK_BYTES))
  assert json.loads(path.read_text()) == {"fd": 1.5}
  assert os.listdir(full_disk) == ["result.json"]


def test_atomic_write_replaces_the_file_in_one_step(tmp_path):
  path = tmp_path / "metrics.csv"
  path.write_text("old\n")
  with open(path) as reader:
    with files.atomic_write(path, "w", newline="") as f:
      f.write("new\n")
      assert path.read_text() == "old\n"  # not visible before the rename
    assert reader.read() == "old\n"  # the old file was replaced, not truncated
  assert path.read_text() == "new\n"
  umask = os.umask(0)
  os.umask(umask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~umask
  assert os.listdir(tmp_path) == ["metrics.csv"]


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
  path = tmp_path / "out.json"
  path.write_text("{}")
  with pytest.raises(RuntimeError):
    with files.atomic_write(path, "w") as f:
      f.write("partial")
      raise RuntimeError("interrupted")
  assert path.read_text() == "{}"
  assert os.listdir(tmp_path) == ["out.json"]
  with pytest.raises(TypeError):  # not JSON: raises before writing
    files.write_json(tmp_path / "new.json", {"x": object()})
  assert os.listdir(tmp_path) == ["out.json"]


def test_a_read_only_folder_raises_erofs_naming_the_file(read_only):
  with pytest.raises(OSError) as e:
    viz.save_grid(read_only / "samples.png", _noise(4))
  assert e.value.errno == errno.EROFS
  assert e.value.filename == str(read_only / "samples.png")
  assert os.listdir(read_only) == []


# -------------------------------------------------------------------- viz


@pytest.mark.parametrize("labelled", [False, True])
def test_save_grid_on_a_full_disk_leaves_no_png(full_disk, labelled):
  path = full_disk / "samples.png"
  kwargs = dict(title="samples", row_labels=[str(i) for i in range(10)]
                ) if labelled else {}
  with pytest.raises(OSError) as e:  # 1.2 MB of random pixels, 4x scaled
    viz.save_grid(path, _noise(100, 64), ncol=10, **kwargs)
  assert e.value.errno == errno.ENOSPC
  assert os.listdir(full_disk) == []


def test_reverse_gif_on_a_full_disk_leaves_no_gif(full_disk):
  trajectory = np.stack([_noise(16, 64, seed=k) for k in range(3)])
  with pytest.raises(OSError):
    viz.reverse_gif(full_disk / "reverse.gif", trajectory)
  assert os.listdir(full_disk) == []


def test_saved_figures_are_whole_images(tmp_path):
  images = _noise(6)
  png = viz.save_grid(tmp_path / "a.png", images, scale=1)
  with Image.open(png) as img:
    assert img.format == "PNG"
    np.testing.assert_array_equal(
        np.asarray(img.convert("RGB")), viz.make_grid(images))
  gif = viz.reverse_gif(tmp_path / "r.gif", np.stack([images, images[::-1]]))
  with Image.open(gif) as img:
    assert img.format == "GIF" and img.n_frames == 2
  assert sorted(os.listdir(tmp_path)) == ["a.png", "r.gif"]


# ---------------------------------------------------------- the eval cache


def test_the_eval_cache_never_unpickles_and_survives_damage(tmp_path):
  params = {"Dense_0": {"kernel": np.ones((2, 3), np.float32)}}
  fd.save_classifier(str(tmp_path), params, {"settings": {}, "x": 1})
  got, meta = fd.load_classifier_params(str(tmp_path))
  np.testing.assert_array_equal(got["Dense_0"]["kernel"], np.ones((2, 3)))
  assert meta == {"settings": {}, "x": 1}
  assert sorted(os.listdir(tmp_path)) == ["meta.json", "params.npz"]
  # An object array would need unpickling: refused, the cache is rebuilt.
  np.savez(tmp_path / "params.npz", w=np.array([{"a": 1}], dtype=object))
  assert fd.load_classifier_params(str(tmp_path)) == (None, None)
  (tmp_path / "params.npz").write_bytes(b"PK\x03\x04 truncated")
  assert fd.load_classifier_params(str(tmp_path)) == (None, None)


def test_a_failed_cache_save_leaves_no_stale_settings(full_disk):
  path = full_disk / "classifier"
  fd.save_classifier(str(path), {"w": np.zeros(4, np.float32)},
                     {"settings": {"epochs": 1}})
  big = {"w": np.random.default_rng(0).normal(size=DISK_BYTES // 2)}
  with pytest.raises(OSError):
    fd.save_classifier(str(path), big, {"settings": {"epochs": 2}})
  # The old meta.json is gone: old params are never taken for new settings.
  assert fd.load_classifier_params(str(path)) == (None, None)
  assert os.listdir(path) == ["params.npz"]


# ------------------------------------------------------ hostile data files


def _png_claiming(width, height):
  """A PNG whose header claims width x height pixels (its data is tiny)."""
  buf = io.BytesIO()
  Image.new("L", (4, 4)).save(buf, format="PNG")
  raw = bytearray(buf.getvalue())
  ihdr = raw.index(b"IHDR")
  raw[ihdr + 4:ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(
      4, "big")
  crc = zlib.crc32(bytes(raw[ihdr:ihdr + 17]))
  raw[ihdr + 17:ihdr + 21] = crc.to_bytes(4, "big")
  return bytes(raw)


def _tar(path, members):
  with tarfile.open(path, "w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def _png(value=0):
  buf = io.BytesIO()
  Image.new("RGB", (32, 32), (value,) * 3).save(buf, format="PNG")
  return buf.getvalue()


def test_a_decompression_bomb_in_an_image_tar_is_one_data_error(tmp_path):
  bomb = _png_claiming(50_000, 50_000)  # 2.5 G pixels in 70 bytes
  assert len(bomb) < 200
  path = tmp_path / "cifar10-jpeg.tar.gz"
  _tar(path, {"train/cat/0.png": _png(), "train/cat/1.png": bomb})
  with pytest.raises(data_lib.DataError) as e:
    formats.read_image_tar(str(path), "train", data_lib.CIFAR10_CLASSES)
  message = str(e.value)
  assert "\n" not in message
  assert "train/cat/1.png" in message and "DecompressionBomb" in message


def test_a_decompression_bomb_in_a_folder_is_one_data_error(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "0.png").write_bytes(_png())
  (tmp_path / "a" / "1.png").write_bytes(_png_claiming(20_000, 10_000))
  for channels in (None, 3):  # with and without the grayscale probe
    with pytest.raises(data_lib.DataError, match="DecompressionBomb"):
      data_lib.load("folder", "train", path=str(tmp_path), channels=channels)


def test_an_image_over_the_pixel_limit_is_refused_not_warned(tmp_path,
                                                             monkeypatch):
  # Between MAX_IMAGE_PIXELS and twice that, PIL only warns.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32 - 1)
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "0.png").write_bytes(_png())
  with pytest.raises(data_lib.DataError, match="DecompressionBombWarning"):
    data_lib.load("folder", "train", path=str(tmp_path), channels=3)


def test_archive_members_are_size_capped_before_reading(tmp_path,
                                                        monkeypatch):
  path = tmp_path / "images.tar.gz"
  _tar(path, {"train/cat/0.png": _png(), "train/dog/1.png": b"\0" * 5000})
  monkeypatch.setattr(imagefiles, "MAX_IMAGE_BYTES", 4096)
  read = []
  extract = tarfile.TarFile.extractfile
  monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: (
      read.append(m.name), extract(self, m))[1])
  with pytest.raises(data_lib.DataError, match="5000 bytes, more than"):
    formats.read_image_tar(str(path), "train", data_lib.CIFAR10_CLASSES)
  assert read == ["train/cat/0.png"]  # the big member was never read


def test_the_fashion_mnist_hint_is_https(tmp_path):
  with pytest.raises(data_lib.DataNotFoundError) as e:
    data_lib.load("fashion_mnist", "train", data_dir=str(tmp_path))
  message = str(e.value)
  assert ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/"
          "master/data/fashion/") in message
  assert "http://" not in message


# ------------------------------------------------------------ end to end


def _launch(workdir, mode, *flags):
  return subprocess.run(
      [sys.executable, "launch.py", "--config", "configs/organamnist.py:tiny",
       "--workdir", str(workdir), "--mode", mode,
       "--config.data.name=organamnist_small", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.slow
def test_sample_on_a_full_disk_leaves_no_partial_output(tmp_path):
  trained = tmp_path / "trained"
  out = _launch(trained, "train")
  assert out.returncode == 0, out.stderr[-3000:]
  disk = tmp_path / "disk"
  disk.mkdir()
  used = sum(p.stat().st_size for p in trained.rglob("*") if p.is_file())
  if not _mount(disk, f"size={used + 256 * 1024}"):
    pytest.skip("cannot mount a tmpfs here")
  try:
    workdir = disk / "w"
    shutil.copytree(trained, workdir)
    free = shutil.disk_usage(disk).free
    with open(workdir / "filler", "wb") as f:  # leave ~16 KiB
      f.write(b"\0" * max(0, free - 16 * 1024))
    # 256 samples of 28x28: a 4x-scaled grid PNG and an npz far over 16 KiB.
    out = _launch(workdir, "sample", "--config.sampling.num_samples=256",
                  "--config.sampling.batch_size=64")
    assert out.returncode == 2, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("jaxdiff: error: ") and "samples_" in line, line
    outputs = sorted(p.name for p in workdir.glob("samples_*"))
    hidden = sorted(p.name for p in workdir.glob(".samples_*"))
    assert outputs == [] and hidden == [], (outputs, hidden, out.stderr[-2000:])
  finally:
    subprocess.run(["umount", str(disk)], check=True)


def test_modes_refuse_a_run_read_with_another_meaning(tmp_path):
  """A mode reading a run with another prediction, process or conditioning
  than it was trained with fails in one line naming the flag to pass; the
  keys a mode may change (sampling, compute dtype) pass."""
  from configs import organamnist  # pylint: disable=g-import-not-at-top
  from jaxdiff import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxdiff import run as run_lib  # pylint: disable=g-import-not-at-top
  from jaxdiff import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  trained = organamnist.get_config("tiny")
  trained.model.prediction = "v"
  workdir_lib.write_config(str(tmp_path), config_lib.to_json(trained))
  for key, value in [("model.prediction", "eps"), ("diffusion.sde", "ve"),
                     ("training.conditional", True)]:
    c = organamnist.get_config("tiny")
    c.model.prediction = "v"
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(workdir_lib.WorkdirError, match=key):
      run_lib.check_workdir(c, str(tmp_path), "sample")
  c = organamnist.get_config("tiny")
  c.model.prediction = "v"
  c.sampling.method, c.model.dtype = "heun", "bfloat16"
  run_lib.check_workdir(c, str(tmp_path), "sample")
  with pytest.raises(workdir_lib.WorkdirError, match='prediction="v"'):
    run_lib.check_workdir(organamnist.get_config("tiny"), str(tmp_path),
                          "denoise")
