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


_FORCE_FLAG = "xla_force_host_platform_device_count"
_MAX_AUTO_CPU_DEVICES = 8


def usable_cores() -> int:
  """CPU cores this process may run on (respects taskset / cgroup affinity)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def set_cpu_devices(n: int, batch_size: int = 0) -> int:
  """Splits the host CPU into `n` JAX devices (-1: one per usable core).

  A single XLA:CPU device leaves cores idle for much of a train step; a
  data-parallel step over one device per core keeps them busy (on 2 cores:
  the coursework CNN's step 1.5x faster, see benchmarks/README.md). Must run
  before anything touches a JAX device. `n = 0` keeps JAX's default (one
  device), and so does an explicit `--xla_force_host_platform_device_count`
  in $XLA_FLAGS, which wins. Only the CPU backend is affected: on a GPU or
  TPU the mesh still spans the accelerators.

  Args:
    n: the device count; 0 leaves JAX's default, -1 takes the usable cores
      (at most 8: each device keeps its own copy of the training images),
      lowered to a divisor of `batch_size` if one is given.
    batch_size: the global batch the devices will split (0: unknown).

  Returns:
    The number of CPU devices requested (0: unchanged).
  """
  if n == 0 or _FORCE_FLAG in os.environ.get("XLA_FLAGS", ""):
    return 0
  if n < -1:
    raise ValueError(f"config.cpu_devices={n}: use a count >= 1, 0 (JAX's "
                     "default) or -1 (one per usable core).")
  auto = n == -1
  if auto:  # Every device holds a copy of the data set: at most 8.
    n = min(usable_cores(), _MAX_AUTO_CPU_DEVICES)
    while batch_size and batch_size % n:
      n -= 1
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    if auto:  # In-process callers (tests, notebooks) keep their devices.
      logging.info("config.cpu_devices=-1: JAX devices already in use.")
      return 0
    logging.warning("config.cpu_devices=%d ignored: JAX devices were already "
                    "in use.", n)
    return 0
  return n


def is_main() -> bool:
  """Whether this process writes logs, metrics and pictures (process 0)."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (a no-op on one host).

  On several hosts a collective that every process must call: it waits for
  the work queued on the devices and for the other hosts, so a loop that
  calls it every step loses asynchronous dispatch.
  """
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
