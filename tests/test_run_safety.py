"""A run is never lost or silently corrupted: the workdir lock, resuming
with another config, non-finite states, early signals, metrics.jsonl after a
kill, and file-system faults (a file as workdir, read-only, disk full) as
one line and exit code 2.

Every fault is provoked for real: a second process, kill -9, a read-only
bind mount and a tiny tmpfs (where `mount` works; else the failing call is
made to raise the OSError the kernel would give, or the test is skipped).
The fast tests work in-process; the slow ones run launch.py as a user does.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import launch_helpers  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import organamnist
from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import run as run_lib
from jaxdiff import train
from jaxdiff import trained as trained_lib
from jaxdiff import workdir as workdir_lib
from jaxdiff.train import hooks as hooks_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

TINY = ["--config", "configs/organamnist.py:tiny",
        "--config.data.name=organamnist_small"]
LONG = ["--config.training.num_train_steps=100000",
        "--config.training.log_every=1", "--config.training.sample_every=0"]
TIMEOUT = 420
ONE_LINE = re.compile(r"jaxdiff: error: [^\n]+")


# ------------------------------------------------------------------ helpers


def _env():
  return launch_helpers.launch_env()


def _launch(workdir, *args):
  return [sys.executable, str(REPO / "launch.py"), "--workdir", str(workdir),
          *TINY, *args]


def _run(workdir, *args):
  """launch.py to the end: (exit code, stdout, stderr)."""
  proc = subprocess.run(_launch(workdir, *args), cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=TIMEOUT,
                        check=False)
  return proc.returncode, proc.stdout, proc.stderr


class _Run:
  """launch.py in the background, its stdout read line by line."""

  def __init__(self, workdir, *args):
    self.err = tempfile.TemporaryFile("w+")
    self.proc = subprocess.Popen(
        _launch(workdir, *args), cwd=REPO, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=self.err)
    self.lines = []
    self.watchdog = threading.Timer(TIMEOUT, self.proc.kill)
    self.watchdog.start()

  def wait_for_step(self, step: int) -> int:
    """Reads stdout until `jaxdiff: step N/` with N >= step; returns N."""
    for line in self.proc.stdout:
      self.lines.append(line)
      m = re.match(r"jaxdiff: step (\d+)/", line)
      if m and int(m.group(1)) >= step:
        return int(m.group(1))
    raise AssertionError("".join(self.lines)[-2000:] + self.stderr())

  def finish(self):
    """Waits for the end: (exit code, stdout, stderr)."""
    rest, _ = self.proc.communicate()
    self.watchdog.cancel()
    return self.proc.returncode, "".join(self.lines) + rest, self.stderr()

  def stderr(self) -> str:
    self.err.seek(0)
    return self.err.read()


def _last_line(text: str) -> str:
  lines = [l for l in text.splitlines() if l.strip()]
  return lines[-1] if lines else ""


def _assert_one_line_error(rc, err, pattern):
  """Exit code 2, no traceback, and a last line `jaxdiff: error: <pattern>`."""
  assert rc == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  line = _last_line(err)
  assert ONE_LINE.fullmatch(line), line
  assert re.search(pattern, line), line
  return line


def _wait_for_lock(workdir: pathlib.Path, pid: int, proc) -> None:
  """Until `pid` holds the workdir's lock (its pid written in .lock)."""
  deadline = time.time() + TIMEOUT
  while time.time() < deadline and proc.poll() is None:
    try:
      if json.loads((workdir / ".lock").read_text()).get("pid") == pid:
        return
    except (OSError, ValueError):
      pass
    time.sleep(0.02)
  raise AssertionError(f"process {pid} never locked {workdir}")


def _mount(*args) -> bool:
  try:
    subprocess.run(["mount", *args], check=True, capture_output=True)
    return True
  except (OSError, subprocess.CalledProcessError):
    return False


def _umount(path) -> None:
  subprocess.run(["umount", "-l", str(path)], check=False,
                 capture_output=True)


