r"""Runs a sweep of training runs, each as its own `python -m stn_jax.main` process, N at a time; resumable.

  python experiments/sweep.py --config=configs/paper_table1.py:cpu --workdir=runs/table1 [--parallel=2] [--dry_run]
  python experiments/sweep.py --config=configs/default.py --config.num_epochs=2 \
      --grid config.learning_rate=1e-3,3e-4 --grid 'config.model.localization.fcn.hidden=(20,),(32,)' \
      --workdir=runs/lr_x_hidden

The runs are the config file's `sweep(add)` (each `add(**{'config.model.transform': 'tps', ...})` is one run; the
Flax examples' and big_vision's convention), crossed with the cartesian product of the `--grid` options. Values of a
`--grid` are separated by the commas outside brackets and quotes, so tuples such as `(20,),(32,)` sweep too. Fixed
`--config.key=value` overrides, as `stn_jax.main` takes them, apply to every run and are not part of run names.

Before anything starts, every run's resolved config is validated and every run directory checked: run i goes to
ROOT/<name> (its name built from the swept values under short names that stay unique); a run whose directory holds
its finished run (the same config, up to log/evaluation/checkpoint settings) is skipped, one holding another config
stops the sweep with the differences, a killed one resumes from its checkpoints, and one given more steps continues.
A failed run is reported with its log and does not stop the others. At the end ROOT/results.csv (merged with the
rows already there), ROOT/results.md and ROOT/results.png compare the runs. Works from any directory.

With --fuse, runs that differ only in seed, num_seeds, learning_rate, optimizer.localization_lr_multiplier,
optimizer.weight_decay or dataset.name (variants of one image size) train as one population (`config.population`,
one jitted program for all their models, in ROOT/<the other values>,population=N); results.csv still has one row per
run (a run of K seeds: the mean and spread of its K members). `--dry_run` lists the programs and their members.
"""

from __future__ import annotations

import ast
import copy
import csv
import itertools
import json
import logging
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from stn_jax import models
from stn_jax.data.mnist import SPLIT_SIZES
from stn_jax.training import coloc, config_lib, optim
from stn_jax.training.cli import USAGE_ERROR, one_line, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (optionally with a sweep(add) function).")
_GRID = flags.DEFINE_multi_string("grid", [], "config.key=v1,v2,... (repeatable): a cartesian product of values.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory; each run gets ROOT/<run-name>.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at a time.", lower_bound=1)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and every run's command without starting them.")
_CONTINUE = flags.DEFINE_bool(
  "continue", False, "Continue the runs whose directories hold a run of a smaller total (the plan says which)."
)
_FUSE = flags.DEFINE_bool(
  "fuse",
  False,
  "Train runs that differ only in seed, num_seeds, learning rate, localisation multiplier, weight decay or dataset "
  "variant (of one image size) as one population (config.population): one program, results still one row per run.",
)

RESULT_COLUMNS = ("test_accuracy", "test_error", "test_error_std", "num_seeds", "train_time_s", "status")


class SweepError(ValueError):
  """A sweep that cannot start: a bad key or value, or a run directory holding another config."""


def _strip(key: str) -> str:
  return key[len("config.") :] if key.startswith("config.") else key


# ----------------------------------------------------------------------------------------------------------------------
# Planning: the runs, their configs, names and commands.
# ----------------------------------------------------------------------------------------------------------------------


def load_sweep(config_spec: str | Path) -> tuple[ml_collections.ConfigDict, list[dict]]:
  """The config file's get_config([arg]) and the override dicts its sweep(add[, arg]) produces (one empty dict
  without one).

  `config_spec` may end in ':arg' (ml_collections' convention), passed to get_config and to a sweep that takes it.
  """
  module, arg = config_lib.load_module(config_spec)
  return module.get_config(*arg), config_lib.sweep_overrides(config_spec) or [{}]


def split_values(text: str) -> list[str]:
  """'1,2' -> ['1', '2']; '(20,),(32,)' -> ['(20,)', '(32,)']: commas inside brackets or quotes do not split."""
  values, depth, quote, current = [], 0, None, ""
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      values.append(current)
      current = ""
      continue
    current += char
  values.append(current)
  if depth != 0 or quote:
    raise SweepError(f"--grid: unbalanced brackets or quotes in {text!r}.")
  return values


