"""Errors, checksums, safe archive extraction, tensorflow_datasets reading
and optional download fallbacks.

Everything here is stdlib + numpy. The packages (`tensorflow_datasets`,
`medmnist`) are imported only when used. `load_tfds` (the source "tfds")
turns whatever TFDS raises into one `DataNotFoundError` / `ValueError` line;
the download fallbacks of the source "files" catch every exception and turn it
into a note for the caller's `DataNotFoundError`, so a missing package or a
machine without internet never crashes a load with an unrelated traceback.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import posixpath
import tarfile
import urllib.request
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np


class DataError(ValueError):
  """A data file exists but is malformed, truncated or of the wrong kind."""


class DataNotFoundError(FileNotFoundError):
  """A data file is missing and could not be downloaded."""


# SHA256 of the reference copies this project tests against: MNIST and
# Fashion-MNIST in the official IDX .gz layout, OrganAMNIST as a MedMNIST v2
# npz, CIFAR-10 as a JPEG tar. A gzip or npz re-saved by another tool holds the
# same arrays under a different checksum, so these identify those exact files,
# not every mirror's (e.g. medmnist's own organamnist.npz has another MD5).
KNOWN_SHA256: Dict[str, str] = {
    "mnist/t10k-images-idx3-ubyte.gz":
        "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",
    "mnist/train-images-idx3-ubyte.gz":
        "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "mnist/train-labels-idx1-ubyte.gz":
        "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
    "fashion_mnist/t10k-images-idx3-ubyte.gz":
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "fashion_mnist/t10k-labels-idx1-ubyte.gz":
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "fashion_mnist/train-images-idx3-ubyte.gz":
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "fashion_mnist/train-labels-idx1-ubyte.gz":
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "medmnist/organamnist.npz":
        "7c8c8b0753e2c0d7f70928817eac02be7cbb09f6beff4346e9d0ea79ecb598bd",
    "cifar10/cifar10-jpeg.tar.gz":
        "b651634573f79273f7a6470a709e6f08025b1613c2ff2a10224e860579702629",
}


# ------------------------------------------------------------------ checksums


def file_digest(path: str, algorithm: str = "sha256") -> str:
  """Returns the hex digest of a file, read in 1 MiB chunks.

  Args:
    path: the file.
    algorithm: a `hashlib` name, e.g. "sha256" or "md5".

  Returns:
    The lowercase hex digest.
  """
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def verify_checksum(path: str, expected: str,
                    algorithm: str = "sha256") -> None:
  """Raises `DataError` unless `path` has the expected digest.

  Args:
    path: the file to check.
    expected: the expected hex digest.
    algorithm: a `hashlib` name, e.g. "sha256" or "md5".

  Raises:
    DataError: the digest differs.
  """
  actual = file_digest(path, algorithm)
  if actual != expected.lower():
    raise DataError(
        f"{path}: {algorithm} checksum mismatch (expected {expected}, got "
        f"{actual}); the file is corrupt or not the expected release. Delete "
        "it and download it again.")


def verify_data_dir(data_dir: str) -> Dict[str, Optional[bool]]:
  """Checks the files of `data_dir` listed in `KNOWN_SHA256`.

  Args:
    data_dir: a data root laid out like `<data_dir>/mnist/...`.

  Returns:
    Relative path -> True (matches), False (differs) or None (absent).
  """
  result: Dict[str, Optional[bool]] = {}
  for rel, expected in KNOWN_SHA256.items():
    path = os.path.join(data_dir, *rel.split("/"))
    result[rel] = (file_digest(path) == expected
                   if os.path.isfile(path) else None)
  return result


def download_file(url: str, dest: str, sha256: Optional[str] = None,
                  timeout: float = 60.0) -> str:
  """Downloads `url` to `dest`, verifying `sha256` before the file is used.

  The bytes go to `dest + ".part"` first and are moved into place only after
  the checksum matched, so a failed or tampered download never leaves a file
  at `dest`.

  Args:
    url: http(s) or file URL.
    dest: the final path; its directory is created.
    sha256: the expected hex digest, or None to skip verification (only when
      no checksum is known).
    timeout: socket timeout in seconds.

  Returns:
    `dest`.

  Raises:
    DataError: the checksum differs.
    OSError: the download failed.
  """
  os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
  part = dest + ".part"
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, \
        open(part, "wb") as f:
      for chunk in iter(lambda: response.read(1 << 20), b""):
        f.write(chunk)
    if sha256 is not None:
      try:
        verify_checksum(part, sha256)
      except DataError as e:
        raise DataError(f"download of {url} rejected: {e}") from None
    os.replace(part, dest)
  finally:
    if os.path.exists(part):
      os.remove(part)
  return dest


# ---------------------------------------------------------------- extraction


# `tarfile.FilterError` exists from Python 3.11.4 (the extraction filters).
_FILTER_ERRORS = tuple(
    e for e in (getattr(tarfile, "FilterError", None),) if e is not None)


def _inside(root: str, path: str) -> bool:
  """Whether normalized absolute `path` is `root` or lies below it."""
  return path == root or path.startswith(root + os.sep)


def safe_extract(tar_path: str, dest: str) -> List[str]:
  """Extracts a tar archive, refusing anything that could escape `dest`.

  Every member is checked before anything is written: absolute names, `..`
  components, links whose target leaves `dest`, and device or FIFO members
  are refused.

  Args:
    tar_path: the archive (any compression `tarfile` reads).
    dest: the directory to extract into; created if needed.

  Returns:
    The extracted member names.

  Raises:
    DataError: an unsafe member, or an unreadable archive.
  """
  root = os.path.realpath(dest)
  try:
    with tarfile.open(tar_path, "r:*") as tar:
      members = tar.getmembers()
      for m in members:
        name = m.name.replace("\\", "/")
        parts = name.split("/")
        if (name.startswith("/") or os.path.isabs(m.name)
            or (len(name) > 1 and name[1] == ":") or ".." in parts):
          raise DataError(
              f"{tar_path}: refusing unsafe member {m.name!r} (absolute path "
              "or '..' component); the archive is corrupt or malicious.")
        target = os.path.realpath(os.path.join(root, *parts))
        if not _inside(root, target):
          raise DataError(
              f"{tar_path}: refusing member {m.name!r}, which resolves "
              f"outside {dest}.")
        if m.issym() or m.islnk():
          link = m.linkname.replace("\\", "/")
          if m.issym():
            base = posixpath.dirname(name)
            link_target = posixpath.join(base, link)
          else:
            link_target = link
          resolved = os.path.realpath(
              os.path.join(root, *link_target.split("/")))
          if (link.startswith("/") or os.path.isabs(m.linkname)
              or not _inside(root, resolved)):
            raise DataError(
                f"{tar_path}: refusing link {m.name!r} -> {m.linkname!r}, "
                f"which points outside {dest}.")
        elif not (m.isfile() or m.isdir()):
          raise DataError(
              f"{tar_path}: refusing special member {m.name!r} (device, FIFO "
              "or other non-regular file).")
      os.makedirs(root, exist_ok=True)
      if hasattr(tarfile, "data_filter"):
        tar.extractall(root, members=members, filter="data")
      else:  # Python < 3.11.4: the checks above are the whole defence.
        tar.extractall(root, members=members)
  except _FILTER_ERRORS as e:
    raise DataError(
        f"{tar_path}: refusing unsafe member ({e}); the archive is corrupt or "
        "malicious.") from e
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise DataError(
        f"{tar_path}: unreadable tar archive ({e}); delete it and download it "
        "again.") from e
  return [m.name for m in members]


# --------------------------------------------------------- package fallbacks


def _import_optional(module: str):
  """Imports `module`, or returns None if it is not installed or broken."""
  try:
    return importlib.import_module(module)
  except Exception:  # pylint: disable=broad-except
    return None


# jaxdiff's names of the data sets TFDS holds under another name (the same
# files: MedMNIST v2's pneumoniamnist.npz).
TFDS_NAMES: Dict[str, str] = {"pneumoniamnist": "pneumonia_mnist"}
TFDS_INSTALL = 'pip install -e ".[download]"'
_TF_INSTALL = "pip install tensorflow-cpu"


def _tensorflow_installed() -> bool:
  """Whether TensorFlow is importable (looked up, not imported: slow)."""
  try:
    return importlib.util.find_spec("tensorflow") is not None
  except (ImportError, ValueError):
    return False


def _one_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {' '.join(str(e).split()[:60])}"


def _read_data_source(source, limit: Optional[int]
                      ) -> Tuple[np.ndarray, np.ndarray,
                                 Optional[Tuple[str, ...]]]:
  """The first `limit` examples (all: None) of a `tfds.data_source`."""
  info = source.dataset_info
  keys = info.supervised_keys
  image_key, label_key = (keys if isinstance(keys, tuple) and len(keys) == 2
                          else ("image", "label"))
  n = len(source) if limit is None else min(len(source), max(limit, 1))
  examples = []
  for start in range(0, n, 4096):  # one batched read per 4096 records
    examples += source.__getitems__(list(range(start, min(n, start + 4096))))
  if not examples:
    raise DataError(f"{info.name}: the split has no examples.")
  try:
    images = np.stack([np.asarray(ex[image_key]) for ex in examples])
  except ValueError as e:
    raise DataError(f"{info.name}: images of different sizes ({e}); jaxdiff "
                    "needs one size (the 'folder' data set resizes).") from e
  labels = np.asarray([ex[label_key] for ex in examples], np.int64)
  names = getattr(info.features[label_key], "names", None)
  return images, labels, tuple(names) if names else None


def _tfds_failed(tfds, name: str, split: str, data_dir: str,
                 e: Exception) -> DataNotFoundError:
  """The one-line error of a `tfds.data_source` that failed without TF."""
  try:
    prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # pylint: disable=broad-except
    prepared = True
  if not prepared:
    return DataNotFoundError(
        f"tfds:{name} {split!r}: not prepared in {data_dir}, and TFDS needs "
        f"TensorFlow to download and prepare it: `{_TF_INSTALL}` (reading "
        "needs no TensorFlow afterwards), or put a copy prepared with "
        "file_format='array_record' there.")
  hint = (f" Data prepared as TFRecord is read with TensorFlow: "
          f"`{_TF_INSTALL}`." if isinstance(e, NotImplementedError) else "")
  return DataNotFoundError(f"tfds:{name} {split!r}: tensorflow_datasets "
                           f"failed: {_one_line(e)}.{hint}")


def load_tfds(name: str, split: str, data_dir: str, *,
              limit: Optional[int] = None
              ) -> Tuple[np.ndarray, np.ndarray, Optional[Tuple[str, ...]]]:
  """Reads a split with `tensorflow_datasets`, without TensorFlow if it can.

  `tfds.data_source` reads a data set prepared as array_record files by
  random access, without TensorFlow; TFDS needs TensorFlow to download and
  prepare one (it encodes the images with it), so that happens only when
  TensorFlow is installed. Without `tfds.data_source` (tensorflow_datasets
  < 4.9), or where it fails and TensorFlow is installed (e.g. data prepared
  as TFRecord), `tfds.load(..., batch_size=-1)` reads the split.

  Args:
    name: the TFDS name, or jaxdiff's where `TFDS_NAMES` maps it.
    split: a TFDS split: "train", "test", "train[:10%]", ...
    data_dir: TFDS's data directory.
    limit: read only the first `limit` examples (None: all).

  Returns:
    (images [N, H, W, C] uint8, labels [N] int64, the label names or None).

  Raises:
    DataNotFoundError: tensorflow_datasets is not installed, or the split
      could not be read (the message says why).
    ValueError: TFDS has no data set `name`.
  """
  tfds = _import_optional("tensorflow_datasets")
  if tfds is None:
    raise DataNotFoundError(f"tfds:{name}: tensorflow_datasets is not "
                            f"installed; install it with `{TFDS_INSTALL}`.")
  name = TFDS_NAMES.get(name, name)
  has_tf = _tensorflow_installed()
  unknown = getattr(getattr(tfds, "core", None), "DatasetNotFoundError", ())
  try:
    source = None
    if hasattr(tfds, "data_source"):
      try:
        source = tfds.data_source(name, split=split, data_dir=data_dir,
                                  download=has_tf)
      except unknown:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if not has_tf:
          raise _tfds_failed(tfds, name, split, data_dir, e) from e
    if source is not None:
      return _read_data_source(source, limit)
    arrays = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1,
                                     data_dir=data_dir))
  except unknown as e:
    raise ValueError(
        f"TFDS has no data set {name!r} (tfds.list_builders() names them); "
        "for jaxdiff's own data sets use the source 'files' "
        "(--config.data.source=files).") from e
  except (DataError, DataNotFoundError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataNotFoundError(f"tfds:{name} {split!r}: tensorflow_datasets "
                            f"failed: {_one_line(e)}") from e
  images = np.asarray(arrays["image"])[:limit]  # [N, H, W(, C)]
  return images, np.asarray(arrays["label"])[:limit].astype(np.int64), None


def try_tfds(name: str, split: str, data_dir: str
             ) -> Tuple[Optional[Tuple[np.ndarray, np.ndarray]], str]:
  """`load_tfds` for a missing file: a note instead of an exception.

  Args:
    name: the TFDS name ("mnist", "fashion_mnist", "cifar10").
    split: "train" or "test".
    data_dir: the jaxdiff data root; TFDS keeps its files in
      `<data_dir>/tfds`.

  Returns:
    `((images [N, H, W, C] uint8, labels [N] int32), note)` on success, else
    `(None, note)` where the note says why, for an error message.
  """
  try:
    images, labels, _ = load_tfds(name, split,
                                  os.path.join(data_dir, "tfds"))
  except Exception as e:  # pylint: disable=broad-except
    return None, " ".join(str(e).split())
  if images.ndim == 3:
    images = images[..., None]
  return ((images.astype(np.uint8), labels.astype(np.int32)),
          "tensorflow_datasets succeeded")


def try_medmnist(flag: str, root: str) -> Tuple[Optional[str], str]:
  """Downloads `<root>/<flag>.npz` with the `medmnist` package if installed.

  The download is verified against the MD5 in `medmnist.INFO[flag]` when it
  has one; a mismatching file is deleted and `DataError` raised.

  Args:
    flag: a MedMNIST flag, e.g. "organamnist".
    root: the directory that receives `<flag>.npz`.

  Returns:
    `(path, note)` on success, else `(None, note)` saying why.

  Raises:
    DataError: the downloaded file fails its checksum.
  """
  medmnist = _import_optional("medmnist")
  if medmnist is None:
    return None, "medmnist is not installed"
  path = os.path.join(root, f"{flag}.npz")
  try:
    info = medmnist.INFO[flag]
    os.makedirs(root, exist_ok=True)
    dataset_class = getattr(medmnist, info["python_class"])
    dataset_class(split="train", download=True, root=root)
  except Exception as e:  # pylint: disable=broad-except
    return None, f"medmnist failed: {type(e).__name__}: {e}"
  if not os.path.isfile(path):
    return None, f"medmnist did not write {path}"
  md5 = info.get("MD5") if isinstance(info, dict) else None
  if md5:
    try:
      verify_checksum(path, md5, "md5")
    except DataError as e:
      os.remove(path)
      raise DataError(f"medmnist download rejected and deleted: {e}") from None
  return path, "medmnist succeeded"
