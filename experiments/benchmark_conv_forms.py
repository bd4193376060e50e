r"""Times ways of writing one convolution layer on the device JAX uses: the forms `model.*.cnn.conv` could take.

  patches  `stn_jax.models.layers.extract_patches` (kh * kw * C features per output pixel) and one matrix product:
           what conv='patches' runs;
  rows     patches of one kernel row (kw * C features) and kh matrix products summed over shifted rows: a patch
           matrix kh times smaller, kh times more products;
  xla      `lax.conv_general_dilated`: what conv='xla' runs;
  kernel   `stn_jax.spatial.cpu_kernels.conv`, the direct-convolution CPU kernel: what conv='cpu_kernel' runs (and
           'auto' on one CPU device).

and each 2x2 max-pooling of the paper's CNN (after its ReLU) as `nnx.max_pool` (XLA's reduce-window and, backward,
select-and-scatter) and as `stn_jax.spatial.cpu_kernels.max_pool`.

For each layer of the paper's networks it reports the median ms of the forward pass and of forward + backward (to the
kernel, and to the input where a layer below needs it) and the largest difference from `patches`.

  python experiments/benchmark_conv_forms.py [--repeats=15]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from stn_jax.models.layers import extract_patches
from stn_jax.spatial import cpu_kernels
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Timed calls per form and pass.", lower_bound=3)

# (name, input (N, H, W, C), kernel (kh, kw, C_in, C_out), whether the input's gradient is needed); 'VALID', stride 1
LAYERS = (
  ("paper CNN conv 2 (7x7, 64 -> 64)", (256, 12, 12, 64), (7, 7, 64, 64), True),
  ("paper CNN baseline conv 2 (7x7, 64 -> 68)", (256, 12, 12, 64), (7, 7, 64, 68), True),
  ("paper CNN conv 1 (9x9, 1 -> 64)", (256, 32, 32, 1), (9, 9, 1, 64), False),
  ("paper ST-CNN localisation conv 1 (5x5, 1 -> 20)", (256, 16, 16, 1), (5, 5, 1, 20), False),
)


def patches_conv(x, k):
  kh, kw, _, c_out = k.shape
  return jnp.einsum("nhwp,pf->nhwf", extract_patches(x, (kh, kw), (1, 1), "VALID"), k.reshape(-1, c_out))


def rows_conv(x, k):
  kh, kw, _, c_out = k.shape
  out_h = x.shape[1] - kh + 1
  rows = extract_patches(x, (1, kw), (1, 1), "VALID")  # (N, H, W', kw * C)
  return sum(jnp.einsum("nhwp,pf->nhwf", rows[:, i : i + out_h], k[i].reshape(-1, c_out)) for i in range(kh))


def xla_conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def kernel_conv(x, k):
  return cpu_kernels.conv(x[None], k[None])[0]


FORMS = {"patches": patches_conv, "rows": rows_conv, "xla": xla_conv, "kernel": kernel_conv}
POOLS = (("paper CNN pool 1", (256, 24, 24, 64)), ("paper CNN pool 2", (256, 6, 6, 68)))
POOL_FORMS = {"nnx.max_pool": lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2)), "kernel": cpu_kernels.max_pool}


def median_ms(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print("| layer | form | forward ms | forward + backward ms | max abs diff from patches |")
  print("|---|---|---:|---:|---:|")
  rng = np.random.default_rng(0)
  for name, x_shape, k_shape, input_grad in LAYERS:
    x = jnp.asarray(rng.standard_normal(x_shape, dtype=np.float32))
    k = jnp.asarray(0.05 * rng.standard_normal(k_shape, dtype=np.float32))
    reference = jax.jit(patches_conv)(x, k)
    for form, fn in FORMS.items():
      grad = jax.jit(jax.grad(lambda x, k, fn=fn: jnp.sum(fn(x, k) ** 2), argnums=(0, 1) if input_grad else 1))
      diff = float(jnp.max(jnp.abs(jax.jit(fn)(x, k) - reference)))
      forward = median_ms(jax.jit(fn), (x, k), _REPEATS.value)
      both = median_ms(grad, (x, k), _REPEATS.value)
      print(f"| {name} | {form} | {forward:.1f} | {both:.1f} | {diff:.1e} |", flush=True)
  for name, shape in POOLS:
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    reference = POOL_FORMS["nnx.max_pool"](x)
    for form, fn in POOL_FORMS.items():
      grad = jax.jit(jax.grad(lambda x, fn=fn: jnp.sum(fn(jax.nn.relu(x)) ** 2)))
      diff = float(jnp.max(jnp.abs(jax.jit(fn)(x) - reference)))
      forward = median_ms(jax.jit(fn), (x,), _REPEATS.value)
      both = median_ms(grad, (x,), _REPEATS.value)
      print(f"| {name} {shape} | {form} | {forward:.1f} | {both:.1f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
  app.run(main)