@contextlib.contextmanager
def _tmpfs(path: pathlib.Path, size: str):
  """A tmpfs of `size` at `path`, or None where mounting is not allowed."""
  path.mkdir(parents=True, exist_ok=True)
  if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
    yield None
    return
  try:
    yield path
  finally:
    _umount(path)


@contextlib.contextmanager
def _read_only(src: pathlib.Path, dst: pathlib.Path):
  """`src` seen read-only at `dst` (a bind mount), or None where mounting
  is not allowed. Root writes through chmod, not through this."""
  dst.mkdir(parents=True, exist_ok=True)
  if not _mount("--bind", str(src), str(dst)):
    yield None
    return
  try:
    if not _mount("-o", "remount,bind,ro", str(dst)):
      yield None
      return
    yield dst
  finally:
    _umount(dst)


def _all_checkpoints_finite(ckpt_dir) -> list:
  """The steps in ckpt_dir, asserting every array of each is finite."""
  with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
    steps = ckpt.all_steps()
    for step in steps:
      state = ckpt.restore_raw(step)
      for name in ("params", "ema_params", "opt_state"):
        for leaf in jax.tree.leaves(state[name]):
          leaf = np.asarray(leaf)
          if np.issubdtype(leaf.dtype, np.floating):
            assert np.isfinite(leaf).all(), (step, name)
  return steps


def _logged_steps(workdir) -> list:
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(l)["step"] for l in f if l.strip()]


def _tiny_state():
  """A TrainState of the tiny config (zeros: the values do not matter
  here, and no compilation is needed), and its config JSON."""
  c = organamnist.get_config("tiny")
  c.data.name = "organamnist_small"
  s = config_lib.typed(c)
  shapes = train.abstract_state(config_lib.build_model(s),
                                train.make_optimizer(s.training),
                                s.data.image_shape)
  state = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  return c, state, config_lib.to_json(c)


# ------------------------------------------------ the lock (fast, real)


