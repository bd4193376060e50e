"""Multi-host setup: `jax.distributed.initialize` when the config or the environment asks for it.

config.distributed.initialize: 'auto' (the default) initialises when a coordinator address is configured, or when
the job runs under SLURM with more than one task, on a multi-host TPU slice, or with $JAX_COORDINATOR_ADDRESS set;
'always' forces it (JAX then auto-detects the cluster); 'never' keeps a single process.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)
MODES = ("auto", "always", "never")


def _cluster_detected() -> bool:
  env = os.environ
  slurm = int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env
  tpu = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  return slurm or tpu or bool(env.get("JAX_COORDINATOR_ADDRESS"))


def maybe_initialize(distributed_config) -> bool:
  """Initialises JAX's distributed runtime if asked to; returns whether it did."""
  d = distributed_config
  if d.initialize not in MODES:
    raise ValueError(
      f"config.distributed.initialize must be one of {', '.join(map(repr, MODES))}; got {d.initialize!r}."
    )
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
