"""Multi-host set-up and the few cross-process operations training needs.

One process runs per host; together they drive one 1-D mesh ("data") of every
device. `initialize()` starts `jax.distributed` when the environment describes
more than one process and does nothing on a single host:

    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        python launch.py --config configs/organamnist.py --workdir runs/organ
    # SLURM (srun, more than one task) or Open MPI (mpirun) are detected alone;
    # JAXDIFF_DISTRIBUTED=1 asks JAX to detect any other cluster (Cloud TPU).

Only process 0 prints, writes metrics and pictures; every process takes part in
computations and in Orbax saves (Orbax coordinates the writers itself).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM = "JAX_NUM_PROCESSES"
_ENV_ID = "JAX_PROCESS_ID"
_ENV_FORCE = "JAXDIFF_DISTRIBUTED"


def _env_int(name: str):
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"${name}={value!r} is not an integer; set it to a "
                     "whole number or unset it.") from None


def _cluster_has_many_processes() -> bool:
  """SLURM with several tasks, or Open MPI with several ranks."""
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
           "SLURM_PROCID", "SLURM_LOCALID")
  if all(v in os.environ for v in slurm):
    return (_env_int("SLURM_NTASKS") or 1) > 1
  if "OMPI_MCA_orte_hnp_uri" in os.environ:
    return (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1
  return False


def initialize() -> bool:
  """Starts `jax.distributed` if the environment asks for several processes.

  Must run before anything touches a JAX device. Reads
  $JAX_COORDINATOR_ADDRESS (with $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, or a
  cluster that supplies them), detects SLURM / Open MPI jobs with more than one
  task, and honours $JAXDIFF_DISTRIBUTED=1 (let JAX detect the cluster) or 0
  (never start).

  Returns:
    Whether the distributed runtime is running after the call.
  """
  if jax.distributed.is_initialized():
    return True
  force = os.environ.get(_ENV_FORCE, "")
  if force == "0":
    return False
  address = os.environ.get(_ENV_ADDRESS) or None
  if not (address or force == "1" or _cluster_has_many_processes()):
    return False
  num, pid = _env_int(_ENV_NUM), _env_int(_ENV_ID)
  if address and num == 1:
    return False
  try:
    jax.distributed.initialize(coordinator_address=address,
                               num_processes=num, process_id=pid)
  except (ValueError, TypeError, RuntimeError) as e:
    raise ValueError(
        f"Could not start multi-host JAX ({str(e).splitlines()[0]}). Set "
        f"${_ENV_ADDRESS}=host:port, ${_ENV_NUM} and ${_ENV_ID} on every "
        f"host, or unset them (and set ${_ENV_FORCE}=0) to run on one "
        "host.") from None
  logging.info("jax.distributed: process %d of %d.", jax.process_index(),
               jax.process_count())
  return True


def is_main() -> bool:
  """Whether this process writes logs, metrics and pictures (process 0)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (a no-op on one host)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.any(flags))


def sync(name: str) -> None:
  """A barrier across processes (a no-op on one host)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def replicate(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Places host values (the same on every process) on every device.

  Works when `sharding` spans devices of other processes, where
  `jax.device_put` of a host array does not.
  """
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  return jax.tree.map(put, tree)
