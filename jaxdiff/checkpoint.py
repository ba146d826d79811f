"""Orbax checkpoints in `<workdir>/checkpoints/<step>/`.

Each checkpoint holds three items: `state` (a plain dict with `params`,
`ema_params`, `opt_state`, `step`, `nonfinite`), `config` (JSON) and
`checksums` (JSON: the crc32 of every saved array). Any JAX code can read one
with orbax alone::

    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager("/path/to/workdir/checkpoints")
    ckpt = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    params, ema_params, step = (ckpt["state"]["params"],
                                ckpt["state"]["ema_params"],
                                ckpt["state"]["step"])

Arrays are saved as host (numpy) copies, so a checkpoint does not depend on
the devices it was written from: one from 8 GPUs restores on a laptop's CPU.
Saves are asynchronous (training goes on while the arrays are written) and
atomic: Orbax writes `<step>.orbax-checkpoint-tmp*/` and renames it to
`<step>/` only when every file is complete, so a process killed mid-save leaves
the previous checkpoints as they were and the unfinished folder is never read.
A checkpoint that is damaged anyway (a disk error, a hand-deleted file, an
array whose bytes no longer match its checksum) is reported and the next older
one is used; a checkpoint of another model or optimiser is a `CheckpointError`
that names the differing entry. Checkpoints written before checksums existed
restore unverified (with a note).
"""
from __future__ import annotations

import logging
import os
import time
import zlib
from typing import Any, Dict, List, Optional, Set, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint could not be read or does not fit the model."""


class CorruptCheckpointError(Exception):
  """An array's bytes differ from the checksum saved beside it.

  Restore treats such a checkpoint like an unreadable one (it is reported
  and the next older one used), so this never reaches the user.
  """


# Directories whose checkpoints without checksums were noted (once each).
_NOTED_UNVERIFIED: Set[str] = set()


def state_to_dict(state) -> dict:
  return {"params": state.params, "ema_params": state.ema_params,
          "opt_state": state.opt_state, "step": state.step,
          "nonfinite": state.nonfinite}


def _abstract(x) -> jax.ShapeDtypeStruct:
  """The restore target of one leaf: its shape, dtype and placement."""
  sharding = getattr(x, "sharding", None)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _name(path) -> str:
  """'opt_state/1/0/mu/conv_in/kernel' for a key path.

  Dict keys, sequence indices and named-tuple fields read alike, so a
  TrainState and the Orbax metadata of its checkpoint give the same names.
  """
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _leaves(tree) -> Dict[str, Any]:
  """{'conv_in/kernel': leaf} for every leaf of a tree."""
  return {_name(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shapes(tree) -> Dict[str, Tuple[int, ...]]:
  """{'conv_in/kernel': shape} for every leaf of a tree."""
  return {name: tuple(leaf.shape) for name, leaf in _leaves(tree).items()}


def _crc32(x) -> str:
  """The crc32 of an array's bytes (C order), as 8 hex digits."""
  data = np.ascontiguousarray(x).reshape(-1).view(np.uint8)
  return f"{zlib.crc32(data):08x}"


def checksums(host_tree) -> dict:
  """The checksum item of a tree of host arrays.

  Returns:
    `{"algorithm": "crc32", "arrays": {name: {"crc32": hex, "dtype": str}}}`
    with the names of `state_to_dict` ('opt_state/1/0/mu/conv_in/kernel').
  """
  return {"algorithm": "crc32",
          "arrays": {name: {"crc32": _crc32(x), "dtype": str(np.dtype(x.dtype))}
                     for name, x in _leaves(host_tree).items()}}


