"""Classifiers: a CNN (the seed's by default; the paper's with max-pooling) and an FCN.

Each is configured by the keyword options of its constructor (`config.model.classifier.cnn` / `.fcn`, built by
`stn_jax.models.options.default_options`), so their docstrings' Args sections document the config fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from stn_jax.models import options
from stn_jax.models.layers import Conv


def dense_stack(width: int, hidden: Sequence[int], *, rngs: nnx.Rngs) -> tuple[nnx.List, int]:
  """Dense layers of the `hidden` widths on a `width`-wide input, and the width they end at."""
  layers = []
  for units in hidden:
    layers.append(nnx.Linear(width, units, rngs=rngs))
    width = units
  return nnx.List(layers), width


class CNNClassifier(nnx.Module):
  """conv (-> max-pool) blocks, then dense ReLU layers, then the logits.

  The defaults are the seed's network: conv 16 3x3 stride 2 ReLU -> conv 16 3x3 stride 2 ReLU -> flatten -> dense
  1024 ReLU -> dense 10.

  Args:
    in_shape: (H, W, C) of the input.
    features: output channels of each convolution ('SAME' padding, ReLU).
    kernel_size: side of the convolutions' square kernels.
    strides: stride of every convolution.
    pool: 2x2 max-pooling after each convolution (the paper's CNNs have two max-pooling layers).
    hidden: widths of the dense ReLU layers between the convolutions and the logits.
    conv: how the convolutions run: 'xla' (lax.conv) or 'patches' (patch extraction + one matrix product: what a
      vmapped population of models batches well on GPUs; the same function, other rounding).
    num_classes: number of logits.
    rngs: parameter initialisation.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    features: Sequence[int] = (16, 16),
    kernel_size: int = 3,
    strides: int = 2,
    pool: bool = False,
    hidden: Sequence[int] = (1024,),
    conv: str = "xla",
    num_classes: int = 10,
    rngs: nnx.Rngs,
  ):
    options.check_positive_ints("CNNClassifier", features=features, kernel_size=kernel_size, strides=strides)
    options.check_positive_ints("CNNClassifier", hidden=hidden)
    h, w, c = in_shape
    self.pool = pool
    convs = []
    for f in features:
      convs.append(Conv(c, f, (kernel_size, kernel_size), strides=strides, padding="SAME", impl=conv, rngs=rngs))
      h, w, c = -(-h // strides), -(-w // strides), f
      if pool:
        h, w = h // 2, w // 2
    self.convs = nnx.List(convs)
    self.dense, width = dense_stack(h * w * c, hidden, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
      if self.pool:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
    return self.head(x)


class FCNClassifier(nnx.Module):
  """flatten -> dense ReLU layers -> the logits (the paper's FCN has three weight layers: two hidden + output).

  Args:
    in_shape: (H, W, C) of the input.
    hidden: widths of the dense ReLU layers before the logits.
    num_classes: number of logits.
    rngs: parameter initialisation.
  """

  def __init__(
    self, in_shape: Sequence[int], *, hidden: Sequence[int] = (128, 128), num_classes: int = 10, rngs: nnx.Rngs
  ):
    options.check_positive_ints("FCNClassifier", hidden=hidden)
    self.dense, width = dense_stack(math.prod(in_shape), hidden, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
    return self.head(x)


CLASSIFIERS = {"cnn": CNNClassifier, "fcn": FCNClassifier}
