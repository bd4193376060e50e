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
from stn_jax.models.layers import apply_conv_stack, conv_stack


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
  1024 ReLU -> dense 10. The paper's CNN (its Appendix A): conv 9x9 'VALID' -> max-pool -> conv 7x7 'VALID' ->
  max-pool -> the logits (features=(F1, F2), kernel_size=(9, 7), strides=(1,), padding=('VALID',), pool=(True,),
  hidden=()).

  Args:
    in_shape: (H, W, C) of the input.
    features: output channels of each convolution (ReLU after each).
    kernel_size: side of the square kernels: one for every convolution, or one per convolution.
    strides: stride of the convolutions: one for all, or one per convolution.
    padding: 'SAME' or 'VALID': one for all, or one per convolution.
    pool: whether a 2x2 max-pooling (stride 2) follows the convolution: one for all, or one per convolution (the
      paper's CNNs have two max-pooling layers).
    hidden: widths of the dense ReLU layers between the convolutions and the logits (may be empty).
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
    kernel_size: Sequence[int] = (3,),
    strides: Sequence[int] = (2,),
    padding: Sequence[str] = ("SAME",),
    pool: Sequence[bool] = (False,),
    hidden: Sequence[int] = (1024,),
    conv: str = "xla",
    num_classes: int = 10,
    rngs: nnx.Rngs,
  ):
    options.check_positive_ints("CNNClassifier", features=features, hidden=hidden)
    self.convs, self.pools, (h, w, c) = conv_stack(
      "CNNClassifier",
      in_shape,
      features=features,
      kernel_size=kernel_size,
      strides=strides,
      padding=padding,
      pool=pool,
      impl=conv,
      rngs=rngs,
    )
    self.dense, width = dense_stack(h * w * c, hidden, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = apply_conv_stack(self.convs, self.pools, x)
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
