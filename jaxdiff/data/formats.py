"""Canonical on-disk formats of image data sets, read and written with numpy.

IDX (MNIST, gzipped or not), CIFAR-10's binary batches, a tar of
`<split>/<class>/*.jpg` images, and MedMNIST's npz; plus `Dataset`, the
validated container every reader returns. A malformed file raises `DataError`
with the path and what to do; images are decoded by `imagefiles` (with its
limits), and a file is written whole or not at all. numpy, Pillow and the
standard library only.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
import zlib
from typing import (IO, Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import numpy as np

from jaxdiff.data import imagefiles
from jaxdiff.data.download import DataError
from jaxdiff.data.imagefiles import IMAGE_EXTENSIONS


class Dataset(NamedTuple):
  """One split of a labelled image data set.

  Attributes:
    images: [N, H, W, C] uint8, C in {1, 3}.
    labels: [N] int32 in [0, num_classes).
    num_classes: the number of classes.
    class_names: `num_classes` human-readable names, index = label.
  """
  images: np.ndarray  # [N, H, W, C] uint8
  labels: np.ndarray  # [N] int32
  num_classes: int
  class_names: Tuple[str, ...]


_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8),
               0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_CIFAR_RECORD = 1 + 32 * 32 * 3  # label byte + channel-major 32x32x3 pixels


def _write_whole(path: str, write: Callable[[IO[bytes]], None]) -> None:
  """Calls write(file) on a temporary file beside `path`, then renames it
  onto `path`: a failed write leaves no partial file."""
  tmp = f"{path}.{os.getpid()}.tmp"
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _check_limit(limit: Optional[int]) -> Optional[int]:
  if limit is None:
    return None
  if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
    raise TypeError(f"limit must be an int or None, got {limit!r}.")
  if limit < 0:
    raise ValueError(f"limit must be >= 0, got {limit}.")
  return int(limit)


def make_dataset(images: np.ndarray, labels: np.ndarray,
                  class_names: Sequence[str], source: str,
                  limit: Optional[int] = None) -> Dataset:
  """Validates arrays, applies `limit` and builds a `Dataset`."""
  if images.ndim == 3:
    images = images[..., None]  # [N, H, W] -> [N, H, W, 1]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(
        f"{source}: images have shape {images.shape}; expected [N, H, W] or "
        "[N, H, W, C] with C = 1 or 3.")
  if images.dtype != np.uint8:
    raise DataError(f"{source}: images are {images.dtype}; expected uint8.")
  labels = np.asarray(labels).reshape(-1)
  if images.shape[0] != labels.shape[0]:
    raise DataError(
        f"{source}: {images.shape[0]} images but {labels.shape[0]} labels; "
        "the files belong to different data sets or one is truncated.")
  num_classes = len(class_names)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(
        f"{source}: labels span [{labels.min()}, {labels.max()}] but the data "
        f"set has {num_classes} classes.")
  if limit is not None:
    images, labels = images[:limit], labels[:limit]
  return Dataset(images=np.require(images, np.uint8, ["C", "W"]),
                 labels=labels.astype(np.int32), num_classes=num_classes,
                 class_names=tuple(class_names))


def to_model_range(images):
  """uint8 pixels [0, 255] -> float32 in [-1, 1], the range every model and
  metric of jaxdiff works in (numpy or JAX arrays, any shape)."""
  return images.astype(np.float32) / 127.5 - 1.0


# ------------------------------------------------------------------------ IDX


def _read_file(path: str) -> bytes:
  """Reads a file, gunzipping it if it ends in .gz."""
  if not path.endswith(".gz"):
    with open(path, "rb") as f:
      return f.read()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise DataError(
        f"{path}: not a complete gzip file ({type(e).__name__}: {e}); the "
        "download was truncated or corrupted. Delete it and download it "
        "again.") from e


def parse_idx(raw: bytes, source: str = "<bytes>",
              expected_magic: Optional[int] = None) -> np.ndarray:
  """Parses the IDX format of MNIST-style files.

  Args:
    raw: the uncompressed file contents.
    source: a name for error messages.
    expected_magic: 2051 for image files, 2049 for label files, or None.

  Returns:
    The array, shaped by the header's dimensions.

  Raises:
    DataError: bad magic number, unknown dtype or wrong byte count.
  """
  if len(raw) < 4:
    raise DataError(f"{source}: only {len(raw)} bytes; not an IDX file.")
  magic = int.from_bytes(raw[:4], "big")
  if expected_magic is not None and magic != expected_magic:
    kind = "images" if expected_magic == _IDX_IMAGES_MAGIC else "labels"
    raise DataError(
        f"{source}: IDX magic number {magic}, expected {expected_magic} "
        f"({kind}); the file is not an MNIST-format {kind} file or is "
        "corrupt. Re-download it.")
  if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataError(f"{source}: IDX magic number {magic} is not valid.")
  dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{source}: truncated IDX header ({len(raw)} bytes).")
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
               for i in range(ndim))
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  actual = len(raw) - header
  if actual != expected:
    raise DataError(
        f"{source}: IDX header says {dims} ({expected} bytes of data) but the "
        f"file has {actual}; it is "
        f"{'truncated' if actual < expected else 'too long'}. Delete it and "
        "download it again.")
  array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
  return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str, expected_magic: Optional[int] = None) -> np.ndarray:
  """Reads an IDX file, gzipped (.gz) or not.

  Args:
    path: the file.
    expected_magic: 2051 for image files, 2049 for label files, or None.

  Returns:
    The array.
  """
  return parse_idx(_read_file(path), path, expected_magic)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes a uint8 array as an IDX file, gzipped if `path` ends in .gz.

  Args:
    path: the destination.
    array: uint8, 1 to 3 dimensions.
  """
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  def write(f):
    if path.endswith(".gz"):
      with gzip.GzipFile(filename=path, mode="wb", fileobj=f) as gz:
        gz.write(header + array.tobytes())
    else:
      f.write(header + array.tobytes())
  _write_whole(path, write)


