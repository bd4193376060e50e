"""One writer for a run's metrics: metrics.jsonl (the evaluation rows), TensorBoard (scalars and images) and the log.

Only process 0 writes (`enabled=False` elsewhere); a run truncates metrics.jsonl and TensorBoard to the step it
starts from (its checkpoint's, or 0), so every row is written once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
  """The rows of a metrics.jsonl up to `up_to_step` (a line cut by a kill is skipped)."""
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if up_to_step is None or row["step"] <= up_to_step:
      rows.append(row)
  return rows


class MetricWriter:
  """`write_scalars(step, {...})` to TensorBoard (and, for evaluation rows, to metrics.jsonl); `write_images`.

  Lists (one value per seed of a population) become one TensorBoard curve per seed: `name/k`.
  """

  def __init__(self, workdir: Path, *, start_step: int = 0, enabled: bool = True):
    self.path = workdir / "metrics.jsonl"
    self.enabled = enabled
    self.history = read_metrics(self.path, start_step)
    self._tensorboard = None
    if enabled:
      from tensorboardX import SummaryWriter

      from stn_jax.checkpoints import atomic_write

      atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
      self._tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step)

  def write_scalars(self, step: int, scalars: dict, *, jsonl: bool = False, tensorboard_skip=()) -> None:
    """TensorBoard scalars at `step` (but those named in `tensorboard_skip`); with `jsonl`, also one row
    {'step': step, **scalars} of metrics.jsonl."""
    if jsonl:
      self.history.append({"step": step, **scalars})
    if not self.enabled:
      return
    if jsonl:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **scalars}) + "\n")
    for key, value in scalars.items():
      if key in tensorboard_skip:
        continue
      if isinstance(value, list):
        for k, v in enumerate(value):
          self._tensorboard.add_scalar(f"{key}/{k}", v, step)
      elif value is not None:
        self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """(H, W) or (H, W, C) images in [0, 1] to TensorBoard."""
    if not self.enabled:
      return
    for key, image in images.items():
      image = np.clip(np.asarray(image, np.float32), 0, 1)
      self._tensorboard.add_image(key, image if image.ndim == 3 else image[..., None], step, dataformats="HWC")
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
