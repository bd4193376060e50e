r"""K seeds trained in one program (config.num_seeds = K) against K sequential single-seed runs, in one process.

  python experiments/benchmark_seeds.py [--num_seeds=8] [--steps=200] [--config=configs/default.py] \
      [--config.seed_mapping=vmap] [--config.model.classifier.kind=fcn ...]

Both sides are whole `train_and_evaluate` runs on real MNIST (loaded once and shared): K runs with seeds 0..K-1 one
after the other, then one run with num_seeds=K, each of --steps steps with one validation pass, one checkpoint and the
test evaluation, compilation included (a sequential run compiles its own step, as separate launches would; an untimed
one-step run first pays the one-off costs of a process, which separate launches would each pay again). Prints the
wall times, model-steps per second and the throughput ratio, and checks that seed k of the K-seed run reaches the same
test loss as the run with seed k.
"""

from __future__ import annotations

import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from stn_jax import models
from stn_jax.training import steps, train
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training config (overrides allowed).")
_SEEDS = flags.DEFINE_integer("num_seeds", 8, "K: seeds per program, and sequential runs.", lower_bound=2)
_STEPS = flags.DEFINE_integer("steps", 200, "Train steps of every run.", lower_bound=1)


def _timed_run(config, datasets) -> tuple[float, dict]:
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    results = train.train_and_evaluate(config, workdir, datasets=datasets)
    return time.perf_counter() - start, results


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  base = _CONFIG.value
  k, num_steps = _SEEDS.value, _STEPS.value
  with base.unlocked():
    base.num_train_steps = num_steps
    base.eval_every_steps = base.checkpoint_every_steps = base.log_every_steps = num_steps
    base.optimizer.warmup_steps = min(base.optimizer.warmup_steps, num_steps // 10)
  datasets = train.load_datasets(base)

  warmup = base.copy_and_resolve_references()
  warmup.num_train_steps = warmup.eval_every_steps = warmup.checkpoint_every_steps = warmup.log_every_steps = 1
  warmup.optimizer.warmup_steps = 0
  _timed_run(warmup, datasets)

  sequential, losses = [], []
  for seed in range(k):
    config = base.copy_and_resolve_references()
    config.seed, config.num_seeds = base.seed + seed, 1
    wall, results = _timed_run(config, datasets)
    sequential.append(wall)
    losses.append(results["test_loss"])
    print(f"sequential run, seed {config.seed}: {wall:.1f} s, test accuracy {results['test_accuracy']:.4f}", flush=True)
  config = base.copy_and_resolve_references()
  config.num_seeds = k
  together, results = _timed_run(config, datasets)
  mapping = steps.resolve_seed_mapping(config.seed_mapping, xla_convolutions=models.has_xla_convolutions(config.model))
  print(f"one run of {k} seeds ({mapping}): {together:.1f} s, test accuracy {results['test_accuracy']:.4f}")
  gap = np.max(np.abs(np.array(results["test_loss_per_seed"]) - np.array(losses)) / np.abs(losses))
  print(f"largest relative test-loss difference, seed k of the {k}-seed run vs the run with seed k: {gap:.1e}")

  model = f"{config.model.transform} ST-{config.model.classifier.kind.upper()}"
  if config.model.transform == "none":
    model = config.model.classifier.kind.upper()
  print(
    f"\njax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); {model} on "
    f"{config.dataset.name}, batch {config.batch_size}, {num_steps} steps per run"
  )
  print("| how | wall s | model-steps/s |")
  print("|---|---:|---:|")
  seq_total = sum(sequential)
  print(f"| {k} sequential runs | {seq_total:.1f} | {k * num_steps / seq_total:.1f} |")
  print(f"| one run, num_seeds={k} ({mapping}) | {together:.1f} | {k * num_steps / together:.1f} |")
  print(f"throughput ratio (one run / sequential): {seq_total / together:.2f}")


if __name__ == "__main__":
  app.run(main)
