"""The sweep runner: planning (keys, typed and comma-safe values, fixed overrides, unique names, validation, workdir
states), running (skips, failures), reports (merged results.csv, readable plot) and its command line."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stn_jax import models
from stn_jax.training import config_lib, train
from tests.helpers import experiment, synthetic_datasets, tiny_config

ROOT = Path(__file__).resolve().parents[2]
sweep = experiment("sweep")

SWEEP_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if "def sweep" in p.read_text())
DEFAULT = ROOT / "configs" / "default.py"


COLOC = ROOT / "configs" / "paper_coloc.py"  # its runs validate only with their encoder: the test below


@pytest.mark.parametrize("path", [p for p in SWEEP_CONFIGS if p != COLOC], ids=lambda p: p.name)
def test_every_swept_run_validates_and_names_are_unique(path):
  config, runs = sweep.load_sweep(path)
  planned = sweep.plan(config, runs, [{}], {})
  names = sweep.short_names(list(dict.fromkeys(k for r in runs for k in r)))
  assert len({sweep.run_name(r["overrides"], names) for r in planned}) == len(planned)


def test_the_coloc_sweep_is_refused_without_its_encoder_and_validates_with_one(tmp_path):
  config, runs = sweep.load_sweep(COLOC)
  missing = sweep.resolve(config, {"encoder_workdir": str(tmp_path / "no_encoder")})
  with pytest.raises(sweep.SweepError, match=r"run name=coloc,digit=0: .*no config.json there; train the encoder"):
    sweep.plan(missing, runs, [{}], {})
  train.train_and_evaluate(
    tiny_config(num_train_steps=2, num_epochs=0), tmp_path / "enc", datasets=synthetic_datasets()
  )
  planned = sweep.plan(sweep.resolve(config, {"encoder_workdir": str(tmp_path / "enc")}), runs, [{}], {})
  assert len(planned) == 20
  assert {(r["config"].dataset.name, r["config"].dataset.digit) for r in planned} == {
    (name, digit) for name in ("coloc", "coloc-clutter") for digit in range(10)
  }


def test_a_coloc_root_with_finished_runs_plans_them_done_new_or_in_conflict(tmp_path):
  """Sweeping again into a co-localisation root (which crashed on the runs' missing batch_size): a finished run of
  the same config is done, one without results is run anew, one of another config is a conflict."""
  import random

  from stn_jax.training import config_lib

  config, runs = sweep.load_sweep(f"{COLOC}:widening")
  run = sweep.resolve(config, random.choice(runs))
  stored = config_lib.to_dict(run)
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(stored))
  assert sweep.run_state(workdir, run) == "new"
  (workdir / "results.json").write_text("{}")
  assert sweep.run_state(workdir, run) == "done"
  del stored["blur_steps"]  # written before the blur schedule: blur_steps 0, not this run's
  (workdir / "config.json").write_text(json.dumps(stored))
  assert sweep.run_state(workdir, run).startswith("conflict: ")


def test_the_widening_coloc_variant_is_tuned_with_a_narrowing_blur():
  tuned, widening = (sweep.load_sweep(f"{COLOC}:{v}")[0].to_dict() for v in ("tuned", "widening"))
  changed = {k for k in tuned if tuned[k] != widening[k]}
  assert changed == {"blur_start", "blur_steps"}
  assert widening["blur_start"] > widening["blur_sigma"] == tuned["blur_sigma"] and widening["blur_steps"] > 0


def test_table1_and_tc_sweeps_cover_the_paper():
  _, runs = sweep.load_sweep(ROOT / "configs" / "paper_table1.py")
  assert len(runs) == 32
  assert {r["dataset.name"] for r in runs} == {"R", "RTS", "P", "E"}
  assert {r["model.transform"] for r in runs} == {"none", "affine", "projective", "tps"}
  _, tc = sweep.load_sweep(ROOT / "configs" / "paper_tc.py")
  assert len(tc) == 4


def test_the_paper_budget_is_the_papers_recipe_for_every_row():
  """Every run of the `paper` sweeps: the paper's variants, networks and optimiser (docs/paper_recipe.md)."""
  for spec, variants, count in (
    ("paper_table1.py:paper", {"R", "paper-RTS", "paper-P", "paper-E"}, 32),
    ("paper_tc.py:paper", {"paper-TC"}, 4),
  ):
    base, runs = sweep.load_sweep(ROOT / "configs" / spec)
    planned = sweep.plan(base, runs, [{}], {})
    assert len(planned) == count
    assert {p["config"].dataset.name for p in planned} == variants
    for p in planned:
      c = p["config"]
      assert (c.batch_size, c.num_train_steps, c.num_seeds, c.learning_rate) == (256, 150_000, 3, 0.01)
      assert (c.optimizer.name, c.optimizer.schedule, tuple(c.optimizer.decay_steps)) == (
        "sgd",
        "step",
        (50_000, 100_000),
      )
      assert c.optimizer.localization_lr_multiplier == 1.0 and c.optimizer.weight_decay == 0.0
      m = c.model
      if m.classifier.kind == "cnn":  # conv 9x9 -> pool -> conv 7x7 -> pool -> softmax: three weight layers
        model = models.create_model(m, config_lib.input_shape(c), seed=0)
        assert [conv.kernel[...].shape[:2] for conv in model.classifier.convs] == [(9, 9), (7, 7)]
        assert len(model.classifier.dense) == 0 and model.classifier.pools == (True, True)
      if m.transform != "none":
        assert m.localization.kind == m.classifier.kind  # ST-FCN: FCN localisation; ST-CNN: CNN localisation
      # All models of a dataset about the same size (within 30 %; docs/paper_recipe.md has the counts).
    counts = {}
    for p in planned:
      counts.setdefault(p["config"].dataset.name, []).append(
        models.param_count(p["config"].model, config_lib.input_shape(p["config"]))
      )
    for name, values in counts.items():
      assert max(values) < 1.3 * min(values), (name, values)


def test_a_misspelt_swept_key_is_refused():
  config, _ = sweep.load_sweep(DEFAULT)
  with pytest.raises(sweep.SweepError, match=r"swept key 'lerning_rate' is not a field of the config"):
    sweep.plan(config, [{}], sweep.parse_grid(["config.lerning_rate=1,2"]), {})
  with pytest.raises(sweep.SweepError, match=r"'model.clasifier.kind' is not a field.*'clasifier' not found"):
    sweep.plan(config, [{"model.clasifier.kind": "fcn"}], [{}], {})


def test_grid_values_split_outside_brackets_and_take_their_fields_types():
  assert sweep.split_values("1e-3,3e-4") == ["1e-3", "3e-4"]
  assert sweep.split_values("(20,),(32,)") == ["(20,)", "(32,)"]
  assert sweep.split_values("(8, 8),'a,b',[1,2]") == ["(8, 8)", "'a,b'", "[1,2]"]
  with pytest.raises(sweep.SweepError, match="unbalanced"):
    sweep.split_values("(20,")
  runs = sweep.parse_grid(["config.model.localization.fcn.hidden=(20,),(32,)", "config.learning_rate=1e-3,3e-4"])
  assert len(runs) == 4 and {"model.localization.fcn.hidden": "(32,)", "learning_rate": "3e-4"} in runs
  config, _ = sweep.load_sweep(DEFAULT)
  typed = sweep.plan(config, [{}], runs, {})
  values = {(r["overrides"]["model.localization.fcn.hidden"], r["overrides"]["learning_rate"]) for r in typed}
  assert values == {((20,), 1e-3), ((20,), 3e-4), ((32,), 1e-3), ((32,), 3e-4)}
  assert typed[0]["config"].model.localization.fcn.hidden in ((20,), (32,))
  assert sweep.parse_value(config, "dataset.fresh_each_epoch", "false") is False
  assert sweep.parse_value(config, "num_train_steps", "60") == 60  # a placeholder field keeps its type
  with pytest.raises(sweep.SweepError, match=r"config.batch_size: 'big' is not a int"):
    sweep.parse_value(config, "batch_size", "big")
  with pytest.raises(ValueError, match=r"config\.key=v1,v2"):
    sweep.parse_grid(["config.learning_rate"])


def test_short_names_stay_unique():
  names = sweep.short_names(["dataset.name", "optimizer.name", "learning_rate", "model.classifier.cnn.hidden"])
  assert names == {
    "dataset.name": "dataset.name",
    "optimizer.name": "optimizer.name",
    "learning_rate": "learning_rate",
    "model.classifier.cnn.hidden": "hidden",
  }
  both = sweep.short_names(["model.classifier.cnn.hidden", "model.classifier.fcn.hidden"])
  assert both == {"model.classifier.cnn.hidden": "cnn.hidden", "model.classifier.fcn.hidden": "fcn.hidden"}


def test_every_run_is_validated_before_anything_starts():
  config, _ = sweep.load_sweep(DEFAULT)
  with pytest.raises(sweep.SweepError, match=r"run transform=tsp: config\.model\.transform must be one of"):
    sweep.plan(config, [{}], sweep.parse_grid(["config.model.transform=affine,tsp"]), {})
  with pytest.raises(sweep.SweepError, match="both swept and fixed"):
    sweep.plan(config, [{}], sweep.parse_grid(["config.seed=1,2"]), {"seed": 3})
  _, runs = sweep.load_sweep(f"{ROOT / 'configs' / 'paper_tc.py'}:cpu")
  planned = sweep.plan(config, runs, sweep.parse_grid(["config.seed=0,1"]), {})
  assert sweep.describe_plan(planned, len(runs), 2).startswith("8 runs (4 from the config's sweep x 2 --grid")


def _finished(workdir: Path, config, **results):
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(config_lib.to_json(config))
  (workdir / "results.json").write_text(json.dumps({"test_accuracy": 0.99, "test_error": 0.01, **results}))


def test_a_run_is_skipped_only_when_its_workdir_holds_the_same_finished_config(tmp_path):
  config, _ = sweep.load_sweep(DEFAULT)
  assert sweep.run_state(tmp_path / "new", config) == "new"
  _finished(tmp_path / "same", config)
  assert sweep.run_state(tmp_path / "same", config) == "done"
  logged = config_lib.from_dict(config_lib.to_dict(config))
  logged.log_every_steps = 7  # cannot change the results
  assert sweep.run_state(tmp_path / "same", logged) == "done"
  longer = config_lib.from_dict(config_lib.to_dict(config))
  longer.num_epochs = 40.0
  assert sweep.run_state(tmp_path / "same", longer) == "resume"  # no checkpoint: nothing trained to continue
  (tmp_path / "same" / "checkpoints" / "9360").mkdir(parents=True)
  assert sweep.run_state(tmp_path / "same", longer) == "continue from 9,360 to 15,600 steps"
  other = config_lib.from_dict(config_lib.to_dict(config))
  other.learning_rate = 0.5
  state = sweep.run_state(tmp_path / "same", other)
  assert state.startswith("conflict") and "learning_rate: 0.002 -> 0.5" in state


def test_finished_runs_are_skipped_failures_reported_and_tables_merged(tmp_path):
  config, _ = sweep.load_sweep(DEFAULT)
  _finished(tmp_path / "done", config, train_time_s=5.0)
  row = {"run": "done", "transform": "affine", "_swept": ("transform",)}
  done = sweep.run_one(str(DEFAULT), tmp_path / "done", row, {}, {}, "done")
  assert done["status"] == "done (skipped)" and done["test_accuracy"] == 0.99
  bad_row = {"run": "bad", "transform": "rigid", "_swept": ("transform",)}  # refused by the entry point: quick
  bad = sweep.run_one(str(DEFAULT), tmp_path / "bad", bad_row, {}, {"model.transform": "rigid"}, "new")
  assert bad["status"].startswith("failed (exit 2") and "log.txt" in bad["status"]
  log = (tmp_path / "bad" / "log.txt").read_text()
  assert "config.model.transform" in log and "'rigid'" in log
  sweep.write_reports(tmp_path, [done, bad])
  # a second sweep into the same root: its rows join the table, a rerun run's row replaces the old one
  later = {"run": "lr", "learning_rate": "0.0003", "test_error": 0.02, "status": "done", "_swept": ("learning_rate",)}
  sweep.write_reports(tmp_path, [later, {**done, "test_error": 0.015}])
  with open(tmp_path / "results.csv") as f:
    reader = csv.DictReader(f)
    table, columns = list(reader), reader.fieldnames
  assert [r["run"] for r in table] == ["bad", "lr", "done"]
  assert columns[:3] == ["run", "transform", "learning_rate"]
  assert (
    table[2]["test_error"] == "0.015" and table[0]["transform"] == "rigid" and table[1]["learning_rate"] == "0.0003"
  )
  assert "1.50 %" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "results.png").stat().st_size > 1000


