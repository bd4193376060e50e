r"""Trains an STN classifier from a config file.

  python -m stn_jax.main --config=configs/default.py --workdir=runs/default [--config.learning_rate=3e-4 ...]

A workdir with a run of the same config in it is resumed from its newest checkpoint; one with another config's run is
refused. Console script: `stn-train` (same flags).
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from stn_jax import distributed, train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, figures and results.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.getLogger().setLevel(logging.INFO)
  # orbax logs every step of every save at INFO; keep its warnings only.
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or "orbax" not in record.pathname)
  config = flags.FLAGS.config
  train.validate_config(config)  # before any work starts
  distributed.maybe_initialize(config.distributed)
  results = train.train_and_evaluate(config, _WORKDIR.value)
  print(f"test accuracy {results['test_accuracy']:.4f}; results, metrics and figures in {_WORKDIR.value}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