_HOLDER = """
import sys, time
from jaxdiff import workdir
lock = workdir.Lock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_lib.WorkdirError) as e:
      workdir_lib.Lock(tmp_path, retry_s=0.2).acquire()
    msg = str(e.value)
    assert f"pid {holder.pid}" in msg and f"kill {holder.pid}" in msg, msg
    assert "in use by another training run" in msg and "\n" not in msg
    assert f"pid {holder.pid}" in workdir_lib.training_holder(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The OS released the lock with the killed process: no stale lock.
  assert workdir_lib.training_holder(tmp_path) is None
  with workdir_lib.Lock(tmp_path) as lock:
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert lock.fd is not None
  assert workdir_lib.training_holder(tmp_path) is None
  assert (tmp_path / ".lock").read_text() == ""  # Nobody holds it.


def test_a_readers_shared_lock_does_not_stop_training(tmp_path):
  (tmp_path / ".lock").write_text("")
  fd = os.open(tmp_path / ".lock", os.O_RDONLY)
  import fcntl  # pylint: disable=g-import-not-at-top
  fcntl.flock(fd, fcntl.LOCK_SH)
  timer = threading.Timer(0.2, os.close, (fd,))  # The reader is done.
  timer.start()
  with workdir_lib.Lock(tmp_path, retry_s=5.0):
    pass
  timer.join()


# ------------------------------------------- the workdir before any work


def test_a_file_as_workdir_is_one_line_in_every_mode(tmp_path, capsys,
                                                     monkeypatch):
  monkeypatch.setattr(run_lib.distributed, "set_cpu_devices",
                      lambda *a: 0)
  monkeypatch.setattr(run_lib.distributed, "initialize", lambda: False)
  path = tmp_path / "run"
  path.write_text("not a directory")
  config = organamnist.get_config("tiny")
  for mode in ("train", "sample", "denoise", "eval", "classify", "viz"):
    with pytest.raises(SystemExit) as e:
      run_lib.main(config, str(path), mode)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.fullmatch(
        rf"jaxdiff: error: --workdir {re.escape(str(path))} is a file, not "
        r"a directory\. Give a directory .*\n", err), err
    assert "train first" not in err
  # A parent that is a file: the OSError names the path and what to do.
  with pytest.raises(workdir_lib.WorkdirError, match=r"Cannot use .*run/sub:"
                     r" a part of the path is a file, not a directory"):
    workdir_lib.prepare(str(path / "sub"), create=True)


def _fake_open(err: int):
  """An `open` that fails like the kernel on a read-only or full disk."""
  def fake(file, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax+"):
      raise OSError(err, os.strerror(err), str(file))
    return open(file, mode, *args, **kwargs)
  return fake


def test_read_only_workdir_is_refused_before_any_work(tmp_path, monkeypatch):
  src = tmp_path / "run"
  src.mkdir()
  with _read_only(src, tmp_path / "ro") as ro:
    if ro is None:  # No mount here: the write fails as it would.
      ro = src
      monkeypatch.setattr(workdir_lib, "open", _fake_open(errno.EROFS),
                          raising=False)
    with pytest.raises(workdir_lib.WorkdirError) as e:
      workdir_lib.prepare(str(ro), create=True)
  assert str(e.value) == (
      f"Cannot write {ro}: the file system is read-only. Use a --workdir on "
      "a writable file system (or remount it read-write).")
  assert not list(src.iterdir())  # No probe left behind.


def test_full_disk_is_refused_before_any_work(tmp_path, monkeypatch):
  with _tmpfs(tmp_path / "disk", "64k") as disk:
    if disk is None:
      disk = tmp_path
      monkeypatch.setattr(workdir_lib, "open", _fake_open(errno.ENOSPC),
                          raising=False)
    else:  # Fill it.
      with open(disk / "filler", "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
          while True:
            f.write(b"\0" * 4096)
    with pytest.raises(workdir_lib.WorkdirError,
                       match=r"Cannot write .*: no space left on the "
                       r"device\. Free some space"):
      workdir_lib.prepare(str(disk / "run"), create=True)


def test_too_little_space_for_the_checkpoints_is_refused(tmp_path,
                                                         monkeypatch):
  with _tmpfs(tmp_path / "disk", "1m") as disk:
    if disk is None:
      disk = tmp_path

      class StatVfs:
        f_bavail, f_frsize = 256, 4096
      monkeypatch.setattr(workdir_lib.os, "statvfs", lambda p: StatVfs)
    workdir_lib.check_space(str(disk), 2**19, "a checkpoint")
    with pytest.raises(workdir_lib.WorkdirError,
                       match=r"Cannot write .*: 1\.0 MiB free on its disk, "
                       r"but 3 checkpoints need about 3\.0 MiB\."):
      workdir_lib.check_space(str(disk), 3 * 2**20, "3 checkpoints")


def test_file_system_faults_become_one_line_naming_the_path(
    tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(run_lib.distributed, "set_cpu_devices",
                      lambda *a: 0)
  monkeypatch.setattr(run_lib.distributed, "initialize", lambda: False)
  config = organamnist.get_config("tiny")
  # How tensorstore (Orbax) reports a full disk from its save thread.
  store = ValueError(
      'RESOURCE_EXHAUSTED: Failed writing: "/w/checkpoints/6/d/ab": Failed '
      "to write 71196 bytes to file 8: No space left on device "
      "[os_error_code='28']")
  faults = {
      OSError(errno.EROFS, "Read-only file system", str(tmp_path / "x.png")):
          r"Cannot write \S+/x\.png: the file system is read-only\. Use a "
          r"--workdir on a writable file system",
      PermissionError(errno.EACCES, "Permission denied", "/w/m.json"):
          r"Cannot use /w/m\.json: permission denied\. Give this user "
          r"access to it \(chmod/chown\) or use another path\.",
      OSError(errno.ENOSPC, "No space left on device"):
          rf"Cannot write {re.escape(str(tmp_path))}: no space left on the "
          r"device\.",
      store: r"Cannot write /w/checkpoints/6/d/ab: no space left",
      NotADirectoryError(errno.ENOTDIR, "Not a directory", "/w/f/g"):
          r"Cannot use /w/f/g: a part of the path is a file",
      IsADirectoryError(errno.EISDIR, "Is a directory", "/w/m.json"):
          r"Cannot use /w/m\.json: it is a directory, not a file\.",
  }
  for fault, pattern in faults.items():
    def mode(config, workdir, fault=fault):
      try:
        raise fault
      except Exception as e:
        raise RuntimeError("wrapped by a background writer") from e
    monkeypatch.setattr(run_lib, "mode_fn", lambda name, mode=mode: mode)
    with pytest.raises(SystemExit) as e:
      run_lib.main(config, str(tmp_path), "train")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxdiff: error: "), err
    assert re.search(pattern, err), err
  # Anything else is a bug: its traceback stays.
  monkeypatch.setattr(run_lib, "mode_fn", lambda name: lambda c, w: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    run_lib.main(config, str(tmp_path), "train")


# ------------------------------------------------- resuming with a config


def test_config_changes_and_the_keys_a_resume_may_change():
  saved = {"seed": 0, "cpu_devices": -1,
           "training": {"lr": 0.001, "num_train_steps": 4, "log_every": 2},
           "model": {"kwargs": {"ch": 8, "ch_mult": [1, 2]}}}
  requested = {"seed": 0, "cpu_devices": 2,
               "training": {"lr": 1e6, "num_train_steps": 8, "log_every": 2,
                            "resume_with_changes": True},
               "model": {"kwargs": {"ch": 8, "ch_mult": [1, 2, 2],
                                    "dropout": 0.1}},
               "eval": {"num_samples": 10}, "viz": {"figures": "loss"}}
  changes = workdir_lib.config_changes(saved, requested)
  assert workdir_lib.format_changes(changes) == (
      "cpu_devices: -1 -> 2; model.kwargs.ch_mult: [1, 2] -> [1, 2, 2]; "
      "model.kwargs.dropout: (absent) -> 0.1; training.lr: 0.001 -> "
      "1000000.0; training.num_train_steps: 4 -> 8")
  # Keys (and sections) the saved config lacks are no change; inside
  # model.kwargs a new entry is.
  refused = [k for k, _, _ in changes if not workdir_lib.is_resumable(k)]
  assert refused == ["model.kwargs.ch_mult", "model.kwargs.dropout",
                     "training.lr"]
  for key in ("training.log_every", "training.checkpoint_every",
              "training.sample_every", "training.num_train_steps",
              "training.lr_decay_start", "training.keep_checkpoints",
              "training.resume_with_changes", "cpu_devices",
              "data.data_dir", "eval.num_samples", "viz.figures",
              "classify.num_images", "denoise.sigma"):
    assert workdir_lib.is_resumable(key), key
  for key in ("seed", "training.lr", "training.batch_size", "data.name",
              "diffusion.schedule", "sampling.steps", "training.grad_clip"):
    assert not workdir_lib.is_resumable(key), key


def test_resume_config_refuses_changes_unless_asked(tmp_path, capsys):
  c = organamnist.get_config("tiny")
  workdir_lib.write_config(str(tmp_path), config_lib.to_json(c))
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # A run to resume.
  before = (tmp_path / "config.json").read_text()
  c.training.lr = 1e6
  c.training.num_train_steps = 8
  with pytest.raises(ValueError) as e:
    train.loop.resume_config(c, str(tmp_path))
  assert str(e.value) == (
      f"--workdir {tmp_path} holds a run trained with another config: "
      "training.lr: 0.0002 -> 1000000.0. Resume with the config it was "
      "trained with, use a fresh --workdir, or pass "
      "--config.training.resume_with_changes=True to go on with these "
      "changes.")
  assert (tmp_path / "config.json").read_text() == before  # Untouched.
  train.loop.resume_config(c, str(tmp_path), allow_changes=True)
  assert capsys.readouterr().out == (
      "jaxdiff: resuming with config changes: training.lr: 0.0002 -> "
      "1000000.0; training.num_train_steps: 4 -> 8.\n")
  assert workdir_lib.read_config(str(tmp_path))["training"]["lr"] == 1e6
  # A config.json of an older version, without sections added since.
  old = json.loads(before)
  del old["eval"], old["training"]["max_nonfinite"]
  workdir_lib.write_config(str(tmp_path), old)
  c.training.lr = 0.0002
  c.training.num_train_steps = 4
  train.loop.resume_config(c, str(tmp_path))


# ------------------------------------------------ non-finite states


class _Ckpt:
  """A checkpointer that records what it is asked to save."""
  directory = "/w/checkpoints"

  def __init__(self, latest=None):
    self.saved, self.latest = [], latest

  def latest_step(self):
    return self.latest

  def save(self, step, state, config_json=None, *, force=False):
    self.saved.append(step)
    self.latest = step

  def wait(self):
    pass


class _Console:
  def __init__(self):
    self.lines = []

  def line(self, text):
    self.lines.append(text)


def _with_nan(tree):
  """`tree` with a NaN in its first floating leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  i = next(i for i, x in enumerate(leaves)
           if np.issubdtype(x.dtype, np.floating))
  leaves[i] = leaves[i].at[(0,) * leaves[i].ndim].set(np.nan)
  return jax.tree.unflatten(treedef, leaves)