def test_the_command_line_plans_fixed_overrides_tuples_and_refuses_bad_runs_in_one_line(tmp_path):
  command = [
    sys.executable,
    str(ROOT / "experiments" / "sweep.py"),
    "--config",
    str(DEFAULT),
    f"--workdir={tmp_path / 'sweep'}",
    "--config.num_train_steps=60",
    "--grid",
    "config.model.localization.fcn.hidden=(20,),(32,)",
    "--grid=config.dataset.name=R,P",
    "--grid=config.optimizer.name=adam,sgd",
    "--dry_run",
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  assert "8 runs (1 from the config's sweep x 8 --grid combination(s)), 8 models (1 seed(s) each)" in out
  assert "hidden=32,dataset.name=P,optimizer.name=sgd [new]" in out
  assert "--config.num_train_steps=60 --config.model.localization.fcn.hidden=(32,)" in out
  assert "num_train_steps=60," not in out  # fixed overrides are not part of run names
  assert not (tmp_path / "sweep").exists()
  bad = subprocess.run([*command[:6], "--grid=config.model.transform=affine,tsp"], capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("error: run transform=tsp:")
  assert len(bad.stderr.strip().splitlines()) == 1


def test_fuse_trains_runs_differing_in_seed_and_optimiser_values_as_one_population():
  config, _ = sweep.load_sweep(DEFAULT)
  grid = sweep.parse_grid(["config.learning_rate=1e-3,3e-4", "config.seed=0,1", "config.dataset.name=R,TC"])
  runs = sweep.plan(config, [{}], grid, {})
  names = sweep.short_names(list(dict.fromkeys(k for r in runs for k in r["overrides"])))
  for r in runs:
    r["name"] = sweep.run_name(r["overrides"], names)
  fused = sweep.fuse(config, runs)
  assert len(fused) == 2 and all(len(f["members"]) == 4 for f in fused)  # R (32x32) and TC (60x60) stay apart
  r_population = next(f for f in fused if f["config"].dataset.name == "R")
  assert r_population["config"].num_seeds == 4
  assert r_population["config"].population.learning_rate == (1e-3, 1e-3, 3e-4, 3e-4)
  assert r_population["config"].population.seed == (0, 1, 0, 1)
  assert r_population["config"].population.dataset == ()  # one variant: a plain dataset.name
  assert r_population["config"].learning_rate == config.learning_rate  # the base's: members carry their own
  assert r_population["config"].population.weight_decay == ()  # the same for all: the optimiser stays plain
  # a fused run's directory holds exactly its config: re-running the sweep finds it and skips it
  command_config = sweep.resolve(config, r_population["overrides"])
  assert config_lib.to_dict(command_config) == config_lib.to_dict(r_population["config"])
  assert [m["name"] for m in r_population["members"]] == [
    "learning_rate=0.001,seed=0,name=R",
    "learning_rate=0.001,seed=1,name=R",
    "learning_rate=0.0003,seed=0,name=R",
    "learning_rate=0.0003,seed=1,name=R",
  ]
  # what the population's results.json says of each member becomes that member's row
  results = {"status": "done", "train_time_s": 9.0, "members": []}
  for k in range(4):
    results["members"].append({"test_accuracy": 0.9 + k / 100, "test_error": 0.1 - k / 100, "test_loss": 0.3})
  rows = sweep.member_rows(results, {**r_population, "name": "name=R,population=4"}, names)
  assert [r["run"] for r in rows] == [m["name"] for m in r_population["members"]]
  assert rows[2]["learning_rate"] == "0.0003" and rows[2]["test_accuracy"] == 0.92 and rows[2]["num_seeds"] == 1
  assert rows[2]["status"] == "done, member 2 of name=R,population=4"
  # runs that differ in anything else, or are populations of hyperparameters already, stay apart
  other = sweep.plan(config, [{}], sweep.parse_grid(["config.model.transform=affine,tps"]), {})
  assert sweep.fuse(config, other) == other
  lr = sweep.parse_grid(["config.population.learning_rate=(1e-3,3e-4),(1e-4,3e-3)"])
  config.num_seeds = 2
  populations = sweep.plan(config, [{}], lr, {"num_seeds": 2})
  assert sweep.fuse(config, populations) == populations


def test_fuse_puts_the_variants_and_seeds_of_one_architecture_into_one_program():
  """Table 1's R, P and E columns of one architecture, 3 seeds each: one program of 9 members; each run's row is
  the mean and spread of its own 3 members."""
  config, sweep_runs = sweep.load_sweep(ROOT / "configs" / "paper_table1.py:paper")
  runs = sweep.plan(config, sweep_runs, [{}], {})
  names = sweep.short_names(list(dict.fromkeys(k for r in runs for k in r["overrides"])))
  for r in runs:
    r["name"] = sweep.run_name(r["overrides"], names)
  fused = sweep.fuse(config, runs)
  programs = [f for f in fused if "members" in f]
  alone = [f for f in fused if "members" not in f]
  assert len(programs) == 8 and all(f["config"].num_seeds == 9 for f in programs)  # the 8 rows of Table 1
  assert len(alone) == 8 and {r["config"].dataset.name for r in alone} == {"paper-RTS"}  # 42x42: its own programs
  st_cnn = next(f for f in programs if f["common"].get("model.transform") == "affine" and "cnn" in str(f["common"]))
  c = st_cnn["config"]
  assert c.population.dataset == ("R",) * 3 + ("paper-P",) * 3 + ("paper-E",) * 3
  assert c.population.seed == (0, 1, 2) * 3 and c.dataset.name == "R"
  assert st_cnn["slots"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
  assert [m["config"].dataset.name for m in st_cnn["members"]] == ["R", "paper-P", "paper-E"]
  # the fused config is what its command line builds
  assert config_lib.to_dict(sweep.resolve(config, st_cnn["overrides"])) == config_lib.to_dict(c)
  results = {"status": "done", "train_time_s": 5.0, "members": []}
  for k in range(9):
    results["members"].append({"test_accuracy": 1 - k / 100, "test_error": k / 100, "test_loss": 0.1 * k})
  rows = sweep.member_rows(results, {**st_cnn, "name": "x"}, names)
  assert [r["num_seeds"] for r in rows] == [3, 3, 3]
  assert rows[1]["test_error"] == pytest.approx(0.04) and rows[1]["test_error_std"] == pytest.approx(0.01)
  assert rows[2]["status"] == "done, members 6-8 of x"
