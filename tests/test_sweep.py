"""The sweep runner: expansion, key checks, names, skipping finished runs, failure reports, result tables."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sweep", ROOT / "experiments" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

SWEEP_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if "def sweep" in p.read_text())


@pytest.mark.parametrize("path", SWEEP_CONFIGS, ids=lambda p: p.name)
def test_every_swept_key_exists_in_its_config_and_names_are_unique(path):
  config, runs = sweep.load_sweep(path)
  sweep.check_keys(config, runs)
  names = [sweep.run_name(r) for r in runs]
  assert len(set(names)) == len(names)


def test_table1_and_tc_sweeps_cover_the_paper():
  _, runs = sweep.load_sweep(ROOT / "configs" / "paper_table1.py")
  assert len(runs) == 32
  assert {r["dataset.name"] for r in runs} == {"R", "RTS", "P", "E"}
  assert {r["model.transform"] for r in runs} == {"none", "affine", "projective", "tps"}
  _, tc = sweep.load_sweep(ROOT / "configs" / "paper_tc.py")
  assert len(tc) == 4


def test_a_misspelt_swept_key_is_refused():
  config, _ = sweep.load_sweep(ROOT / "configs" / "default.py")
  with pytest.raises(KeyError, match="lerning_rate"):
    sweep.check_keys(config, [{"lerning_rate": 1}])


def test_grid_is_a_cartesian_product():
  runs = sweep.parse_grid(["config.learning_rate=1e-3,3e-4", "config.model.transform=affine,tps,none"])
  assert len(runs) == 6 and {"learning_rate": "3e-4", "model.transform": "tps"} in runs
  with pytest.raises(ValueError, match=r"config\.key=v1,v2"):
    sweep.parse_grid(["config.learning_rate"])


def test_finished_runs_are_skipped_failures_reported_and_tables_written(tmp_path):
  done = {"dataset.name": "R", "model.transform": "affine"}
  done_dir = tmp_path / sweep.run_name(done)
  done_dir.mkdir()
  (done_dir / "results.json").write_text(json.dumps({"test_accuracy": 0.99, "test_error": 0.01, "train_time_s": 5.0}))
  bad = {"dataset.name": "R", "model.transform": "rigid"}  # refused by the entry point: a real, quick failure
  rows = [sweep.run_one("configs/default.py", tmp_path, o) for o in (done, bad)]
  assert rows[0]["status"] == "done (skipped)" and rows[0]["test_accuracy"] == 0.99
  assert rows[1]["status"].startswith("failed") and "log.txt" in rows[1]["status"]
  log = (tmp_path / sweep.run_name(bad) / "log.txt").read_text()
  assert "config.model.transform" in log and "'rigid'" in log
  sweep.write_reports(tmp_path, rows, ["name", "transform"])
  with open(tmp_path / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["transform"] for r in table] == ["affine", "rigid"] and table[0]["test_accuracy"] == "0.99"
  assert "99.00 %" in (tmp_path / "results.md").read_text()
  assert (tmp_path / "results.png").stat().st_size > 1000


def test_a_config_argument_selects_the_budget_and_a_bad_one_is_named():
  full, _ = sweep.load_sweep(ROOT / "configs" / "paper_table1.py")
  cpu, runs = sweep.load_sweep(f"{ROOT / 'configs' / 'paper_tc.py'}:cpu")
  assert (full.num_train_steps, full.num_seeds) == (7_800, 3)
  assert (cpu.num_train_steps, cpu.num_seeds, cpu.dataset.name) == (2_340, 2, "TC") and len(runs) == 4
  with pytest.raises(ValueError, match=r"budget must be one of 'full', 'cpu'; got 'tpu'"):
    sweep.load_sweep(f"{ROOT / 'configs' / 'paper_table1.py'}:tpu")
  with pytest.raises(FileNotFoundError, match="no config file"):
    sweep.load_sweep(ROOT / "configs" / "paper_table2.py")
