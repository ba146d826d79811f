"""Orbax checkpoints in `<workdir>/checkpoints/<step>/`.

Each checkpoint holds two items: `state` (a plain dict with `params`,
`ema_params`, `opt_state`, `step`, `nonfinite`) and `config` (JSON). Any JAX
code can read one with orbax alone::

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
A checkpoint that is damaged anyway (a disk error, a hand-deleted file) is
reported and the next older one is used.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint could not be read or does not fit the model."""


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


def _shapes(tree) -> Dict[str, Tuple[int, ...]]:
  """{'conv_in/kernel': shape} for every leaf of a parameter tree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k)))
                    for k in path)
    out[name] = tuple(leaf.shape)
  return out


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def describe_mismatch(saved: dict, wanted: dict) -> Optional[str]:
  """The first difference between two {name: shape} maps, or None."""
  missing = sorted(set(wanted) - set(saved))
  extra = sorted(set(saved) - set(wanted))
  if missing:
    return (f"the model has parameter {missing[0]!r}, which the checkpoint "
            f"lacks ({len(missing)} missing, {len(extra)} extra)")
  if extra:
    return (f"the checkpoint has parameter {extra[0]!r}, which the model "
            f"lacks ({len(extra)} extra)")
  for name in sorted(wanted):
    if tuple(saved[name]) != tuple(wanted[name]):
      return (f"parameter {name!r} has shape {tuple(saved[name])} in the "
              f"checkpoint but {tuple(wanted[name])} in the model")
  return None


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints; saves asynchronously."""

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()},
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
    items = {"state": ocp.args.StandardSave(host)}
    if config_json is not None:
      items["config"] = ocp.args.JsonSave(config_json)
    return self.manager.save(int(step), args=ocp.args.Composite(**items),
                             force=force)

  def _check_fits(self, step: int, wanted: Dict[str, Tuple[int, ...]]):
    """Raises CheckpointError if `step`'s params differ in shape from wanted.

    Errors reading the metadata propagate (the checkpoint is unreadable).
    """
    meta = self.manager.item_metadata(step)["state"]
    tree = getattr(meta, "tree", meta)
    if not isinstance(tree, dict) or "params" not in tree:
      raise ValueError(f"no 'params' in the metadata of step {step}")
    problem = describe_mismatch(_shapes(tree["params"]), wanted)
    if problem:
      raise CheckpointError(
          f"Checkpoint {step} in {self.directory} does not fit this model: "
          f"{problem}. Use the config it was trained with, or a fresh "
          "--workdir.")

  def restore(self, target_state, step: Optional[int] = None):
    """Restores into the structure of `target_state` (a TrainState).

    Leaves may be arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`);
    restored arrays take each leaf's sharding (device 0 if it has none).
    Unreadable checkpoints are reported and the next older one is tried;
    their steps are listed in `self.unreadable`.

    Args:
      target_state: a TrainState giving structure, shapes and placement.
      step: a specific step; default the newest readable one.

    Returns:
      `target_state` with the restored values.

    Raises:
      CheckpointError: no checkpoint, none readable, or shapes that do not
        match the model.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(_abstract, state_to_dict(target_state))
    wanted = _shapes(abstract["params"])
    errors = []
    self.unreadable = []
    for s in steps:
      try:
        self._check_fits(s, wanted)
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
      except CheckpointError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %s in %s is unreadable (%s); trying an "
                        "older one.", s, self.directory, _first_line(e))
        errors.append(f"step {s}: {_first_line(e)}")
        self.unreadable.append(s)
        continue
      if self.unreadable:
        logging.warning("Restored checkpoint %s; newer unreadable: %s.", s,
                        self.unreadable)
      return target_state.replace(**out["state"])
    raise CheckpointError(
        f"No readable checkpoint in {self.directory} (" + "; ".join(errors) +
        "). Delete the broken step folders or use a fresh --workdir.")

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
    """Restores the `state` item as a plain dict (no target needed)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    return out["state"]

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
