r"""Steps/s of stn_jax's jitted train step against PyTorch running the same network, in one process.

  python experiments/benchmark_train.py [--models=default,paper_st_cnn,paper_cnn] [--convs=auto] [--steps=20]

Models:
  default       configs/default.py (batch 128, 40x40x1): the seed's localisation net (dense 20 tanh, dropout 0.2)
                feeding affine_grid + grid_sample, then the seed's CNN (conv 16 3x3/2 -> conv 16 3x3/2 -> dense 1024
                -> dense 10); Adam, the localisation net's rate x0.1.
  paper_st_cnn  configs/paper_table1.py:paper's R ST-CNN-Aff (batch 256, 32x32x1): a CNN localisation net (2x max-pool
                -> conv 20 5x5 -> pool -> conv 20 5x5 -> dense 20 -> 6) and the paper's CNN (conv 64 9x9 -> pool ->
                conv 64 7x7 -> pool -> dense 10); SGD with momentum 0.9.
  paper_cnn     the paper's R CNN baseline (the same CNN, widened to the ST-CNN's parameter count); SGD.

The torch network is built from the stn_jax model itself (its layers' shapes, strides, paddings and poolings), so
the two have the same layers (torch pads a SAME convolution symmetrically); torch runs zero_grad / forward / backward /
step. For each --convs setting (auto, xla, patches: `model.*.cnn.conv`; auto is what a run records on this backend)
stn_jax's step is timed, alternating with torch in blocks of --block steps, the first of each block untimed;
medians. Ratio = stn_jax's time / torch's (below 1: stn_jax is faster). The header names the CPU, its vector
extensions and the versions.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from stn_jax import models
from stn_jax.training import config_lib, optim, steps, train

benchmark_cases = config_lib.import_sibling(__file__, "benchmark_cases")
ROOT = Path(__file__).resolve().parents[1]

_MODELS = flags.DEFINE_list("models", ["default", "paper_st_cnn", "paper_cnn"], "Which networks.")
_CONVS = flags.DEFINE_list("convs", ["auto"], "stn_jax convolution settings to time: auto, xla, patches.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "stn_jax's config.compute_dtype.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per library and setting.")
_BLOCK = flags.DEFINE_integer("block", 5, "Steps per library before switching (the first is not timed).")


def model_config(name: str):
  """(config, input side) of a benchmark model."""
  if name == "default":
    config = config_lib.load(ROOT / "configs" / "default.py")
    config.optimizer.schedule = "constant"
  else:
    config = config_lib.load(f"{ROOT / 'configs' / 'paper_table1.py'}:paper")
    config.num_seeds, config.dataset.name = 1, "R"
    config.model.classifier.kind = config.model.localization.kind = "cnn"
    if name == "paper_st_cnn":
      config.model.transform = "affine"
    elif name == "paper_cnn":
      config.model.transform, config.model.match_params_of = "none", "affine"
    else:
      raise ValueError(f"--models: {name!r} is not one of default, paper_st_cnn, paper_cnn.")
  return config, config_lib.input_shape(config)[0]


def torch_network(model, torch, device: str):
  """A torch nn.Module computing what the stn_jax STNClassifier `model` computes (its initialisation aside)."""
  from torch import nn

  def conv_layers(convs, pools, in_channels):
    layers = []
    for conv, pooled in zip(convs, pools, strict=True):
      kh, kw, _, out = conv.kernel[...].shape
      stride = conv.strides if isinstance(conv.strides, int) else conv.strides[0]
      pad = 0 if conv.padding == "VALID" else kh // 2
      layers += [nn.Conv2d(in_channels, out, (kh, kw), stride=stride, padding=pad), nn.ReLU()]
      layers += [nn.MaxPool2d(2)] if pooled else []
      in_channels = out
    return layers

  def dense_layers(dense, activation):
    layers = []
    for layer in dense:
      layers += [nn.Linear(*layer.kernel[...].shape), activation()]
    return layers

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.loc = None
      t = model.transformer
      if t is not None:
        loc = t.localization
        if isinstance(loc, models.CNNLocalization):
          parts = [nn.MaxPool2d(loc.downsample)] if loc.downsample > 1 else []
          parts += [*conv_layers(loc.convs, loc.pools, 1), nn.Flatten(), *dense_layers(loc.dense, nn.ReLU)]
        else:
          act = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}[loc.activation]
          parts = [nn.Flatten(), *dense_layers(loc.dense, act)]
        parts += [nn.Dropout(loc.dropout.rate), nn.Linear(*loc.out.kernel[...].shape)]
        self.loc = nn.Sequential(*parts)
        nn.init.zeros_(self.loc[-1].weight)
        with torch.no_grad():
          self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
      c = model.classifier
      self.cls = nn.Sequential(
        *conv_layers(c.convs, c.pools, 1),
        nn.Flatten(),
        *dense_layers(c.dense, nn.ReLU),
        nn.Linear(*c.head.kernel[...].shape),
      )

    def forward(self, x):
      if self.loc is not None:
        theta = self.loc(x).view(-1, 2, 3)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        x = nn.functional.grid_sample(x, grid, align_corners=False)
      return self.cls(x)

  return Net().to(device)


def torch_optimizer(config, net, torch):
  o, lr = config.optimizer, config.learning_rate
  loc = list(net.loc.parameters()) if net.loc is not None else []
  rest = list(net.cls.parameters())
  groups = [{"params": rest, "lr": lr}] + ([{"params": loc, "lr": lr * o.localization_lr_multiplier}] if loc else [])
  if o.name == "adam":
    return torch.optim.Adam(groups, lr=lr)
  return torch.optim.SGD(groups, lr=lr, momentum=o.momentum)


def time_alternating(fns: dict, steps_wanted: int, block: int) -> dict[str, float]:
  """Median ms per call of each function, the functions alternating in blocks (the first call of each untimed)."""
  for fn in fns.values():
    fn()
    fn()
  times = {name: [] for name in fns}
  while min(len(t) for t in times.values()) < steps_wanted:
    for name, fn in fns.items():
      block_times = []
      for _ in range(block):
        start = time.perf_counter()
        fn()
        block_times.append(time.perf_counter() - start)
      times[name] += block_times[1:]
  return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def main(argv):
  del argv
  import torch

  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  torch_what = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
  jax_device = jax.devices()[0]
  print(
    f"{benchmark_cases.machine()}\njax {jax.__version__} on {jax_device.platform} ({jax_device.device_kind}); torch "
    f"{torch.__version__} on {device} ({torch_what}); compute_dtype {_DTYPE.value}; "
    f"{time.strftime('%Y-%m-%d', time.gmtime())}"
  )
  print("| model | batch | conv | stn_jax ms/step | torch ms/step | ratio |")
  print("|---|---:|---|---:|---:|---:|")
  rng = np.random.default_rng(0)
  for name in _MODELS.value:
    base, size = model_config(name)
    b = base.batch_size
    images = rng.random((b, size, size, 1), dtype=np.float32)
    labels = rng.integers(0, 10, b).astype(np.int32)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    fns = {}
    for conv in _CONVS.value:
      config = config_lib.from_dict(config_lib.to_dict(base))
      with config.unlocked():
        config.model.classifier.cnn.conv = config.model.localization.cnn.conv = conv
        config.compute_dtype = _DTYPE.value
      config = config_lib.resolve_auto(config)
      resolved = config.model.classifier.cnn.conv
      graphdef, params = train.create_params(config)
      tx = optim.create_optimizer(config, params, num_train_steps=1_000_000)
      state = [params, tx.init(params), steps.zero_metric_sums()]
      step_fn = steps.make_train_step(graphdef, tx, config.seed)
      counter = [0]

      def jax_step(state=state, step_fn=step_fn, counter=counter):
        state[:] = step_fn(*state, batch, counter[0])
        counter[0] += 1
        jax.block_until_ready(state[0])

      fns[f"{conv} ({resolved})" if conv == "auto" else conv] = jax_step
    model = nnx.merge(*train.create_params(base))
    net = torch_network(model, torch, device)
    optimizer = torch_optimizer(base, net, torch)
    net.train()
    t_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    t_labels = torch.from_numpy(labels).long().to(device)

    def torch_step(net=net, optimizer=optimizer, t_images=t_images, t_labels=t_labels):
      optimizer.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(net(t_images), t_labels).backward()
      optimizer.step()
      if device == "cuda":
        torch.cuda.synchronize()

    fns["torch"] = torch_step
    ms = time_alternating(fns, _STEPS.value, _BLOCK.value)
    for conv, value in ms.items():
      if conv != "torch":
        print(f"| {name} | {b} | {conv} | {value:.1f} | {ms['torch']:.1f} | {value / ms['torch']:.2f} |")


if __name__ == "__main__":
  app.run(main)
