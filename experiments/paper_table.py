r"""Our Table 1, TC and MNIST-addition errors beside the paper's, from a campaign's results or finished sweeps.

  python experiments/paper_table.py --runs=results/paper_runs            # experiments/paper_campaign.py's results
  python experiments/paper_table.py --table1=runs/table1_cpu --tc=runs/tc_cpu [--figures=docs/figures/table1]
  python experiments/paper_table.py --addition=runs/addition_cpu [--figures=docs/figures/addition]
  python experiments/paper_table.py --coloc=runs/coloc

Reads every results.json under the roots (with its config.json and metrics.jsonl), splits a fused program (a
population of several variants, `config.population.dataset`) into its cells, and prints markdown tables of test
error %: our mean ± standard deviation over the cell's seeds, the paper's number, the difference, and the step at
which the cell's validation error (the mean over its seeds, at each evaluation) first reached the paper's test error:
the cheapest budget of the paper's recipe that matches it, cell by cell ("not reached" if it never did). A seed
whose test loss is not finite (results.json's diverged_members) is left out of its cell's numbers, and the cell says
how many of its seeds diverged. With
--figures, copies each dataset's ST-CNN (affine) input/output figure there as <dataset>.png, and each addition
transformer model's as <row>.png (the paper's Table 4 pictures: what each transformer makes of the two digits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from absl import app, flags

from stn_jax.training import config_lib
from stn_jax.training.metrics import read_metrics

_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "default.py"
paper_table1 = config_lib.import_sibling(_CONFIGS, "paper_table1")
paper_addition = config_lib.import_sibling(_CONFIGS, "paper_addition")
paper_coloc = config_lib.import_sibling(_CONFIGS, "paper_coloc")
ADDITION = "addition"  # the column of the addition runs


def _member_errors(row: dict, key: str, indices: list[int]) -> float | None:
  """The mean error over the members `indices` of a metrics row's `key` accuracy (per seed or a plain value)."""
  if f"{key}_per_seed" in row:
    return float(np.mean([1 - row[f"{key}_per_seed"][i] for i in indices]))
  return 1 - row[key] if key in row else None


def reached_step(rows: list[dict], indices: list[int], paper: float | None) -> int | None:
  """The first evaluation step at which the mean validation error of the members `indices` was <= paper (%)."""
  if paper is None:
    return None
  for row in rows:
    error = _member_errors(row, "val_accuracy", indices)
    if error is not None and 100 * error <= paper + 1e-9:
      return row["step"]
  return None


def cells(run_dir: Path) -> dict[tuple[str, str], dict]:
  """{(row, column): {test_error, test_error_std, num_seeds, num_diverged, num_train_steps, reached, dir}} of one
  finished run directory: one cell, or one per variant of a population of variants. The error, its std and `reached`
  are over the seeds that did not diverge."""
  config = config_lib.migrate(json.loads((run_dir / "config.json").read_text()))  # any version
  results = json.loads((run_dir / "results.json").read_text())
  rows = read_metrics(run_dir / "metrics.jsonl")
  addition = config["dataset"]["name"] == ADDITION
  row = paper_addition.row_name(config) if addition else paper_table1.row_name(config)
  variants = (config.get("population") or {}).get("dataset") or [config["dataset"]["name"]] * results.get(
    "num_seeds", 1
  )
  groups: dict[str, list[int]] = {}
  for i, name in enumerate(variants):
    groups.setdefault(name, []).append(i)
  diverged = set(results.get("diverged_members", []))
  out = {}
  for name, indices in groups.items():
    col = paper_table1.column(name)
    paper = paper_addition.PAPER.get(row) if addition else paper_table1.paper_number(row, col)
    finite = [i for i in indices if i not in diverged]  # a diverged member's error means nothing: left out, counted
    if "members" in results:
      errors = np.array([results["members"][i]["test_error"] for i in finite], np.float64)
    else:
      errors = np.array([results["test_error"]] if finite else [], np.float64)
    if len(errors) > 1:
      std = float(errors.std(ddof=1))
    else:  # one seed: the population's std (NaN members in it) is not its
      std = 0.0 if "members" in results or diverged else float(results.get("test_error_std", 0.0))
    out[(row, col)] = {
      "test_error": float(errors.mean()) if len(errors) else float("nan"),
      "test_error_std": std,
      "num_seeds": len(indices),
      "num_diverged": len(indices) - len(finite),
      "num_train_steps": results["num_train_steps"],
      "reached": reached_step(rows, finite, paper) if finite else None,
      "num_params": results.get("num_params"),
      "dir": run_dir,
      "figure": name == variants[0],  # a run's figures show its member 0
    }
  return out