def parse_grid(options: list[str]) -> list[dict]:
  """['config.a=1,2', 'config.b=x'] -> [{'a': '1', 'b': 'x'}, {'a': '2', 'b': 'x'}] (values still text)."""
  axes = []
  for option in options:
    if "=" not in option:
      raise SweepError(f"--grid must look like config.key=v1,v2; got {option!r}.")
    key, values = option.split("=", 1)
    axes.append([(_strip(key), v) for v in split_values(values)])
  return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _parent(config, key: str):
  node = config
  *path, last = key.split(".")
  for part in path:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise SweepError(f"swept key {key!r} is not a field of the config ({part!r} not found).")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or last not in node:
    raise SweepError(f"swept key {key!r} is not a field of the config ({last!r} not found).")
  return node, last


def parse_value(config, key: str, text):
  """A --grid value (text) as the type of the config field `key`, as `--config.key=text` would be parsed."""
  if not isinstance(text, str):
    return text
  parent, last = _parent(config, key)
  kind = parent.get_type(last)
  try:
    if kind is bool:
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError("not a bool")
      return text.lower() in ("true", "1")
    if kind in (int, float):
      return kind(text)
    if kind in (tuple, list):
      value = ast.literal_eval(text)
      return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if kind is str or kind is type(None):
      return text[1:-1] if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"" else text
    return ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise SweepError(f"--grid config.{key}: {text!r} is not a {kind.__name__} ({e}).") from None


