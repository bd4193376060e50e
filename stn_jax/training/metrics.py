"""One writer for a run's metrics: metrics.jsonl (the evaluation rows), TensorBoard (scalars and images) and the log.

Only process 0 writes (`enabled=False` elsewhere). A run starts from its checkpoint's step S (or 0): it keeps the rows
of metrics.jsonl up to S and opens a new TensorBoard event file that begins with a restart marker at S + 1 (a
`SessionLog.START`, on which TensorBoard drops the earlier files' events from that step on), so after a kill and a
resume the curves equal an uninterrupted run's. Every write reaches the file (flushed and fsynced) before the call
returns, and the loop logs and evaluates before it checkpoints, so what a checkpoint's steps logged is on disk when
the checkpoint is. A writer made with `deferred=True` (a command that changes a workdir's config) keeps everything in
memory, files and figures too, until `commit()` (the command's first checkpoint): a command killed before then leaves
the workdir as it found it.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import numpy as np

from stn_jax.training import utils

log = logging.getLogger(__name__)


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
  """The rows of a metrics.jsonl (a line cut by a kill is skipped).

  Args:
    path: the metrics.jsonl.
    up_to_step: keep only rows of steps up to this one (None: all).

  Returns:
    The rows, as dicts.
  """
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


class EventFile:
  """A TensorBoard event file written synchronously: `write(event)` is on disk when it returns.

  (tensorboardX's SummaryWriter queues events for a background thread that its `flush()` does not wait for, so a kill
  loses what was logged just before it.)

  Args:
    directory: the tensorboard/ directory the file goes in.
    restart_step: begin the file with a restart marker at this step (a resumed run).
  """

  def __init__(self, directory: Path, *, restart_step: int | None = None):
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import RecordWriter

    self._event_pb2 = event_pb2
    directory.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
    path, k = directory / name, 0
    while path.exists():  # two files in one second: TensorBoard reads them in the order of their names
      k += 1
      path = directory / f"{name}.{k:03d}"
    self.path = path
    self._records = RecordWriter(str(path))
    self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    if restart_step is not None:
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      self.write(event_pb2.Event(wall_time=time.time(), step=restart_step, session_log=start))

  def write(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def write_summary(self, step: int, summary) -> None:
    self.write(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def close(self) -> None:
    self._records.close()


class MetricWriter:
  """One writer for a run's metrics.jsonl and TensorBoard events.

  `write_scalars(step, {...})` to TensorBoard (and, for evaluation rows, to metrics.jsonl); `write_images`; `run` for
  any other file of the run (figures), so that a deferred writer holds it back with the rest. Lists (one value per
  member of a population) become one TensorBoard curve per member: `name/k`.

  Args:
    workdir: the run's directory.
    start_step: the step the run starts from (its checkpoint's): rows after it in metrics.jsonl are dropped.
    enabled: write anything at all (only process 0 writes).
    deferred: hold everything back until `commit()` (a command that changes a workdir's config writes nothing
      before its first checkpoint).
  """

  def __init__(self, workdir: Path, *, start_step: int = 0, enabled: bool = True, deferred: bool = False):
    self.path = workdir / "metrics.jsonl"
    self.enabled = enabled
    self.history = read_metrics(self.path, start_step)
    self._tensorboard_dir = workdir / "tensorboard"
    self._events = None
    self._pending = [] if deferred else None
    if enabled:
      self.run(self._open, start_step, list(self.history))

  @property
  def deferred(self) -> bool:
    """Whether writes are still held back (until `commit`)."""
    return self._pending is not None

  def _open(self, start_step: int, kept: list[dict]) -> None:
    utils.atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    self._events = EventFile(self._tensorboard_dir, restart_step=start_step + 1)

  def run(self, fn, *args, **kwargs) -> None:
    """Calls `fn(*args, **kwargs)` now, or at `commit()` while the writer is deferred (nothing when disabled)."""
    if not self.enabled:
      return
    if self._pending is not None:
      self._pending.append((fn, args, kwargs))
    else:
      fn(*args, **kwargs)

  def commit(self) -> None:
    """Writes everything held back, in order, and writes at once from then on."""
    pending, self._pending = self._pending or [], None
    for fn, args, kwargs in pending:
      fn(*args, **kwargs)

  def write_scalars(self, step: int, scalars: dict, *, jsonl: bool = False, tensorboard_skip=()) -> None:
    """TensorBoard scalars at `step` (but those named in `tensorboard_skip`); with `jsonl`, also one row
    {'step': step, **scalars} of metrics.jsonl."""
    if jsonl:
      self.history.append({"step": step, **scalars})
    self.run(self._write_scalars, step, dict(scalars), jsonl, tuple(tensorboard_skip))

  def _write_scalars(self, step, scalars, jsonl, tensorboard_skip) -> None:
    from tensorboardX import summary

    if jsonl:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **scalars}) + "\n")
    for key, value in scalars.items():
      if key in tensorboard_skip:
        continue
      values = {f"{key}/{k}": v for k, v in enumerate(value)} if isinstance(value, list) else {key: value}
      for tag, v in values.items():
        if v is not None:
          self._events.write_summary(step, summary.scalar(tag, float(v)))

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """(H, W) or (H, W, C) images in [0, 1] to TensorBoard."""
    images = {key: np.clip(np.asarray(image, np.float32), 0, 1) for key, image in images.items()}
    self.run(self._write_images, step, images)

  def _write_images(self, step, images) -> None:
    from tensorboardX import summary

    for key, image in images.items():
      image = image if image.ndim == 3 else image[..., None]
      self._events.write_summary(step, summary.image(key, image, dataformats="HWC"))

  def close(self) -> None:
    """Closes the event file; a writer still deferred drops what it held (its command never checkpointed)."""
    self._pending = None if self._pending is None else []
    if self._events is not None:
      self._events.close()