def verify(host_tree, saved: dict) -> None:
  """Checks every array of `host_tree` against the `checksums` item `saved`.

  An array restored into another dtype (a cast on restore) is not compared.

  Raises:
    CorruptCheckpointError: naming the first array whose bytes differ, or
      that has no checksum.
  """
  if saved.get("algorithm") != "crc32":
    raise CorruptCheckpointError(
        f"unknown checksum algorithm {saved.get('algorithm')!r}")
  arrays = saved.get("arrays", {})
  for name, x in _leaves(host_tree).items():
    want = arrays.get(name)
    if want is None:
      raise CorruptCheckpointError(f"array {name!r} has no saved checksum")
    x = np.asarray(x)
    if str(x.dtype) == want["dtype"] and _crc32(x) != want["crc32"]:
      raise CorruptCheckpointError(
          f"array {name!r} does not match its saved checksum")


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def describe_mismatch(saved: dict, wanted: dict, what: str = "parameter",
                      owner: str = "the model") -> Optional[str]:
  """The first difference between two {name: shape} maps, or None.

  Args:
    saved: the checkpoint's {name: shape}.
    wanted: the wanted {name: shape}.
    what: what the names are, for the message ("parameter").
    owner: what wants them, for the message ("the model").
  """
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  if missing:
    return (f"{owner} has {what} {missing[0]!r}, which the checkpoint "
            f"lacks ({len(missing)} missing, {len(extra)} extra)")
  if extra:
    return (f"the checkpoint has {what} {extra[0]!r}, which {owner} "
            f"lacks ({len(extra)} extra)")
  for name in sorted(wanted):
    if tuple(saved[name]) != tuple(wanted[name]):
      return (f"{what} {name!r} has shape {tuple(saved[name])} in the "
              f"checkpoint but {tuple(wanted[name])} in {owner}")
  return None


def _has_leaves(tree) -> bool:
  return bool(jax.tree.leaves(tree))


def _stateless_layout(saved, target) -> Optional[tuple]:
  """`target` (an optax chain's state) laid out like `saved`, or None.

  A chain whose members without state (`identity`, clipping, weight decay)
  were added or removed keeps its arrays: `(adamw,)` saved by an older
  version restores into `(EmptyState(), adamw)`. The members with state go,
  in order, to the slots where `saved` has arrays; the others are None.
  """
  if not isinstance(saved, (list, tuple)) or type(target) is not tuple:
    return None
  mine = [m for m in target if _has_leaves(m)]
  slots = [i for i, m in enumerate(saved) if _has_leaves(m)]
  if len(mine) != len(slots):
    return None
  members = iter(mine)
  return tuple(next(members) if i in slots else None
               for i in range(len(saved)))


