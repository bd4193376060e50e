"""Distorted-MNIST datasets for the trainer: step-indexed, resumable, shardable per process.

A `DistortedMnist` holds one split of one variant as uint8 images. Training batches are a pure function of the step:
epoch e = step // steps_per_epoch draws a permutation from (seed, e), and the batch is the step's slice of it, so a
run resumed at step s sees exactly the batches an uninterrupted run would. With `fresh_each_epoch` the train split is
distorted anew each epoch (from the same digits); otherwise, and always for validation and test, once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import numpy as np

from stn_jax.data import distortions
from stn_jax.data.mnist import Mnist


@dataclasses.dataclass
class DistortedMnist:
  """One split of a distorted-MNIST variant.

  Attributes:
    name: the variant (distortions.NAMES).
    split: 'train', 'validation' or 'test'.
    digits, labels: the split's MNIST digits uint8 (N, 28, 28) and labels int32 (N,).
    seed: the randomness of the distortions.
    fresh_each_epoch: distort anew every epoch (train only).
  """

  name: str
  split: str
  digits: np.ndarray
  labels: np.ndarray
  seed: int
  fresh_each_epoch: bool = False

  def __post_init__(self):
    distortions.check_name(self.name)
    if self.fresh_each_epoch and self.split != "train":
      raise ValueError(f"fresh_each_epoch applies to the train split only; got split={self.split!r}.")
    self._epoch_images: tuple[int, np.ndarray] | None = None
    self._lock = threading.Lock()  # the training feed distorts the next epoch in a background thread

  @classmethod
  def from_mnist(cls, mnist: Mnist, name: str, split: str, *, seed: int, fresh_each_epoch: bool = False):
    """One split of a variant, from loaded MNIST.

    Args:
      mnist: the loaded Mnist (stn_jax.data.load_mnist).
      name: the variant (distortions.NAMES).
      split: 'train', 'validation' or 'test'.
      seed: the randomness of the distortions.
      fresh_each_epoch: distort anew every epoch (train only).

    Returns:
      The DistortedMnist.
    """
    digits, labels = mnist.split(split)
    return cls(name, split, digits, labels, seed, fresh_each_epoch)

  @property
  def image_size(self) -> int:
    return distortions.VARIANTS[self.name].size

  @property
  def channels(self) -> int:
    """C of the images: uint8 (N, S, S) when 1, (N, S, S, C) otherwise."""
    return distortions.VARIANTS[self.name].channels

  @property
  def num_classes(self) -> int:
    return distortions.VARIANTS[self.name].num_classes

  def __len__(self) -> int:
    return len(self.labels)

  def images(self, epoch: int = 0) -> np.ndarray:
    """The split's distorted images of an epoch.

    Args:
      epoch: the epoch (ignored unless `fresh_each_epoch`).

    Returns:
      uint8 (N, S, S) ((N, S, S, C) for C > 1 channels), made once per epoch and cached.
    """
    return self._epoch(epoch)[0]

  def epoch_labels(self, epoch: int = 0) -> np.ndarray:
    """The labels of `images(epoch)`: `labels` itself, except for a variant whose label depends on the epoch's
    pairing of digits (addition: the sum of the two digits' labels).

    Args:
      epoch: the epoch (ignored unless `fresh_each_epoch`).

    Returns:
      int32 (N,).
    """
    return self._epoch(epoch)[1]

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    epoch = epoch if self.fresh_each_epoch else 0
    with self._lock:
      cached = self._epoch_images
      if cached is None or cached[0] != epoch:
        where = dict(seed=self.seed, split=self.split, epoch=epoch)
        images = distortions.distort(self.name, self.digits, **where)
        cached = (epoch, (images, distortions.distort_labels(self.name, self.labels, **where)))
        self._epoch_images = cached
      return cached[1]


def uint8_to_unit_float(images: np.ndarray, channels: int = 1) -> np.ndarray:
  """Host images as the model's input.

  Args:
    images: uint8 (..., H, W) for one channel, (..., H, W, C) for `channels` = C > 1.
    channels: C of the images (a dataset's `channels`).

  Returns:
    float32 (..., H, W, C) in [0, 1] (steps.uint8_to_unit_float_by_table is its bitwise twin on the device).

  Raises:
    ValueError: images whose last axis is not `channels` long (for C > 1).
  """
  out = np.asarray(images, np.float32) / 255.0
  if channels == 1:
    return out[..., None]
  if out.ndim < 3 or out.shape[-1] != channels:
    raise ValueError(f"images of {channels} channels must end with a channel axis of {channels}; got {out.shape}.")
  return out


def _check_sharding(batch_size: int, process_index: int, process_count: int) -> None:
  if batch_size < 1 or process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f"need batch_size >= 1 and 0 <= process_index < process_count; "
      f"got {batch_size}, {process_index}, {process_count}."
    )
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must divide evenly among {process_count} processes.")


def _process_rows(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This process's contiguous share of a global batch's rows."""
  local = len(rows) // process_count
  return rows[process_index * local : (process_index + 1) * local]


def train_batch(
  dataset: DistortedMnist,
  step: int,
  batch_size: int,
  *,
  shuffle_seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> dict:
  """The batch of a training step: a pure function of the step, so a resumed run sees the batches it would have.

  Args:
    dataset: the train split.
    step: the training step.
    batch_size: the global batch size B.
    shuffle_seed: the seed of the epochs' permutations.
    process_index: this process's index.
    process_count: P, the number of processes (each gets its rows of the global batch).

  Returns:
    dict(image=float32 (B / P, S, S, C) in [0, 1], label=int32 (B / P,)).
  """
  steps_per_epoch = len(dataset) // batch_size
  epoch, within = divmod(step, max(steps_per_epoch, 1))
  rows = epoch_rows(dataset, epoch, batch_size, shuffle_seed=shuffle_seed, process_index=process_index,
                    process_count=process_count)[within]  # fmt: skip
  images = uint8_to_unit_float(dataset.images(epoch)[rows], dataset.channels)
  return {"image": images, "label": dataset.epoch_labels(epoch)[rows]}


def epoch_rows(
  dataset: DistortedMnist,
  epoch: int,
  batch_size: int,
  *,
  shuffle_seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> np.ndarray:
  """The example indices of every step of an epoch.

  Row `within` is the batch of step epoch * steps_per_epoch + within; the epoch's permutation is drawn once, from
  (shuffle_seed, epoch), and the examples left over after the last full batch are not used that epoch.

  Args:
    dataset: the train split.
    epoch: the epoch.
    batch_size: the global batch size B.
    shuffle_seed: the seed of the permutations.
    process_index: this process's index.
    process_count: P, the number of processes.

  Returns:
    int (steps_per_epoch, B / P): this process's rows of each global batch.
  """
  _check_sharding(batch_size, process_index, process_count)
  steps_per_epoch = len(dataset) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size {batch_size} exceeds the {len(dataset)} examples of {dataset.name}/{dataset.split}.")
  order = np.random.default_rng([shuffle_seed, epoch]).permutation(len(dataset))
  batches = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
  local = batch_size // process_count
  return batches[:, process_index * local : (process_index + 1) * local]


def train_batches(dataset: DistortedMnist, batch_size: int, *, shuffle_seed: int, start_step: int = 0, **sharding):
  """Infinite iterator of `train_batch(dataset, step, ...)` from `start_step` on.

  Args:
    dataset: the train split.
    batch_size: the global batch size.
    shuffle_seed: the seed of the permutations.
    start_step: the first step.
    **sharding: process_index and process_count, as `train_batch` takes them.

  Yields:
    The batches of `train_batch`.
  """
  step = start_step
  while True:
    yield train_batch(dataset, step, batch_size, shuffle_seed=shuffle_seed, **sharding)
    step += 1


def eval_batches(
  dataset: DistortedMnist, batch_size: int, *, process_index: int = 0, process_count: int = 1
) -> Iterator[dict]:
  """Every example once, in order, in batches of `batch_size` (this process's rows); the last batch padded.

  Args:
    dataset: a split.
    batch_size: the global batch size B.
    process_index: this process's index.
    process_count: P, the number of processes.

  Yields:
    dict(image=float32 (B / P, S, S, C), label=int32 (B / P,), mask=bool (B / P,): which rows are real examples).
  """
  _check_sharding(batch_size, process_index, process_count)
  images, labels = dataset.images(), dataset.epoch_labels()
  for start in range(0, len(dataset), batch_size):
    rows = _process_rows(np.arange(start, start + batch_size), process_index, process_count)
    mask = rows < len(dataset)
    rows = np.where(mask, rows, 0)
    yield {"image": uint8_to_unit_float(images[rows], dataset.channels), "label": labels[rows], "mask": mask}
