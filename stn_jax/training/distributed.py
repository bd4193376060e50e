"""Multi-host setup and sharding: `jax.distributed.initialize` when the config or the environment asks for it, the
one-axis data mesh, and the helpers that put batches and state on it.

config.distributed.initialize: 'auto' (the default) initialises when a coordinator address is configured, or when
the job runs under SLURM with more than one task, on a multi-host TPU slice, or with $JAX_COORDINATOR_ADDRESS set;
'always' forces it (JAX then auto-detects the cluster); 'never' keeps a single process.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from stn_jax.training.errors import ConfigError

log = logging.getLogger(__name__)
MODES = ("auto", "always", "never")


def _cluster_detected() -> bool:
  env = os.environ
  slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
  tpu = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  return slurm or tpu or bool(env.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize(distributed_config) -> bool:
  """Initialises JAX's distributed runtime when asked to ('auto': when a coordinator or cluster is found).

  Args:
    distributed_config: config.distributed.

  Returns:
    Whether it initialised.
  """
  d = distributed_config  # validated by config_lib.validate
  wanted = d.initialize == "always" or (d.initialize == "auto" and (d.coordinator_address or _cluster_detected()))
  if not wanted:
    return False
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
  jax.distributed.initialize(
    coordinator_address=d.coordinator_address or None,
    num_processes=d.num_processes,
    process_id=d.process_id,
  )
  log.info(
    "distributed: process %d of %d, %d global devices", jax.process_index(), jax.process_count(), jax.device_count()
  )
  return True


# ----------------------------------------------------------------------------------------------------------------------
# The mesh and the arrays on it.
# ----------------------------------------------------------------------------------------------------------------------


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first devices, its one axis named 'data' (its axis type explicit).

  Args:
    num_devices: how many devices (0: all of them).

  Returns:
    The mesh.

  Raises:
    ConfigError: more devices than are visible, or a part of them in a multi-host run (there it must be 0).
  """
  devices = jax.devices()
  n = num_devices or len(devices)
  if jax.process_count() > 1 and n != len(devices):
    raise ConfigError(f"config.num_devices must be 0 (all {len(devices)} devices) in a multi-host run; got {n}.")
  if n > len(devices):
    raise ConfigError(f"config.num_devices={n} but only {len(devices)} devices are visible: {devices}.")
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n])


def check_divisible(mesh: jax.sharding.Mesh, **batch_sizes: int) -> None:
  """Checks that every global batch splits evenly over the mesh's devices.

  Args:
    mesh: the data mesh.
    **batch_sizes: the named config fields, e.g. batch_size=128.

  Raises:
    ConfigError: naming the field that does not divide.
  """
  for name, size in batch_sizes.items():
    if size % mesh.size:
      raise ConfigError(f"config.{name} ({size}) must be a multiple of the {mesh.size} devices.")


def shard_batch(mesh: jax.sharding.Mesh, batch: dict, *, member_axis: bool = False) -> dict:
  """This process's rows of a global batch as global arrays split over the mesh's 'data' axis.

  Args:
    mesh: the data mesh.
    batch: {name: this process's rows}.
    member_axis: the arrays are (K, rows, ...): one batch per member, each split over 'data' along its rows.

  Returns:
    {name: global jax.Array}.
  """
  spec = jax.sharding.PartitionSpec(None, "data") if member_axis else jax.sharding.PartitionSpec("data")
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The sharding that replicates an array on every device of the mesh.

  Args:
    mesh: the data mesh.

  Returns:
    The NamedSharding.
  """
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def replicate(mesh: jax.sharding.Mesh, tree):
  """A tree placed on every device of the mesh.

  Args:
    mesh: the data mesh.
    tree: arrays.

  Returns:
    The tree of replicated global arrays.
  """
  return jax.device_put(tree, replicated(mesh))


def local_copy(tree):
  """This process's copy of replicated (possibly multi-host) arrays.

  Args:
    tree: replicated global arrays.

  Returns:
    The tree as numpy arrays.
  """
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def process_0_value(value: float) -> float:
  """Process 0's value on every process (a replicated value, e.g. a clock reading, must agree everywhere).

  Args:
    value: this process's value.

  Returns:
    Process 0's.
  """
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return float(multihost_utils.broadcast_one_to_all(np.float32(value)))
