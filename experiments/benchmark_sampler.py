r"""Times stn_jax's jitted affine warp (`stn_jax.warp`) against torch's affine_grid + grid_sample, in one process,
interleaved.

For each case (batch x H x W x C -> H_out x W_out) and each pass it reports the median wall time of both and their
ratio (jax / torch; below 1 means stn_jax is faster):
  forward          the warp alone (torch under no_grad),
  bwd theta        forward + backward to theta only (an STN on raw images),
  bwd theta+image  forward + backward to theta and to the image (an STN on feature maps).
The backward passes differentiate sum(warp * w) for a fixed random w. Both libraries use all the cores they see. The
libraries alternate in blocks of --block calls, the first call of each block untimed. stn_jax runs each of
--implementations: `default` (grid_sample's implementation=None: the CPU kernel on CPU where it applies, which the
table names; for volumes the kernel runs the backward pass to the volume) and `xla` (XLA's gathers and scatters); in
another mode than bilinear the default only.

  python experiments/benchmark_sampler.py [--repeats=60] [--block=6] [--cases=256x40x40x1:40x40,...] [--json=FILE]
      [--implementations=default,xla]
"""

from __future__ import annotations

import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import stn_jax
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")
_CASES = flags.DEFINE_list(
  "cases",
  ["256x40x40x1:40x40", "128x60x60x1:40x40", "32x128x128x3:128x128", "8x32x32x32x1:32x32x32", "2x64x64x64x4:64x64x64"],
  "NxHxWxC:HOxWO (image) or NxDxHxWxC:DOxHOxWO (volume) cases.",
)
_REPEATS = flags.DEFINE_integer("repeats", 60, "Timed repetitions per pass and library (after warm-up).")
_MODE = flags.DEFINE_enum("mode", "bilinear", ["bilinear", "nearest", "bicubic"], "Sampling mode.")
_BLOCK = flags.DEFINE_integer("block", 6, "Calls per library before switching to the other (the first is not timed).")
_JSON = flags.DEFINE_string("json", None, "Also write the table as JSON to this file.")
_IMPLEMENTATIONS = flags.DEFINE_list(
  "implementations", ["default", "xla"], "stn_jax implementations to time: default (None), xla, cpu_kernel."
)