def test_save_never_writes_a_nonfinite_state():
  _, state, config_json = _tiny_state()
  state = state.replace(step=state.step + 4)
  for bad in (state.replace(ema_params=_with_nan(state.ema_params)),
              state.replace(opt_state=_with_nan(state.opt_state)),
              state.replace(params=_with_nan(state.params)),
              state.replace(nonfinite=state.nonfinite + 2)):
    ckpt, console = _Ckpt(latest=2), _Console()
    save = hooks_lib.Save(ckpt, 2, config_json, console)
    save(4, bad, None)
    assert ckpt.saved == []
    assert re.fullmatch(r"jaxdiff: no checkpoint at step 4: .*; the last "
                        r"good checkpoint is step 2\.", console.lines[0])
    # The forced save at the end: refused too, and the run fails.
    with pytest.raises(train.TrainingError, match=(
        r"Training ended at step 4 without saving it: .*; the last good "
        r"checkpoint is step 2 in /w/checkpoints\. Lower "
        r"config\.training\.lr")):
      save.finish(4, bad)
    assert ckpt.saved == []
  ckpt = _Ckpt(latest=2)
  hooks_lib.Save(ckpt, 2, config_json, _Console()).finish(4, state)
  assert ckpt.saved == [4]


@pytest.fixture(scope="module", name="nan_workdir")
def fixture_nan_workdir(tmp_path_factory):
  """A workdir whose only checkpoint (step 3) holds a NaN: as a diverged
  run of an older version saved it."""
  workdir = tmp_path_factory.mktemp("nan")
  _, state, config_json = _tiny_state()
  state = state.replace(step=state.step + 3,
                        params=_with_nan(state.params),
                        ema_params=_with_nan(state.ema_params))
  with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
    ckpt.save(3, state, config_json)
  workdir_lib.write_config(str(workdir), config_json)
  return workdir


