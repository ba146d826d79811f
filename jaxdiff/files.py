"""Output files written whole or not at all.

Every file jaxdiff writes for a user (PNG, GIF, JSON, CSV, NPZ, the eval
cache) goes through `atomic_write`: the bytes go to a temporary file in the
same folder, which is flushed, synced and renamed over the destination
(`os.replace`, atomic on POSIX). A full disk, a read-only folder or a crash
mid-write therefore leaves the old file (or none), never a partial or 0-byte
one, and the temporary file is removed. Standard library only.

    with files.atomic_write("out/metrics.csv", "w", newline="") as f:
      csv.writer(f).writerow(["method", "psnr"])
    files.write_json("out/result.json", {"fd": 1.5})
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
from typing import IO, Any, Iterator, Union

PathLike = Union[str, os.PathLike]

TEMP_SUFFIX = ".tmp"


def temp_path(path: PathLike) -> str:
  """A fresh hidden name beside `path` for its temporary file."""
  folder, name = os.path.split(os.path.abspath(os.fspath(path)))
  return os.path.join(folder,
                      f".{name}.{os.getpid()}-{secrets.token_hex(4)}"
                      f"{TEMP_SUFFIX}")


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", **open_kwargs
                 ) -> Iterator[IO[Any]]:
  """Opens a temporary file that replaces `path` when the block succeeds.

  The parent folder is created if needed. The file is created with the
  permissions a plain `open` would give it (0o666 less the umask).

  Args:
    path: the destination.
    mode: "w" (text) or "wb" (binary); "x" and "a" are not atomic and are
      refused.
    **open_kwargs: passed to `open` (encoding, newline, ...).

  Yields:
    The open temporary file.

  Raises:
    OSError: the folder cannot be created, or writing, syncing or renaming
      failed (disk full, read-only, permission denied); it names `path`, and
      neither a partial `path` nor the temporary file is left. Any other
      exception raised in the block also removes the temporary file and
      leaves `path` as it was.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}.")
  path = os.fspath(path)
  tmp = temp_path(path)
  try:
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  except OSError as e:
    raise _naming(e, path) from e
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
      f.flush()
      _sync(f)
    os.replace(tmp, path)
  except OSError as e:
    _remove_quietly(tmp)
    raise _naming(e, path) from e
  except BaseException:
    _remove_quietly(tmp)
    raise


def _sync(f: IO[Any]) -> None:
  """fsync, tolerating files without a descriptor and file systems that
  cannot sync (EINVAL, ENOTSUP)."""
  try:
    fd = f.fileno()
  except (AttributeError, io.UnsupportedOperation):
    return
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.ENOTSUP):
      raise


def _naming(error: OSError, path: str) -> OSError:
  """`error` with `path` (not the temporary name) as its file name."""
  if error.errno is None:
    return error
  # OSError(errno, ...) picks the subclass (PermissionError, ...) itself.
  return OSError(error.errno, error.strerror or str(error), path)


def write_bytes(path: PathLike, data: bytes) -> str:
  """Writes `data` to `path` atomically; returns the path."""
  with atomic_write(path, "wb") as f:
    f.write(data)
  return os.fspath(path)


def write_text(path: PathLike, text: str) -> str:
  """Writes `text` (UTF-8) to `path` atomically; returns the path."""
  with atomic_write(path, "w", encoding="utf-8") as f:
    f.write(text)
  return os.fspath(path)


def write_json(path: PathLike, obj: Any, **dump_kwargs) -> str:
  """Writes `obj` as JSON (indent=2 unless given) atomically; returns the
  path. An object JSON cannot encode raises before anything is written."""
  dump_kwargs.setdefault("indent", 2)
  return write_text(path, json.dumps(obj, **dump_kwargs))
