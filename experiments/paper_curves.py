r"""Validation (and train) error against steps of paper-recipe runs, beside the paper's test error: one figure.

  python experiments/paper_curves.py --runs=runs/gpu/rts_cnn --runs=runs/gpu/rts_st_cnn_aff --out=docs/curves.png
  python experiments/paper_curves.py --runs=runs/addition_cpu160 --out=docs/figures/addition_cpu160_curves.png

Each --runs (repeatable) is a workdir (it holds config.json) or a sweep's root (every run directory under it, in
name order). Sweep run names hold commas, so a value is never split on them.

Reads each workdir's metrics.jsonl (a run stopped early has the evaluations it reached) and config.json, labels each
curve by its model and dataset (configs/paper_table1.py's names, or configs/paper_addition.py's), draws the paper's
number as a dashed line of the same colour and prints a table of the last evaluation of each run. A population's
curve is the mean over its seeds, less those whose last validation loss is not finite (they diverged: their count is
in the label).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
from absl import app, flags

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from stn_jax.training import config_lib
from stn_jax.training.metrics import read_metrics

_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "default.py"
paper_table1 = config_lib.import_sibling(_CONFIGS, "paper_table1")
paper_addition = config_lib.import_sibling(_CONFIGS, "paper_addition")


def row_and_paper(config: dict) -> tuple[str, str, float | None]:
  """(model, column, the paper's test error %) of a run: Table 1 / TC names, or configs/paper_addition.py's."""
  if config["dataset"]["name"] == "addition":
    model = paper_addition.row_name(config)
    return model, "addition", paper_addition.PAPER.get(model)
  model, column = paper_table1.row_name(config), paper_table1.column(config["dataset"]["name"])
  return model, column, paper_table1.paper_number(model, column)


def expand_runs(values: list[str]) -> list[Path]:
  """The workdirs named by --runs: each value a workdir (it holds config.json) or a sweep root (its run dirs)."""
  runs = []
  for value in values:
    path = Path(value)
    if (path / "config.json").is_file():
      runs.append(path)
      continue
    children = sorted(d for d in path.iterdir() if (d / "config.json").is_file()) if path.is_dir() else []
    if not children:
      raise ValueError(f"--runs: {value!r} is neither a workdir (no config.json) nor a sweep root holding one.")
    runs.extend(children)
  return runs


def diverged(rows: list[dict]) -> list[int]:
  """The members of a run (a population's seeds) whose validation loss at its last evaluation is not finite."""
  losses = rows[-1].get("val_loss_per_seed", [rows[-1].get("val_loss", 0.0)])
  return [k for k, loss in enumerate(losses) if not math.isfinite(loss)]


def error_curve(rows: list[dict], key: str, left_out: list[int]) -> list[float]:
  """Error % at each row: the mean over the members not in `left_out` of the `key` accuracy (per seed, or the
  row's plain value for one model); [] when every member is left out."""
  if f"{key}_per_seed" not in rows[-1]:
    return [] if left_out else [100 * (1 - r[key]) for r in rows]
  keep = [k for k in range(len(rows[-1][f"{key}_per_seed"])) if k not in left_out]
  return [100 * (1 - sum(r[f"{key}_per_seed"][k] for k in keep) / len(keep)) for r in rows] if keep else []


def define_flags() -> None:
  """The command line's flags (defined when run as a script: importing this module defines none)."""
  flags.DEFINE_multi_string(
    "runs", None, "A run's workdir or a sweep's root (its run directories); repeatable.", required=True
  )
  flags.DEFINE_string("out", None, "The figure (png).", required=True)


def main(argv):
  del argv
  out = Path(flags.FLAGS.out)
  fig, ax = plt.subplots(figsize=(8, 5))
  print("| run | steps reached | val error % | train error % | paper test error % |\n|---|---:|---:|---:|---:|")
  for i, run in enumerate(expand_runs(flags.FLAGS.runs)):
    config = config_lib.migrate(json.loads((run / "config.json").read_text()))
    model, column, paper = row_and_paper(config)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "val_accuracy" in r]
    if not rows:
      print(f"| {run.name} | no evaluation yet | | | |")
      continue
    steps = [r["step"] for r in rows]
    color = f"C{i}"
    bad, seeds = diverged(rows), len(rows[-1].get("val_loss_per_seed", [0]))
    label = f"{model} on {config['dataset']['name']}" + (
      f" ({len(bad)} of {seeds} seeds diverged, not drawn)" if bad else ""
    )
    val, train = (error_curve(rows, key, bad) for key in ("val_accuracy", "train_accuracy"))
    if not val:
      print(f"| {run.name} ({label}) | every seed diverged | | | {paper} |")
      continue
    ax.plot(steps, val, color=color, marker="o", ms=3, label=f"{label}: val")
    ax.plot(steps, train, color=color, ls=":", label=f"{label}: train")
    if paper is not None:
      ax.axhline(paper, color=color, ls="--", lw=1, label=f"{model} {column}: the paper's test error")
    print(
      f"| {run.name} ({label}) | {rows[-1]['step']:,} of {config.get('num_train_steps') or '?'} | "
      f"{val[-1]:.2f} | {train[-1]:.2f} | {paper} |"
    )
  ax.set_yscale("log")
  ax.set_xlabel("training step (batch 256)")
  ax.set_ylabel("error % (log scale)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  print(f"wrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