def test_restore_refuses_nonfinite_parameters(nan_workdir):
  c = organamnist.get_config("tiny")
  for use_ema, what in ((True, "EMA parameters"), (False, "parameters")):
    with pytest.raises(ckpt_lib.CheckpointError) as e:
      trained_lib.restore(c, str(nan_workdir), use_ema=use_ema)
    assert str(e.value) == (
        f"Checkpoint 3 in {nan_workdir}/checkpoints holds non-finite "
        f"(NaN/Inf) {what}: the run diverged before it was saved. Move that "
        f"step folder out of {nan_workdir}/checkpoints to use an older "
        "checkpoint, or train again with a lower config.training.lr (or "
        "config.training.grad_clip) in a fresh --workdir.")


# ------------------------------------------------------ metrics.jsonl


def test_metrics_past_the_restored_step_are_dropped_atomically(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (2, 4, 6, 8)]
  path.write_text("\n".join(lines) + '\n{"step": 10, "lo')  # Cut by kill -9.
  inode = path.stat().st_ino
  assert hooks_lib.drop_records_after(str(path), 4) == 3
  assert path.read_text() == "\n".join(lines[:2]) + "\n"
  assert path.stat().st_ino != inode  # Replaced by a rename.
  assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
  assert hooks_lib.drop_records_after(str(path), 4) == 0
  assert hooks_lib.drop_records_after(str(tmp_path / "none"), 0) == 0


