"""One process of the two-process jax.distributed test (tests/training/test_train.py runs two of these on localhost).

python -m tests.two_process_worker PROCESS_ID PORT WORKDIR
"""

import json
import sys

import ml_collections


def main(process_id: int, port: int, workdir: str) -> None:
  from stn_jax.training import distributed, train
  from tests.helpers import synthetic_datasets, tiny_config

  config = tiny_config()
  config.distributed.coordinator_address = f"localhost:{port}"
  config.distributed.num_processes = 2
  config.distributed.process_id = process_id
  assert distributed.maybe_initialize(ml_collections.ConfigDict(config.distributed))
  import jax

  assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
  results = train.train_and_evaluate(config, workdir, datasets=synthetic_datasets())
  print(json.dumps({"process": jax.process_index(), **results}), flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
