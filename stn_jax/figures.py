"""Figures of a run: distorted inputs beside the transformer's outputs, sampling grids, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
  """(N, H, W) -> one (rows * (H + 1), columns * (W + 1)) mosaic with 1-px gaps."""
  n, h, w = images.shape
  rows = -(-n // columns)
  mosaic = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1), np.float32)
  for i in range(n):
    r, c = divmod(i, columns)
    mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i]
  return mosaic


def save_input_output_pair(inputs: np.ndarray, outputs: np.ndarray, path: str | Path, *, title: str = "") -> None:
  """The seed's Fig 4 / Fig 5 side by side: distorted inputs and the transformer's outputs for the same digits."""
  plt = pyplot()
  inputs, outputs = np.asarray(inputs)[..., 0], np.asarray(outputs)[..., 0]
  columns = int(np.ceil(np.sqrt(len(inputs))))
  fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
  for ax, images, name in zip(
    axes, (inputs, outputs), ("input (distorted)", "spatial transformer output"), strict=True
  ):
    ax.imshow(_tile(np.clip(images, 0, 1), columns), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name)
    ax.axis("off")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save_grid_overlay(inputs: np.ndarray, grids: np.ndarray, path: str | Path, *, count: int = 8, every: int = 4):
  """The sampling grid (normalised (x, y), align_corners=False) drawn over each input: where the output reads."""
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


def save_curves(metrics: list[dict], path: str | Path) -> None:
  """Loss and accuracy of train and validation against the step."""
  plt = pyplot()
  steps = [m["step"] for m in metrics]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
    for split in ("train", "val"):
      ax.plot(steps, [m[f"{split}_{key}"] for m in metrics], marker=".", label=split)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale("log")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
