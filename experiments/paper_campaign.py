r"""The paper's Table 1, TC and MNIST addition at the `paper` budget, one accelerator window at a time.

  python experiments/paper_campaign.py --budget_s=420 --out=/tmp/campaign [--done=results/paper_runs] [--dry_run]

The rows are the `paper` sweeps of configs/paper_table1.py and configs/paper_tc.py, fused as `sweep.py --fuse` fuses
them (R, paper-P and paper-E of one architecture x 3 seeds: one program of 9 models; paper-RTS and paper-TC rows:
3-seed programs of their own). Programs whose results are already under --done (results/paper_runs/<group>/<program>/
results.json at the program's total) are skipped; the others run one at a time (processes sharing a GPU take turns)
in a priority order (RTS ST-CNN-Aff, RTS CNN, TC ST-CNN-Aff, TC CNN, then the fused Table 1 programs, ST-CNN first,
then the rest, then the 8 MNIST-addition programs of configs/paper_addition.py:paper, whose CNN row is what a
2-core CPU cannot afford), each to its full total or not at all:

* a program whose steps/s is known (--done/rates.json, written by earlier windows) starts only if its estimated
  time, compilation and evaluations included, fits what is left of --budget_s;
* one whose rate is unknown starts, and is stopped at its first log line if its own ETA says it cannot finish in
  time (its rate is recorded for the next window, so the next window plans it without trying).

Nothing is kept of a program that did not finish (no checkpoints come back from a lent machine). What the finished
programs produced (results.json, metrics.jsonl, config.json and figures/transform_final.png; no checkpoints) and the
rates go into ONE archive, OUT/paper_runs.tar.xz, under 16 MiB (the GPU machine's limit per file). Unpacked
into results/paper_runs/ (`tar -xJf paper_runs.tar.xz -C results/paper_runs`) and committed, the next window continues
with the programs still missing; `python experiments/paper_table.py --runs=results/paper_runs` prints the table.

`--override config.key=value` (repeatable) applies to every program (tests shrink the budget and the models with
it; a campaign that uses it is not the paper's recipe), `--program` (repeatable) keeps only the named programs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import sweep  # noqa: E402  (experiments/ is not a package)

from stn_jax.data.mnist import SPLIT_SIZES  # noqa: E402
from stn_jax.training import config_lib  # noqa: E402
from stn_jax.training.cli import USAGE_ERROR, one_line  # noqa: E402

paper_table1 = config_lib.import_sibling(ROOT / "configs" / "default.py", "paper_table1")
paper_addition = config_lib.import_sibling(ROOT / "configs" / "default.py", "paper_addition")

SPECS = {
  "table1": "configs/paper_table1.py:paper",
  "tc": "configs/paper_tc.py:paper",
  "addition": "configs/paper_addition.py:paper",
}
# The cells to finish first: (column, row); then the fused Table 1 programs, ST-CNN rows first.
PRIORITY = (("RTS", "ST-CNN-Aff"), ("RTS", "CNN"), ("TC", "ST-CNN-Aff"), ("TC", "CNN"))
KEPT = ("results.json", "metrics.jsonl", "config.json", "figures/transform_final.png")
ARCHIVE = "paper_runs.tar.xz"
ARCHIVE_LIMIT = 16 << 20  # bytes: the GPU machine returns files of at most 16 MiB


class CampaignError(ValueError):
  """A campaign that cannot start: bad flags or overrides."""


@dataclasses.dataclass
class Program:
  group: str  # 'table1' or 'tc'
  name: str
  spec: str
  overrides: dict
  config: object
  cells: list  # [(column, row)] of the runs it stands for, in member order
  slots: list  # the member indices of each cell

  @property
  def key(self) -> str:
    return f"{self.group}/{self.name}"

  @property
  def steps(self) -> int:
    return int(self.config.num_train_steps)


def _cell(config) -> tuple[str, str]:
  if config.dataset.name == "addition":
    return "addition", paper_addition.row_name(config_lib.to_dict(config))
  return paper_table1.column(config.dataset.name), paper_table1.row_name(config_lib.to_dict(config))


def priority(program: Program) -> tuple:
  ranks = [PRIORITY.index(c) for c in program.cells if c in PRIORITY]
  if ranks:
    return (0, min(ranks))
  if program.group == "addition":
    return (3, 0 if program.cells[0][1] == "CNN" else 1)
  fused = len(program.cells) > 1
  st_cnn = any(row.startswith("ST-CNN") for _, row in program.cells)
  return (1 if fused else 2, 0 if st_cnn else 1)


def programs(overrides: list[str] | None = None) -> list[Program]:
  """Every program of the paper's Table 1 and TC, fused, in priority order."""
  out = []
  for group, spec in SPECS.items():
    base, sweep_runs = sweep.load_sweep(ROOT / spec)
    fixed = {}
    for text in overrides or []:
      if "=" not in text:
        raise CampaignError(f"--override must look like config.key=value; got {text!r}.")
      key, value = text.split("=", 1)
      key = key.removeprefix("config.")
      fixed[key] = sweep.parse_value(base, key, value)
    base = sweep.resolve(base, fixed)
    runs = sweep.plan(base, sweep_runs, [{}], {})
    names = sweep.short_names(list(dict.fromkeys(k for r in runs for k in r["overrides"])))
    for r in runs:
      r["name"] = sweep.run_name(r["overrides"], names)
    for r in sweep.fuse(base, runs):
      if "members" in r:
        name = sweep.run_name(r["common"], names) + f",population={r['config'].num_seeds}"
        cells = [_cell(m["config"]) for m in r["members"]]
        slots = r["slots"]
      else:
        name, cells, slots = r["name"], [_cell(r["config"])], [list(range(r["config"].num_seeds))]
      out.append(Program(group, name, spec, {**fixed, **r["overrides"]}, r["config"], cells, slots))
  return sorted(out, key=priority)


