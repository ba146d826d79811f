"""The run directory: checked before any work, locked while training.

    workdir.prepare("runs/organ", create=True)  # a writable directory, or a
                                                # one-line WorkdirError
    with workdir.Lock("runs/organ"):            # one training run at a time
      changes = workdir.config_changes(workdir.read_config("runs/organ"),
                                       requested)

A training run holds an exclusive `fcntl.flock` on `<workdir>/.lock`, with
its host, pid and start time written inside. The OS drops the lock when the
process ends, kill -9 included, so a lock is never stale; a second training
run on the same workdir fails at once, naming the holder. Modes that only
read a run take no lock: `training_holder` tells them whether a run is
training there.

`<workdir>/config.json` is the config the run was trained with
(`write_config`); `config_changes` lists what a resumed run would change,
and `RESUMABLE` the keys that do not change the trained parameters.

This module imports only the standard library and `jaxdiff.files`.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from jaxdiff import files

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"

# Keys a resumed run may change: they do not change the trained parameters
# (periods, the run's length, when to give up on non-finite steps, where the
# data is read from, the devices of a CPU run and the sections of the other
# modes). A name covers its section.
RESUMABLE = frozenset({
    "cpu_devices", "data.data_dir",
    "training.log_every", "training.checkpoint_every",
    "training.sample_every", "training.num_train_steps",
    "training.lr_decay_start", "training.keep_checkpoints",
    "training.max_nonfinite", "training.resume_with_changes",
    "training.stop_sync_every",
    "init_from",  # read only when the workdir has no checkpoint yet
    "model.kwargs.attention",  # the same attention, another kernel
    "eval", "viz", "classify", "denoise", "likelihood"})

# errno -> (verb, what happened, what to do) of the file-system faults a user
# can fix; `describe_os_error` makes one line of them ({a}: "a --workdir"
# for a path in the workdir, else "a path").
_WRITABLE = "Give this user access to it (chmod/chown) or use {another}"
_SPACE = ("Free some space or use {a} on another disk; the checkpoints "
          "written before are kept")
_FIXES = {
    errno.EROFS: ("write", "the file system is read-only",
                  "Use {a} on a writable file system (or remount it "
                  "read-write)"),
    errno.EACCES: ("use", "permission denied", _WRITABLE),
    errno.EPERM: ("use", "operation not permitted", _WRITABLE),
    errno.ENOSPC: ("write", "no space left on the device", _SPACE),
    errno.EDQUOT: ("write", "the disk quota is exceeded", _SPACE),
    errno.ENOTDIR: ("use", "a part of the path is a file, not a directory",
                    "Give a path whose parents are directories"),
    errno.EEXIST: ("use", "a file is in the way of a directory",
                   "Move the file away or use {another}"),
    errno.EISDIR: ("use", "it is a directory, not a file",
                   "Move the directory away or use {another}"),
}
USER_ERRNOS = frozenset(_FIXES)


class WorkdirError(RuntimeError):
  """The workdir cannot be used (the message says why and what to do)."""


def describe_os_error(e: OSError, workdir: Optional[str] = None) -> str:
  """One line naming the path of a file-system fault and what to do.

  Args:
    e: an OSError whose errno is one of `USER_ERRNOS`.
    workdir: the run's workdir: named when `e` names no path, and the advice
      is about `--workdir` when the path is in it.
  """
  where = e.filename if e.filename is not None else workdir
  in_workdir = workdir is not None and (where is None or os.path.abspath(
      where).startswith(os.path.join(os.path.abspath(workdir), "")) or
      os.path.abspath(where) == os.path.abspath(workdir))
  verb, what, fix = _FIXES.get(
      e.errno, ("use", e.strerror or str(e), "Check the path"))
  fix = fix.format(a="a --workdir" if in_workdir else "a path",
                   another="another --workdir" if in_workdir
                   else "another path")
  return f"Cannot {verb} {where}: {what}. {fix}."


# How tensorstore (Orbax's array writer) reports an OSError: a ValueError
# with 'Failed writing: "<path>": ... [os_error_code=\'28\']'.
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")
_TENSORSTORE_PATH = re.compile(r'(?:writing|reading|file)[: ]*"([^"]+)"')


def _as_os_error(e: BaseException) -> Optional[OSError]:
  if isinstance(e, OSError):
    return e
  text = str(e)
  code = _TENSORSTORE_ERRNO.search(text)
  if not code:
    return None
  path = _TENSORSTORE_PATH.search(text)
  n = int(code.group(1))
  return OSError(n, os.strerror(n), path.group(1) if path else None)


def os_error_in(e: BaseException) -> Optional[OSError]:
  """The first OSError with an errno of `USER_ERRNOS` in `e`'s chain of
  causes (a background writer may wrap it, or report it in its message as
  tensorstore does), else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    os_error = _as_os_error(e)
    if os_error is not None and os_error.errno in USER_ERRNOS:
      return os_error
    e = e.__cause__ or e.__context__
  return None


