r"""Writes distorted-MNIST samples to an .npz (and optionally a labelled preview PNG).

  python -m stn_jax.data --dataset=seed40 --split=train --num=1000 --seed=0 --out=FILE.npz [--preview=FILE.png]

The .npz holds `images` uint8 (N, H, W) ((N, H, W, C) for a variant of C > 1 channels: addition's two digits),
`labels` int32 (N,) (addition: the sum of the two digits) and, for the co-localisation variants, `boxes` int32 (N, 4)
(x0, y0, x1, y1 in pixels of the digit's 28x28 frame): the first N examples of the split, or with --digit=D its first
N examples of digit D (each still the image of its index in the whole split). The preview shows an image's channels
side by side, and the boxes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

from stn_jax.data import distortions, mnist

_DATASET = flags.DEFINE_enum("dataset", "seed40", list(distortions.NAMES), "Distorted-MNIST variant.")
_SPLIT = flags.DEFINE_enum("split", "train", list(mnist.SPLITS), "Split of the seed's 50k / 10k / 10k MNIST split.")
_NUM = flags.DEFINE_integer("num", 1000, "Number of examples (the first N of the split).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the distortions.")
_DIGIT = flags.DEFINE_integer("digit", -1, "Only examples of this digit (0-9); -1: all.", lower_bound=-1, upper_bound=9)
_OUT = flags.DEFINE_string("out", None, "Output .npz file.")
_PREVIEW = flags.DEFINE_string("preview", None, "Optional PNG with a labelled grid of the first 64 samples.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, f"MNIST cache directory (default ${mnist.ENV_DATA_DIR} or ~/.cache).")
_MNIST_PATH = flags.DEFINE_string("mnist_path", None, "Directory of MNIST IDX files or an .npz, used if not cached.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out / --preview if they exist.")


def preview_figure(
  images: np.ndarray, labels: np.ndarray, path: str, *, title: str = "", columns: int = 8, boxes=None
) -> None:
  """Saves a grid of up to 64 images with their labels (an image's channels side by side, boxes drawn)."""
  from stn_jax.training.figures import channels_side_by_side, draw_box, pyplot

  plt = pyplot()
  n = min(len(images), 64)
  images = np.asarray(images[:n], np.float32) / 255.0
  images = channels_side_by_side(images if images.ndim == 4 else images[..., None])
  wide = images.shape[2] / images.shape[1]
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1 * wide, rows * 1.25 + 0.4), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i < n:
      ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
      if boxes is not None:
        draw_box(ax, boxes[i], "tab:orange")
      ax.set_title(str(int(labels[i])), fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # JAX's probing of absent backends
  if not _OUT.value and not _PREVIEW.value:
    sys.exit("error: give --out=FILE.npz and/or --preview=FILE.png")
  for target in (_OUT.value, _PREVIEW.value):
    if target and Path(target).exists() and not _OVERWRITE.value:
      sys.exit(f"error: {target} exists; pass --overwrite to replace it")
  data = mnist.load_mnist(data_dir=_DATA_DIR.value, path=_MNIST_PATH.value)
  digits, labels = data.split(_SPLIT.value)
  candidates = np.arange(len(digits)) if _DIGIT.value < 0 else np.flatnonzero(labels == _DIGIT.value)
  if _NUM.value > len(candidates):
    which = f"examples of digit {_DIGIT.value} in" if _DIGIT.value >= 0 else "examples of"
    sys.exit(f"error: --num={_NUM.value} exceeds the {len(candidates)} {which} the {_SPLIT.value} split")
  # The whole split goes in (TC draws its clutter from it); only the chosen examples come out.
  where = dict(seed=_SEED.value, split=_SPLIT.value, indices=candidates[: _NUM.value])
  images = distortions.distort(_DATASET.value, digits, **where)
  arrays = {"images": images, "labels": distortions.distort_labels(_DATASET.value, labels, **where)}
  if distortions.VARIANTS[_DATASET.value].boxes:
    arrays["boxes"] = distortions.distort_boxes(_DATASET.value, **where)
  if _OUT.value:
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    with open(_OUT.value, "wb") as f:  # a file handle: given a name without .npz, numpy would append it
      np.savez_compressed(f, **arrays)
    shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items())
    print(f"wrote {_OUT.value}: {shapes}")
  if _PREVIEW.value:
    title = f"{_DATASET.value} / {_SPLIT.value}, seed {_SEED.value} (MNIST, CC BY-SA 3.0)"
    preview_figure(images, arrays["labels"], _PREVIEW.value, title=title, boxes=arrays.get("boxes"))
    print(f"wrote {_PREVIEW.value}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
