"""Tests for jaxdiff.checkpoint: round trips, damaged and unfinished saves."""
from __future__ import annotations

import glob
import logging
import os
import pathlib
import subprocess
import sys
import textwrap
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import mnist_ddpm
import launch_helpers  # pylint: disable=g-bad-import-order
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
                       match="Set the unreadable step folders aside .* or "
                       "use a fresh --workdir") as e:
      ckpt.restore(target)
  assert "delet" not in str(e.value).lower()


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
  assert "Use the config it was trained with" in msg
  assert "fresh --workdir" in msg and "\n" not in msg
  assert "delet" not in msg.lower()
  assert any(str(tuple(mine[k])) in msg and str(tuple(theirs[k])) in msg
             for k in differing)


def _name(path) -> str:
  """'opt_state/1/0/mu/Conv_0/kernel' for a key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(
      k, "name", k)))) for k in path)


def _named_leaves(state) -> dict:
  tree = jax.device_get(ckpt_lib.state_to_dict(state))
  return {_name(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_checksums_of_every_array_are_written(tmp_path, target):
  states = _write(tmp_path / "ckpt", target, [3])
  mngr = ocp.CheckpointManager(str(tmp_path / "ckpt"))
  saved = mngr.restore(3, args=ocp.args.Composite(
      checksums=ocp.args.JsonRestore()))["checksums"]
  mngr.close()
  arrays = _named_leaves(states[3])
  assert saved["algorithm"] == "crc32"
  assert set(saved["arrays"]) == set(arrays)
  assert any(n.startswith("opt_state/") for n in arrays)
  for n, x in arrays.items():
    assert saved["arrays"][n] == {"crc32": f"{zlib.crc32(x.tobytes()):08x}",
                                  "dtype": str(x.dtype)}, n


def _flip_bytes(step_dir, raw: bytes, count: int = 8) -> None:
  """Inverts `count` bytes inside the stored copy of `raw`."""
  hits = []
  for f in glob.glob(f"{step_dir}/state/**/*", recursive=True):
    if os.path.isfile(f):
      data = pathlib.Path(f).read_bytes()
      if data.find(raw[:64]) >= 0:
        hits.append((f, data, data.find(raw[:64])))
  assert len(hits) == 1, [h[0] for h in hits]
  f, data, at = hits[0]
  data = bytearray(data)
  for i in range(at + 100, at + 100 + count):
    data[i] ^= 0xFF
  pathlib.Path(f).write_bytes(bytes(data))


def test_flipped_bytes_are_caught_and_the_older_checkpoint_used(
    tmp_path, target, caplog):
  states = {s: _random_state(target, s) for s in (2, 4)}
  # One optimiser array of random bits: stored uncompressed, so flipped
  # bytes still decode and only the checksum can tell.
  arrays = _named_leaves(states[4])
  victim = max((n for n in arrays if n.startswith("opt_state/")),
               key=lambda n: arrays[n].size)
  bits = np.random.default_rng(0).integers(
      0, 2**32, arrays[victim].shape, dtype=np.uint32).view(np.float32)
  host = jax.tree_util.tree_map_with_path(
      lambda p, x: bits if "opt_state/" + _name(p) == victim else x,
      states[4].opt_state)
  states[4] = states[4].replace(opt_state=host)
  with ckpt_lib.Checkpointer(tmp_path / "ckpt", max_to_keep=10) as ckpt:
    for s in (2, 4):
      ckpt.save(s, states[s])
  _flip_bytes(tmp_path / "ckpt" / "4", bits.tobytes())
  with caplog.at_level(logging.WARNING):
    with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
      with pytest.raises(ckpt_lib.CheckpointError, match=f"Checkpoint 4 .*"
                         f"corrupt .*{victim}"):
        ckpt.restore_raw(4)
      restored = ckpt.restore(target)
      assert ckpt.unreadable == [4]
      moved = ckpt.set_aside_unreadable()
  _assert_trees_equal(restored, states[2])
  reports = [r.getMessage() for r in caplog.records
             if "Checkpoint 4" in r.getMessage()]
  assert len(reports) == 1 and "\n" not in reports[0], reports
  assert "corrupt" in reports[0] and repr(victim) in reports[0], reports
  assert [os.path.basename(m).split(".")[0] for m in moved] == ["4"]
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.all_steps() == [2]


def _config(grad_clip: float):
  config = mnist_ddpm.get_config("tiny")
  config.training.grad_clip = grad_clip
  return config_lib.typed(config)


def _target(s, tx=None):
  tx = train.make_optimizer(s.training) if tx is None else tx
  return train.abstract_state(config_lib.build_model(s), tx,
                              s.data.image_shape)


@pytest.mark.parametrize("saved_clip, resumed_clip", [(1.0, 0.0), (0.0, 1.0)])
def test_resume_with_clipping_switched(tmp_path, saved_clip, resumed_clip):
  saved, resumed = _target(_config(saved_clip)), _target(_config(resumed_clip))
  assert jax.tree.structure(saved) == jax.tree.structure(resumed)
  states = _write(tmp_path / "ckpt", saved, [5])
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    restored = ckpt.restore(resumed)
    assert not ckpt.unreadable
  _assert_trees_equal(restored, states[5])


def test_grad_clip_zero_leaves_adamw_bit_for_bit():
  """The stand-in for clipping changes no number of a run."""
  s = _config(0.0)
  tx, plain = train.make_optimizer(s.training), optax.adamw(
      train.lr_schedule(s.training), weight_decay=s.training.weight_decay)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal(64), jnp.float32)}
  state, plain_state = tx.init(params), plain.init(params)
  for _ in range(5):
    grads = {"w": jnp.asarray(rng.standard_normal(64) * 1e3, jnp.float32)}
    u, state = jax.jit(tx.update)(grads, state, params)
    v, plain_state = jax.jit(plain.update)(grads, plain_state, params)
    np.testing.assert_array_equal(np.asarray(u["w"]), np.asarray(v["w"]))


@pytest.mark.parametrize("grad_clip", [-1.0, float("nan"), float("inf")])
def test_make_optimizer_rejects_bad_grad_clip(grad_clip):
  with pytest.raises(ValueError, match="config.training.grad_clip"):
    train.make_optimizer(_config(grad_clip).training)


def _old_optimizer(tc):
  """The optimiser as built before clipping always had a place in it."""
  parts = []
  if tc.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(tc.grad_clip))
  parts.append(optax.adamw(train.lr_schedule(tc),
                           weight_decay=tc.weight_decay))
  return optax.chain(*parts)


def _save_old_format(directory, states):
  """Checkpoints as written before checksums: items `state` and `config`."""
  mngr = ocp.CheckpointManager(
      str(directory),
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "config": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(max_to_keep=10, create=True))
  for s, state in states.items():
    mngr.save(s, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(
            ckpt_lib.state_to_dict(state))),
        config=ocp.args.JsonSave({"seed": s})))
  mngr.wait_until_finished()
  mngr.close()


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_old_checkpoints_restore_with_one_note(tmp_path, caplog, grad_clip):
  s = _config(grad_clip)
  old = _target(s, _old_optimizer(s.training))
  states = {step: _random_state(old, step) for step in (1, 2)}
  _save_old_format(tmp_path / "ckpt", states)
  assert not os.path.exists(tmp_path / "ckpt" / "2" / "checksums")
  with caplog.at_level(logging.WARNING):
    with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
      newest = ckpt.restore(_target(s))
      older = ckpt.restore(_target(s), step=1)
      assert not ckpt.unreadable
  assert jax.tree.structure(newest) == jax.tree.structure(_target(s))
  _assert_trees_equal(newest, states[2])
  _assert_trees_equal(older, states[1])
  notes = [r.getMessage() for r in caplog.records
           if "no checksums" in r.getMessage()]
  assert len(notes) == 1, notes
  assert ckpt_lib.read_config(str(tmp_path / "ckpt")) == {"seed": 2}


def test_another_optimiser_is_a_config_mismatch(tmp_path, target):
  s = _config(1.0)
  other = _target(s, optax.chain(optax.identity(),
                                 optax.sgd(0.1, momentum=0.9)))
  _write(tmp_path / "ckpt", other, [3])
  with ckpt_lib.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(ckpt_lib.CheckpointError) as e:
      ckpt.restore(target)
    assert not ckpt.unreadable
  msg = str(e.value)
  assert "Checkpoint 3" in msg and "does not fit this optimiser" in msg
  assert "'opt_state/1/" in msg and "Use the config it was trained with" in msg
  assert "\n" not in msg and "delet" not in msg.lower()


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


@pytest.mark.slow
def test_launch_resumes_with_clipping_switched_off(tmp_path):
  """An organamnist run (grad_clip 1) goes on with grad_clip=0."""
  env = launch_helpers.launch_env()
  cmd = [sys.executable, str(REPO / "launch.py"), "--workdir",
         str(tmp_path / "w"), "--config", "configs/organamnist.py:tiny",
         "--config.data.name=organamnist_small"]
  first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
  assert first.returncode == 0, first.stderr[-2000:]
  second = subprocess.run(
      cmd + ["--config.training.grad_clip=0",
             "--config.training.num_train_steps=6",
             "--config.training.resume_with_changes=True"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert second.returncode == 0, second.stderr[-2000:]
  out = second.stdout + second.stderr
  assert "resumed from step 4" in out, out[-2000:]
  assert "unreadable" not in out and "corrupt" not in out, out[-2000:]
  with ckpt_lib.Checkpointer(tmp_path / "w" / "checkpoints") as ckpt:
    assert ckpt.latest_step() == 6
    assert int(ckpt.restore_raw()["step"]) == 6