def is_done(program: Program, done: Path) -> bool:
  """Whether --done holds the program's results: its budget, of the same config (a run of another, an 8- against a
  9-parameter homography say, is not this program's result)."""
  run = done / program.group / program.name
  results = run / "results.json"
  if not results.exists() or json.loads(results.read_text()).get("num_train_steps") != program.steps:
    return False
  if not (run / "config.json").exists():
    return True  # results from before config.json was archived: their budget is all there is to compare
  stored = json.loads((run / "config.json").read_text())
  steps_per_epoch = SPLIT_SIZES["train"] // program.config.batch_size
  return not config_lib.resume_differences(stored, program.config, steps_per_epoch)[0]


def device_kind() -> str:
  """The accelerator the programs will run on ('NVIDIA H200', 'cpu', ...): rates are kept per device kind."""
  import jax

  device = jax.devices()[0]
  return device.device_kind if device.platform != "cpu" else "cpu"


def read_rates(done: Path) -> dict[str, dict[str, float]]:
  """{device kind: {program: steps/s}} measured by earlier windows."""
  path = done / "rates.json"
  return json.loads(path.read_text()) if path.exists() else {}


def estimate_s(program: Program, rates: dict[str, float], overhead_s: float) -> float | None:
  rate = rates.get(program.key)
  return program.steps / rate + overhead_s if rate else None


# ----------------------------------------------------------------------------------------------------------------------
# Running one program: to its end, or stopped at its first log line when its ETA says it cannot end in time.
# ----------------------------------------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"step (\d+)/(\d+)\s+loss \S+\s+steps/s (\S+)\s+ETA (\S+)")


def run_program(program: Program, workdir: Path, deadline: float, log_path: Path, overhead_s: float) -> dict:
  """Trains `program` in `workdir` unless it cannot finish by `deadline` (time.monotonic()). Returns {'status':
  'done' | 'stopped' | 'failed', 'rate': steps/s seen, 'seconds': wall time}."""
  command = sweep.command(program.spec, workdir, {}, {**program.overrides, "checkpoints_to_keep": 1})
  start = time.monotonic()
  rate = None
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
      for line in process.stdout:
        log.write(line)
        match = _LOG_LINE.search(line)
        if match and match.group(3) != "-":
          rate = float(match.group(3))
          left = (int(match.group(2)) - int(match.group(1))) / rate
          if time.monotonic() + left + overhead_s / 2 > deadline:
            process.kill()
            process.wait()
            log.write(f"[campaign] stopped: needs about {left:.0f} s more, {deadline - time.monotonic():.0f} s left\n")
            return {"status": "stopped", "rate": rate, "seconds": time.monotonic() - start}
        if time.monotonic() > deadline:
          process.kill()
          process.wait()
          log.write("[campaign] stopped at the deadline\n")
          return {"status": "stopped", "rate": rate, "seconds": time.monotonic() - start}
      process.wait()
    finally:
      if process.poll() is None:
        process.kill()
  ok = process.returncode == 0 and (workdir / "results.json").exists()
  if ok and rate is None:
    rate = json.loads((workdir / "results.json").read_text()).get("steps_per_sec")
  return {"status": "done" if ok else "failed", "rate": rate, "seconds": time.monotonic() - start}


def keep(workdir: Path, target: Path) -> None:
  """Copies what the table needs of a finished program (KEPT; no checkpoints) to `target`."""
  for name in KEPT:
    source = workdir / name
    if source.exists():
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(source, target / name)


