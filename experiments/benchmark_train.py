r"""Steps/s of stn_jax's jitted train step against a PyTorch implementation of the same network, in one process.

  python experiments/benchmark_train.py [--batch_size=128] [--steps=60] [--block=10]

The network is configs/default.py's: the seed's localisation net (flatten -> dense 20 tanh -> dropout 0.2 -> dense 6,
identity init) feeding affine_grid + grid_sample, then the seed's CNN (conv 16 3x3/2 -> conv 16 3x3/2 -> dense 1024
-> dense 10), cross-entropy, Adam (localisation learning rate x0.1), 40x40x1 inputs. stn_jax runs the training loop's
own `make_train_step`; torch runs zero_grad / forward / backward / step. The libraries alternate in blocks of --block
steps (the first step of each block untimed), medians reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from stn_jax import config_lib, optim, steps, train

_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_STEPS = flags.DEFINE_integer("steps", 60, "Timed steps per library.")
_BLOCK = flags.DEFINE_integer("block", 10, "Steps per library before switching (the first is not timed).")


def torch_model_and_optimizer(lr: float, device: str = "cpu"):
  import torch
  from torch import nn

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.loc = nn.Sequential(nn.Flatten(), nn.Linear(1600, 20), nn.Tanh(), nn.Dropout(0.2), nn.Linear(20, 6))
      nn.init.zeros_(self.loc[-1].weight)
      with torch.no_grad():
        self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
      self.features = nn.Sequential(
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU()
      )
      self.head = nn.Sequential(nn.Flatten(), nn.Linear(1600, 1024), nn.ReLU(), nn.Linear(1024, 10))

    def forward(self, x):
      theta = self.loc(x).view(-1, 2, 3)
      grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
      x = nn.functional.grid_sample(x, grid, align_corners=False)
      return self.head(self.features(x))

  net = Net().to(device)
  groups = [
    {"params": net.loc.parameters(), "lr": lr * 0.1},
    {"params": list(net.features.parameters()) + list(net.head.parameters()), "lr": lr},
  ]
  return net, torch.optim.Adam(groups, lr=lr)


def main(argv):
  del argv
  import torch

  config = config_lib.load(Path(__file__).resolve().parents[1] / "configs" / "default.py")
  config.batch_size = _BATCH.value
  config.optimizer.schedule = "constant"
  b = config.batch_size
  rng = np.random.default_rng(0)
  images = rng.random((b, 40, 40, 1), dtype=np.float32)
  labels = rng.integers(0, 10, b).astype(np.int32)

  graphdef, params = train.create_params(config, 40)
  tx = optim.create_optimizer(config, params, num_train_steps=10_000)  # a constant schedule: the total is unused
  state = {
    "params": params,
    "opt_state": tx.init(params),
    "accum": steps.zero_metric_sums(),
  }
  step_fn = steps.make_train_step(graphdef, tx, config.seed)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  counter = [0]

  def jax_step():
    state["params"], state["opt_state"], state["accum"] = step_fn(
      state["params"], state["opt_state"], state["accum"], batch, counter[0]
    )
    counter[0] += 1
    jax.block_until_ready(state["params"])

  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"  # JAX's device
  net, optimizer = torch_model_and_optimizer(config.learning_rate, device)
  net.train()
  t_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
  t_labels = torch.from_numpy(labels).long().to(device)

  def torch_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(t_images), t_labels)
    loss.backward()
    optimizer.step()
    if device == "cuda":  # wait for the queued GPU work, as jax.block_until_ready does
      torch.cuda.synchronize()

  for _ in range(3):
    jax_step()
    torch_step()
  times = {"stn_jax": [], "torch": []}
  while len(times["stn_jax"]) < _STEPS.value:
    for name, fn in (("stn_jax", jax_step), ("torch", torch_step)):
      block = []
      for _ in range(_BLOCK.value):
        start = time.perf_counter()
        fn()
        block.append(time.perf_counter() - start)
      times[name] += block[1:]
  jax_ms, torch_ms = (1e3 * float(np.median(times[k])) for k in ("stn_jax", "torch"))
  torch_what = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); torch "
    f"{torch.__version__} on {device} ({torch_what}); batch {b}, 40x40x1, affine ST-CNN (configs/default.py)"
  )
  print("| library | ms / step | steps/s |")
  print("|---|---:|---:|")
  print(f"| stn_jax | {jax_ms:.1f} | {1e3 / jax_ms:.1f} |")
  print(f"| torch | {torch_ms:.1f} | {1e3 / torch_ms:.1f} |")
  print(f"jax/torch time ratio: {jax_ms / torch_ms:.2f}")


if __name__ == "__main__":
  app.run(main)
