"""The training loop on a tiny config with synthetic digits: outputs, reproducibility, resume and continuation,
validation, data parallelism, populations of seeds, the entry point's errors."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from stn_jax import data as data_lib
from stn_jax.training import checkpoints, config_lib, feed, optim, steps, train
from tests.helpers import synthetic_datasets, synthetic_digits, tensorboard_events, tiny_config, workdir_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def datasets():
  return synthetic_datasets()


def _without_timing(rows):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rows]


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, datasets):
  workdir = tmp_path_factory.mktemp("run")
  results = train.train_and_evaluate(tiny_config(), workdir, datasets=datasets)
  return workdir, results


def test_a_run_writes_everything(finished_run):
  workdir, results = finished_run
  rows = _metrics(workdir)
  assert [r["step"] for r in rows] == [4, 8, 12]
  for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "steps_per_sec"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns
  saved = json.loads((workdir / "results.json").read_text())
  assert saved == results
  assert saved["num_train_steps"] == 12 and saved["num_epochs"] == 2
  assert set(saved) >= {"test_accuracy", "test_loss", "test_error", "num_train_steps", "train_time_s"}
  assert saved["test_error"] == pytest.approx(1 - saved["test_accuracy"])
  assert json.loads((workdir / "config.json").read_text())["dataset"]["name"] == "R"
  for name in ("transform_final.png", "grids_final.png", "curves.png", "transform_step000004.png"):
    assert (workdir / "figures" / name).stat().st_size > 1000, name
  # TensorBoard: the train loss and learning rate at every log step, evaluations, the transformer as images
  scalars, images = tensorboard_events(workdir)
  assert [s for s, _ in scalars["train_loss"]] == [2, 4, 6, 8, 10, 12]
  rates = dict(scalars["learning_rate"])
  schedule = optim.learning_rate_schedule(tiny_config(), 12)
  assert rates == pytest.approx({s: float(schedule(s - 1)) for s in range(2, 13, 2)})
  assert [s for s, _ in scalars["val_accuracy"]] == [4, 8, 12]
  assert images["transformer/input"] == images["transformer/output"] == [4, 8, 12]


def test_same_config_gives_bitwise_the_same_run(finished_run, tmp_path, datasets):
  workdir, results = finished_run
  again = train.train_and_evaluate(tiny_config(), tmp_path, datasets=datasets)
  assert again["test_loss"] == results["test_loss"] and again["test_accuracy"] == results["test_accuracy"]
  assert _without_timing(_metrics(tmp_path)) == _without_timing(_metrics(workdir))


@pytest.mark.parametrize(("pipeline", "per_dispatch"), [("host", 2), ("device", 4)])
def test_the_pipeline_and_steps_per_dispatch_do_not_change_a_run(
  finished_run, tmp_path, datasets, pipeline, per_dispatch
):
  workdir, results = finished_run  # device pipeline, one step per call
  config = tiny_config(input_pipeline=pipeline, steps_per_dispatch=per_dispatch, log_every_steps=4)
  again = train.train_and_evaluate(config, tmp_path, datasets=datasets)
  assert again["test_loss"] == results["test_loss"]  # bitwise: the same batches and the same updates
  assert _without_timing(_metrics(tmp_path)) == _without_timing(_metrics(workdir))
  with pytest.raises(config_lib.ConfigError, match=r"steps_per_dispatch \(4\) must divide config.log_every_steps"):
    train.train_and_evaluate(tiny_config(steps_per_dispatch=4, log_every_steps=2), tmp_path / "w", datasets=datasets)
  assert not (tmp_path / "w").exists()


def test_an_interrupted_run_resumes_to_the_same_metrics(finished_run, tmp_path, datasets, monkeypatch):
  workdir, results = finished_run
  real_chunk = feed.TrainFeed.chunk

  def dies_at_step_10(self, step, *args, **kwargs):
    if step == 10:
      raise KeyboardInterrupt("killed")
    return real_chunk(self, step, *args, **kwargs)

  monkeypatch.setattr(feed.TrainFeed, "chunk", dies_at_step_10)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(tiny_config(), tmp_path, datasets=datasets)
  monkeypatch.setattr(feed.TrainFeed, "chunk", real_chunk)
  # A kill can also leave a half-written metrics line behind.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 12, "train_lo')
  resumed = train.train_and_evaluate(tiny_config(), tmp_path, datasets=datasets)
  assert resumed["test_loss"] == results["test_loss"]
  assert _without_timing(_metrics(tmp_path)) == _without_timing(_metrics(workdir))


def _dies_at(monkeypatch, at_step: int):
  """Makes training raise as a kill would, when it is about to run step `at_step` (after everything of the steps
  before it); returns the function that undoes it."""
  real_chunk = feed.TrainFeed.chunk

  def dies(self, step, *args, **kwargs):
    if step == at_step:
      raise KeyboardInterrupt("killed")
    return real_chunk(self, step, *args, **kwargs)

  monkeypatch.setattr(feed.TrainFeed, "chunk", dies)
  return lambda: monkeypatch.setattr(feed.TrainFeed, "chunk", real_chunk)


_SIGKILLED_RUN = """
import os, signal, sys
from stn_jax.training import feed, train
from tests.helpers import synthetic_datasets, tiny_config
real_chunk = feed.TrainFeed.chunk
def chunk(self, step, *args, **kwargs):
  if step == int(sys.argv[2]):
    os.kill(os.getpid(), signal.SIGKILL)
  return real_chunk(self, step, *args, **kwargs)