def resolve(base, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `base` with the run's overrides applied (values of the fields' types)."""
  config = copy.deepcopy(base)
  with config.unlocked():
    for key, value in overrides.items():
      parent, last = _parent(config, key)
      parent[last] = value
  return config


def short_names(keys: list[str]) -> dict[str, str]:
  """{key: the shortest dotted suffix of it that no other key shares}: 'dataset.name' and 'optimizer.name' keep their
  prefixes, 'learning_rate' stays as it is."""
  out = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      name = ".".join(parts[-n:])
      if not any(other != key and (other == name or other.endswith("." + name)) for other in keys):
        break
    out[key] = name
  return out


def _format(value) -> str:
  if isinstance(value, (tuple, list)):
    return "x".join(str(v) for v in value) or "none"
  return str(value)


def run_name(overrides: dict, names: dict[str, str] | None = None) -> str:
  if not overrides:
    return "base"
  names = names or short_names(list(overrides))
  parts = [f"{names[k]}={_format(v)}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9=.,_+-]", "", ",".join(parts))


def flag_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def command(config_spec: str, workdir: Path, fixed: dict, overrides: dict, *, continue_run: bool = False) -> list[str]:
  args = [sys.executable, "-m", "stn_jax.main", f"--config={config_spec}", f"--workdir={workdir}"]
  args += ["--continue"] if continue_run else []
  return args + [f"--config.{k}={flag_value(v)}" for k, v in {**fixed, **overrides}.items()]


def plan(base, sweep_runs: list[dict], grid: list[dict], fixed: dict) -> list[dict]:
  """The runs: the sweep crossed with the grid, values typed, each resolved config validated.

  Returns:
    [{'overrides': {key: value}, 'config': resolved ConfigDict}, ...]
  """
  runs = []
  for a, b in itertools.product(sweep_runs, grid):
    if both := set(a) & set(b):
      raise SweepError(f"{', '.join(sorted(both))}: set by both the config's sweep and --grid.")
    overrides = {**a, **b}
    if both := set(overrides) & set(fixed):
      raise SweepError(f"{', '.join(sorted(both))}: both swept and fixed by a --config.* flag.")
    overrides = {k: parse_value(base, k, v) for k, v in overrides.items()}
    config = resolve(base, overrides)
    try:
      config_lib.validate(config)
    except config_lib.ConfigError as e:
      raise SweepError(f"run {run_name(overrides)}: {e}") from None
    runs.append({"overrides": overrides, "config": config})
  return runs


# The fields in which the runs of one population (config.population) may differ: {config field: population field}.
FUSIBLE = {
  "seed": "seed",
  **{name if name == "learning_rate" else f"optimizer.{name}": name for name in optim.MEMBER_HYPERPARAMETERS},
  "dataset.name": "dataset",  # variants of one image size (R, P, E, paper-P, paper-E: 32x32)
}


def _member_slots(config) -> list[tuple[int, dict]]:
  """(seed, {config field: value}) of each model a run trains: one, or one per seed of a run with num_seeds K."""
  values = {field: config_lib.get(config, field) for field in FUSIBLE if field != "seed"}
  return [(seed, values) for seed in config_lib.member_seeds(config)]


def fuse(base, runs: list[dict]) -> list[dict]:
  """Runs that differ only in FUSIBLE fields and num_seeds, on images of one size, become one population run each.

  Each run contributes its models: one, or K for a run of num_seeds K (its seeds), so Table 1's R, P and E columns
  of one architecture, 3 seeds each, train as one program of 9 members. A fused run has overrides = the group's
  other overrides + num_seeds, config.population.seed and the config.population.* of the fields that differ among
  the members (one value per member; one they share is a plain override), applied to `base`; `members`: the runs it
  stands for, in order; and `slots`: for each of those runs, the indices of its models in the population. Runs
  alone in their group, and runs that are populations of hyperparameters or variants already, stay as they are.
  """
  groups: dict[str, list[dict]] = {}
  for r in runs:
    population = r["config"].get("population") or {}
    if any(population.get(name) for name in FUSIBLE.values() if name != "seed"):
      groups[f"alone {len(groups)}"] = [r]
      continue
    others = sorted((k, repr(v)) for k, v in r["overrides"].items() if k not in FUSIBLE and k != "num_seeds")
    key = repr((others, config_lib.input_shape(r["config"])))
    groups.setdefault(key, []).append(r)
  fused = []
  for members in groups.values():
    if len(members) == 1:
      fused.append(members[0])
      continue
    common = {k: v for k, v in members[0]["overrides"].items() if k not in FUSIBLE and k != "num_seeds"}
    slots, models = [], []
    for m in members:
      mine = _member_slots(m["config"])
      slots.append(list(range(len(models), len(models) + len(mine))))
      models += mine
    overrides = {**common, "num_seeds": len(models), "population.seed": tuple(seed for seed, _ in models)}
    for field, name in FUSIBLE.items():
      if field == "seed":
        continue
      values = tuple(v[field] for _, v in models)
      if len(set(values)) > 1:  # differs: per member (only then is the optimiser's injected)
        overrides[f"population.{name}"] = values
        if field == "dataset.name" and values[0] != config_lib.get(base, field):
          overrides[field] = values[0]  # the population's image size is its first member's
      elif values[0] != config_lib.get(base, field):
        overrides[field] = values[0]
    config = resolve(base, overrides)
    try:
      config_lib.validate(config)
    except config_lib.ConfigError as e:
      raise SweepError(f"fused run of {', '.join(m['name'] for m in members)}: {e}") from None
    fused.append({"overrides": overrides, "config": config, "members": members, "common": common, "slots": slots})
  return fused


def member_rows(fused_row: dict, run: dict, names: dict[str, str]) -> list[dict]:
  """The rows of a fused run's member runs, one per run, as if it had run alone (a run of K seeds: the mean and
  spread of its K models)."""
  import numpy as np

  rows = []
  results = fused_row.get("members") or []
  slots = run.get("slots") or [[k] for k in range(len(run["members"]))]
  for member, indices in zip(run["members"], slots, strict=True):
    row = {"run": member["name"], **{names[key]: _format(v) for key, v in member["overrides"].items()}}
    row["_swept"] = tuple(names[key] for key in member["overrides"])
    if indices and indices[-1] < len(results):
      mine = [results[i] for i in indices]
      for key in ("test_accuracy", "test_error", "test_loss"):
        values = np.array([m[key] for m in mine], np.float64)
        row[key] = float(values.mean()) if len(mine) > 1 else mine[0][key]
      if len(mine) > 1:
        errors = np.array([m["test_error"] for m in mine], np.float64)
        row["test_error_std"] = float(errors.std(ddof=1))
        row["test_error_per_seed"] = [float(e) for e in errors]
      row.update(num_seeds=len(mine), train_time_s=fused_row.get("train_time_s"))
    where = f"member {indices[0]}" if len(indices) == 1 else f"members {indices[0]}-{indices[-1]}"
    row["status"] = f"{fused_row['status']}, {where} of {run['name']}"
    rows.append(row)
  return rows


def describe_plan(runs: list[dict], sweep_count: int, grid_count: int) -> str:
  fused = sum(len(r["members"]) for r in runs if "members" in r)
  if fused:
    sweep_count = f"{sweep_count} from the config's sweep x {grid_count} --grid combination(s) = "
    return (
      f"{len(runs)} programs ({sweep_count}{fused + len(runs) - sum('members' in r for r in runs)} runs, "
      f"{fused} of them fused into {sum('members' in r for r in runs)} population(s)), "
      f"{sum(r['config'].num_seeds for r in runs)} models"
    )
  models = sum(r["config"].num_seeds for r in runs)
  seeds = sorted({r["config"].num_seeds for r in runs})
  per = f"{seeds[0]} seed(s) each" if len(seeds) == 1 else f"{'/'.join(map(str, seeds))} seeds"
  return (
    f"{len(runs)} runs ({sweep_count} from the config's sweep x {grid_count} --grid combination(s)), "
    f"{models} models ({per})"
  )


def run_state(workdir: Path, config) -> str:
  """'new', 'done' (finished, same config), 'resume' (unfinished), 'continue from A to B steps' (a run of a smaller
  total, which only --continue continues) or the conflict."""
  if not (workdir / "config.json").exists():
    return "new"
  stored = json.loads((workdir / "config.json").read_text())
  if coloc.is_coloc(config):  # a co-localisation run is short: finished (the same config) or run anew, never resumed
    if not coloc.same_run(stored, config):
      return "conflict: the workdir holds a co-localisation run of another config"
    return "done" if (workdir / "results.json").exists() else "new"
  steps_per_epoch = SPLIT_SIZES["train"] // config.batch_size
  problems, (old_total, new_total) = config_lib.resume_differences(stored, config, steps_per_epoch)
  if problems:
    return "conflict: " + "; ".join(problems)
  if new_total > old_total and (workdir / "checkpoints").is_dir():
    return f"continue from {old_total:,} to {new_total:,} steps"
  return "done" if (workdir / "results.json").exists() and new_total == old_total else "resume"


# ----------------------------------------------------------------------------------------------------------------------
# Running and reporting.
# ----------------------------------------------------------------------------------------------------------------------


def run_one(config_spec: str, workdir: Path, row: dict, fixed: dict, overrides: dict, state: str) -> dict:
  results = workdir / "results.json"
  if state == "done":
    return {**row, **json.loads(results.read_text()), "status": "done (skipped)"}
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / "log.txt"
  start = time.time()
  with open(log_path, "a") as log:
    args = command(config_spec, workdir, fixed, overrides, continue_run=state.startswith("continue"))
    returncode = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT).returncode
  if returncode != 0 or not results.exists():
    print(f"FAILED {row['run']} (exit {returncode}); log: {log_path}", flush=True)
    return {**row, "status": f"failed (exit {returncode}, log {log_path})"}
  print(f"done {row['run']} in {time.time() - start:.0f} s", flush=True)
  return {**row, **json.loads(results.read_text()), "status": "done"}


def merge_rows(path: Path, rows: list[dict]) -> tuple[list[dict], list[str]]:
  """The rows of an existing results.csv with this sweep's rows replacing those of the same run, and all columns."""
  old, columns = [], []
  if path.exists():
    with open(path, newline="") as f:
      reader = csv.DictReader(f)
      columns = list(reader.fieldnames or [])
      old = list(reader)
  new_names = {r["run"] for r in rows}
  merged = [r for r in old if r.get("run") not in new_names] + rows
  swept = [c for c in columns if c != "run" and c not in RESULT_COLUMNS]
  for row in rows:
    swept += [
      k for k in row if k not in swept and k != "run" and k not in RESULT_COLUMNS and k in row.get("_swept", ())
    ]
  return merged, ["run", *swept, *RESULT_COLUMNS]


