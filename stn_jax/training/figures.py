"""Figures of a run: distorted inputs beside the transformer's outputs, sampling grids, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed).

  Returns:
    The matplotlib.pyplot module, its backend set to Agg.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def mosaic(images: np.ndarray, columns: int | None = None) -> np.ndarray:
  """Images tiled into one, with 1-px white gaps.

  Args:
    images: (N, H, W).
    columns: tiles per row (default: a square layout).

  Returns:
    (rows * (H + 1) - 1, columns * (W + 1) - 1).
  """
  images = np.asarray(images)
  columns = columns or int(np.ceil(np.sqrt(len(images))))
  n, h, w = images.shape
  rows = -(-n // columns)
  out = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1), np.float32)
  for i in range(n):
    r, c = divmod(i, columns)
    out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i]
  return out


def save_input_output_pair(inputs: np.ndarray, outputs: np.ndarray, path: str | Path, *, title: str = "") -> None:
  """The seed's Fig 4 / Fig 5 side by side: distorted inputs and the transformer's outputs for the same digits.

  Args:
    inputs: (N, H, W, 1) distorted images in [0, 1].
    outputs: the transformer's outputs of them, (N, Ho, Wo, 1).
    path: the .png to write.
    title: the figure's title.
  """
  plt = pyplot()
  inputs, outputs = np.asarray(inputs)[..., 0], np.asarray(outputs)[..., 0]
  columns = int(np.ceil(np.sqrt(len(inputs))))
  fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
  for ax, images, name in zip(
    axes, (inputs, outputs), ("input (distorted)", "spatial transformer output"), strict=True
  ):
    ax.imshow(mosaic(np.clip(images, 0, 1), columns), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name)
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save_grid_overlay(inputs: np.ndarray, grids: np.ndarray, path: str | Path, *, count: int = 8, every: int = 4):
  """The sampling grid drawn over each input: where the output reads.

  Args:
    inputs: (N, H, W, 1) images.
    grids: (N, Ho, Wo, 2) normalised (x, y) grids, align_corners=False.
    path: the .png to write.
    count: how many inputs to draw.
    every: draw every this many grid lines (and the last).
  """
  plt = pyplot()
  inputs, grids = np.asarray(inputs)[:count, ..., 0], np.asarray(grids)[:count]
  fig, axes = plt.subplots(1, len(inputs), figsize=(2.2 * len(inputs), 2.4), squeeze=False)
  for ax, image, grid in zip(axes[0], inputs, grids, strict=True):
    h, w = image.shape
    px = ((grid[..., 0] + 1) * w - 1) / 2
    py = ((grid[..., 1] + 1) * h - 1) / 2
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for i in [*list(range(0, grid.shape[0], every)), grid.shape[0] - 1]:
      ax.plot(px[i], py[i], color="tab:orange", lw=0.7)
    for j in [*list(range(0, grid.shape[1], every)), grid.shape[1] - 1]:
      ax.plot(px[:, j], py[:, j], color="tab:orange", lw=0.7)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def log_ticks(low: float, high: float, count: int = 4) -> list[float]:
  """Readable labels for a log axis at any range.

  1-2-5 steps per decade over wide ranges, every 1..9 within a decade, and evenly spaced 2-significant-digit values
  over a range too narrow for those (a short run's 50-87 %).

  Args:
    low: the axis' lower end (> 0).
    high: its upper end.
    count: the fewest labels (up to about 2 * count are given).

  Returns:
    The tick values.
  """
  decades = np.arange(np.floor(np.log10(low)), np.ceil(np.log10(high)) + 1)
  for subs in ((1.0,), (1.0, 2.0, 5.0), tuple(range(1, 10))):
    ticks = [float(f"{s * 10**d:.6g}") for d in decades for s in subs]
    ticks = [t for t in ticks if low <= t <= high]
    if len(ticks) >= count:
      return ticks
  spaced = np.geomspace(low, high, count + 2)[1:-1]
  return sorted({float(f"{t:.2g}") for t in spaced})


def save_curves(metrics: list[dict], path: str | Path, *, steps_per_epoch: int | None = None) -> None:
  """Loss and error % of train and validation against the step, on log axes with plain-number labels.

  Late in training the interesting differences are fractions of a percent.

  Args:
    metrics: metrics.jsonl's rows.
    path: the .png to write.
    steps_per_epoch: with it, the epoch on the top axis.
  """
  plt = pyplot()
  from matplotlib import ticker

  steps = [m["step"] for m in metrics]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, key, label in zip(axes, ("loss", "error"), ("cross-entropy loss", "error (%)"), strict=True):
    for split, name in (("train", "train (mean since the previous evaluation)"), ("val", "validation")):
      if key == "loss":
        values = [m[f"{split}_loss"] for m in metrics]
      else:
        values = [100 * (1 - m[f"{split}_accuracy"]) for m in metrics]
      ax.plot(steps, values, marker=".", label=name)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.FixedLocator(log_ticks(*ax.get_ylim())))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if steps_per_epoch:
      top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
      top.set_xlabel("epoch")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