feed.TrainFeed.chunk = chunk
config = tiny_config(checkpoint_every_steps=int(sys.argv[3]))
train.train_and_evaluate(config, sys.argv[1], datasets=synthetic_datasets())
"""


def _curves(workdir):
  """The run's TensorBoard as it reads (tests.helpers.tensorboard_events), without its timings."""
  scalars, images = tensorboard_events(workdir)
  return {tag: v for tag, v in scalars.items() if not tag.startswith("steps_per_sec")}, images


@pytest.mark.parametrize(("kill", "checkpoint_every"), [("sigkill", 4), ("exception", 3)])
def test_a_killed_and_resumed_run_shows_the_tensorboard_curves_of_an_uninterrupted_one(
  tmp_path, datasets, monkeypatch, kill, checkpoint_every
):
  config = tiny_config(checkpoint_every_steps=checkpoint_every)
  whole = tmp_path / "whole"
  train.train_and_evaluate(config, whole, datasets=datasets)
  cut = tmp_path / "cut"
  # killed as it is about to run step 11: step 10 logged its loss after the newest checkpoint (step 8, or 9)
  if kill == "sigkill":
    args = [sys.executable, "-c", _SIGKILLED_RUN, str(cut), "10", str(checkpoint_every)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == -9, done.stderr[-2000:]
  else:
    restore = _dies_at(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, cut, datasets=datasets)
    restore()
  newest = max(int(p.name) for p in (cut / "checkpoints").iterdir() if p.name.isdigit())
  assert newest == 12 // checkpoint_every * checkpoint_every - checkpoint_every
  scalars, _ = tensorboard_events(cut)
  assert [s for s, _ in scalars["train_loss"]] == [2, 4, 6, 8, 10]  # on disk when the kill came
  train.train_and_evaluate(config, cut, datasets=datasets)
  assert _curves(cut) == _curves(whole)
  assert len(list((cut / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_a_continuation_killed_before_its_first_checkpoint_leaves_the_workdir_as_it_was(
  finished_run, tmp_path, datasets, monkeypatch
):
  workdir, results = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  before = workdir_files(copy)
  typo = tiny_config(num_train_steps=120, checkpoint_every_steps=12)  # meant 12; its first checkpoint: step 24
  restore = _dies_at(monkeypatch, 21)  # after the log lines, evaluations and figures of steps 13 to 20
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(typo, copy, datasets=datasets, continue_run=True)
  restore()
  assert workdir_files(copy) == before  # config.json, metrics, TensorBoard, figures, checkpoints: as they were
  assert train.train_and_evaluate(tiny_config(), copy, datasets=datasets) == results  # the original command
  assert workdir_files(copy) == before
  train.train_and_evaluate(tiny_config(num_train_steps=16), copy, datasets=datasets, continue_run=True)
  history = [json.loads(line) for line in (copy / "config_history.jsonl").read_text().splitlines()]
  assert history == [{"resumed_at_step": 12, "changes": ["num_train_steps: None -> 16"]}]
  assert [r["step"] for r in _metrics(copy)] == [4, 8, 12, 16]


def test_a_finished_run_continues_with_more_steps_and_free_fields_may_change(finished_run, tmp_path, datasets, caplog):
  workdir, results = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  longer = tiny_config(num_train_steps=16, log_every_steps=3, eval_batch_size=8, checkpoints_to_keep=1)
  before = {p.name: p.read_bytes() for p in copy.glob("*") if p.is_file()}
  with pytest.raises(checkpoints.WorkdirConflictError, match=r"add --continue to continue it from 12 to 16 steps"):
    train.train_and_evaluate(longer, copy, datasets=datasets)  # a larger total is asked for, never implied
  assert {p.name: p.read_bytes() for p in copy.glob("*") if p.is_file()} == before
  with caplog.at_level(logging.INFO):
    continued = train.train_and_evaluate(longer, copy, datasets=datasets, continue_run=True)
  assert "resumed from the checkpoint at step 12" in caplog.text and "from 12 to 16 steps" in caplog.text
  assert "learning_rate: 0.002" in caplog.text  # the resolved config is logged at the start, one field a line
  assert "!!python" not in caplog.text and "model.classifier.cnn.features: " in caplog.text
  rows = _metrics(copy)
  assert [r["step"] for r in rows] == [4, 8, 12, 16]
  assert _without_timing(rows[:3]) == _without_timing(_metrics(workdir))  # the first 12 steps are kept as they were
  assert continued["num_train_steps"] == 16 and continued["test_loss"] != results["test_loss"]
  assert sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit()) == [16]
  history = [json.loads(line) for line in (copy / "config_history.jsonl").read_text().splitlines()]
  assert history[0]["resumed_at_step"] == 12 and "num_train_steps: None -> 16" in history[0]["changes"]
  assert json.loads((copy / "config.json").read_text())["num_train_steps"] == 16
  assert json.loads((copy / "results_at_step_12.json").read_text()) == results  # the shorter run's, kept aside
  with pytest.raises(checkpoints.WorkdirConflictError, match=r"16 -> 12 \(a run can be continued, not shortened\)"):
    train.train_and_evaluate(tiny_config(), copy, datasets=datasets)


def test_a_checkpoint_past_the_recorded_total_is_reported_not_taken_for_the_run(finished_run, tmp_path, datasets):
  workdir, _ = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  shutil.copytree(copy / "checkpoints" / "12", copy / "checkpoints" / "16")  # a continuation killed after saving it
  before = workdir_files(copy)
  with pytest.raises(checkpoints.WorkdirConflictError, match=r"checkpoint at step 16, past the 12 steps"):
    train.train_and_evaluate(tiny_config(), copy, datasets=datasets)
  assert workdir_files(copy) == before


@pytest.mark.parametrize("name", ["v1_cnn", "v1_fcn"])
def test_a_version_1_workdir_resumes_under_its_migrated_config(name, tmp_path, datasets):
  workdir = tmp_path / name
  shutil.copytree(ROOT / "tests" / "fixtures" / name, workdir)
  old = json.loads((workdir / "config.json").read_text())
  config = config_lib.from_dict(old)  # what the v1 run was, in today's layout
  config.num_train_steps = 6  # the v1 run stopped at 4
  results = train.train_and_evaluate(config, workdir, datasets=datasets, continue_run=True)
  assert results["num_train_steps"] == 6 and np.isfinite(results["test_loss"])
  assert json.loads((workdir / "config.json").read_text())["version"] == 2
  assert json.loads((workdir / "config.v1.json").read_text()) == old  # the original is kept
  with pytest.raises(checkpoints.WorkdirConflictError, match="learning_rate"):
    train.train_and_evaluate(tiny_config(learning_rate=0.5), workdir, datasets=datasets)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, datasets, caplog):
  workdir, results = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  newest = copy / "checkpoints" / "12"
  for f in newest.rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  (copy / "results.json").unlink()  # a run killed after its last checkpoint, before its results
  with caplog.at_level(logging.WARNING):
    again = train.train_and_evaluate(tiny_config(), copy, datasets=datasets)
  assert "unreadable" in caplog.text and "step 12" in caplog.text
  assert again["test_loss"] == results["test_loss"]


def test_a_finished_run_is_reported_and_left_as_it_is(finished_run, tmp_path, datasets, caplog, monkeypatch):
  workdir, results = finished_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  files = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run must not compile or train")

  monkeypatch.setattr(steps, "make_train_loop", no_training)
  with caplog.at_level(logging.INFO):
    again = train.train_and_evaluate(tiny_config(log_every_steps=3), copy, datasets=datasets)  # a free field differs
  assert again == results and "finished at step 12" in caplog.text
  assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == files  # nothing written, no event file


def test_a_workdir_of_another_config_is_never_clobbered(finished_run, datasets):
  workdir, _ = finished_run
  before = (workdir / "metrics.jsonl").read_text()
  with pytest.raises(checkpoints.WorkdirConflictError, match=r"learning_rate: 0\.002 -> 0\.5"):
    train.train_and_evaluate(tiny_config(learning_rate=0.5), workdir, datasets=datasets)
  # the compute dtype is part of what a run computes: a float32 run is not continued in bfloat16
  with pytest.raises(checkpoints.WorkdirConflictError, match=r"compute_dtype: 'float32' -> 'bfloat16'"):
    train.train_and_evaluate(tiny_config(compute_dtype="bfloat16"), workdir, datasets=datasets)
  assert (workdir / "metrics.jsonl").read_text() == before


def test_a_short_bfloat16_run_ends_within_two_test_examples_of_the_float32_run(tmp_path, datasets):
  """Mixed precision changes the rounding of every layer, not what is learnt: after 36 steps the test accuracy is
  within 2 of the 40 test examples (0.05) of float32's and the test loss within 2 %."""
  results = {
    dtype: train.train_and_evaluate(tiny_config(compute_dtype=dtype, num_epochs=6), tmp_path / dtype, datasets=datasets)
    for dtype in ("float32", "bfloat16")
  }
  f32, bf16 = results["float32"], results["bfloat16"]
  assert f32["test_loss"] < 2.1  # it learnt something (chance: ln 10 = 2.30)
  assert abs(bf16["test_accuracy"] - f32["test_accuracy"]) <= 0.05 + 1e-9
  assert bf16["test_loss"] == pytest.approx(f32["test_loss"], rel=0.02)
  assert bf16["test_loss"] != f32["test_loss"]  # computed in bfloat16, not float32
  saved = json.loads((tmp_path / "bfloat16" / "config.json").read_text())
  assert saved["compute_dtype"] == "bfloat16"


@pytest.mark.parametrize(
  ("overrides", "words"),
  [
    ({"dataset.name": "mnist"}, ["config.dataset.name", "'mnist'", "'seed40'", "'TC'"]),
    ({"model.transform": "rigid"}, ["config.model.transform", "'rigid'", "'affine'", "'none'"]),
    ({"model.classifier.kind": "resnet"}, ["config.model.classifier.kind", "'resnet'", "'cnn'", "'fcn'"]),
    ({"model.localization.fcn.activation": "sigmoid"}, ["config.model.localization.fcn", "activation", "'sigmoid'"]),
    ({"model.num_control_points": 15, "model.transform": "tps"}, ["num_control_points", "perfect square", "got 15"]),
    ({"num_epochs": 0.0}, ["config.num_epochs", "> 0", "num_train_steps"]),
    ({"batch_size": 0}, ["config.batch_size", "positive", "0"]),
    ({"num_train_steps": -5}, ["config.num_train_steps", "positive", "-5"]),
    ({"num_seeds": 0}, ["config.num_seeds", "positive", "0"]),
    ({"seed": -1}, ["config.seed", "non-negative", "-1"]),
    ({"optimizer.name": "lamb"}, ["config.optimizer.name", "'lamb'", "'sgd'"]),
    ({"compute_dtype": "float16"}, ["config.compute_dtype", "'float16'", "'float32'", "'bfloat16'"]),
  ],
)
def test_invalid_configs_fail_before_any_work(overrides, words, tmp_path):
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(tiny_config(**overrides), tmp_path / "w")
  for word in words:
    assert word in str(info.value), (word, str(info.value))
  assert not (tmp_path / "w").exists()


def test_optimizers_and_schedules_build_and_step(datasets, tmp_path):
  for i, overrides in enumerate(
    [
      {
        "optimizer.name": "sgd",
        "optimizer.schedule": "step",
        "optimizer.decay_steps": (6,),
        "optimizer.weight_decay": 1e-4,
      },
      {"optimizer.schedule": "constant", "optimizer.grad_clip_norm": 1.0, "optimizer.weight_decay": 1e-4},
    ]
  ):
    config = tiny_config(num_train_steps=4, **overrides)
    results = train.train_and_evaluate(config, tmp_path / str(i), datasets=datasets)
    assert np.isfinite(results["test_loss"])


def test_the_entry_point_reports_config_errors_in_one_line_with_exit_status_2(finished_run, tmp_path):
  workdir, _ = finished_run
  main = [sys.executable, "-m", "stn_jax.main", f"--config={ROOT / 'configs' / 'default.py'}"]
  cases = [
    ([f"--workdir={tmp_path}", "--config.lerning_rate=0.1"], "no field 'lerning_rate' (did you mean 'learning_rate'?)"),
    # a key with nothing close to it names itself and the section it was looked for in (was: error: "'foo'")
    ([f"--workdir={tmp_path}", "--config.model.foo=1"], "--config.model.foo: config.model has no field 'foo'"),
    ([f"--workdir={tmp_path}", "--config.zzz=1"], "--config.zzz: config has no field 'zzz'"),
    ([f"--workdir={tmp_path}", "--config.model.transform=tsp"], "config.model.transform must be one of"),
    ([f"--workdir={tmp_path}", "--config.num_devices=99"], "config.num_devices=99 but only 8 devices are visible"),
    # the finished run is of the tiny config (R, batch 16, ...): the default config is refused, its fields named
    ([f"--workdir={workdir}"], "holds a run of another config (differs in batch_size: 16 -> 128"),
  ]
  # a config file's own error without its exception's class name (was: error: ValueError: budget must be ...)
  table1 = [sys.executable, "-m", "stn_jax.main", f"--config={ROOT / 'configs' / 'paper_table1.py'}:gpu"]
  cases.append(([f"--workdir={tmp_path}"], "error: budget must be one of 'full', 'cpu', 'paper'; got 'gpu'."))
  for k, (args, words) in enumerate(cases):
    command = [*(table1 if k == len(cases) - 1 else main), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Unable to initialize backend" not in result.stderr
  assert not (tmp_path / "config.json").exists()


def test_list_prints_every_field_with_its_meaning_from_any_directory(tmp_path):
  command = [sys.executable, "-m", "stn_jax.main", f"--config={ROOT / 'configs' / 'paper_tc.py'}:cpu", "--list"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = {line.split()[0]: line for line in result.stdout.splitlines()}
  assert '"TC"' in lines["dataset.name"] and "[40, 40]" in lines["model.stn_output_size"]
  assert "6.0" in lines["num_epochs"] and "training budget in epochs" in lines["num_epochs"]
  assert "2x2 max-pooling" in lines["model.classifier.cnn.pool"]  # from CNNClassifier's docstring
  # a sweep config says which fields its runs set, and to what (the defaults it shows for them are not what runs)
  command = [sys.executable, "-m", "stn_jax.main", f"--config={ROOT / 'configs' / 'paper_table1.py'}:cpu", "--list"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = {line.split()[0]: line for line in result.stdout.splitlines()}
  assert result.stdout.startswith("This file's sweep(add) defines 32 runs")
  assert 'sweep: "R" | "RTS" | "P" | "E"' in lines["dataset.name"] and "seed40" not in lines["dataset.name"].split()[1]
  assert 'sweep: "none" | "affine" | "projective" | "tps"' in lines["model.transform"]
  assert "sweep" not in lines["learning_rate"]


def test_data_parallel_over_8_devices_matches_one_device(finished_run, tmp_path, datasets):
  import jax

  assert jax.device_count() == 8  # tests/conftest.py forces 8 CPU devices
  workdir, results = finished_run  # trained over all 8 devices (num_devices=0)
  single = train.train_and_evaluate(tiny_config(num_devices=1), tmp_path, datasets=datasets)
  assert single["test_loss"] == pytest.approx(results["test_loss"], rel=1e-4)
  assert single["test_accuracy"] == pytest.approx(results["test_accuracy"], abs=1 / 40)
  for a, b in zip(_metrics(tmp_path), _metrics(workdir), strict=True):
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_batch_must_divide_among_devices(tmp_path, datasets):
  with pytest.raises(ValueError, match=r"config.batch_size \(12\) must be a multiple of the 8 devices"):
    train.train_and_evaluate(tiny_config(batch_size=12), tmp_path / "w", datasets=datasets)
  assert not (tmp_path / "w").exists()  # refused before anything is written


def test_two_processes_with_jax_distributed_on_localhost(finished_run, tmp_path):
  import os
  import socket

  _workdir, results = finished_run
  with socket.socket() as probe:
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "tests.two_process_worker"]
  workers = [
    subprocess.Popen(
      [*command, str(i), str(port), str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for i in range(2)
  ]
  outputs = [w.communicate(timeout=600) for w in workers]
  for worker, (_out, err) in zip(workers, outputs, strict=True):
    assert worker.returncode == 0, err[-3000:]
  reported = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert {r["process"] for r in reported} == {0, 1}
  assert reported[0]["test_loss"] == reported[1]["test_loss"]
  # Each process read only its half of every batch; together they train the same model as one process would.
  assert reported[0]["test_loss"] == pytest.approx(results["test_loss"], rel=1e-4)
  # Only process 0 wrote the metrics (once per evaluation) and the results.
  assert [r["step"] for r in _metrics(tmp_path)] == [4, 8, 12]
  assert json.loads((tmp_path / "results.json").read_text())["test_loss"] == reported[0]["test_loss"]


def test_num_seeds_trains_k_independent_models_in_one_program(finished_run, tmp_path, datasets):
  workdir, seed0 = finished_run  # config.seed = 0, one model
  seed1 = train.train_and_evaluate(tiny_config(seed=1), tmp_path / "seed1", datasets=datasets)
  assert seed1["test_loss"] != pytest.approx(seed0["test_loss"], rel=1e-3)  # the seeds differ
  both = train.train_and_evaluate(tiny_config(num_seeds=2), tmp_path / "both", datasets=datasets)
  # Model k of the vmapped run is the run with seed + k (init, dropout and data order), up to float reordering.
  np.testing.assert_allclose(both["test_loss_per_seed"], [seed0["test_loss"], seed1["test_loss"]], rtol=1e-4)
  np.testing.assert_allclose(
    both["test_accuracy_per_seed"], [seed0["test_accuracy"], seed1["test_accuracy"]], atol=1 / 40
  )
  per_seed = np.array(both["test_accuracy_per_seed"])
  assert both["test_accuracy"] == pytest.approx(per_seed.mean())
  assert both["test_accuracy_std"] == pytest.approx(per_seed.std(ddof=1))
  assert both["test_error"] == pytest.approx(1 - per_seed.mean()) and both["num_seeds"] == 2
  rows, single = _metrics(tmp_path / "both"), [_metrics(workdir), _metrics(tmp_path / "seed1")]
  for k in range(2):
    for row, ref in zip(rows, single[k], strict=True):
      assert row["train_loss_per_seed"][k] == pytest.approx(ref["train_loss"], rel=1e-4)
      assert row["val_loss_per_seed"][k] == pytest.approx(ref["val_loss"], rel=1e-4)


def test_vmap_and_unroll_seed_mappings_match_a_single_seed_step(datasets):
  import jax

  config = tiny_config(num_seeds=3, seed=5)
  graphdef, params = train.create_params(config)
  tx = optim.create_optimizer(config, steps.member_slice(params, 0, 3), 12)
  batch = train.population_batch(config, datasets["train"], 7)
  assert batch["image"].shape == (3, 16, 32, 32, 1)
  results = {}
  for how in ("vmap", "unroll"):
    state = jax.tree.map(np.array, (params, optim.init_state(config, params, 12), steps.zero_metric_sums(3)))
    step = steps.make_train_step(graphdef, tx, config.seed, 3, how)
    results[how] = jax.tree.map(np.asarray, step(*state, batch, 7))
  # the reference: seed 5 + 2 trained alone, from its own init, on its own data order
  single = tiny_config(seed=7)
  graphdef1, params1 = train.create_params(single)
  state1 = (params1, tx.init(params1), steps.zero_metric_sums())
  ref = jax.tree.map(
    np.asarray,
    steps.make_train_step(graphdef1, tx, 7)(*state1, train.population_batch(single, datasets["train"], 7), 7),
  )
  for how, out in results.items():
    for got, want in zip(jax.tree.leaves(steps.member_slice(out, 2, 3)), jax.tree.leaves(ref), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=how)
  loss = results["vmap"][2]["loss"]
  assert len(set(np.round(loss, 6))) == 3  # three different models and batches


def test_a_population_of_hyperparameters_trains_each_member_as_its_own_run(datasets, tmp_path):
  members = {
    "seed": (4, 9),
    "learning_rate": (1e-3, 3e-3),
    "weight_decay": (0.0, 1e-3),
    "localization_lr_multiplier": (0.1, 1.0),
  }
  population = tiny_config(num_seeds=2, **{f"population.{k}": v for k, v in members.items()})
  both = train.train_and_evaluate(population, tmp_path / "population", datasets=datasets)
  for k in range(2):
    alone = tiny_config(
      seed=members["seed"][k],
      learning_rate=members["learning_rate"][k],
      **{f"optimizer.{name}": members[name][k] for name in ("weight_decay", "localization_lr_multiplier")},
    )
    reference = train.train_and_evaluate(alone, tmp_path / str(k), datasets=datasets)
    row = both["members"][k]
    assert {name: row[name] for name in members} == {name: values[k] for name, values in members.items()}
    assert row["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-4)
  assert both["members"][0]["test_loss"] != pytest.approx(both["members"][1]["test_loss"], rel=1e-3)


def test_a_population_of_variants_trains_each_member_as_its_own_run_on_its_own_data(datasets, tmp_path):
  """Members differing in their dataset variant (and seed): member k trains on its variant's batches and is
  evaluated on its variant's validation and test splits, as the separate run of that variant and seed."""
  import dataclasses

  variants, seeds = ("R", "P", "P"), (3, 3, 5)
  population = tiny_config(num_seeds=3, **{"population.dataset": variants, "population.seed": seeds})
  together = train.train_and_evaluate(population, tmp_path / "population", datasets=datasets)
  assert [m["dataset"] for m in together["members"]] == list(variants)
  alone_runs = []
  for k, (variant, seed) in enumerate(zip(variants, seeds, strict=True)):
    own = {split: dataclasses.replace(d, name=variant) for split, d in datasets.items()}
    alone = train.train_and_evaluate(
      tiny_config(seed=seed, **{"dataset.name": variant}), tmp_path / str(k), datasets=own
    )
    alone_runs.append(alone)
    assert together["members"][k]["test_loss"] == pytest.approx(alone["test_loss"], rel=1e-4), k
    assert together["members"][k]["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=1 / 40), k
    rows, reference = _metrics(tmp_path / "population"), _metrics(tmp_path / str(k))
    for row, ref in zip(rows, reference, strict=True):
      assert row["val_loss_per_seed"][k] == pytest.approx(ref["val_loss"], rel=1e-4)
  losses = [m["test_loss"] for m in together["members"]]
  assert len({round(v, 5) for v in losses}) == 3  # R and P differ, and so do P's two seeds
  # one variant for every member, not dataset.name's: they train and are evaluated on it
  only_p = tiny_config(num_seeds=2, **{"population.dataset": ("P", "P"), "population.seed": (3, 5)})
  both_p = train.train_and_evaluate(only_p, tmp_path / "only_p", datasets=datasets)
  for k in range(2):
    assert both_p["members"][k]["test_loss"] == pytest.approx(alone_runs[k + 1]["test_loss"], rel=1e-4), k


@pytest.mark.parametrize(
  ("dataset", "words"),
  [
    (("R", "TC"), ["config.population.dataset", "'TC' is 60x60", "'R' is 32x32"]),
    (("R", "mnist"), ["config.population.dataset", "'mnist'", "'paper-E'"]),
    (("R",), ["config.population.dataset", "num_seeds (2)"]),
  ],
)
def test_population_datasets_are_checked_before_any_work(dataset, words, tmp_path):
  with pytest.raises(config_lib.ConfigError) as info:
    train.train_and_evaluate(tiny_config(num_seeds=2, **{"population.dataset": dataset}), tmp_path / "w")
  for word in words:
    assert word in str(info.value), (word, str(info.value))
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  ("flag", "words"),
  [
    ("--config.num_train_steps=100000000000", "config.num_train_steps must be at most 2,147,483,647"),
    ("--config.num_epochs=1e12", "config.num_epochs (1000000000000.0 epochs of 390 steps) must come to at most"),
  ],
)
def test_an_absurd_budget_is_refused_at_once_in_one_line(flag, words, tmp_path):
  """It used to hang before the first step, building a list of every dispatch of the budget."""
  command = [sys.executable, "-m", "stn_jax.main", f"--config={ROOT / 'configs' / 'default.py'}", flag]
  command += [f"--workdir={tmp_path / 'w'}", f"--config.dataset.data_dir={tmp_path / 'no_mnist'}"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 2 and len(errors) == 1 and words in errors[0], result.stderr[-2000:]
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("low_high", [(50.0, 87.0), (0.6, 45.0), (0.95, 0.99), (0.8, 1.2), (0.011, 230.0), (2.0, 9.0)])
def test_the_curves_log_axis_has_several_readable_ticks_at_any_range(low_high):
  # A short run's error axis spans 50-87 %: it was labelled with one tick ("50").
  from stn_jax.training.figures import log_ticks

  low, high = low_high
  ticks = log_ticks(low, high)
  labels = [f"{t:.3g}" for t in ticks]
  assert len(ticks) >= 3 and all(low <= t <= high for t in ticks), ticks
  assert len(set(labels)) == len(labels) and all(len(label) <= 5 for label in labels), labels
  assert ticks == sorted(ticks)


def _addition_sets(n_train=64):
  rng = np.random.default_rng(6)
  sets = {}
  for split, n in (("train", n_train), ("validation", 16), ("test", 16)):
    digits, labels = synthetic_digits(rng, n)
    sets[split] = data_lib.DistortedMnist("addition", split, digits, labels, seed=0, fresh_each_epoch=split == "train")
  return sets


def test_a_two_channel_two_transformer_run_is_the_same_on_either_pipeline_and_draws_each_transformer(tmp_path):
  """Addition (2 channels, 19 classes, new pairs each epoch) with two transformers: the device pipeline (uint8
  epochs converted in the program) and the host one give bitwise the same run, and the loss it reports is the
  model's cross-entropy on the epoch's pair-sum labels."""
  sets = _addition_sets()
  overrides = {"dataset.name": "addition", "model.num_transformers": 2, "model.classifier.kind": "fcn"}
  runs = {}
  for pipeline in ("device", "host"):
    config = tiny_config(**overrides, input_pipeline=pipeline)  # 4 steps an epoch: steps 4-11 see new pairs
    runs[pipeline] = train.train_and_evaluate(config, tmp_path / pipeline, datasets=sets)
  assert runs["device"]["test_loss"] == runs["host"]["test_loss"]
  assert _without_timing(_metrics(tmp_path / "device")) == _without_timing(_metrics(tmp_path / "host"))
  config = checkpoints.read_config(tmp_path / "device")
  graphdef, initial = train.create_params(config)
  _, params = checkpoints.restore_params(tmp_path / "device", initial)
  model = nnx.merge(graphdef, params)
  batch = next(data_lib.eval_batches(sets["test"], 16))
  logits = model(batch["image"])
  loss = -np.mean(np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), batch["label"][:, None], 1))
  assert logits.shape == (16, 19)
  assert loss == pytest.approx(runs["device"]["test_loss"], rel=1e-5)
  assert (tmp_path / "device" / "figures" / "transform_final.png").is_file()
  with pytest.raises(config_lib.ConfigError, match=r"config.model.num_transformers must be an int >= 1; got 0"):
    train.train_and_evaluate(tiny_config(**{**overrides, "model.num_transformers": 0}), tmp_path / "bad", datasets=sets)
  assert not (tmp_path / "bad").exists()


def test_a_diverged_member_is_named_in_the_log_and_the_results(tmp_path, datasets, caplog):
  """Member 1 at an absurd learning rate turns NaN; it trains on in its population, so the run says so."""
  config = tiny_config(num_seeds=2, **{"population.learning_rate": (2e-3, 1e30)})
  with caplog.at_level(logging.WARNING, logger="stn_jax.training.train"):
    results = train.train_and_evaluate(config, tmp_path, datasets=datasets)
  assert results["diverged_members"] == [1]
  assert np.isfinite(results["test_loss_per_seed"][0]) and not np.isfinite(results["test_loss_per_seed"][1])
  warned = [r.getMessage() for r in caplog.records if "diverged" in r.getMessage()]
  assert warned and all(m.startswith("member(s) [1] diverged") for m in warned)
  assert "diverged_members" not in train.train_and_evaluate(tiny_config(), tmp_path / "fine", datasets=datasets)