def _refill(restored: tuple, target: tuple) -> tuple:
  """The inverse of `_stateless_layout`: `restored`'s arrays in `target`'s
  layout."""
  members = iter(m for m in restored if _has_leaves(m))
  return tuple(next(members) if _has_leaves(m) else m for m in target)


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints; saves asynchronously."""

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(),
                       "checksums": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=async_save))
    # Steps newer than the restored one that could not be read.
    self.unreadable: List[int] = []

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> List[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, config_json: Optional[dict] = None, *,
           force: bool = False) -> bool:
    """Starts writing `state` as checkpoint `step`; returns at once.

    The arrays are copied to the host once (one `jax.device_get`); their
    checksums are computed from that copy, and Orbax writes it in the
    background.

    Args:
      step: the step number (the folder name).
      state: a TrainState.
      config_json: the run's config, stored beside the state.
      force: save even if the manager's policy would skip this step.

    Returns:
      Whether a save was started.
    """
    # Host copies (the state is replicated): the checkpoint then records no
    # devices, and restores on any machine, with or without a target.
    host = jax.device_get(state_to_dict(state))
    items = {"state": ocp.args.StandardSave(host),
             "checksums": ocp.args.JsonSave(checksums(host))}
    if config_json is not None:
      items["config"] = ocp.args.JsonSave(config_json)
    return self.manager.save(int(step), args=ocp.args.Composite(**items),
                             force=force)

  def _does_not_fit(self, step: int, what: str, problem: Optional[str]):
    if problem:
      raise CheckpointError(
          f"Checkpoint {step} in {self.directory} does not fit this {what}: "
          f"{problem}. Use the config it was trained with, or a fresh "
          "--workdir.")

  def _restore_target(self, step: int, abstract: dict) -> Tuple[dict, bool]:
    """`abstract` with its optimiser state laid out as `step` saved it.

    Returns:
      (the restore target, whether its optimiser state needs `_refill`).

    Raises:
      CheckpointError: the parameters or optimiser state differ in names or
        shapes. Errors reading the metadata propagate (unreadable).
    """
    meta = self.manager.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    if not isinstance(tree, dict) or "params" not in tree:
      raise ValueError(f"no 'params' in the metadata of step {step}")
    self._does_not_fit(step, "model", describe_mismatch(
        _shapes(tree["params"]), _shapes(abstract["params"])))
    opt = abstract["opt_state"]
    saved = _shapes(tree.get("opt_state"))
    if saved == _shapes(opt):
      return abstract, False
    laid_out = _stateless_layout(tree.get("opt_state"), opt)
    if laid_out is None or _shapes(laid_out) != saved:
      self._does_not_fit(step, "optimiser", describe_mismatch(
          {f"opt_state/{k}": v for k, v in saved.items()},
          {f"opt_state/{k}": v for k, v in _shapes(opt).items()},
          "optimiser state", "the config") or "another layout")
    return dict(abstract, opt_state=laid_out), True

  def _read(self, step: int, target: Optional[dict]) -> dict:
    """The `state` item of `step`, verified against its checksums.

    Raises:
      CorruptCheckpointError: an array differs from its checksum.
    """
    items = {"state": ocp.args.StandardRestore(target)}
    verified = os.path.isdir(os.path.join(self.directory, str(step),
                                          "checksums"))
    if verified:
      items["checksums"] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    if verified:
      verify(jax.device_get(out["state"]), dict(out["checksums"]))
    elif self.directory not in _NOTED_UNVERIFIED:
      _NOTED_UNVERIFIED.add(self.directory)
      logging.warning("Checkpoint %s in %s has no checksums (saved by an "
                      "older version); restored without verifying them.",
                      step, self.directory)
    return out["state"]

  def restore(self, target_state, step: Optional[int] = None):
    """Restores into the structure of `target_state` (a TrainState).

    Leaves may be arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`);
    restored arrays take each leaf's sharding (device 0 if it has none).
    Every array is checked against the checksum saved beside it. Unreadable
    or corrupt checkpoints are reported and the next older one is tried;
    their steps are listed in `self.unreadable`.

    Args:
      target_state: a TrainState giving structure, shapes and placement.
      step: a specific step; default the newest readable one.

    Returns:
      `target_state` with the restored values.

    Raises:
      CheckpointError: no checkpoint, none readable, or parameters or
        optimiser state that do not match the model and config.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(_abstract, state_to_dict(target_state))
    errors = []
    self.unreadable = []
    for s in steps:
      try:
        target, refill = self._restore_target(s, abstract)
        out = self._read(s, target)
      except CheckpointError:
        raise
      except CorruptCheckpointError as e:
        logging.warning("Checkpoint %s in %s is corrupt (%s); trying an "
                        "older one.", s, self.directory, e)
        errors.append(f"step {s}: {e}")
        self.unreadable.append(s)
        continue
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %s in %s is unreadable (%s); trying an "
                        "older one.", s, self.directory, _first_line(e))
        errors.append(f"step {s}: {_first_line(e)}")
        self.unreadable.append(s)
        continue
      if refill:
        out = dict(out, opt_state=_refill(out["opt_state"],
                                          abstract["opt_state"]))
      if self.unreadable:
        logging.warning("Restored checkpoint %s; newer unreadable: %s.", s,
                        self.unreadable)
      return target_state.replace(**out)
    raise CheckpointError(
        f"No readable checkpoint in {self.directory} (" + "; ".join(errors) +
        "). Set the unreadable step folders aside (move them out of "
        f"{self.directory}) or use a fresh --workdir.")

  def set_aside_unreadable(self, *, move: bool = True) -> List[str]:
    """Renames unreadable newer step folders to `<step>.unreadable-<time>`.

    Training that resumed from an older step would otherwise meet them again
    when it reaches their step. In a multi-host run only one process should
    move them (`move=True`); every process reloads the step list.

    Args:
      move: rename the folders (else only forget them).

    Returns:
      The new folder names.
    """
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for s in self.unreadable if move else ():
      src = os.path.join(self.directory, str(s))
      if os.path.isdir(src):
        dst = f"{src}.unreadable-{stamp}"
        os.rename(src, dst)
        logging.warning("Moved unreadable checkpoint %s to %s.", src, dst)
        moved.append(dst)
    self.unreadable = []
    self.manager.reload()
    return moved

  def restore_raw(self, step: Optional[int] = None) -> dict:
    """Restores the `state` item as a plain dict (no target needed).

    Raises:
      CheckpointError: no checkpoint, or an array that differs from its
        checksum.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    try:
      return self._read(step, None)
    except CorruptCheckpointError as e:
      raise CheckpointError(
          f"Checkpoint {step} in {self.directory} is corrupt ({e}); set it "
          "aside (move it out of the folder) and use an older one.") from e

  def reload(self):
    """Re-reads the step folders (after another process changed them)."""
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_config(directory: str, step: Optional[int] = None) -> Optional[dict]:
  """The config JSON saved beside a checkpoint, if any."""
  mngr = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    out = mngr.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return dict(out["config"])
  except Exception:  # pylint: disable=broad-except
    return None
  finally:
    mngr.close()