def collect(root: Path) -> dict[tuple[str, str], dict]:
  """{(row, column): cell} of every finished classification run under `root` (at any depth)."""
  out = {}
  for results in sorted(root.glob("**/results.json")):
    if json.loads((results.parent / "config.json").read_text()).get("task", "classify") == "classify":
      out.update(cells(results.parent))
  return out


def collect_coloc(root: Path) -> dict[tuple[str, int], dict]:
  """{(dataset, digit): results.json} of every finished co-localisation run under `root`, with `selected`: the seed
  whose final triplet loss is the lowest (metrics.jsonl; a choice among restarts that uses no labels or boxes) and
  its iou_rate and test_iou_rate."""
  out = {}
  for path in sorted(root.glob("**/results.json")):
    if json.loads((path.parent / "config.json").read_text()).get("task") == "coloc":
      results = json.loads(path.read_text())
      last = {}
      for line in (path.parent / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        last[row["seed"]] = row
      k, best = min(enumerate(last.values()), key=lambda kv: kv[1]["loss"])
      selected = {"seed": best["seed"], "loss": best["loss"], "iou_rate": best["iou_rate"]}
      tests = results.get("test_iou_rate_per_seed", [results["test_iou_rate"]] if "test_iou_rate" in results else [])
      if tests:
        selected["test_iou_rate"] = tests[k]
      out[(results["dataset"], results["digit"])] = {**results, "selected": selected}
  return out


def coloc_table(found: dict[tuple[str, int], dict]) -> str:
  """The markdown table of co-localisation runs: the IoU > 0.5 rate per digit, over the seeds and of the seed of the
  lowest final loss, beside the paper's."""

  def rate(r: dict | None, key: str) -> str:
    if r is None or key not in r:
      return "—"
    std = f" ± {100 * r[key + '_std']:.0f}" if key + "_std" in r else ""
    return f"{100 * r[key]:.0f}{std}"

  title = (
    "co-localisation, IoU > 0.5 rate % on the run's 100 images (on test images of the digit): mean ± std over seeds; "
    "the lowest-loss seed's"
  )
  columns = [f"{d}{suffix}" for d in paper_coloc.DATASETS for suffix in ("", ", lowest-loss seed")]
  lines = _head(title, found, "digit", columns)
  for digit in paper_coloc.DIGITS:
    row = []
    for d in paper_coloc.DATASETS:
      r = found.get((d, digit))
      row.append(f"{rate(r, 'iou_rate')} ({rate(r, 'test_iou_rate')})")
      row.append(f"{rate(r['selected'], 'iou_rate')} ({rate(r['selected'], 'test_iou_rate')})" if r else "—")
    lines.append(f"| {digit} | " + " | ".join(row) + " |")
  papers = [f"{lo:.0f}-{hi:.0f}" if lo != hi else f"{lo:.0f}" for lo, hi in paper_coloc.PAPER.values()]
  lines.append("| the paper | " + " | ".join(p for p in papers for _ in (0, 1)) + " |")
  return "\n".join(lines)


def _head(title: str, found: dict, first: str, columns) -> list[str]:
  """A table's title line (with the budgets of the runs in it) and its markdown header."""
  budgets = sorted({(r["num_train_steps"], r["num_seeds"]) for r in found.values()})
  return [
    f"{title}; budgets (steps, seeds): {budgets}",
    "",
    f"| {first} | " + " | ".join(columns) + " |",
    "|---|" + "---:|" * len(columns),
  ]


def cell_text(result: dict | None, paper: float | None) -> str:
  """A cell: mean ± std over the seeds that did not diverge (their count named when some did), the paper's number,
  the difference and the step that reached it."""
  if result is None:
    return f"— ({paper if paper is not None else 'n/a'})"
  bad, seeds = result.get("num_diverged", 0), result["num_seeds"]
  if bad == seeds:
    return f"diverged ({seeds} of {seeds} seeds) ({paper if paper is not None else 'n/a'})"
  mean, std = 100 * result["test_error"], 100 * result["test_error_std"]
  ours = f"{mean:.2f} ± {std:.2f}" + (f" [{seeds - bad} of {seeds} seeds: {bad} diverged]" if bad else "")
  if paper is None:
    return f"{ours} (n/a)"
  reached = f"{result['reached']:,}" if result["reached"] is not None else "not reached"
  return f"{ours} ({paper}; {mean - paper:+.2f}; {reached})"


def addition_table(found: dict[tuple[str, str], dict]) -> str:
  """The markdown table of the addition runs (configs/paper_addition.py), one row per model."""
  runs = {row: r for (row, col), r in found.items() if col == ADDITION}
  title = (
    "MNIST addition, test error %: ours (the paper's; ours - paper; the first step at which our validation error "
    "reached it)"
  )
  lines = _head(title, runs, "model", ("test error %", "parameters"))
  for name, paper in paper_addition.PAPER.items():
    result = runs.get(name)
    params = f"{result['num_params']:,}" if result and result.get("num_params") else ""
    lines.append(f"| {name} | {cell_text(result, paper)} | {params} |")
  return "\n".join(lines)


def tables(found: dict[tuple[str, str], dict]) -> str:
  """The markdown tables of Table 1 and TC."""
  found = {key: r for key, r in found.items() if key[1] != ADDITION}
  if not found:
    return ""
  title = (
    "test error %: ours, mean ± std over seeds (the paper's; ours - paper; the first step at which our validation "
    "error reached the paper's test error)"
  )
  lines = _head(title, found, "model", paper_table1.DATASETS)
  for name, paper in paper_table1.PAPER.items():
    row = [cell_text(found.get((name, d)), p) for d, p in zip(paper_table1.DATASETS, paper, strict=True)]
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  if any(col == "TC" for _, col in found):
    lines += ["", "| model | TC |", "|---|---:|"]
    lines += [f"| {n} | {cell_text(found.get((n, 'TC')), p)} |" for n, p in paper_table1.PAPER_TC.items()]
  return "\n".join(lines)


def define_flags() -> None:
  """The command line's flags (defined when run as a script: importing this module defines none)."""
  flags.DEFINE_string("runs", None, "Root of a campaign's results (results/paper_runs): Table 1 and TC.")
  flags.DEFINE_string("table1", None, "Root of the Table 1 sweep.")
  flags.DEFINE_string("tc", None, "Root of the TC sweep.")
  flags.DEFINE_string("addition", None, "Root of the MNIST-addition sweep (configs/paper_addition.py).")
  flags.DEFINE_string("coloc", None, "Root of the co-localisation sweep (configs/paper_coloc.py).")
  flags.DEFINE_string("figures", None, "Copy each dataset's ST-CNN-Aff and each addition model's figure here.")


def main(argv):
  del argv
  f = flags.FLAGS
  found = {}
  for root in (f.runs, f.table1, f.tc, f.addition):
    if root:
      found.update(collect(Path(root)))
  coloc_runs = collect_coloc(Path(f.coloc)) if f.coloc else {}
  parts = (tables(found), addition_table(found) if f.addition else "", coloc_table(coloc_runs) if f.coloc else "")
  print("\n\n".join(t for t in parts if t))
  if f.figures:
    target = Path(f.figures)
    target.mkdir(parents=True, exist_ok=True)
    for (name, dataset), result in found.items():
      figure = result["dir"] / "figures" / "transform_final.png"
      wanted = (name == "ST-CNN-Aff" and result["figure"]) or (dataset == ADDITION and "ST-FCN" in name)
      if wanted and figure.exists():
        copy = target / f"{name if dataset == ADDITION else dataset}.png"
        shutil.copy(figure, copy)
        print(f"copied {figure} -> {copy}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
