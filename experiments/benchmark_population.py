r"""Model-steps/s of a population of K models trained in one jitted step, against K, on the available device.

  python experiments/benchmark_population.py [--ks=1,8,64] [--steps=5] [--config=configs/default.py]

For each K and each way of mapping the step over the population (`config.seed_mapping`: vmap, unroll) and of running
the convolutions (`model.*.cnn.conv`: xla = lax.conv, which vmap turns into a grouped convolution; patches = strided
slices and one batched matrix product), the jitted train step of the config's model (batch --batch per model) is
timed on random data: the median of --steps calls after one compiling call. unroll is skipped for K > 8 (its
program grows with K). Speed-up = model-steps/s / the model-steps/s of K = 1 (one model, xla convolutions).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from stn_jax.training import config_lib, optim, steps, train
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Training config (overrides allowed).")
_KS = flags.DEFINE_list("ks", ["1", "8", "64"], "Population sizes.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per case.", lower_bound=1)


def time_population(base, k: int, mapping: str, conv: str, num_steps: int) -> float:
  """Seconds per call of the K-model step (median)."""
  config = base.copy_and_resolve_references()
  config.num_seeds = k
  config.model.classifier.cnn.conv = config.model.localization.cnn.conv = conv
  size = config_lib.input_shape(config)[0]
  graphdef, params = train.create_params(config)
  tx = optim.create_optimizer(config, steps.member_slice(params, 0, k), 1000)
  state = (params, optim.init_state(config, params, 1000), steps.zero_metric_sums(k))
  rng = np.random.default_rng(0)
  shape = (config.batch_size,) if k == 1 else (k, config.batch_size)
  batch = {
    "image": jnp.asarray(rng.random((*shape, size, size, 1), dtype=np.float32)),
    "label": jnp.asarray(rng.integers(0, 10, shape), jnp.int32),
  }
  step = steps.make_train_step(graphdef, tx, config.seed, k, mapping, config.matmul_precision)
  state = jax.block_until_ready(step(*state, batch, 0))  # compile
  times = []
  for i in range(num_steps):
    start = time.perf_counter()
    state = jax.block_until_ready(step(*state, batch, i + 1))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  base = _CONFIG.value
  device = jax.devices()[0]
  rows = []
  for k in (int(v) for v in _KS.value):
    for mapping in ("vmap", "unroll"):
      if (k == 1 and mapping == "unroll") or (mapping == "unroll" and k > 8):
        continue
      for conv in ("xla", "patches"):
        seconds = time_population(base, k, mapping, conv, _STEPS.value)
        rows.append((k, mapping if k > 1 else "-", conv, seconds, k / seconds))
        print(f"K={k} {mapping} {conv}: {1e3 * seconds:.1f} ms per step", flush=True)
  single = next(r[4] for r in rows if r[0] == 1 and r[2] == "xla")
  print(
    f"\njax {jax.__version__} on {device.platform} ({device.device_kind}); {base.dataset.name}, batch "
    f"{base.batch_size} per model, {base.model.transform} ST-{base.model.classifier.kind.upper()}"
  )
  print("| K | mapping | conv | ms / step | model-steps/s | speed-up vs K=1 |")
  print("|---:|---|---|---:|---:|---:|")
  for k, mapping, conv, seconds, rate in rows:
    print(f"| {k} | {mapping} | {conv} | {1e3 * seconds:.1f} | {rate:.1f} | {rate / single:.2f} |")


if __name__ == "__main__":
  app.run(main)
