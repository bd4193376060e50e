"""experiments/paper_campaign.py: the programs of the paper's Table 1 and TC, the window's plan (done programs
skipped, programs that cannot finish not started), the one archive, and paper_table.py reading it back."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import experiment

campaign = experiment("paper_campaign")
paper_table = experiment("paper_table")


def test_the_paper_table_tc_and_addition_are_28_programs_in_priority_order():
  programs = campaign.programs()
  assert len(programs) == 28 and sum(p.config.num_seeds for p in programs) == 132  # 36 + 8 cells x 3 seeds
  assert sorted(c for p in programs for c in p.cells) == sorted(
    [(col, row) for col in ("R", "RTS", "P", "E") for row in campaign.paper_table1.PAPER]
    + [("TC", row) for row in campaign.paper_table1.PAPER_TC]
    + [("addition", row) for row in campaign.paper_addition.PAPER]
  )
  addition = [p for p in programs if p.group == "addition"]
  assert programs[-8:] == addition and addition[0].cells == [("addition", "CNN")]  # after the table, CNN first
  assert all(p.config.optimizer.name == "sgd" and p.config.dataset.name == "addition" for p in addition)
  assert [p.cells for p in programs[:4]] == [[c] for c in campaign.PRIORITY]
  fused = [p for p in programs if len(p.cells) > 1]
  assert len(fused) == 8 and all(p.config.num_seeds == 9 for p in fused)
  assert all(p.slots == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] for p in fused)
  assert fused[0].cells == [("R", "ST-CNN-Aff"), ("P", "ST-CNN-Aff"), ("E", "ST-CNN-Aff")]  # ST-CNN first
  assert programs.index(fused[0]) == 4
  assert all(p.steps == 150_000 for p in programs)


def _fake_run(program, workdir, deadline, log_path, overhead_s):
  """What stn_jax.main leaves in a finished workdir (checkpoints included), without training."""
  rng = np.random.default_rng()
  k = program.config.num_seeds
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "checkpoints" / "150000").mkdir(parents=True)
  (workdir / "checkpoints" / "150000" / "state").write_bytes(b"x" * 1000)
  (workdir / "figures").mkdir()
  (workdir / "figures" / "transform_final.png").write_bytes(b"png")
  (workdir / "figures" / "transform_step005000.png").write_bytes(b"png")
  (workdir / "config.json").write_text(json.dumps(campaign.config_lib.to_dict(program.config)))
  errors = rng.uniform(0.004, 0.02, k)
  members = [{"test_error": float(e), "test_accuracy": float(1 - e), "test_loss": 0.1} for e in errors]
  results = {"test_error": float(errors.mean()), "num_seeds": k, "num_train_steps": program.steps, "members": members}
  (workdir / "results.json").write_text(json.dumps(results))
  rows = [
    {"step": s, "val_accuracy": 0.99, "val_accuracy_per_seed": [1 - e * 150_000 / s for e in errors]}
    for s in range(5_000, 150_001, 5_000)
  ]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  log_path.write_text("")
  return {"status": "done", "rate": 1000.0, "seconds": 1.0}


def test_a_window_runs_what_fits_packs_one_archive_and_the_next_window_continues(tmp_path, monkeypatch):
  monkeypatch.setattr(campaign, "run_program", _fake_run)
  done = tmp_path / "docs_paper_runs"
  done.mkdir()
  plan = campaign.programs()
  # Earlier windows measured these rates: the 4th program needs 150,000 / 100 s, more than the window has.
  rates = {"cpu": {p.key: 1000.0 for p in plan[:3]} | {plan[3].key: 100.0}}
  (done / "rates.json").write_text(json.dumps(rates))
  out = tmp_path / "window1"
  summary = campaign.campaign(300.0, out, done, overhead_s=10.0, only=[p.key for p in plan[:5]], printer=lambda _: None)
  statuses = [e["status"] for e in summary["programs"]]
  assert statuses[:3] == ["done"] * 3
  assert statuses[3].startswith("not started (~1510 s")  # known not to fit: never started
  assert statuses[4] == "done"  # rate unknown: started (the fake finishes at once)
  with tarfile.open(out / campaign.ARCHIVE) as tar:
    names = tar.getnames()
    sizes = {m.name: m.size for m in tar.getmembers()}
  assert (out / campaign.ARCHIVE).stat().st_size < campaign.ARCHIVE_LIMIT
  finished = [plan[i] for i in (0, 1, 2, 4)]
  for p in finished:
    for kept in campaign.KEPT:
      assert f"{p.key}/{kept}" in names
  assert not any("checkpoints" in n or "step005000" in n for n in names)  # no checkpoints, one figure each
  assert "rates.json" in names and any(n.startswith("campaigns/") for n in names) and sizes["rates.json"] > 0
  # Unpacked into the committed results, the next window skips what is done and plans the rest.
  with tarfile.open(out / campaign.ARCHIVE) as tar:
    tar.extractall(done, filter="data")
  assert json.loads((done / "rates.json").read_text())["cpu"][plan[4].key] == 1000.0
  calls = []
  monkeypatch.setattr(campaign, "run_program", lambda p, *a: calls.append(p.key) or _fake_run(p, *a))
  second = campaign.campaign(
    300.0, tmp_path / "window2", done, overhead_s=10.0, only=[p.key for p in plan[:6]], printer=lambda _: None
  )
  again = [e["status"] for e in second["programs"]][:5]
  assert again[:3] == ["done before"] * 3 and again[4] == "done before"
  assert again[3].split(",")[0] == statuses[3].split(",")[0]  # the same estimate; the seconds left move with the clock
  assert calls == [plan[5].key]
  # paper_table reads the results back: cells split out of the fused program, the step each reached the paper
  found = paper_table.collect(done)
  assert {(row, col) for p in finished for col, row in p.cells} <= set(found)
  fused = plan[4]
  results = json.loads((done / fused.key / "results.json").read_text())
  for (col, row), indices in zip(fused.cells, fused.slots, strict=True):
    cell = found[(row, col)]
    errors = [results["members"][i]["test_error"] for i in indices]
    assert cell["test_error"] == pytest.approx(np.mean(errors)) and cell["num_seeds"] == 3
    assert cell["test_error_std"] == pytest.approx(np.std(errors, ddof=1))
    paper = campaign.paper_table1.paper_number(row, col)
    rows = [json.loads(line) for line in (done / fused.key / "metrics.jsonl").read_text().splitlines()]
    want = next(
      (r["step"] for r in rows if 100 * np.mean([1 - r["val_accuracy_per_seed"][i] for i in indices]) <= paper), None
    )
    assert cell["reached"] == want
  assert "| ST-CNN-Aff |" in paper_table.tables(found)


def test_an_unknown_program_or_override_is_refused():
  with pytest.raises(campaign.CampaignError, match="--program: no program 'table1/nope'"):
    campaign.campaign(10.0, Path("/nonexistent"), Path("/nonexistent"), only=["table1/nope"], dry_run=True)
  with pytest.raises(campaign.CampaignError, match=r"--override must look like config\.key=value; got 'batch_size'"):
    campaign.programs(["batch_size"])


def test_a_real_program_trains_to_its_total_and_comes_back_in_the_archive(tmp_path):
  """One program for real on the CPU: the paper-RTS FCN (3 seeds), shrunk to 4 steps on synthetic digits."""
  from tests.helpers import synthetic_digits

  rng = np.random.default_rng(0)
  x_train, y_train = synthetic_digits(rng, 60_000)
  x_test, y_test = synthetic_digits(rng, 10_000)
  npz = tmp_path / "mnist.npz"
  np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  overrides = [
    "config.num_train_steps=4",
    "config.eval_every_steps=2",
    "config.checkpoint_every_steps=4",
    "config.log_every_steps=2",
    "config.batch_size=32",
    "config.dataset.source=path",
    f"config.dataset.mnist_path={npz}",
    f"config.dataset.data_dir={tmp_path / 'cache'}",
    "config.model.classifier.fcn.hidden=(8,8)",
  ]
  key = "table1/name=paper-RTS,transform=none,classifier.kind=fcn,match_params_of=affine"
  done = tmp_path / "done"
  done.mkdir()
  summary = campaign.campaign(
    240.0, tmp_path / "out", done, overrides=overrides, only=[key], overhead_s=1.0, printer=lambda _: None
  )
  entry = summary["programs"][0]
  logs = "".join(p.read_text()[-3000:] for p in (tmp_path / "out" / "work").glob("*.log"))
  assert entry["status"] == "done", logs
  assert entry["rate"] > 0 and summary["rates"][key] == entry["rate"]
  with tarfile.open(tmp_path / "out" / campaign.ARCHIVE) as tar:
    tar.extractall(done, filter="data")
  results = json.loads((done / key / "results.json").read_text())
  assert results["num_train_steps"] == 4 and results["num_seeds"] == 3
  assert [r["step"] for r in paper_table.read_metrics(done / key / "metrics.jsonl")] == [2, 4]
  assert not (done / key / "checkpoints").exists()
  assert not (done / key / "figures").exists()  # a baseline has no transformer to show
  cell = paper_table.collect(done)[("FCN", "RTS")]
  assert cell["num_seeds"] == 3 and cell["num_train_steps"] == 4 and 0 <= cell["test_error"] <= 1


def test_paper_curves_takes_sweep_roots_whose_run_names_hold_commas(tmp_path):
  import subprocess
  import sys

  rng = np.random.default_rng()
  root = tmp_path / "sweep"
  names = ["transform=none,classifier.kind=fcn", "transform=affine,classifier.kind=fcn,num_transformers=2"]
  last = {}
  for name, program in zip(names, campaign.programs()[-2:], strict=True):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(campaign.config_lib.to_dict(program.config)))
    accuracies = np.sort(rng.uniform(0.5, 0.95, 4))
    rows = [{"step": 1000 * (i + 1), "val_accuracy": a, "train_accuracy": a} for i, a in enumerate(accuracies)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    last[name] = 100 * (1 - accuracies[-1])
  curves = experiment("paper_curves")
  assert curves.expand_runs([str(root)]) == [root / n for n in sorted(names)]
  assert curves.expand_runs([str(root / names[0])]) == [root / names[0]]
  with pytest.raises(ValueError, match=r"--runs: .* neither a workdir"):
    curves.expand_runs([str(tmp_path / "nothing")])
  script = Path(__file__).resolve().parents[2] / "experiments" / "paper_curves.py"
  out = tmp_path / "curves.png"
  command = [sys.executable, str(script), f"--runs={root}", f"--out={out}"]
  result = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.stat().st_size > 1000
  for name, error in last.items():
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"| {name} ("))
    assert f"| {error:.2f} |" in line


def test_a_diverged_seed_is_left_out_of_the_table_and_the_curves_and_counted(tmp_path):
  """A population run with one NaN member: paper_table's cell and paper_curves' curve are the other seeds' means,
  and both say how many diverged (their mean with the NaN member's ~99 % error was what the docs showed before)."""
  rng = np.random.default_rng()
  program = campaign.programs()[-1]  # an addition model, 3 seeds
  run = tmp_path / "sweep" / "run"
  run.mkdir(parents=True)
  config = campaign.config_lib.to_dict(program.config)
  (run / "config.json").write_text(json.dumps(config))
  bad = int(rng.integers(3))
  errors = rng.uniform(0.05, 0.5, 3)
  errors[bad] = 0.99
  val = rng.uniform(0.5, 0.95, (4, 3))
  losses = rng.uniform(0.1, 2.0, (4, 3))
  losses[2:, bad] = float("nan")
  rows = [
    {
      "step": 100 * (i + 1),
      "val_accuracy_per_seed": list(val[i]),
      "val_accuracy": float(val[i].mean()),
      "val_loss_per_seed": list(losses[i]),
      "train_accuracy_per_seed": list(val[i] / 2),
    }
    for i in range(4)
  ]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  members = [{"seed": k, "test_error": float(e)} for k, e in enumerate(errors)]
  results = {"num_seeds": 3, "num_train_steps": 400, "members": members, "diverged_members": [bad]}
  (run / "results.json").write_text(json.dumps(results))

  [(key, cell)] = paper_table.collect(tmp_path / "sweep").items()
  finite = np.delete(errors, bad)
  assert key == (paper_table.paper_addition.row_name(config), paper_table.ADDITION)
  assert cell["num_seeds"] == 3 and cell["num_diverged"] == 1
  np.testing.assert_allclose([cell["test_error"], cell["test_error_std"]], [finite.mean(), finite.std(ddof=1)])
  text = paper_table.cell_text(cell, 5.0)
  assert text.startswith(f"{100 * finite.mean():.2f} ± {100 * finite.std(ddof=1):.2f} [2 of 3 seeds: 1 diverged]")
  results["diverged_members"] = [0, 1, 2]
  (run / "results.json").write_text(json.dumps(results))
  assert paper_table.cell_text(paper_table.collect(tmp_path / "sweep")[key], 5.0).startswith("diverged (3 of 3")

  curves = experiment("paper_curves")
  assert curves.diverged(rows) == [bad]
  np.testing.assert_allclose(
    curves.error_curve(rows, "val_accuracy", [bad]), 100 * (1 - np.delete(val, bad, 1).mean(1))
  )
  assert curves.error_curve(rows, "val_accuracy", [0, 1, 2]) == []


def test_a_done_program_is_one_of_the_same_config_not_only_the_same_budget(tmp_path):
  """results/paper_runs/<program> counts as done only for its own config: a projective program's results from a
  9-parameter homography (config.json from before model.projective_params) are not the 8-parameter program's."""
  program = next(p for p in campaign.programs() if p.config.model.transform == "projective")
  run = tmp_path / program.group / program.name
  run.mkdir(parents=True)
  assert not campaign.is_done(program, tmp_path)
  (run / "results.json").write_text(json.dumps({"num_train_steps": program.steps}))
  stored = campaign.config_lib.to_dict(program.config)
  (run / "config.json").write_text(json.dumps(stored))
  assert campaign.is_done(program, tmp_path)
  del stored["model"]["projective_params"]  # read as 9
  (run / "config.json").write_text(json.dumps(stored))
  assert not campaign.is_done(program, tmp_path)
  (run / "results.json").write_text(json.dumps({"num_train_steps": program.steps // 2}))
  stored["model"]["projective_params"] = 8
  (run / "config.json").write_text(json.dumps(stored))
  assert not campaign.is_done(program, tmp_path)