def pack(runs: Path, archive: Path, extra: dict[str, str]) -> list[str]:
  """runs/<group>/<program>/... and the `extra` files (name: text) into one .tar.xz; figures are left out if the
  archive would exceed ARCHIVE_LIMIT. Returns the archive's member names."""
  for with_figures in (True, False):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
      for path in sorted(p for p in runs.rglob("*") if p.is_file()):
        if with_figures or path.suffix != ".png":
          tar.add(path, arcname=str(path.relative_to(runs)))
      for name, text in extra.items():
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mtime = len(data), int(time.time())
        tar.addfile(info, io.BytesIO(data))
    if buffer.tell() <= ARCHIVE_LIMIT:
      archive.write_bytes(buffer.getvalue())
      with tarfile.open(archive) as tar:
        return tar.getnames()
  raise RuntimeError(f"{archive}: over {ARCHIVE_LIMIT} bytes even without figures")


def campaign(
  budget_s: float, out: Path, done: Path, *, overrides=None, only=(), dry_run=False, overhead_s=90.0, printer=print
) -> dict:
  """Plans and runs one window (see the module docstring); returns the summary written to OUT/campaign.json."""
  deadline = time.monotonic() + budget_s
  plan = programs(overrides)
  if only:
    unknown = set(only) - {p.key for p in plan}
    if unknown:
      raise CampaignError(f"--program: no program {sorted(unknown)[0]!r}; --dry_run lists them.")
    plan = [p for p in plan if p.key in only]
  all_rates, device = read_rates(done), device_kind()
  rates = dict(all_rates.get(device, {}))
  started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
  summary = {"budget_s": budget_s, "device": device, "started": started, "overrides": overrides or [], "programs": []}
  printer(f"{len(plan)} programs ({sum(p.config.num_seeds for p in plan)} models) on {device}, budget {budget_s:.0f} s")
  for program in plan:
    estimate = estimate_s(program, rates, overhead_s)
    shown = f"~{estimate:.0f} s" if estimate else "rate unknown"
    entry = {"program": program.key, "cells": [list(c) for c in program.cells], "models": program.config.num_seeds}
    left = deadline - time.monotonic()
    if is_done(program, done):
      entry["status"] = "done before"
    elif dry_run:
      entry["status"] = f"would run ({shown})"
    elif estimate is not None and estimate > left:
      entry["status"] = f"not started ({shown}, {left:.0f} s left)"
    elif left < overhead_s:
      entry["status"] = f"not started ({left:.0f} s left)"
    else:
      workdir = out / "work" / program.group / program.name
      shutil.rmtree(workdir, ignore_errors=True)  # an earlier, unfinished attempt: its checkpoints are not wanted
      workdir.parent.mkdir(parents=True, exist_ok=True)
      log_path = out / "work" / f"{program.group}_{program.name}.log"
      result = run_program(program, workdir, deadline, log_path, overhead_s)
      entry.update(result)
      if result["rate"]:
        rates[program.key] = result["rate"]
      if result["status"] == "done":
        keep(workdir, out / "runs" / program.group / program.name)
    printer(f"  {program.key}: {entry['status']} [{', '.join(f'{c} {r}' for c, r in program.cells)}]")
    summary["programs"].append(entry)
  summary["rates"] = rates
  if not dry_run:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    all_rates[device] = rates
    extra = {
      "rates.json": json.dumps(all_rates, indent=2, sort_keys=True),
      f"campaigns/{started.replace(' ', '_').replace(':', '')}.json": json.dumps(summary, indent=2),
    }
    summary["archive"] = pack(out / "runs", out / ARCHIVE, extra)
    (out / "campaign.json").write_text(json.dumps(summary, indent=2))
    printer(f"{out / ARCHIVE}: {(out / ARCHIVE).stat().st_size} bytes, {len(summary['archive'])} files")
  return summary


def define_flags() -> None:
  """The command line's flags (defined when run as a script, so that importing this module defines none; --dry_run
  is sweep.py's, imported with it)."""
  flags.DEFINE_float("budget_s", None, "Wall-clock seconds this window may spend training.")
  flags.DEFINE_string("out", None, "Output directory: work/ (the runs), runs/ and paper_runs.tar.xz.")
  flags.DEFINE_string("done", str(ROOT / "results" / "paper_runs"), "The results committed so far.")
  flags.DEFINE_multi_string("override", [], "config.key=value for every program (tests only).")
  flags.DEFINE_multi_string("program", [], "Only this program (group/name, as --dry_run shows); repeatable.")
  flags.DEFINE_float(
    "overhead_s", 90.0, "Seconds a program needs beyond its steps (compilation, evaluations, test): our estimate."
  )


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1 or f.budget_s is None or not f.out:
    sys.stderr.write("error: --budget_s and --out are required (and no positional arguments)\n")
    sys.exit(USAGE_ERROR)
  try:
    campaign(
      f.budget_s,
      Path(f.out),
      Path(f.done),
      overrides=f.override,
      only=tuple(f.program),
      dry_run=f.dry_run,
      overhead_s=f.overhead_s,
    )
  except (CampaignError, sweep.SweepError, config_lib.ConfigError) as e:
    sys.stderr.write(f"error: {one_line(e)}\n")
    sys.exit(USAGE_ERROR)


if __name__ == "__main__":
  define_flags()
  app.run(main)
