"""The training input pipeline: uint8 batches on the device, a chunk of steps at a time.

`TrainFeed.chunk(step, num_steps)` returns (data, start): `data` holds uint8 images (steps, B, S, S) and int32 labels
(steps, B) — (K, steps, B, ...) for a population of K members — as global arrays split over the mesh's 'data' axis along
B (each process holds only its own rows of every batch), and step `step + i` trains on row `start + i`. The rows are
those of `stn_jax.data.epoch_rows`, so every step sees exactly the batch `stn_jax.data.train_batch` gives it, whichever
pipeline serves it:

* 'device': the whole epoch stays on the device. Its permutation is drawn once per epoch, the epoch's distorted images
  are laid out in step order on the host and placed once, and each jitted call slices its steps' rows; the next epoch
  is distorted and placed in a background thread from the first chunk of this one on, so the training loop does not
  wait for it (on CPU the two share the cores). `start` is the step's index within the epoch.
* 'host': for data that do not fit on the device, each chunk is gathered on the host and transferred, the next chunk
  prepared in a background thread while the current one trains. `start` is 0.

'auto' picks 'device' when two epochs (the current and the next) fit in a quarter of the device's memory (4 GiB on
CPU, where JAX does not report it).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math

import jax
import numpy as np

from stn_jax.data import DistortedMnist, epoch_rows
from stn_jax.training.errors import ConfigError

log = logging.getLogger(__name__)
PIPELINES = ("auto", "device", "host")
CPU_BUDGET_BYTES = 4 << 30


def epoch_bytes(dataset: DistortedMnist, batch_size: int, num_members: int) -> int:
  """The bytes one epoch of this process's rows takes on the device (uint8 images and int32 labels).

  Args:
    dataset: the train split.
    batch_size: the global batch size.
    num_members: K, the members (each with its own order of the epoch).

  Returns:
    The byte count.
  """
  steps_per_epoch = len(dataset) // batch_size
  rows = num_members * steps_per_epoch * batch_size // jax.process_count()
  return rows * (dataset.image_size**2 * dataset.channels + 4)


def choose(pipeline: str, dataset: DistortedMnist, batch_size: int, num_members: int) -> str:
  """The input pipeline a run uses.

  Args:
    pipeline: 'auto' (device when two epochs fit in a quarter of the device's memory), 'device' or 'host'.
    dataset: the train split.
    batch_size: the global batch size.
    num_members: K, the members.

  Returns:
    'device' or 'host'.
  """
  if pipeline != "auto":
    return pipeline
  stats = jax.local_devices()[0].memory_stats() or {}
  budget = stats.get("bytes_limit", 4 * CPU_BUDGET_BYTES) // 4
  return "device" if 2 * epoch_bytes(dataset, batch_size, num_members) <= budget else "host"


class TrainFeed:
  """The training input of a run (see the module docstring): the epochs on the device, or prefetched host chunks.

  Args:
    dataset: one DistortedMnist for every member, or a list of one per member (a population whose members differ in
      their variant: member k gets the rows of its seed in its own dataset's images; all hold the same number of
      examples).
    batch_size: the global batch size.
    seeds: the shuffle seeds of the population, one per model.
    mesh: the data mesh the batches are split over.
    pipeline: 'device' or 'host' (`choose`).
    total_steps: the run's total; the device pipeline prepares no epoch beyond the one holding the last step.
  """

  def __init__(
    self,
    dataset: DistortedMnist | list[DistortedMnist],
    batch_size: int,
    seeds: list[int],
    mesh,
    *,
    pipeline: str = "device",
    total_steps: int | None = None,
  ):
    if pipeline not in ("device", "host"):
      raise ValueError(f"pipeline must be 'device' or 'host'; got {pipeline!r}.")
    self.datasets = list(dataset) if isinstance(dataset, (list, tuple)) else [dataset] * len(seeds)
    if len(self.datasets) != len(seeds) or len({len(d) for d in self.datasets}) != 1:
      raise ValueError(
        f"need one dataset per member, all of one size; got {len(self.datasets)} for {len(seeds)} members, sizes "
        f"{sorted({len(d) for d in self.datasets})}."
      )
    dataset = self.datasets[0]
    self.dataset, self.batch_size, self.seeds, self.pipeline = dataset, batch_size, list(seeds), pipeline
    self.total_steps = total_steps  # the device pipeline prepares no epoch beyond the one holding the last step
    self.steps_per_epoch = len(dataset) // batch_size
    spec = (None,) * (1 if len(self.seeds) == 1 else 2) + ("data",)
    self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="train-feed")
    self._pending: dict[tuple[int, int], concurrent.futures.Future] = {}

  def close(self) -> None:
    self._worker.shutdown(wait=True, cancel_futures=True)

  def _rows(self, epoch: int) -> list[np.ndarray]:
    return [
      epoch_rows(
        dataset,
        epoch,
        self.batch_size,
        shuffle_seed=seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
      )
      for dataset, seed in zip(self.datasets, self.seeds, strict=True)
    ]

  def _place(self, epoch: int, first: int, last: int) -> dict:
    """Rows first..last-1 of `epoch`'s steps, this process's share of each batch, as global device arrays."""
    rows = [r[first:last] for r in self._rows(epoch)]
    pairs = list(zip(self.datasets, rows, strict=True))
    local = {"image": [d.images(epoch)[r] for d, r in pairs], "label": [d.epoch_labels(epoch)[r] for d, r in pairs]}
    local = {k: v[0] if len(v) == 1 else np.stack(v) for k, v in local.items()}
    return {k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in local.items()}

  def _key(self, step: int, num_steps: int) -> tuple[int, int]:
    """What a chunk needs prepared: the whole epoch (device) or its own rows (host)."""
    epoch = step // self.steps_per_epoch
    return (epoch, -1) if self.pipeline == "device" else (step, num_steps)

  def _prepare(self, key: tuple[int, int]) -> concurrent.futures.Future:
    if key not in self._pending:
      if self.pipeline == "device":
        epoch = key[0]
        self._pending[key] = self._worker.submit(self._place, epoch, 0, self.steps_per_epoch)
      else:
        step, num_steps = key
        epoch, within = divmod(step, self.steps_per_epoch)
        self._pending[key] = self._worker.submit(self._place, epoch, within, within + num_steps)
    return self._pending[key]

  def chunk(self, step: int, num_steps: int, *, next_chunk: tuple[int, int] | None = None) -> tuple[dict, int]:
    """(data, start) for steps step .. step + num_steps - 1, which must lie in one epoch. Meanwhile the background
    thread prepares the next epoch (device: from the epoch's first chunk on, unless the run ends in this epoch) or
    `next_chunk` (host: its (step, num_steps))."""
    within = step % self.steps_per_epoch
    if within + num_steps > self.steps_per_epoch:
      raise ValueError(f"a chunk must lie in one epoch; got steps {step}..{step + num_steps - 1}.")
    key = self._key(step, num_steps)
    data = self._prepare(key).result()
    for old in [k for k in self._pending if k != key and k[0] < key[0]]:  # done with: free the device memory
      del self._pending[old]
    if self.pipeline == "device":  # the next epoch, from the first chunk of this one on
      next_epoch = key[0] + 1
      if self.total_steps is None or next_epoch * self.steps_per_epoch < self.total_steps:
        self._prepare((next_epoch, -1))
    elif next_chunk is not None:
      self._prepare(self._key(*next_chunk))
    return data, (within if self.pipeline == "device" else 0)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def chunks(start: int, total: int, steps_per_dispatch: int, steps_per_epoch: int):
  """The dispatches of a run: each ends at the next multiple of `steps_per_dispatch`, the end of an epoch or `total`.

  So chunk boundaries are the same for a run and for any resume of it.

  Args:
    start: the first step.
    total: the run's total.
    steps_per_dispatch: the steps of a full call.
    steps_per_epoch: steps in an epoch.

  Yields:
    (step, num_steps) of each dispatch from `start` to `total`.
  """
  step = start
  while step < total:
    end = min((step // steps_per_dispatch + 1) * steps_per_dispatch, (step // steps_per_epoch + 1) * steps_per_epoch)
    end = min(end, total)
    yield step, end - step
    step = end


def steps_per_dispatch(requested: int, intervals: dict[str, int]) -> int:
  """The steps one jitted call runs.

  Args:
    requested: config.steps_per_dispatch: > 0 must divide every interval, so that each falls at the end of a call;
      0 picks 1 on CPU (where one step is long enough to hide the dispatch) and elsewhere the largest divisor of the
      intervals' greatest common divisor up to 10.
    intervals: {name: steps} of the log, evaluation and checkpoint intervals.

  Returns:
    The steps per call.

  Raises:
    ConfigError: a requested count that does not divide an interval.
  """
  if requested:
    for name, every in intervals.items():
      if every % requested:
        raise ConfigError(
          f"config.steps_per_dispatch ({requested}) must divide {name} ({every} steps); or set it to 0 (auto)."
        )
    return requested
  if jax.default_backend() == "cpu":
    return 1
  common = math.gcd(*intervals.values())
  return max(d for d in range(1, 11) if common % d == 0)
