r"""Trains an STN classifier (or, for a config of task 'coloc', a co-localiser) from a config file.

  python -m stn_jax.main --config=configs/default.py --workdir=runs/default [--config.learning_rate=3e-4 ...]
  python -m stn_jax.main --config=configs/paper_coloc.py --workdir=runs/coloc_0 --config.dataset.digit=0
  python -m stn_jax.main --config=configs/paper_table1.py:cpu --list [--markdown]  # the fields, values, meanings

A workdir with a run of the same config in it is resumed from its newest checkpoint, or, when that run is finished,
left as it is (its results are printed); a larger --config.num_train_steps continues a run only with --continue; a
workdir with another config's run is refused. A bad config, a misspelt key or a workdir
conflict ends with a one-line error and exit status 2. Console script: `stn-train` (same flags).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from stn_jax.training import coloc, config_lib, distributed, train
from stn_jax.training.cli import USAGE_ERROR, one_line, parse_flags, quiet_orbax

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, figures and results.")
_LIST = flags.DEFINE_bool("list", False, "Print every field of the config with its value and meaning, and exit.")
_MARKDOWN = flags.DEFINE_bool("markdown", False, "With --list: as a markdown table (docs/training.md's is made so).")
_CONTINUE = flags.DEFINE_bool("continue", False, "Continue the workdir's run to the config's larger total.")
config_flags.DEFINE_config_file(
  "config", None, "Training configuration file (path.py or path.py:arg).", lock_config=True
)


def main(argv):
  """Trains the flags' config into --workdir, or lists its fields (--list).

  Args:
    argv: what absl leaves of the command line (the program's name only).
  """
  if len(argv) > 1:
    sys.stderr.write(f"error: unexpected arguments: {' '.join(argv[1:])}\n")
    sys.exit(USAGE_ERROR)
  config = flags.FLAGS.config
  if config is None:
    sys.stderr.write("error: --config is required (e.g. --config=configs/default.py)\n")
    sys.exit(USAGE_ERROR)
  if _LIST.value:
    sweep = config_lib.sweep_overrides(config_flags.get_config_filename(flags.FLAGS["config"]))  # 'path.py[:arg]'
    print(config_lib.describe(config, markdown=_MARKDOWN.value, sweep=sweep))
    return
  if not _WORKDIR.value:
    sys.stderr.write("error: --workdir is required (the run's directory; an existing run there is resumed)\n")
    sys.exit(USAGE_ERROR)
  logging.getLogger().setLevel(logging.INFO)
  quiet_orbax()
  try:
    config_lib.validate(config)  # before any work starts
    if coloc.is_coloc(config):
      results = coloc.train_and_evaluate(config, _WORKDIR.value)
      print(f"IoU > 0.5 rate {results['iou_rate']:.3f}; results, metrics and figures in {_WORKDIR.value}")
      return
    distributed.maybe_initialize(config.distributed)
    results = train.train_and_evaluate(config, _WORKDIR.value, continue_run=_CONTINUE.value)
  except config_lib.ConfigError as e:
    sys.stderr.write(f"error: {one_line(e)}\n")
    sys.exit(USAGE_ERROR)
  print(f"test accuracy {results['test_accuracy']:.4f}; results, metrics and figures in {_WORKDIR.value}")


def run():
  """The console script `stn-train`: absl's app.run of `main`, its flag errors one line."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
