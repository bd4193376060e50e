r"""Our Table 1 and TC errors beside the paper's, from finished sweeps; copies the rectified-digit figures.

  python experiments/paper_table.py --table1=runs/table1_cpu --tc=runs/tc_cpu [--figures=docs/table1]

Reads every ROOT/<run>/results.json and config.json, names each run by its model (FCN, CNN, ST-FCN-Aff, ...) and
prints markdown tables of test error %: our mean ± standard deviation over the run's seeds, the paper's number, and
the difference. With --figures, copies each dataset's ST-CNN (affine) input/output figure there as <dataset>.png.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from absl import app, flags

from stn_jax import config_lib

paper_table1 = config_lib.import_sibling(Path(__file__).resolve().parents[1] / "configs" / "default.py", "paper_table1")

_TABLE1 = flags.DEFINE_string("table1", None, "Root of the Table 1 sweep.")
_TC = flags.DEFINE_string("tc", None, "Root of the TC sweep.")
_FIGURES = flags.DEFINE_string("figures", None, "Copy each dataset's ST-CNN-Aff transform figure here.")

PAPER = {
  "FCN": (2.1, 5.2, 3.1, 3.2),
  "CNN": (1.2, 0.8, 1.5, 1.4),
  "ST-FCN-Aff": (1.2, 0.8, 1.5, 2.7),
  "ST-FCN-Proj": (1.3, 0.9, 1.4, 2.6),
  "ST-FCN-TPS": (1.1, 0.8, 1.4, 2.4),
  "ST-CNN-Aff": (0.7, 0.5, 0.8, 1.2),
  "ST-CNN-Proj": (0.8, 0.6, 0.8, 1.3),
  "ST-CNN-TPS": (0.7, 0.5, 0.8, 1.1),
}
PAPER_TC = {"FCN": 13.2, "CNN": 3.5, "ST-FCN-Aff": 2.0, "ST-CNN-Aff": 1.7}


def model_name(config: dict) -> str:
  """The Table 1 row of a run's model: FCN, CNN, ST-FCN-<transform> or ST-CNN-<transform> (any budget's)."""
  m = config["model"]
  family = "CNN" if m["classifier"]["kind"] == "cnn" else "FCN"
  return family if m["transform"] == "none" else f"ST-{family}-{paper_table1.SHORT[m['transform']]}"


def column(dataset: str) -> str:
  """The Table 1 / TC column of a dataset variant (the paper's recipe has its own: paper-RTS is RTS)."""
  return dataset.removeprefix("paper-")


def collect(root: Path) -> dict[tuple[str, str], dict]:
  """{(model name, dataset): results} of the finished runs under `root`."""
  out = {}
  for results in sorted(root.glob("*/results.json")):
    config = config_lib.migrate(json.loads((results.parent / "config.json").read_text()))  # any version
    key = model_name(config), column(config["dataset"]["name"])
    out[key] = {**json.loads(results.read_text()), "dir": results.parent}
  return out


def cell(result: dict | None, paper: float) -> str:
  if result is None:
    return f"— ({paper})"
  mean, std = 100 * result["test_error"], 100 * result.get("test_error_std", 0.0)
  return f"{mean:.2f} ± {std:.2f} ({paper}; {mean - paper:+.1f})"


def main(argv):
  del argv
  runs = collect(Path(_TABLE1.value)) if _TABLE1.value else {}
  tc = collect(Path(_TC.value)) if _TC.value else {}
  budgets = {(r["num_train_steps"], r.get("num_seeds", 1)) for r in (*runs.values(), *tc.values())}
  print(f"test error %, ours mean ± std over seeds (paper; ours - paper); budgets (steps, seeds): {sorted(budgets)}\n")
  datasets = paper_table1.DATASETS
  print("| model | " + " | ".join(datasets) + " |")
  print("|---|" + "---:|" * len(datasets))
  for name, paper in PAPER.items():
    print(
      f"| {name} | " + " | ".join(cell(runs.get((name, d)), p) for d, p in zip(datasets, paper, strict=True)) + " |"
    )
  if tc:
    print("\n| model | TC |\n|---|---:|")
    for name, paper in PAPER_TC.items():
      print(f"| {name} | {cell(tc.get((name, 'TC')), paper)} |")
  if _FIGURES.value:
    target = Path(_FIGURES.value)
    target.mkdir(parents=True, exist_ok=True)
    for (name, dataset), result in {**runs, **tc}.items():
      figure = result["dir"] / "figures" / "transform_final.png"
      if name == "ST-CNN-Aff" and figure.exists():
        shutil.copy(figure, target / f"{dataset}.png")
        print(f"copied {figure} -> {target / f'{dataset}.png'}")


if __name__ == "__main__":
  app.run(main)
