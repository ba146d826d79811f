"""Orbax checkpoints in `<workdir>/checkpoints/<step>/`.

Each checkpoint holds two items: `state` (a plain dict with `params`,
`ema_params`, `opt_state`, `step`) and `config` (JSON). Any JAX code can read
one with orbax alone::

    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager("/path/to/workdir/checkpoints")
    ckpt = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    params = ckpt["state"]["ema_params"]
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint could not be read or does not fit the model."""


def state_to_dict(state) -> dict:
  return {"params": state.params, "ema_params": state.ema_params,
          "opt_state": state.opt_state, "step": state.step,
          "nonfinite": state.nonfinite}


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints; saves asynchronously."""

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, config_json: Optional[dict] = None, *,
           force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state_to_dict(state))}
    if config_json is not None:
      items["config"] = ocp.args.JsonSave(config_json)
    return self.manager.save(int(step), args=ocp.args.Composite(**items),
                             force=force)

  def restore(self, target_state, step: Optional[int] = None):
    """Restores into the structure of `target_state` (a TrainState).

    Falls back to older checkpoints when the newest is unreadable; raises
    CheckpointError when the shapes do not match the model.
    """
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            state_to_dict(target_state))
    errors = []
    for s in steps:
      try:
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
      except Exception as e:  # pylint: disable=broad-except
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if _is_shape_mismatch(e):
          raise CheckpointError(
              f"Checkpoint {s} in {self.directory} does not fit this model "
              f"({msg}). Use a fresh --workdir or the config it was trained "
              "with.") from None
        logging.warning("Checkpoint %s is unreadable (%s); trying an older "
                        "one.", s, msg)
        errors.append(f"step {s}: {msg}")
        continue
      d = out["state"]
      return target_state.replace(**d)
    raise CheckpointError(
        f"No readable checkpoint in {self.directory}: " + "; ".join(errors) +
        ". Delete the broken step folders or use a fresh --workdir.")

  def restore_raw(self, step: Optional[int] = None) -> dict:
    """Restores the `state` item as a plain dict (no target needed)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    return out["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _is_shape_mismatch(e: Exception) -> bool:
  text = str(e).lower()
  return any(w in text for w in ("shape", "structure", "mismatch", "tree"))


def read_config(directory: str, step: Optional[int] = None) -> Optional[dict]:
  """The config JSON saved beside a checkpoint, if any."""
  mngr = ocp.CheckpointManager(os.path.abspath(directory))
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return dict(out["config"])
  except Exception:  # pylint: disable=broad-except
    return None