def prepare(path: str, *, create: bool, writable: bool = True) -> str:
  """Checks (and with `create` makes) a workdir before any slow work.

  Args:
    path: the workdir.
    create: make it (and its parents) if missing.
    writable: check, by writing and removing a small file, that files can
      be written in it (when it exists).

  Returns:
    The absolute path.

  Raises:
    WorkdirError: the path is a file, or cannot be created or written (read
      only, permission denied, disk full); the message says what to do.
  """
  path = os.path.abspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(
        f"--workdir {path} is a file, not a directory. Give a directory (it "
        "is created if missing), or move the file away.")
  try:
    if create:
      os.makedirs(path, exist_ok=True)
    if writable and os.path.isdir(path):
      probe = os.path.join(path, f".write-test-{os.getpid()}")
      try:
        with open(probe, "wb") as f:
          f.write(b"\0" * 4096)
          f.flush()
          os.fsync(f.fileno())
      finally:
        if os.path.exists(probe):
          os.remove(probe)
  except OSError as e:
    if e.errno not in USER_ERRNOS:
      raise
    raise WorkdirError(describe_os_error(
        OSError(e.errno, e.strerror, path), path)) from e
  return path


def check_space(path: str, nbytes: int, what: str) -> None:
  """Raises WorkdirError unless the disk of `path` has `nbytes` free.

  Args:
    path: a directory on the disk.
    nbytes: the bytes needed.
    what: what needs them, for the message ('4 checkpoints of this model').
  """
  st = os.statvfs(path)
  free = st.f_bavail * st.f_frsize
  if free < nbytes:
    raise WorkdirError(
        f"Cannot write {path}: {free / 2**20:.1f} MiB free on its disk, but "
        f"{what} need about {nbytes / 2**20:.1f} MiB. Free some space, lower "
        "config.training.keep_checkpoints or use a --workdir on another "
        "disk.")