def write_reports(root: Path, rows: list[dict]) -> None:
  """results.csv (merged with what is there), results.md and results.png."""
  rows, columns = merge_rows(root / "results.csv", rows)
  with open(root / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)

  def number(value):
    try:
      return float(value)
    except (TypeError, ValueError):
      return None

  def cell(row, column):
    value = row.get(column, "")
    if column in ("test_accuracy", "test_error", "test_error_std") and number(value) is not None:
      return f"{100 * number(value):.2f} %"
    if column == "train_time_s" and number(value) is not None:
      return f"{number(value):.0f}"
    return str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
  (root / "results.md").write_text("\n".join(lines) + "\n")
  done = [r for r in rows if number(r.get("test_error")) is not None]
  if done:
    from stn_jax.training.figures import pyplot

    plt = pyplot()
    names = [r["run"] for r in done]
    # Horizontal bars: every run's full name stays readable, however many runs and however long their names.
    fig, ax = plt.subplots(figsize=(min(16, 5 + 0.07 * max(map(len, names))), 1.2 + 0.28 * len(done)))
    errors = [100 * number(r["test_error"]) for r in done]
    spread = [100 * (number(r.get("test_error_std")) or 0.0) for r in done]
    ax.barh(range(len(done)), errors, xerr=spread, color="tab:blue", capsize=2)
    ax.set_yticks(range(len(done)), names, fontsize=8)
    ax.invert_yaxis()
    for y, (e, sd) in enumerate(zip(errors, spread, strict=True)):
      ax.text(e + sd, y, f"  {e:.2f}", va="center", fontsize=7)
    ax.set_xlim(0, 1.15 * max(e + sd for e, sd in zip(errors, spread, strict=True)) or 1)
    ax.set_xlabel("test error (%)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(root / "results.png", dpi=110)
    plt.close(fig)


def main(argv):
  if len(argv) > 1:
    sys.stderr.write(f"error: unexpected arguments: {' '.join(argv[1:])}\n")
    sys.exit(USAGE_ERROR)
  config_spec = config_flags.get_config_filename(flags.FLAGS["config"]) if flags.FLAGS["config"].present else None
  if not config_spec or not _WORKDIR.value:
    sys.stderr.write("error: --config and --workdir are required (e.g. --config=configs/default.py --workdir=runs/x)\n")
    sys.exit(USAGE_ERROR)
  root = Path(_WORKDIR.value)
  logging.getLogger().setLevel(logging.WARNING)  # the runs log to their own log.txt
  try:
    _, sweep_runs = load_sweep(config_spec)
    fixed = dict(config_flags.get_override_values(flags.FLAGS["config"]))
    grid = parse_grid(_GRID.value)
    runs = plan(_CONFIG.value, sweep_runs, grid, fixed)
    names = short_names(list(dict.fromkeys(k for r in runs for k in r["overrides"])))
    for r in runs:
      r["name"] = run_name(r["overrides"], names)
    if _FUSE.value:
      runs = fuse(_CONFIG.value, runs)
      for r in runs:
        if "members" in r:
          r["name"] = run_name(r["common"], names) + f",population={r['config'].num_seeds}"
    for r in runs:
      r["state"] = run_state(root / r["name"], r["config"])
    if len({r["name"] for r in runs}) != len(runs):
      raise SweepError("two runs would share a directory: " + ", ".join(r["name"] for r in runs))
    conflicts = [f"{r['name']}: {r['state']}" for r in runs if r["state"].startswith("conflict")]
    if conflicts:
      raise SweepError(f"run directories under {root} hold other configs: " + " | ".join(conflicts))
    longer = [f"{r['name']} ({r['state']})" for r in runs if r["state"].startswith("continue")]
    if longer and not _CONTINUE.value:
      raise SweepError(
        f"{len(longer)} run(s) under {root} would continue to a larger total: {'; '.join(longer[:4])}"
        f"{' ...' if len(longer) > 4 else ''}; add --continue to continue them, or give the totals they ran."
      )
  except (SweepError, config_lib.ConfigError) as e:
    sys.stderr.write(f"error: {one_line(e)}\n")
    sys.exit(USAGE_ERROR)
  print(
    describe_plan(runs, len(sweep_runs), len(grid)) + f" from {config_spec} into {root}, {_PARALLEL.value} at a time"
  )
  if fixed:
    print("fixed for every run: " + " ".join(f"--config.{k}={flag_value(v)}" for k, v in fixed.items()))
  if _DRY_RUN.value:
    for r in runs:
      if coloc.is_coloc(r["config"]):
        params = coloc.param_count(r["config"])
      else:
        params = models.param_count(
          r["config"].model, config_lib.input_shape(r["config"]), config_lib.num_classes(r["config"])
        )
      members = ""
      if "members" in r:
        members = f", {r['config'].num_seeds} members: {', '.join(m['name'] for m in r['members'])}"
      print(f"{r['name']} [{r['state']}] {params:,} parameters{members}")
      print("   ", " ".join(command(config_spec, root / r["name"], fixed, r["overrides"])))
    return
  root.mkdir(parents=True, exist_ok=True)

  def launch(r):
    if "members" in r:  # one program for the population; one row per member
      fused_row = run_one(config_spec, root / r["name"], {"run": r["name"]}, fixed, r["overrides"], r["state"])
      return member_rows(fused_row, r, names)
    row = {"run": r["name"], **{names[k]: _format(v) for k, v in r["overrides"].items()}}
    row["_swept"] = tuple(names[k] for k in r["overrides"])
    return [run_one(config_spec, root / r["name"], row, fixed, r["overrides"], r["state"])]

  with ThreadPoolExecutor(_PARALLEL.value) as pool:
    rows = [row for rows in pool.map(launch, runs) for row in rows]
  write_reports(root, rows)
  failed = [r for r in rows if r["status"].startswith("failed")]
  print(f"{len(rows) - len(failed)} of {len(rows)} runs done; {root / 'results.csv'}, results.md, results.png")
  for r in failed:
    print(f"  {r['run']}: {r['status']}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
