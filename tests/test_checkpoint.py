"""Tests for jaxdiff.checkpoint: round trips, damaged and unfinished saves."""
from __future__ import annotations

import glob
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import mnist_ddpm
from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import train
# pylint: enable=g-import-not-at-top,wrong-import-position


def _abstract(hidden=None):
  config = mnist_ddpm.get_config("tiny")
  if hidden is not None:
    config.model.kwargs.hidden = hidden
  s = config_lib.typed(config)
  tx = train.make_optimizer(s.training)
  return train.abstract_state(config_lib.build_model(s), tx,
                              s.data.image_shape)


@pytest.fixture(scope="module", name="target")
def fixture_target():
  """Shapes of the tiny MNIST model's TrainState (no initialisation)."""
  return _abstract()


def _random_state(target, seed: int):
  """A TrainState of random values with the shapes of `target`."""
  rng = np.random.default_rng(seed)

  def fill(s):
    if jnp.issubdtype(s.dtype, jnp.integer):
      return jnp.asarray(rng.integers(0, 10_000, s.shape), s.dtype)
    return jnp.asarray(rng.standard_normal(s.shape), s.dtype)

  return jax.tree.map(fill, target).replace(
      step=jnp.asarray(seed, jnp.int32))


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _write(directory, target, steps):
  """Saves random states at `steps`; returns {step: state}."""
  states = {s: _random_state(target, s) for s in steps}
  with ckpt_lib.Checkpointer(directory, max_to_keep=10) as ckpt:
    for s in steps:
      ckpt.save(s, states[s], {"seed": s})
  return states


def test_save_restore_round_trip(tmp_path, target):
  states = _write(tmp_path / "ckpt", target, [3, 7])
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.all_steps() == [3, 7]
    restored = ckpt.restore(target)  # Abstract target: no init needed.
    older = ckpt.restore(target, step=3)
  _assert_trees_equal(restored, states[7])
  _assert_trees_equal(older, states[3])
  assert isinstance(restored.params["Conv_0"]["kernel"], jax.Array)
  assert ckpt_lib.read_config(str(tmp_path / "ckpt")) == {"seed": 7}


def test_checkpoint_restores_without_a_target_as_host_arrays(tmp_path, target):
  """Saved as numpy: plain Orbax restores it on any device set."""
  states = _write(tmp_path / "ckpt", target, [5])
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  out = mngr.restore(5, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  assert isinstance(out["params"]["Conv_0"]["kernel"], np.ndarray)
  _assert_trees_equal(out["params"], states[5].params)
  assert int(out["step"]) == 5


def _delete_state(step_dir):
  for f in sorted(glob.glob(f"{step_dir}/state/**/*", recursive=True),
                  reverse=True):
    if os.path.isfile(f):
      os.remove(f)


def _truncate_files(step_dir):
  for f in glob.glob(f"{step_dir}/state/**/*", recursive=True):
    if os.path.isfile(f):
      open(f, "wb").close()


def _delete_array_data(step_dir):
  files = [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True)
           if os.path.isfile(f)]
  assert files
  for f in files:
    os.remove(f)


@pytest.mark.parametrize("damage", [_delete_state, _truncate_files,
                                    _delete_array_data])
def test_unreadable_latest_is_reported_and_older_used(tmp_path, target, caplog,
                                                      damage):
  states = _write(tmp_path / "ckpt", target, [2, 4])
  damage(tmp_path / "ckpt" / "4")
  with caplog.at_level(logging.WARNING):
    with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
      restored = ckpt.restore(target)
      assert ckpt.unreadable == [4]
      moved = ckpt.set_aside_unreadable()
      assert ckpt.all_steps() == [2]
      ckpt.save(4, states[4])  # The step can be written again.
  _assert_trees_equal(restored, states[2])
  assert any("Checkpoint 4" in r.getMessage() and "unreadable" in
             r.getMessage() for r in caplog.records)
  assert [os.path.basename(m).split(".")[0] for m in moved] == ["4"]
  assert os.path.isdir(moved[0])
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    _assert_trees_equal(ckpt.restore(target), states[4])


def test_no_readable_checkpoint_says_what_to_do(tmp_path, target):
  _write(tmp_path / "ckpt", target, [1])
  _delete_state(tmp_path / "ckpt" / "1")
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(ckpt_lib.CheckpointError,
                       match="Delete the broken step folders or use a fresh "
                       "--workdir"):
      ckpt.restore(target)


def test_empty_directory_raises(tmp_path, target):
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(ckpt_lib.CheckpointError, match="No checkpoint"):
      ckpt.restore(target)


def test_other_model_shape_is_a_clear_error(tmp_path, target):
  _write(tmp_path / "ckpt", target, [1, 2])
  other = _abstract(hidden=(8, 16))
  mine = {jax.tree_util.keystr(p): l.shape for p, l in
          jax.tree_util.tree_flatten_with_path(target.params)[0]}
  theirs = {jax.tree_util.keystr(p): l.shape for p, l in
            jax.tree_util.tree_flatten_with_path(other.params)[0]}
  differing = sorted(k for k in mine if k in theirs and mine[k] != theirs[k])
  assert differing
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(ckpt_lib.CheckpointError) as e:
      ckpt.restore(other)
  msg = str(e.value)
  assert "Checkpoint 2" in msg and "does not fit this model" in msg
  assert "fresh --workdir" in msg and "\n" not in msg
  assert any(str(tuple(mine[k])) in msg and str(tuple(theirs[k])) in msg
             for k in differing)


_KILL_MID_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    import jax.numpy as jnp
    from jaxdiff import checkpoint as ckpt_lib, train

    def state(v, n):
      p = {{"w": jnp.full((n,), v, jnp.float32)}}
      return train.TrainState(step=jnp.asarray(int(v), jnp.int32), params=p,
                              ema_params=p, opt_state=(),
                              nonfinite=jnp.zeros((), jnp.int32))

    ckpt = ckpt_lib.Checkpointer({directory!r})
    ckpt.save(1, state(1.0, {n}))
    ckpt.wait()
    ckpt.save(2, state(2.0, {n}))   # asynchronous: returns before writing
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow
def test_kill_9_during_save_keeps_previous_checkpoint(tmp_path):
  n = 16_000_000  # 3 x 64 MB to write: the kill lands before the commit.
  directory = str(tmp_path / "ckpt")
  proc = subprocess.run(
      [sys.executable, "-c", _KILL_MID_SAVE.format(repo=str(REPO),
                                                  directory=directory, n=n)],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == -9, proc.stderr[-2000:]
  entries = os.listdir(directory)
  assert "1" in entries and "2" not in entries, entries
  # The save had started: Orbax's unfinished folder is there, never renamed.
  assert any(e.startswith("2.orbax-checkpoint-tmp") for e in entries), entries
  p = {"w": jax.ShapeDtypeStruct((n,), jnp.float32)}
  target = train.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                            params=p, ema_params=p, opt_state=(),
                            nonfinite=jax.ShapeDtypeStruct((), jnp.int32))
  with ckpt_lib.Checkpointer(directory) as ckpt:
    assert ckpt.latest_step() == 1
    restored = ckpt.restore(target)
  assert int(restored.step) == 1
  assert float(restored.params["w"][0]) == 1.0
  assert float(restored.params["w"][-1]) == 1.0