# ===================================================== launch.py (slow)


@pytest.fixture(scope="module", name="locked")
def fixture_locked(tmp_path_factory):
  """A long run A; while it trains: a second run B on its workdir, and
  `--mode sample` of its first checkpoint; then SIGTERM to A."""
  workdir = tmp_path_factory.mktemp("locked")
  # Every checkpoint kept: none is deleted while `sample` reads.
  a = _Run(workdir, *LONG, "--config.training.checkpoint_every=2",
           "--config.training.keep_checkpoints=1000")
  _wait_for_lock(workdir, a.proc.pid, a.proc)
  second = _run(workdir, *LONG)
  a.wait_for_step(3)
  while not (workdir / "checkpoints" / "2").is_dir():
    time.sleep(0.1)
  sample = _run(workdir, "--mode=sample")
  a.wait_for_step(4)
  a.proc.send_signal(signal.SIGTERM)
  return dict(workdir=workdir, pid=a.proc.pid, first=a.finish(),
              second=second, sample=sample)


@pytest.mark.slow
def test_second_run_on_a_locked_workdir_exits_2_naming_the_holder(locked):
  line = _assert_one_line_error(
      *locked["second"][::2], rf"is in use by another training run \(host "
      rf"\S+, pid {locked['pid']}, since .*\)\. Wait for it to finish, stop "
      rf"it \(kill {locked['pid']} on \S+\), or use another --workdir\.")
  assert str(locked["workdir"]) in line
  assert "compiled" not in locked["second"][1]  # Refused before any work.


@pytest.mark.slow
def test_the_first_run_finishes_untouched(locked):
  rc, out, err = locked["first"]
  assert rc == 0, err[-3000:]
  m = re.search(r"stopped by signal at step (\d+); checkpoint saved", out)
  assert m, out[-2000:]
  step = int(m.group(1))
  assert _all_checkpoints_finite(locked["workdir"] / "checkpoints")[-1] == step
  assert _logged_steps(locked["workdir"]) == list(range(1, step + 1))


@pytest.mark.slow
def test_sample_while_training_says_so_and_proceeds(locked):
  rc, out, err = locked["sample"]
  assert rc == 0, err[-3000:]
  assert re.search(rf"jaxdiff: training is running in \S+ \(host \S+, pid "
                   rf"{locked['pid']}, since .*\); using its newest "
                   r"checkpoint\.", out), out
  assert re.search(r"jaxdiff: 8 samples from step \d+", out), out


