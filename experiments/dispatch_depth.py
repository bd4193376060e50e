r"""How many queued calls of a multi-device jitted step XLA:CPU survives: the cause of the trainer's old deadlock.

  python experiments/dispatch_depth.py --devices=2 --depths=0,30,40 [--calls=3000]

For each depth (0 = unbounded, as the trainer dispatched before utils.DispatchWindow) a fresh process forces
--devices CPU devices, and dispatches --calls calls of a small data-parallel step with one collective (an all-gather
the partitioner inserts for a gather), waiting for the oldest once `depth` are pending. It prints, per depth,
whether the process completed or aborted (XLA's rendezvous termination: SIGABRT, exit -6 here, 134 from a shell)
and its time.
"""

from __future__ import annotations

import subprocess
import sys
import time

from absl import app, flags

_DEVICES = flags.DEFINE_integer("devices", 2, "Forced CPU devices.")
_DEPTHS = flags.DEFINE_list("depths", ["0", "30", "40"], "Calls in flight (0: unbounded).")
_CALLS = flags.DEFINE_integer("calls", 3000, "Calls per process.")

WORKER = r"""
import collections, os, sys
n, depth, calls = (int(a) for a in sys.argv[1:4])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
import jax, jax.numpy as jnp, numpy as np
mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
named = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
x = jax.device_put(np.random.rand(64 * n, 256).astype(np.float32), named("data"))
w = jax.device_put(np.random.rand(256, 256).astype(np.float32) * 0.01, named())

def step(w, x):
  index = (jnp.abs(x[:, :8] * 100).astype(jnp.int32) % x.shape[0]).reshape(-1)
  w = w - 1e-3 * (x.T @ jnp.tanh(x @ w)) - 1e-6 * jnp.take(x.reshape(-1), index).sum()
  return w, w[0, 0]  # the second output is not donated: a token to wait on

step = jax.jit(step, donate_argnums=0)
pending = collections.deque()
for _ in range(calls):
  w, token = step(w, x)
  pending.append(token)
  while depth and len(pending) > depth:
    pending.popleft().block_until_ready()
w.block_until_ready()
"""


def main(argv):
  del argv
  print(f"{_DEVICES.value} forced CPU devices, {_CALLS.value} calls per process")
  print("| calls in flight | outcome | seconds |\n|---:|---|---:|")
  for depth in _DEPTHS.value:
    start = time.time()
    args = [sys.executable, "-c", WORKER, str(_DEVICES.value), depth, str(_CALLS.value)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    outcome = "completed" if result.returncode == 0 else f"aborted (exit {result.returncode})"
    print(f"| {depth if depth != '0' else 'unbounded'} | {outcome} | {time.time() - start:.0f} |")


if __name__ == "__main__":
  app.run(main)
