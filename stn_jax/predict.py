r"""Classifies images with a trained run's newest checkpoint.

  python -m stn_jax.predict --workdir=DIR --input=FILE.npz|DIR_OF_PNGS --output=FILE.npz [--overwrite] [--seed_index=K]

Input: an .npz with `images` (N, H, W) or (N, H, W, C), uint8 or float in [0, 1] (and optionally `labels`), or a
directory of PNG files (read as grayscale, in sorted order). Output .npz: `predictions` (N,), `probabilities` (N, 10),
`rectified` (the spatial transformer's outputs, N x H_out x W_out x C) and `theta` (the predicted transform
parameters, N x param shape; empty without a transformer). Prints the accuracy when the input has labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx

from stn_jax import data as data_lib
from stn_jax import train


class PredictError(ValueError):
  """Bad input or workdir, with a message that says what is wrong."""


def load_run(workdir: str | Path, seed_index: int = 0):
  """(config, graphdef, params, step) of the newest intact checkpoint in `workdir`; of model `seed_index` in a run
  of config.num_seeds > 1."""
  workdir = Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.exists():
    raise PredictError(f"{workdir} has no config.json: not a training workdir.")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  size = data_lib.VARIANTS[config.dataset.name].size
  num_seeds = config.get("num_seeds", 1)
  if not 0 <= seed_index < num_seeds:
    raise PredictError(f"seed_index must be in [0, {num_seeds}) for this run of {num_seeds} seed(s); got {seed_index}.")
  graphdef, params, tx = train.create_state(config, size)
  opt_state = train.init_optimizer_state(tx, params, num_seeds)
  state = train.checkpoint_state(params, opt_state, num_seeds=num_seeds)
  checkpoints = workdir / "checkpoints"
  if not checkpoints.exists():
    raise PredictError(f"{workdir} has no checkpoints yet: train first (python -m stn_jax.main ...).")
  with ocp.CheckpointManager(checkpoints.absolute()) as manager:
    restored = train._restore_newest(manager, train._to_abstract(state))
  if restored is None:
    raise PredictError(f"{checkpoints} holds no readable checkpoint.")
  step, state = restored
  return config, graphdef, train.seed_slice(state["params"], seed_index, num_seeds), step


def read_images(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
  """float32 (N, H, W, C) in [0, 1] and the labels (or None) from an .npz or a directory of PNGs."""
  path = Path(path)
  try:
    if path.is_dir():
      files = sorted(path.glob("*.png"))
      if not files:
        raise PredictError(f"{path} holds no .png files.")
      from PIL import Image

      images, labels = np.stack([np.asarray(Image.open(f).convert("L")) for f in files]), None
    else:
      with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
          raise PredictError(f"{path} has no 'images' array (it has {', '.join(z.files) or 'nothing'}).")
        images = z["images"]
        labels = z.get("labels", None)
  except PredictError:
    raise
  except Exception as e:
    raise PredictError(f"cannot read {path}: {type(e).__name__}: {e}") from None
  return prepare_images(images), labels


def prepare_images(images: np.ndarray) -> np.ndarray:
  """(N, H, W) or (N, H, W, C), uint8 or float in [0, 1] -> float32 (N, H, W, C) in [0, 1]."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise PredictError(f"images must be (N, H, W) or (N, H, W, C); got shape {images.shape}.")
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255.0
  elif np.issubdtype(images.dtype, np.floating):
    if images.min() < 0 or images.max() > 1:
      raise PredictError(f"float images must lie in [0, 1]; got [{images.min()}, {images.max()}].")
    images = images.astype(np.float32)
  else:
    raise PredictError(f"images must be uint8 or float in [0, 1]; got dtype {images.dtype}.")
  return images


def predict(config, graphdef, params, images: np.ndarray, *, batch_size: int = 500) -> dict:
  size = data_lib.VARIANTS[config.dataset.name].size
  if images.shape[1:3] != (size, size) or images.shape[3] != 1:
    raise PredictError(
      f"the model takes {size}x{size}x1 images ({config.dataset.name}); got {images.shape[1]}x{images.shape[2]}"
      f"x{images.shape[3]}."
    )
  model = nnx.merge(graphdef, params)

  @jax.jit
  def run(x):
    probabilities = jax.nn.softmax(model(x))
    if model.transformer is None:
      return probabilities, x, jnp.zeros((x.shape[0], 0))
    theta, _ = model.transformer.params_and_grid(x)
    return probabilities, model.transformer(x), theta

  outputs = [jax.device_get(run(jnp.asarray(images[i : i + batch_size]))) for i in range(0, len(images), batch_size)]
  probabilities, rectified, theta = (np.concatenate(parts) for parts in zip(*outputs, strict=True))
  return {
    "predictions": probabilities.argmax(-1).astype(np.int32),
    "probabilities": probabilities,
    "rectified": rectified,
    "theta": theta,
  }


def main(argv):
  del argv
  options = flags.FLAGS
  if Path(options.output).exists() and not options.overwrite:
    sys.exit(f"error: {options.output} exists; pass --overwrite to replace it")
  try:
    config, graphdef, params, step = load_run(options.workdir, options.seed_index)
    images, labels = read_images(options.input)
    result = predict(config, graphdef, params, images)
  except PredictError as e:
    sys.exit(f"error: {e}")
  np.savez(options.output, **result)
  print(f"wrote {options.output}: {len(images)} predictions from the checkpoint at step {step}")
  if labels is not None:
    print(f"accuracy {np.mean(result['predictions'] == labels):.4f} on {len(labels)} labelled images")


def run():
  # Flags are defined here, not at import, so the library functions above can be imported beside other entry points.
  flags.DEFINE_string("workdir", None, "Training workdir (its newest checkpoint is used).")
  flags.DEFINE_string("input", None, "An .npz with `images` (and optionally `labels`) or a directory of PNGs.")
  flags.DEFINE_string("output", None, "Output .npz.")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")
  flags.DEFINE_integer("seed_index", 0, "Which model of a run with config.num_seeds > 1.")
  flags.mark_flags_as_required(["workdir", "input", "output"])
  app.run(main)


if __name__ == "__main__":
  run()