@pytest.mark.slow
def test_resume_with_another_lr_exits_2_unless_asked(locked, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(locked["workdir"], workdir)
  step = _all_checkpoints_finite(workdir / "checkpoints")[-1]
  config_before = (workdir / "config.json").read_text()
  _assert_one_line_error(
      *_run(workdir, "--config.training.lr=1e6")[::2],
      r"holds a run trained with another config: training\.lr: 0\.0002 -> "
      r"1000000\.0\. .* --config\.training\.resume_with_changes=True")
  assert (workdir / "config.json").read_text() == config_before
  rc, out, err = _run(workdir, "--config.training.lr=1e-3",
                      f"--config.training.num_train_steps={step + 1}",
                      "--config.training.resume_with_changes=True")
  assert rc == 0, err[-3000:]
  assert re.search(r"^jaxdiff: resuming with config changes: .*training\.lr: "
                   r"0\.0002 -> 0\.001; ", out, re.M), out
  assert f"jaxdiff: resumed from step {step}." in out
  assert json.loads((workdir / "config.json").read_text())[
      "training"]["lr"] == 0.001


@pytest.mark.slow
def test_diverged_run_leaves_no_nonfinite_checkpoint(tmp_path):
  rc, _, err = _run(tmp_path, "--config.training.lr=1e6")
  _assert_one_line_error(rc, err, r"non-finite")
  steps = _all_checkpoints_finite(tmp_path / "checkpoints")
  assert 4 not in steps  # The last steps were non-finite: never saved.
  records = [json.loads(l) for l in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert any(math.isnan(r["loss"]) for r in records)


@pytest.mark.slow
def test_sample_refuses_a_nonfinite_checkpoint(nan_workdir):
  rc, out, err = _run(nan_workdir, "--mode=sample")
  _assert_one_line_error(
      rc, err, r"Checkpoint 3 in \S+ holds non-finite \(NaN/Inf\) EMA "
      r"parameters: .* lower config\.training\.lr")
  assert "samples from" not in out
  assert not list(nan_workdir.glob("samples_*"))
  # Training does not resume from it either.
  _assert_one_line_error(*_run(nan_workdir)[::2],
                         r"Checkpoint 3 in \S+ holds non-finite")


@pytest.mark.slow
def test_launch_on_a_file_is_one_line(tmp_path):
  path = tmp_path / "run"
  path.write_text("x")
  for mode in ("train", "sample"):
    rc, _, err = _run(path, f"--mode={mode}")
    line = _assert_one_line_error(rc, err, r"is a file, not a directory")
    assert "train first" not in line


@pytest.mark.slow
def test_launch_on_a_read_only_workdir_is_one_line(locked, tmp_path):
  src = tmp_path / "run"
  shutil.copytree(locked["workdir"], src)
  with _read_only(src, tmp_path / "ro") as ro:
    if ro is None:
      pytest.skip("mount is not allowed here (the fast test covers it)")
    for mode in ("train", "sample"):
      rc, out, err = _run(ro, f"--mode={mode}")
      _assert_one_line_error(rc, err, r"Cannot write \S+: the file system "
                             r"is read-only\.")
      assert "compiled" not in out and "samples from" not in out


@pytest.mark.slow
def test_launch_on_a_full_disk_is_one_line(tmp_path):
  with _tmpfs(tmp_path / "small", "2m") as small:
    if small is None:
      pytest.skip("mount is not allowed here (the fast test covers it)")
    rc, out, err = _run(small / "run")
    _assert_one_line_error(rc, err, r"MiB free on its disk, but 4 more "
                           r"checkpoint\(s\) of this model need about")
    assert "compiled" not in out  # Refused before compiling.
  # Room for the start, not for the run: the disk fills while training.
  with _tmpfs(tmp_path / "filling", "2600k") as filling:
    rc, out, err = _run(filling / "run", *LONG,
                        "--config.training.checkpoint_every=2",
                        "--config.training.keep_checkpoints=1")
    _assert_one_line_error(rc, err, r"Cannot write \S+: no space left on "
                           r"the device\. .* the checkpoints written "
                           r"before are kept\.")
    assert "compiled" in out


@pytest.mark.slow
def test_sigterm_before_the_first_step_exits_0(tmp_path):
  run = _Run(tmp_path)
  _wait_for_lock(tmp_path, run.proc.pid, run.proc)
  run.proc.send_signal(signal.SIGTERM)
  rc, out, err = run.finish()
  assert rc == 0, err[-3000:]
  assert "jaxdiff: stopped by signal before the first step; nothing to save " \
         "yet." in out, out
  assert "compiled" not in out
  assert not any((tmp_path / "checkpoints").glob("[0-9]*"))


@pytest.mark.slow
def test_metrics_hold_each_step_once_after_kill_9_and_resume(tmp_path):
  run = _Run(tmp_path, *LONG, "--config.training.checkpoint_every=2")
  run.wait_for_step(5)
  run.proc.send_signal(signal.SIGKILL)
  run.finish()
  killed_at = max(_logged_steps(tmp_path))
  rc, out, err = _run(tmp_path, "--config.training.num_train_steps=16",
                      "--config.training.log_every=1",
                      "--config.training.checkpoint_every=2")
  assert rc == 0, err[-3000:]  # The dead run's lock went with it.
  resumed = int(re.search(r"resumed from step (\d+)", out).group(1))
  assert resumed <= killed_at
  if resumed < killed_at:  # Steps logged after the last checkpoint.
    assert f"past step {resumed} from" in out  # It said what it dropped.
  assert _logged_steps(tmp_path) == list(range(1, 17))