def _time_block(fn, calls: int) -> list[float]:
  """Times `calls` consecutive calls, dropping the first: right after a switch the other library's worker threads
  are still spinning (libgomp's spin for a while after each parallel region) and would be timed too."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times[1:]


def torch_device(torch) -> str:
  """torch on the device JAX uses: CUDA when JAX runs on a GPU and torch has CUDA, else the CPU."""
  return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def synchronize(torch, device: str) -> None:
  """Waits for torch's queued GPU work, as jax.block_until_ready does for JAX's."""
  if device == "cuda":
    torch.cuda.synchronize()


def _jax_passes(size, mode, implementation):
  def warp(image, theta):
    return stn_jax.warp(image, theta, size=size, mode=mode, implementation=implementation)

  def loss(image, theta, weight):
    return jnp.sum(warp(image, theta) * weight)

  return {
    "forward": jax.jit(warp),
    "bwd theta": jax.jit(lambda i, t, w: jax.grad(loss, argnums=1)(i, t, w)),
    "bwd theta+image": jax.jit(lambda i, t, w: jax.grad(loss, argnums=(0, 1))(i, t, w)),
  }


def main(argv):
  del argv
  import torch
  import torch.nn.functional as F  # noqa: N812

  print(benchmark_cases.machine(), flush=True)
  device = torch_device(torch)
  rows = []
  for case in _CASES.value:
    n, spatial, c, out_size = benchmark_cases.parse_case(case)
    k = len(spatial)
    rng = np.random.default_rng(0)
    image = rng.random((n, *spatial, c), dtype=np.float32)
    theta = np.tile(np.eye(k, k + 1, dtype=np.float32), (n, 1, 1)) + 0.1 * rng.standard_normal(
      (n, k, k + 1), np.float32
    )
    weight = rng.standard_normal((n, *out_size, c), np.float32)
    j_image, j_theta, j_weight = jnp.asarray(image), jnp.asarray(theta), jnp.asarray(weight)
    t_image = torch.from_numpy(np.moveaxis(image, -1, 1).copy()).to(device)
    t_theta = torch.from_numpy(theta).to(device)
    t_weight = torch.from_numpy(np.moveaxis(weight, -1, 1).copy()).to(device)
    torch_size = (n, c, *out_size)

    def torch_forward():
      with torch.no_grad():
        grid = F.affine_grid(t_theta, torch_size, align_corners=False)
        F.grid_sample(t_image, grid, mode=_MODE.value, align_corners=False)
      synchronize(torch, device)

    def torch_backward(with_image):
      image_ = t_image.detach().requires_grad_(with_image)
      theta_ = t_theta.detach().requires_grad_(True)
      grid = F.affine_grid(theta_, torch_size, align_corners=False)
      (F.grid_sample(image_, grid, mode=_MODE.value, align_corners=False) * t_weight).sum().backward()
      synchronize(torch, device)

    implementations = {}
    for name in _IMPLEMENTATIONS.value:
      implementation = None if name == "default" else name
      if _MODE.value != "bilinear":  # the kernel samples bilinearly (trilinearly): the default is xla
        if name != "default":
          continue
        resolved = "xla"
      else:
        resolved = stn_jax.spatial.sampling.resolve_implementation(
          "benchmark", implementation, _MODE.value, jnp.float32
        )
      label = f"default ({resolved})" if name == "default" else name
      implementations[label] = _jax_passes(out_size, _MODE.value, implementation)
    torch_passes = {
      "forward": torch_forward,
      "bwd theta": lambda: torch_backward(False),
      "bwd theta+image": lambda: torch_backward(True),
    }
    for name, torch_fn in torch_passes.items():
      args = (j_image, j_theta) if name == "forward" else (j_image, j_theta, j_weight)
      fns = {}
      for label, passes in implementations.items():

        def run_jax(fn=passes[name], args=args):
          jax.block_until_ready(fn(*args))

        fns[label] = run_jax
      fns["torch"] = torch_fn
      for fn in fns.values():  # compile and warm up each
        for _ in range(3):
          fn()
      times = {label: [] for label in fns}
      while len(times["torch"]) < _REPEATS.value:  # alternate blocks of calls: each implementation, then torch
        for label, fn in fns.items():
          times[label] += _time_block(fn, _BLOCK.value)
      torch_ms = 1e3 * np.median(times["torch"])
      for label in implementations:
        jax_ms = 1e3 * np.median(times[label])
        rows.append(
          dict(case=case, pass_=name, implementation=label, jax_ms=jax_ms, torch_ms=torch_ms, ratio=jax_ms / torch_ms)
        )

  print(
    f"stn_jax {stn_jax.__version__}, jax {jax.__version__} on {jax.devices()[0].platform} "
    f"({jax.devices()[0].device_kind}); torch {torch.__version__} on {device} "
    f"({torch.cuda.get_device_name() if device == 'cuda' else f'{torch.get_num_threads()} threads'}); "
    f"{platform.processor() or platform.machine()}; mode={_MODE.value}"
  )
  print(
    "| case (NxHxWxC:HoxWo, NxDxHxWxC:DoxHoxWo) | pass | stn_jax implementation | stn_jax ms | torch ms | jax/torch |"
  )
  print("|---|---|---|---:|---:|---:|")
  for r in rows:
    print(
      f"| {r['case']} | {r['pass_']} | {r['implementation']} | {r['jax_ms']:.2f} | {r['torch_ms']:.2f} | "
      f"{r['ratio']:.2f} |"
    )
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
