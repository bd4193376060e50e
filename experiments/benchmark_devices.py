r"""Steps/s of the data-parallel train step of configs/default.py against the number of devices.

  python experiments/benchmark_devices.py [--devices=1,2,4,8] [--steps=30] [--batch_size=128]

On a CPU it forces 8 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, set before JAX starts); these
share the machine's cores, so this measures the overhead of sharding and of the gradient all-reduce rather than a
speed-up. On an accelerator host it uses the real devices.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from stn_jax.training import config_lib, distributed, optim, steps, train
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to time.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per device count.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  config = config_lib.load(Path(__file__).resolve().parents[1] / "configs" / "default.py")
  config.batch_size = _BATCH.value
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.random((config.batch_size, 40, 40, 1), dtype=np.float32),
    "label": rng.integers(0, 10, config.batch_size).astype(np.int32),
  }
  print(f"jax {jax.__version__}; {jax.device_count()} {jax.devices()[0].platform} devices; batch {config.batch_size}")
  print("| devices | ms / step | steps/s |")
  print("|---:|---:|---:|")
  for n in (int(d) for d in _DEVICES.value):
    if n > jax.device_count():
      continue
    mesh = distributed.make_mesh(n)
    graphdef, params = train.create_params(config)
    tx = optim.create_optimizer(config, params, num_train_steps=10_000)
    accum = steps.zero_metric_sums()
    params, opt_state, accum = distributed.replicate(mesh, (params, tx.init(params), accum))
    step_fn = steps.make_train_step(graphdef, tx, 0)
    sharded = distributed.shard_batch(mesh, batch)
    for i in range(3):
      params, opt_state, accum = step_fn(params, opt_state, accum, sharded, i)
    jax.block_until_ready(params)
    times = []
    for i in range(_STEPS.value):
      start = time.perf_counter()
      params, opt_state, accum = step_fn(params, opt_state, accum, distributed.shard_batch(mesh, batch), i)
      jax.block_until_ready(params)
      times.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(times))
    print(f"| {n} | {ms:.1f} | {1e3 / ms:.1f} |")


if __name__ == "__main__":
  app.run(main)
