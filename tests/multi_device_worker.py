"""One data-parallel run over forced CPU devices with a full-size epoch (tests/training/test_feed.py runs it in a
subprocess with a timeout, so a deadlock fails the test instead of hanging it).

python -m tests.multi_device_worker NUM_DEVICES NUM_SEEDS STEPS_PER_DISPATCH WORKDIR

The train split has 50,000 synthetic digits (the size of the default config's epoch) and the model is tiny, so the
host dispatches steps much faster than the devices run them: the situation in which the training loop used to run
more than 32 programs ahead of the devices and XLA:CPU's collectives deadlocked. It trains past two epoch boundaries
on the device pipeline and prints the results as one JSON line.
"""

import json
import os
import sys


def main(num_devices: int, num_seeds: int, steps_per_dispatch: int, workdir: str) -> None:
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  import numpy as np

  from stn_jax import data as data_lib
  from stn_jax.training import train
  from tests.helpers import synthetic_digits, tiny_config

  assert jax.device_count() == num_devices
  rng = np.random.default_rng(1)
  datasets = {}
  for split, n in (("train", 50_000), ("validation", 512), ("test", 512)):
    digits, labels = synthetic_digits(rng, n)
    datasets[split] = data_lib.DistortedMnist("R", split, digits, labels, seed=0, fresh_each_epoch=split == "train")
  batch = 1024  # 48 steps per epoch
  config = tiny_config(
    batch_size=batch,
    num_seeds=num_seeds,
    num_epochs=None,
    num_train_steps=3 * 48,  # across two epoch boundaries
    eval_every_steps=3 * 48,  # no log line, evaluation or checkpoint inside the run: nothing else waits for the
    checkpoint_every_steps=3 * 48,  # devices, so only the loop itself can keep the host from running far ahead
    log_every_steps=3 * 48,
    eval_batch_size=512,
    steps_per_dispatch=steps_per_dispatch,
    input_pipeline="device",
    **{"model.classifier.kind": "fcn", "model.classifier.fcn.hidden": (16,), "model.localization.fcn.hidden": (8,)},
  )
  results = train.train_and_evaluate(config, workdir, datasets=datasets)
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