# ------------------------------------------------------------------- CIFAR-10


def read_cifar_bin(paths: Sequence[str], limit: Optional[int] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Reads CIFAR-10 binary batches (records of label byte + 3072 pixels).

  Args:
    paths: the batch files, concatenated in this order.
    limit: read only the first `limit` records.

  Returns:
    images [N, 32, 32, 3] uint8 and labels [N] uint8.

  Raises:
    DataError: a file's size is not a multiple of 3073 bytes.
  """
  chunks: List[np.ndarray] = []
  remaining = limit
  for path in paths:
    size = os.path.getsize(path)
    if size % _CIFAR_RECORD:
      raise DataError(
          f"{path}: {size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
          "CIFAR-10 records; the file is truncated or not a CIFAR-10 binary "
          "batch (the python pickles are not read). Download it again.")
    count = size // _CIFAR_RECORD
    if remaining is not None:
      count = min(count, remaining)
      remaining -= count
    with open(path, "rb") as f:
      raw = f.read(count * _CIFAR_RECORD)
    chunks.append(np.frombuffer(raw, np.uint8).reshape(count, _CIFAR_RECORD))
    if remaining == 0:
      break
  records = (np.concatenate(chunks) if chunks
             else np.zeros((0, _CIFAR_RECORD), np.uint8))  # [N, 3073]
  labels = records[:, 0]  # [N]
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels  # [N, 32, 32, 3], [N]


def write_cifar_bin(path: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes CIFAR-10 binary records.

  Args:
    path: the destination batch file.
    images: [N, 32, 32, 3] uint8.
    labels: [N] in [0, 255].
  """
  images = np.asarray(images, np.uint8).transpose(0, 3, 1, 2)  # [N, 3, 32, 32]
  records = np.concatenate(
      [np.asarray(labels, np.uint8).reshape(-1, 1),
       images.reshape(images.shape[0], -1)], axis=1)  # [N, 3073]
  _write_whole(path, lambda f: f.write(records.tobytes()))


def read_image_tar(path: str, split: str, class_names: Sequence[str],
                   limit: Optional[int] = None,
                   size: Optional[Tuple[int, int]] = None
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """Decodes `<split>/<class>/<file>` images from a tar, in memory.

  Images are interleaved across classes: the first file (by name) of every
  class in class order, then the second of every class, and so on. The order
  does not depend on the archive's member order, and the first N images
  (`limit=N`) cover all classes evenly rather than only the first class.

  Args:
    path: the tar archive (any compression).
    split: the top-level folder to read.
    class_names: the class folder names, index = label.
    limit: decode only the first `limit` images of that order.
    size: the required (height, width), or None for any (but all equal).

  Returns:
    images [N, H, W, 3] uint8 and labels [N] int32.

  Raises:
    DataError: unreadable archive or image, unknown class, no images.
  """
  index = {c: i for i, c in enumerate(class_names)}
  entries: List[Tuple[int, str, bytes]] = []
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if len(parts) != 3 or parts[0] != split:
          continue
        cls, fname = parts[1], parts[2]
        if not fname.lower().endswith(IMAGE_EXTENSIONS):
          continue
        if cls not in index:
          raise DataError(
              f"{path}: member {member.name!r} is in unknown class folder "
              f"{cls!r}; expected one of {', '.join(class_names)}.")
        entries.append((index[cls], fname, _read_member(path, tar, member)))
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise DataError(
        f"{path}: unreadable tar archive ({type(e).__name__}: {e}); delete it "
        "and download it again.") from e
  if not entries:
    raise DataError(f"{path}: no images under {split}/<class>/ in the "
                    "archive.")
  entries.sort(key=lambda e: (e[0], e[1]))  # By class, then file name.
  first: Dict[int, int] = {}  # Class -> index of its first entry.
  for i, entry in enumerate(entries):
    first.setdefault(entry[0], i)
  # Interleave: sort by (rank of the file within its class, class).
  order = sorted(range(len(entries)),
                 key=lambda i: (i - first[entries[i][0]], entries[i][0]))
  entries = [entries[i] for i in order]
  if limit is not None:
    entries = entries[:limit]
  images: List[np.ndarray] = []
  for label, fname, data in entries:
    img = imagefiles.decoded(
        f"{path}: {split}/{class_names[label]}/{fname}",
        lambda d=data: imagefiles.converted(io.BytesIO(d), "RGB"))
    arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    want = size or (images[0].shape[:2] if images else arr.shape[:2])
    if arr.shape[:2] != tuple(want):
      raise DataError(
          f"{path}: {split}/{class_names[label]}/{fname} is "
          f"{arr.shape[0]}x{arr.shape[1]}, expected {want[0]}x{want[1]}.")
    images.append(arr)
  labels = np.array([e[0] for e in entries], dtype=np.int32)
  if not images:
    return np.zeros((0,) + tuple(size or (0, 0)) + (3,), np.uint8), labels
  return np.stack(images), labels  # [N, H, W, 3], [N]


def _read_member(path: str, tar: tarfile.TarFile,
                 member: tarfile.TarInfo) -> bytes:
  """A member's bytes, refused unread when over `MAX_IMAGE_BYTES`."""
  cap = imagefiles.MAX_IMAGE_BYTES
  if member.size > cap:
    raise DataError(
        f"{path}: member {member.name!r} is {member.size} bytes, more than "
        f"the {cap} an image may have; the archive is corrupt or "
        "not an image data set.")
  return tar.extractfile(member).read(member.size)  # size checked above


# ------------------------------------------------------------------- MedMNIST


def read_medmnist_npz(path: str, split: str, class_names: Sequence[str],
                      limit: Optional[int] = None) -> Dataset:
  """Reads one split of a MedMNIST-layout npz without unpickling anything.

  Args:
    path: the npz with `<split>_images` [N, H, W(, C)] uint8 and
      `<split>_labels` [N, 1] integers.
    split: the key prefix.
    class_names: index = label.
    limit: keep only the first `limit` examples.

  Returns:
    The split; grayscale images get a channel axis.

  Raises:
    DataError: not an npz, missing keys, object arrays, wrong dtype or shape.
  """
  image_key, label_key = f"{split}_images", f"{split}_labels"
  try:
    with np.load(path, allow_pickle=False) as npz:
      if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an npz archive.")
      missing = [k for k in (image_key, label_key) if k not in npz.files]
      if missing:
        raise DataError(
            f"{path}: no {', '.join(missing)} (has {', '.join(npz.files)}); "
            "not a MedMNIST npz or the wrong split.")
      images = npz[image_key]
      labels = npz[label_key]
  except DataError:
    raise
  except ValueError as e:  # Object arrays with allow_pickle=False land here.
    raise DataError(
        f"{path}: cannot read without unpickling ({e}); it holds object "
        "arrays, which jaxdiff refuses to load. Use the official MedMNIST "
        "npz.") from e
  except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
    raise DataError(
        f"{path}: not a readable npz archive ({type(e).__name__}: {e}); delete "
        "it and download it again.") from e
  if images.dtype != np.uint8:
    raise DataError(f"{path}: {image_key} is {images.dtype}; expected uint8.")
  if not (images.ndim == 3
          or (images.ndim == 4 and images.shape[-1] in (1, 3))):
    raise DataError(
        f"{path}: {image_key} has shape {images.shape}; expected [N, H, W] or "
        "[N, H, W, 3].")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(
        f"{path}: {label_key} is {labels.dtype}; expected integers.")
  if labels.ndim == 2 and labels.shape[1] != 1:
    raise DataError(
        f"{path}: {label_key} has shape {labels.shape}: a multi-label data "
        "set, which `Dataset` ([N] labels) does not represent.")
  if labels.ndim not in (1, 2):
    raise DataError(
        f"{path}: {label_key} has shape {labels.shape}; expected [N, 1].")
  return make_dataset(images, labels.reshape(-1), class_names, path, limit)
