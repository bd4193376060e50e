"""Shared test helpers: random inputs that avoid the sampler's non-differentiable points, the torch reference, and
synthetic digits for training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stn_jax import data as data_lib
from stn_jax.training import config_lib


def torch_or_skip():
  return pytest.importorskip("torch", reason="torch (the reference) is not installed; `make test` installs it")


def random_image(rng: np.random.Generator, shape) -> np.ndarray:
  return rng.standard_normal(shape).astype(np.float32)


def random_grid(rng: np.random.Generator, batch, out_hw, in_hw, *, align_corners: bool, spread: float = 0.7):
  """A (*batch, Ho, Wo, 2) grid of normalised (x, y) whose pixel-index coordinates keep at least 0.05 px away from
  integers and half-integers (kinks of bilinear, rounding ties of nearest, reflection edges), reaching `spread` times
  the image size beyond each side."""
  h, w = in_hw
  shape = (*batch, *out_hw)
  coords = []
  for size in (w, h):
    whole = rng.integers(int(np.floor(-spread * size)), int(np.ceil((1 + spread) * size)), shape)
    frac = rng.uniform(0.05, 0.45, shape) + 0.5 * rng.integers(0, 2, shape)
    pixel = whole + frac
    coords.append(2 * pixel / (size - 1) - 1 if align_corners else (2 * pixel + 1) / size - 1)
  return np.stack(coords, axis=-1).astype(np.float32)


def nhwc_to_nchw(x):
  return np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, -3))


def torch_grid_sample(image, grid, cotangent, *, mode, padding_mode, align_corners):
  """Reference value and gradients (image, grid) of torch.nn.functional.grid_sample, in NHWC numpy."""
  torch = torch_or_skip()
  t_image = torch.tensor(nhwc_to_nchw(image), requires_grad=True)
  t_grid = torch.tensor(np.asarray(grid), requires_grad=True)
  out = torch.nn.functional.grid_sample(
    t_image, t_grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )
  out.backward(torch.tensor(nhwc_to_nchw(cotangent)))
  to_nhwc = lambda t: np.moveaxis(t.detach().numpy(), -3, -1)
  return to_nhwc(out), to_nhwc(t_image.grad), t_grid.grad.numpy()


def synthetic_digits(rng: np.random.Generator, n: int):
  """Synthetic 'digits' (uint8 (n, 28, 28), int32 labels): class k is a bar at a class-specific position, so the
  task is learnable. tests/fixtures' expected predictions were made on these: do not change them."""
  labels = rng.integers(0, 10, n).astype(np.int32)
  digits = np.zeros((n, 28, 28), np.uint8)
  for i, k in enumerate(labels):
    digits[i, 4 + 2 * k : 8 + 2 * k, 6:22] = 200 + rng.integers(0, 55)
  return digits, labels


def synthetic_datasets() -> dict:
  """{'train': 96, 'validation': 40, 'test': 40} synthetic digits as the R variant (32x32), for training tests."""
  rng = np.random.default_rng(0)
  out = {}
  for split, n in (("train", 96), ("validation", 40), ("test", 40)):
    digits, labels = synthetic_digits(rng, n)
    out[split] = data_lib.DistortedMnist("R", split, digits, labels, seed=0)
  return out


def tiny_config(**overrides):
  """configs/default.py shrunk for tests on `synthetic_datasets()`: R, batch 16, 2 epochs = 12 steps, evaluation and
  checkpoints every 4; `overrides` by dotted key ('model.classifier.cnn.hidden': (8,))."""
  config = config_lib.load(Path(__file__).resolve().parents[1] / "configs" / "default.py")
  config.dataset.name = "R"
  config.batch_size = 16
  config.num_epochs = 2  # 6 steps of 16 per epoch of the 96 synthetic train digits: 12 steps
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.log_every_steps = 2
  config.eval_batch_size = 16
  config.model.classifier.cnn.hidden = (32,)
  config.optimizer.warmup_steps = 2
  return set_fields(config, overrides)


def set_fields(config, overrides: dict):
  """`config` with each {dotted key: value} of `overrides` set ('model.classifier.cnn.hidden': (8,))."""
  for key, value in overrides.items():
    target = config
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config


def product_precisions(stablehlo: str) -> list[str]:
  """The precision of every dot_general and convolution of a lowered program ('DEFAULT' where none is given)."""
  import re

  out = []
  for line in stablehlo.splitlines():
    if "dot_general" in line or "convolution" in line:
      found = re.search(r"precision = \[(\w+),", line) or re.search(r"#stablehlo<precision (\w+)>", line)
      out.append(found.group(1) if found else "DEFAULT")
  return out


def products(stablehlo: str) -> list[dict]:
  """Every dot_general and convolution of a lowered program: {'op', 'precision', 'operands': [dtype, dtype],
  'result': dtype, 'shapes': [operand shape strings]}."""
  import re

  out = []
  for line in stablehlo.splitlines():
    op = "dot_general" if "stablehlo.dot_general" in line else "convolution" if "stablehlo.convolution" in line else ""
    if not op:
      continue
    signature = re.search(r":\s*\((tensor<[^)]*)\)\s*->\s*tensor<([^>]*)>\s*$", line)
    operands = re.findall(r"tensor<([^>]*)>", signature.group(1))
    precision = re.search(r"precision = \[(\w+),", line) or re.search(r"#stablehlo<precision (\w+)>", line)
    out.append(
      {
        "op": op,
        "precision": precision.group(1) if precision else "DEFAULT",
        "operands": [t.split("x")[-1] for t in operands],
        "shapes": ["x".join(t.split("x")[:-1]) for t in operands],
        "result": signature.group(2).split("x")[-1],
      }
    )
  return out


def experiment(name: str):
  """experiments/<name>.py as a module, loaded once per process (the scripts define absl flags, which may be
  defined only once), with experiments/ on sys.path as when the script runs."""
  import importlib.util
  import sys

  if name not in sys.modules:
    folder = Path(__file__).resolve().parents[1] / "experiments"
    if str(folder) not in sys.path:
      sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


def tensorboard_events(workdir: Path) -> tuple[dict, dict]:
  """({tag: [(step, value)]}, {image tag: [steps]}) as TensorBoard shows a run's event files: read in the order of
  their names, a restart marker (SessionLog.START at step s) dropping what earlier files had from step s on."""
  import struct

  from tensorboardX.proto import event_pb2

  scalars, images = {}, {}
  for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[i : i + 8])
      if i + 16 + length > len(data):  # a record cut by a kill
        break
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + length])
      i += 16 + length
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        scalars = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in scalars.items()}
        images = {tag: [s for s in steps if s < event.step] for tag, steps in images.items()}
      for value in event.summary.value:
        if value.HasField("image"):
          images.setdefault(value.tag, []).append(event.step)
        else:
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars, images


def workdir_files(workdir: Path) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `workdir`."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}
