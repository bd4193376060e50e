"""The training input pipeline: every step's batch equals the host pipeline's, whichever way it reaches the device;
chunking by dispatch; the choice of pipeline; results that do not depend on either."""

import numpy as np
import pytest

from stn_jax.training import config_lib, distributed, feed, steps, train
from tests.helpers import synthetic_datasets, tiny_config


@pytest.fixture(scope="module")
def datasets():
  return synthetic_datasets()


@pytest.mark.parametrize("pipeline", ["device", "host"])
@pytest.mark.parametrize("num_seeds", [1, 2])
def test_every_steps_batch_is_the_host_pipelines(datasets, pipeline, num_seeds):
  config = tiny_config(num_seeds=num_seeds, seed=3)
  train_set = datasets["train"]  # 96 digits, batch 16: 6 steps per epoch
  mesh = distributed.make_mesh(0)  # 8 devices: each holds 2 rows of every batch
  seeds = [config.seed + k for k in range(num_seeds)]
  train_feed = feed.TrainFeed(train_set, config.batch_size, seeds, mesh, pipeline=pipeline)
  try:
    plan = list(feed.chunks(4, 16, 3, 6))  # across the ends of epochs 0 and 1
    assert plan == [(4, 2), (6, 3), (9, 3), (12, 3), (15, 1)]
    for i, (step, n) in enumerate(plan):
      data, start = train_feed.chunk(step, n, next_chunk=plan[i + 1] if i + 1 < len(plan) else None)
      assert data["image"].sharding.spec[-1] == "data"  # split over the devices along the batch
      images, labels = np.asarray(data["image"]), np.asarray(data["label"])
      axis = 0 if num_seeds == 1 else 1
      for j in range(n):
        want = train.population_batch(config, train_set, step + j)
        got_images, got_labels = (np.take(a, start + j, axis=axis) for a in (images, labels))
        np.testing.assert_array_equal(np.asarray(steps.uint8_to_unit_float_by_table(got_images)), want["image"])
        np.testing.assert_array_equal(got_labels, want["label"])
  finally:
    train_feed.close()


@pytest.mark.parametrize("pipeline", ["device", "host"])
def test_members_of_different_variants_get_their_own_variants_batches(datasets, pipeline):
  config = tiny_config(num_seeds=3, **{"population.dataset": ("R", "P", "E"), "population.seed": (1, 1, 2)})
  sets = train.member_sets(config, datasets)["train"]
  assert [d.name for d in sets] == ["R", "P", "E"]
  mesh = distributed.make_mesh(0)
  with feed.TrainFeed(sets, config.batch_size, [1, 1, 2], mesh, pipeline=pipeline) as train_feed:
    plan = list(feed.chunks(4, 9, 2, 6))
    for i, (step, n) in enumerate(plan):
      data, start = train_feed.chunk(step, n, next_chunk=plan[i + 1] if i + 1 < len(plan) else None)
      for j in range(n):
        want = train.population_batch(config, sets, step + j)
        got = np.take(np.asarray(data["image"]), start + j, axis=1)
        np.testing.assert_array_equal(np.asarray(steps.uint8_to_unit_float_by_table(got)), want["image"])
        np.testing.assert_array_equal(np.take(np.asarray(data["label"]), start + j, axis=1), want["label"])
        # R and P of one seed: the same digits in the same order, distorted differently
        np.testing.assert_array_equal(want["label"][0], want["label"][1])
        assert not np.array_equal(want["image"][0], want["image"][1])


def test_chunks_end_at_multiples_epochs_and_the_total_whatever_the_start():
  full = list(feed.chunks(0, 25, 4, 10))
  assert full == [(0, 4), (4, 4), (8, 2), (10, 2), (12, 4), (16, 4), (20, 4), (24, 1)]
  for start in (8, 12):  # a resume from a checkpoint (a chunk boundary) dispatches the rest as the whole run did
    assert list(feed.chunks(start, 25, 4, 10)) == [c for c in full if c[0] >= start]
  inside = list(feed.chunks(13, 25, 4, 10))  # and from inside a chunk, it is back on the run's boundaries at once
  assert inside[0] == (13, 3) and inside[1:] == [c for c in full if c[0] >= 16]
  assert list(feed.chunks(7, 7, 4, 10)) == []


def test_steps_per_dispatch_must_divide_the_intervals():
  intervals = {"config.log_every_steps": 100, "the evaluation interval": 1170, "the checkpoint interval": 1170}
  assert feed.steps_per_dispatch(10, intervals) == 10
  assert feed.steps_per_dispatch(0, intervals) == 1  # auto, on CPU
  with pytest.raises(
    config_lib.ConfigError, match=r"steps_per_dispatch \(20\) must divide the evaluation interval \(1170 steps\)"
  ):
    feed.steps_per_dispatch(20, intervals)


def test_auto_keeps_the_epoch_on_the_device_when_it_fits(datasets, monkeypatch):
  train_set = datasets["train"]
  assert feed.choose("auto", train_set, 16, 1) == "device"
  assert feed.choose("host", train_set, 16, 1) == "host"
  monkeypatch.setattr(feed, "CPU_BUDGET_BYTES", feed.epoch_bytes(train_set, 16, 2) // 2)  # a tiny device
  assert feed.choose("auto", train_set, 16, 2) == "host"


def test_many_devices_with_a_full_epoch_do_not_deadlock(tmp_path):
  """4 and 8 forced CPU devices, a 50,000-image epoch, past two epoch boundaries, one model and a population with
  two steps per dispatch (tests/multi_device_worker.py). Before the training loop bounded its dispatches in flight
  each of these aborted in an XLA:CPU rendezvous about 70 s in; a hang fails here at the timeout."""
  import json
  import os
  import subprocess
  import sys

  runs = {"4 devices": ("4", "1", "1"), "8 devices, K=2": ("8", "2", "2")}
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workers = {
    name: subprocess.Popen(
      [sys.executable, "-m", "tests.multi_device_worker", *args, str(tmp_path / name.replace(" ", "_"))],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for name, args in runs.items()
  }
  results = {}
  try:
    for name, worker in workers.items():
      out, err = worker.communicate(timeout=240)
      assert worker.returncode == 0, f"{name}: exit status {worker.returncode}\n{err[-3000:]}"
      results[name] = json.loads(out.strip().splitlines()[-1])
  finally:
    for worker in workers.values():
      worker.kill()
  one, population = results["4 devices"], results["8 devices, K=2"]
  assert one["num_train_steps"] == population["num_train_steps"] == 144  # three epochs of 48 steps
  # Member 0 of the population is the single model (same seed), whether its batches are split 4 or 8 ways.
  assert population["test_loss_per_seed"][0] == pytest.approx(one["test_loss"], rel=1e-4)
  assert population["test_loss_per_seed"][0] != pytest.approx(population["test_loss_per_seed"][1], rel=1e-3)
  assert one["test_accuracy"] > 0.9  # it learnt (chance is 0.1)