def _holder_info(fd: int) -> Dict[str, Any]:
  """{'host', 'pid', 'started'} from the lock file ({} if unreadable)."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
  except (OSError, ValueError):
    return {}
  return info if isinstance(info, dict) else {}


def _holder_text(info: Mapping[str, Any]) -> str:
  """'host h, pid p, since t'."""
  if not {"host", "pid", "started"} <= set(info):
    return "a process that has not written its host and pid yet"
  return f"host {info['host']}, pid {info['pid']}, since {info['started']}"


def _flock_exclusive(fd: int, retry_s: float) -> bool:
  """Whether `fd` got an exclusive flock within `retry_s` seconds."""
  deadline = time.monotonic() + retry_s
  while True:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      if time.monotonic() >= deadline:
        return False
      time.sleep(0.05)


class Lock:
  """An exclusive lock on a workdir for one training run.

  `acquire` takes `fcntl.flock(LOCK_EX)` on `<workdir>/.lock` without
  waiting (a short retry covers a reader's momentary shared lock) and
  writes host, pid and start time into it; `release` (or the end of the
  process, however it ends) gives it back. Usable as a context manager.
  """

  def __init__(self, workdir: str, *, retry_s: float = 1.0):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.retry_s = retry_s
    self.fd: Optional[int] = None

  def acquire(self) -> "Lock":
    """Takes the lock.

    Raises:
      WorkdirError: another process holds it (named in the message), or the
        lock file cannot be written.
    """
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      if e.errno not in USER_ERRNOS:
        raise
      raise WorkdirError(describe_os_error(e, self.workdir)) from e
    if not _flock_exclusive(fd, self.retry_s):
      info = _holder_info(fd)
      os.close(fd)
      stop = (f"stop it (kill {info['pid']} on {info['host']})"
              if {"pid", "host"} <= set(info) else "stop it")
      raise WorkdirError(
          f"--workdir {self.workdir} is in use by another training run "
          f"({_holder_text(info)}). Wait for it to finish, {stop}, or use "
          "another --workdir.")
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:  # Who holds it, for the message of a second run.
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:  # A full disk: the lock holds all the same.
      pass
    self.fd = fd
    return self

  def release(self) -> None:
    """Gives the lock back (a no-op when not held)."""
    if self.fd is None:
      return
    try:
      os.ftruncate(self.fd, 0)
    except OSError:
      pass
    fcntl.flock(self.fd, fcntl.LOCK_UN)
    os.close(self.fd)
    self.fd = None

  def __enter__(self) -> "Lock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def training_holder(workdir: str) -> Optional[str]:
  """'host h, pid p, since t' of the run training in `workdir`, else None.

  Takes and at once gives back a shared lock; never waits and never creates
  the lock file.
  """
  path = os.path.join(workdir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return _holder_text(_holder_info(fd))
  except OSError:
    return None
  finally:
    os.close(fd)  # Closing also gives a shared lock back.
  return None


def read_config(workdir: str) -> Optional[dict]:
  """`<workdir>/config.json`, or None when missing or unreadable."""
  try:
    with open(os.path.join(workdir, CONFIG_NAME), encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, ValueError):
    return None
  return config if isinstance(config, dict) else None


def write_config(workdir: str, config_json: dict) -> None:
  """Writes `<workdir>/config.json` atomically (`files.write_json`)."""
  files.write_json(os.path.join(workdir, CONFIG_NAME), config_json)


_ABSENT = "(absent)"


def _flat(config: Mapping[str, Any]) -> Dict[str, Any]:
  """{'training.lr': 0.001, 'model.kwargs': {...}, 'seed': 0}: sections
  opened one level; a mapping-valued key stays whole."""
  out = {}
  for name, value in config.items():
    if isinstance(value, Mapping):
      for key, v in value.items():
        out[f"{name}.{key}"] = v
    else:
      out[name] = value
  return out


def _same(a, b) -> bool:
  """a == b, where NaN equals NaN."""
  return a == b or (isinstance(a, float) and isinstance(b, float)
                    and math.isnan(a) and math.isnan(b))


def _mapping_changes(key: str, old: Mapping, new: Mapping
                     ) -> List[Tuple[str, Any, Any]]:
  """Changes inside a mapping value (model.kwargs): a key on one side only
  is a change."""
  return [(f"{key}.{k}", old.get(k, _ABSENT), new.get(k, _ABSENT))
          for k in sorted(set(old) | set(new))
          if not _same(old.get(k, _ABSENT), new.get(k, _ABSENT))]


def config_changes(saved: Mapping[str, Any], requested: Mapping[str, Any]
                   ) -> List[Tuple[str, Any, Any]]:
  """The keys whose value differs, as (key, saved value, requested value).

  Both configs are JSON dicts (`config.to_json`). A key that one of them
  lacks (a workdir trained before the key existed) is no change; inside a
  mapping value such as `model.kwargs` it is.
  """
  old, new = _flat(saved), _flat(requested)
  changes = []
  for key in sorted(set(old) & set(new)):
    a, b = old[key], new[key]
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      changes += _mapping_changes(key, a, b)
    elif not _same(a, b):
      changes.append((key, a, b))
  return changes


# Keys that say what a checkpoint's network output means without changing
# its parameters' shapes: a mode reading the run with other values would
# restore it and silently compute the wrong thing.
MEANING = ("model.prediction", "model.sigma_data", "diffusion",
           "training.conditional")


def meaning_changes(saved: Mapping[str, Any], requested: Mapping[str, Any]
                    ) -> List[Tuple[str, Any, Any]]:
  """The `MEANING` keys whose requested value differs from the run's."""
  return [c for c in config_changes(saved, requested)
          if any(c[0] == k or c[0].startswith(k + ".") for k in MEANING)]


def is_resumable(key: str) -> bool:
  """Whether changing `key` leaves a resumed run's results as they were."""
  parts = key.split(".")
  return any(".".join(parts[:i]) in RESUMABLE
             for i in range(1, len(parts) + 1))


def format_changes(changes: List[Tuple[str, Any, Any]]) -> str:
  """'training.lr: 0.001 -> 1000000.0; seed: 0 -> 1'."""
  def show(v):
    return v if v is _ABSENT else json.dumps(v)
  return "; ".join(f"{k}: {show(a)} -> {show(b)}" for k, a, b in changes)
