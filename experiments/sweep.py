r"""Runs a sweep of training runs, each as its own `python -m stn_jax.main` process, N at a time; resumable.

  python experiments/sweep.py --config=configs/paper_table1.py --workdir=runs/table1 [--parallel=2] [--dry-run]
  python experiments/sweep.py --config=configs/default.py --grid config.learning_rate=1e-3,3e-4 \
      --grid config.model.transform=affine,tps --workdir=runs/lr_x_transform

The runs are the config file's `sweep(add)` (each `add(**{'model.transform': 'tps', ...})` is one run; the Flax
examples' and big_vision's convention), crossed with the cartesian product of the `--grid` options. Run i goes to
ROOT/<name>, its name built from the swept values; a run with a results.json is skipped, a killed one resumes from
its checkpoints. A failed run is reported with its log and does not stop the others. At the end ROOT/results.csv,
ROOT/results.md and ROOT/results.png compare the runs. Run it from the repository root.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file (optionally with a sweep(add) function).")
_GRID = flags.DEFINE_multi_string("grid", [], "config.key=v1,v2,... (repeatable): a cartesian product of values.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory; each run gets ROOT/<run-name>.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time.", lower_bound=1)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs and their commands without starting them.")


def _strip(key: str) -> str:
  return key[len("config.") :] if key.startswith("config.") else key


def load_sweep(config_path: str | Path) -> tuple[object, list[dict]]:
  """The config file's get_config([arg]) and the override dicts its sweep(add) produces (one empty dict without one).

  `config_path` may end in ':arg' (ml_collections' convention), passed to get_config.
  """
  import importlib.util

  config_path, *arg = str(config_path).split(":", 1)
  if not Path(config_path).is_file():
    raise FileNotFoundError(f"--config: no config file {config_path!r}.")
  spec = importlib.util.spec_from_file_location(f"_sweep_{Path(config_path).stem}", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  runs: list[dict] = []
  if hasattr(module, "sweep"):
    module.sweep(lambda **overrides: runs.append({_strip(k): v for k, v in overrides.items()}))
  return module.get_config(*arg), runs or [{}]


def parse_grid(options: list[str]) -> list[dict]:
  """['config.a=1,2', 'config.b=x'] -> [{'a': '1', 'b': 'x'}, {'a': '2', 'b': 'x'}]."""
  axes = []
  for option in options:
    if "=" not in option:
      raise ValueError(f"--grid must look like config.key=v1,v2; got {option!r}.")
    key, values = option.split("=", 1)
    axes.append([(_strip(key), v) for v in values.split(",")])
  return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def check_keys(config, runs: list[dict]) -> None:
  """Every swept key must exist in the config (a typo would otherwise fail only when its run starts)."""
  for overrides in runs:
    for key in overrides:
      node = config
      for part in key.split("."):
        if part not in node:
          raise KeyError(f"swept key {key!r} is not a field of the config ({part!r} not found).")
        node = node[part]


def short_name(key: str) -> str:
  return key.split(".")[-1]


def run_name(overrides: dict) -> str:
  if not overrides:
    return "base"
  parts = [f"{short_name(k)}={_format(v)}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9=.,_+-]", "", ",".join(parts))


def _format(value) -> str:
  if isinstance(value, (tuple, list)):
    return "x".join(str(v) for v in value) or "none"
  return str(value)


def _flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def command(config_path: str, workdir: Path, overrides: dict) -> list[str]:
  args = [sys.executable, "-m", "stn_jax.main", f"--config={config_path}", f"--workdir={workdir}"]
  return args + [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]


def run_one(config_path: str, root: Path, overrides: dict) -> dict:
  name = run_name(overrides)
  workdir = root / name
  row = {"run": name, **{short_name(k): _format(v) for k, v in overrides.items()}}
  results = workdir / "results.json"
  if results.exists():
    return {**row, **json.loads(results.read_text()), "status": "done (skipped)"}
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / "log.txt"
  start = time.time()
  with open(log_path, "a") as log:
    returncode = subprocess.run(
      command(config_path, workdir, overrides), stdout=log, stderr=subprocess.STDOUT
    ).returncode
  if returncode != 0 or not results.exists():
    print(f"FAILED {name} (exit {returncode}); log: {log_path}", flush=True)
    return {**row, "status": f"failed (exit {returncode}, log {log_path})"}
  print(f"done {name} in {time.time() - start:.0f} s", flush=True)
  return {**row, **json.loads(results.read_text()), "status": "done"}


def write_reports(root: Path, rows: list[dict], swept: list[str]) -> None:
  columns = ["run", *swept, "test_accuracy", "test_error", "test_error_std", "num_seeds", "train_time_s", "status"]
  with open(root / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)

  def cell(row, column):
    value = row.get(column, "")
    if column in ("test_accuracy", "test_error", "test_error_std") and value != "":
      return f"{100 * value:.2f} %"
    if column == "train_time_s" and value != "":
      return f"{value:.0f}"
    return str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
  (root / "results.md").write_text("\n".join(lines) + "\n")
  done = [r for r in rows if "test_error" in r]
  if done:
    from stn_jax.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(done) + 2), 4))
    spread = [100 * r.get("test_error_std", 0.0) for r in done]
    ax.bar(range(len(done)), [100 * r["test_error"] for r in done], yerr=spread, color="tab:blue", capsize=2)
    ax.set_xticks(range(len(done)), [r["run"] for r in done], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("test error (%)")
    fig.tight_layout()
    fig.savefig(root / "results.png", dpi=110)
    plt.close(fig)


def main(argv):
  del argv
  if not _CONFIG.value or not _WORKDIR.value:
    raise app.UsageError("--config and --workdir are required")
  sys.path.insert(0, str(Path.cwd()))  # config files import each other as `configs.*` (run from the repo root)
  config, swept_runs = load_sweep(_CONFIG.value)
  runs = [{**a, **b} for a, b in itertools.product(swept_runs, parse_grid(_GRID.value))]
  check_keys(config, runs)
  swept = list(dict.fromkeys(short_name(k) for r in runs for k in r))
  root = Path(_WORKDIR.value)
  print(f"{len(runs)} runs from {_CONFIG.value} into {root}, {_PARALLEL.value} at a time")
  if _DRY_RUN.value:
    for overrides in runs:
      print(run_name(overrides), "\n  ", " ".join(command(_CONFIG.value, root / run_name(overrides), overrides)))
    return
  root.mkdir(parents=True, exist_ok=True)
  with ThreadPoolExecutor(_PARALLEL.value) as pool:
    rows = list(pool.map(lambda o: run_one(_CONFIG.value, root, o), runs))
  write_reports(root, rows, swept)
  failed = [r for r in rows if r["status"].startswith("failed")]
  print(f"{len(rows) - len(failed)} of {len(rows)} runs done; {root / 'results.csv'}, results.md, results.png")
  for r in failed:
    print(f"  {r['run']}: {r['status']}")


if __name__ == "__main__":
  app.run(main)
