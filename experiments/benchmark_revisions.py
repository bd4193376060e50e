r"""Before/after in one process: the affine warp of another git revision's sampler (stn_jax/spatial/sampling.py and
grids.py; stn_jax/sampling.py and grids.py in revisions before the layout moved) against the working tree's, the two
timed in alternating blocks, so that machine noise hits both alike.

  python experiments/benchmark_revisions.py --before=397a824 [--cases=256x40x40x1:40x40,2x64x64x64x4:64x64x64,...]
    [--repeats=60]

A case is NxHxWxC:HOxWO (an image, warped by a 2-D affine grid) or NxDxHxWxC:DOxHOxWO (a volume, by a 3-D one).

Prints, per case and pass (forward; backward to theta; backward to theta and image), the median ms of each, the ratio
after/before (below 1: the working tree is faster) and the largest relative difference of their results.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from stn_jax.spatial import grids, sampling
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")
_BEFORE = flags.DEFINE_string("before", None, "The git revision to compare with.", required=True)
_CASES = flags.DEFINE_list(
  "cases",
  ["256x40x40x1:40x40", "128x60x60x1:40x40", "32x128x128x3:128x128"],
  "NxHxWxC:HOxWO (image) or NxDxHxWxC:DOxHOxWO (volume) cases.",
)
_REPEATS = flags.DEFINE_integer("repeats", 60, "Timed calls per pass and revision.", lower_bound=5)
_BLOCK = 6  # calls per revision before switching (the first of each block is not timed)

ROOT = Path(__file__).resolve().parents[1]


def load_revision(revision: str, directory: Path) -> tuple:
  """The sampling and grids modules of `revision`, imported under other names beside today's."""
  out = []
  for name in ("sampling", "grids"):
    path = directory / f"{name}_{re.sub(r'[^A-Za-z0-9]', '_', revision)}.py"
    for folder in ("stn_jax/spatial", "stn_jax"):  # the layout since the move, then before it
      shown = subprocess.run(
        ["git", "show", f"{revision}:{folder}/{name}.py"], cwd=ROOT, capture_output=True, text=True
      )
      if shown.returncode == 0:
        break
    else:
      raise SystemExit(
        f"--before: {revision} has no stn_jax/spatial/{name}.py or stn_jax/{name}.py ({shown.stderr.strip()})"
      )
    source = shown.stdout
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"before_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out.append(module)
  return tuple(out)


def passes(sampling_module, grids_module, size) -> dict:
  def warp(image, theta):  # the public functions (their checks run once, when the jitted pass is traced)
    return sampling_module.grid_sample(image, grids_module.affine_grid(theta, size))

  def loss(image, theta, weight):
    return jnp.sum(warp(image, theta) * weight)

  return {
    "forward": jax.jit(lambda i, t, w: warp(i, t)),
    "bwd theta": jax.jit(lambda i, t, w: jax.grad(loss, argnums=1)(i, t, w)),
    "bwd theta+image": jax.jit(lambda i, t, w: jax.grad(loss, argnums=(0, 1))(i, t, w)),
  }


def timed(functions: list, args: tuple, repeats: int) -> list[float]:
  """Median ms of each function, called in alternating blocks (ABBA order)."""
  times = [[] for _ in functions]
  order = list(range(len(functions)))
  while len(times[0]) < repeats:
    for k in order:
      for call in range(_BLOCK):
        start = time.perf_counter()
        jax.block_until_ready(functions[k](*args))
        if call:
          times[k].append(time.perf_counter() - start)
    order.reverse()
  return [1e3 * float(np.median(t)) for t in times]


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  with tempfile.TemporaryDirectory() as tmp:
    before = load_revision(_BEFORE.value, Path(tmp))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; before = {_BEFORE.value}, after = the working tree")
  print("| case | pass | before ms | after ms | after/before | max rel. diff |\n|---|---|---:|---:|---:|---:|")
  for case in _CASES.value:
    n, spatial, c, out_size = benchmark_cases.parse_case(case)
    k = len(spatial)
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.random((n, *spatial, c), dtype=np.float32))
    theta = jnp.asarray(np.eye(k, k + 1, dtype=np.float32) + 0.1 * rng.standard_normal((n, k, k + 1), np.float32))
    weight = jnp.asarray(rng.standard_normal((n, *out_size, c), np.float32))
    old, new = passes(*before, out_size), passes(sampling, grids, out_size)
    for name in old:
      args = (image, theta, weight)
      a, b = jax.tree.leaves(old[name](*args)), jax.tree.leaves(new[name](*args))
      diff = max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)) for x, y in zip(a, b, strict=True))
      t_old, t_new = timed([old[name], new[name]], args, _REPEATS.value)
      print(f"| {case} | {name} | {t_old:.2f} | {t_new:.2f} | {t_new / t_old:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
