r"""The training loop's steps/s against its bare jitted step's, same model, in one process.

  python experiments/benchmark_loop.py [--config=configs/default.py] [--steps=300] [--repeats=3]

"bare step": the jitted train step called back to back on one batch already on the device (the ceiling). "loop,
<pipeline>": whole `train_and_evaluate` runs of --steps steps (one evaluation and one checkpoint, at the end), their
own steps/s (results.json: training time only, the first call's compilation excluded), with the device pipeline
(the epoch on the device, batches gathered in the step) and the host pipeline (chunks gathered on the host,
prefetched). "per-step host batches" is the version-1 trainer's way, timed here as a loop: each step's batch made
on the host (permutation, gather, conversion to float), transferred, then the step. The configurations alternate,
--repeats times; medians. Ratio = steps/s / bare step's.
"""

from __future__ import annotations

import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from stn_jax.training import distributed, optim, steps, train
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training config (overrides allowed).")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per timed run.", lower_bound=10)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds of all configurations.", lower_bound=1)


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  base = _CONFIG.value
  n = _STEPS.value
  with base.unlocked():
    base.num_train_steps = base.eval_every_steps = base.checkpoint_every_steps = base.log_every_steps = n
  datasets = train.load_datasets(base)
  train_set = datasets["train"]
  mesh = distributed.make_mesh(base.num_devices)
  graphdef, params = train.create_params(base)
  tx = optim.create_optimizer(base, params, n)
  step_fn = steps.make_train_step(graphdef, tx, base.seed, precision=base.matmul_precision)
  fixed = distributed.shard_batch(mesh, train.population_batch(base, train_set, 0))

  host_params = jax.tree.map(np.asarray, params)

  def fresh_state():  # new buffers every time: the step donates its state
    state = (host_params, tx.init(host_params), steps.zero_metric_sums())
    return distributed.replicate(mesh, jax.tree.map(np.array, state))

  def bare() -> float:
    state = step_fn(*fresh_state(), fixed, 0)  # compiled already after the first round
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(1, n):
      state = step_fn(*state, fixed, i)
    jax.block_until_ready(state)
    return (n - 1) / (time.perf_counter() - start)

  def per_step_host() -> float:
    state = step_fn(*fresh_state(), distributed.shard_batch(mesh, train.population_batch(base, train_set, 0)), 0)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(1, n):
      state = step_fn(*state, distributed.shard_batch(mesh, train.population_batch(base, train_set, i)), i)
    jax.block_until_ready(state)
    return (n - 1) / (time.perf_counter() - start)

  def loop(pipeline: str) -> float:
    config = base.copy_and_resolve_references()
    config.input_pipeline = pipeline
    with tempfile.TemporaryDirectory() as workdir:
      return train.train_and_evaluate(config, workdir, datasets=datasets)["steps_per_sec"]

  cases = {
    "bare step": bare,
    "loop, device pipeline": lambda: loop("device"),
    "loop, host pipeline": lambda: loop("host"),
    "per-step host batches (version 1)": per_step_host,
  }
  for fn in cases.values():  # warm-up: compilation, the epoch's distortion
    fn()
  rates = {name: [] for name in cases}
  for _ in range(_REPEATS.value):
    for name, fn in cases.items():
      rates[name].append(fn())
  medians = {name: float(np.median(r)) for name, r in rates.items()}
  device = jax.devices()[0]
  print(
    f"jax {jax.__version__} on {device.platform} ({device.device_kind}, {jax.device_count()} device(s)); "
    f"{base.dataset.name}, batch {base.batch_size}, {n} steps per run, medians of {_REPEATS.value}"
  )
  print("| how | steps/s | / bare step |")
  print("|---|---:|---:|")
  for name, rate in medians.items():
    print(f"| {name} | {rate:.1f} | {rate / medians['bare step']:.3f} |")


if __name__ == "__main__":
  app.run(main)
