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


def channels_side_by_side(images: np.ndarray) -> np.ndarray:
  """Each image's channels next to each other, split by a 1-px grey line.

  Args:
    images: (N, H, W, C).

  Returns:
    (N, H, C * (W + 1) - 1): for C = 1, the images themselves.
  """
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  out = np.full((n, h, c * (w + 1) - 1), 0.5, np.float32)
  for k in range(c):
    out[:, :, k * (w + 1) : k * (w + 1) + w] = images[..., k]
  return out


def save_input_output_pair(
  inputs: np.ndarray, outputs: np.ndarray, path: str | Path, *, title: str = "", transformers: int = 1
) -> None:
  """The seed's Fig 4 / Fig 5 side by side: distorted inputs and the transformer's outputs for the same digits.

  Images of several channels show them next to each other (addition: the two digits); with T transformers in
  parallel the outputs show transformer 1's channels, then transformer 2's, ... (the paper's Table 4 pictures).

  Args:
    inputs: (N, H, W, C) distorted images in [0, 1].
    outputs: the transformers' outputs of them, (N, Ho, Wo, T * C).
    path: the .png to write.
    title: the figure's title.
    transformers: T.
  """
  plt = pyplot()
  inputs, outputs = channels_side_by_side(inputs), channels_side_by_side(outputs)
  count = 64 if inputs.shape[2] == inputs.shape[1] else 16  # several channels: fewer, larger tiles
  inputs, outputs = inputs[:count], outputs[:count]
  names = ("input (distorted)", "spatial transformer output")
  if outputs.shape[2] != outputs.shape[1]:
    names = ("input channels (distorted)", f"outputs: {transformers} transformer(s) x their channels")
  fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
  for ax, images, name in zip(axes, (inputs, outputs), names, strict=True):
    columns = int(np.ceil(np.sqrt(len(images) * images.shape[1] / images.shape[2])))  # a square mosaic of wide tiles
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
    inputs: (N, H, W, C) images (several channels: drawn as their pixelwise maximum).
    grids: (N, Ho, Wo, 2) normalised (x, y) grids, align_corners=False; (N, T, Ho, Wo, 2) for T transformers in
      parallel, each drawn in its own colour.
    path: the .png to write.
    count: how many inputs to draw.
    every: draw every this many grid lines (and the last).
  """
  plt = pyplot()
  inputs, grids = np.asarray(inputs)[:count].max(axis=-1), np.asarray(grids)[:count]
  if grids.ndim == 4:
    grids = grids[:, None]
  colours = ("tab:orange", "tab:cyan", "tab:pink", "tab:olive")
  fig, axes = plt.subplots(1, len(inputs), figsize=(2.2 * len(inputs), 2.4), squeeze=False)
  for ax, image, members in zip(axes[0], inputs, grids, strict=True):
    h, w = image.shape
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    for t, grid in enumerate(members):
      px = ((grid[..., 0] + 1) * w - 1) / 2
      py = ((grid[..., 1] + 1) * h - 1) / 2
      colour = colours[t % len(colours)]
      for i in [*list(range(0, grid.shape[0], every)), grid.shape[0] - 1]:
        ax.plot(px[i], py[i], color=colour, lw=0.7)
      for j in [*list(range(0, grid.shape[1], every)), grid.shape[1] - 1]:
        ax.plot(px[:, j], py[:, j], color=colour, lw=0.7)
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


def save_boxes(images: np.ndarray, truth: np.ndarray, history: list, path: str | Path, *, title: str = "") -> None:
  """Co-localisation over training: each row an evaluation step, each column an image with the digit's box (green)
  and the crop's box at that step (orange).

  Args:
    images: (N, S, S, 1) images.
    truth: (N, 4) the digits' boxes, x0, y0, x1, y1 in pixels.
    history: [(step, (N, 4) predicted boxes)], in order.
    path: the .png to write.
    title: the figure's title.
  """
  plt = pyplot()
  images = np.asarray(images)[..., 0]
  rows, columns = len(history), len(images)
  fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.4 * rows + 0.4), squeeze=False)
  for r, (step, boxes) in enumerate(history):
    for c, ax in enumerate(axes[r]):
      ax.imshow(images[c], cmap="gray", vmin=0, vmax=1)
      draw_box(ax, truth[c], "tab:green")
      draw_box(ax, boxes[c], "tab:orange")
      ax.set_xlim(-0.5, images.shape[2] - 0.5)
      ax.set_ylim(images.shape[1] - 0.5, -0.5)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(f"step {step}", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def draw_box(ax, box, colour: str) -> None:
  """A pixel box's outline on an image's axes.

  Args:
    ax: the matplotlib axes showing the image (pixel centres at integers).
    box: x0, y0, x1, y1 in pixels (x1, y1 exclusive).
    colour: the outline's colour.
  """
  from matplotlib.patches import Rectangle

  x0, y0, x1, y1 = box
  ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, lw=1))
