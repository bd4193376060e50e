"""Classifiers: a CNN (the seed's by default; the paper's with max-pooling) and an FCN.

Each is configured by the keyword options of its constructor (`config.model.classifier.cnn` / `.fcn`, built by
`stn_jax.models.options.default_options`), so their docstrings' Args sections document the config fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from stn_jax.models import options
from stn_jax.models.layers import apply_conv_layer, apply_conv_stack, conv_stack


def dense_stack(width: int, hidden: Sequence[int], *, dtype=None, rngs: nnx.Rngs) -> tuple[nnx.List, int]:
  """Dense layers of the `hidden` widths on a `width`-wide input.

  Args:
    width: the input's features.
    hidden: the layers' widths (may be empty).
    dtype: what they compute in (None: float32); parameters are float32.
    rngs: the initialisation's randomness.

  Returns:
    (the layers, the width they end at).
  """
  layers = []
  for units in hidden:
    layers.append(nnx.Linear(width, units, dtype=dtype, rngs=rngs))
    width = units
  return nnx.List(layers), width


class _Embedding:
  """`embed`: a classifier's `embed_parts` concatenated."""

  def embed(self, x: jax.Array) -> jax.Array:
    """Every hidden layer's activations and the logits (`embed_parts`), concatenated: the co-localisation e().

    Args:
      x: (N, H, W, C) inputs.

    Returns:
      float32 (N, sum of D_i).
    """
    return jnp.concatenate(self.embed_parts(x), axis=-1)


class CNNClassifier(_Embedding, nnx.Module):
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
    conv: how the convolutions run: 'xla' (lax.conv), 'patches' (patch extraction + one matrix product: what a
      vmapped population of models batches well on GPUs, and several times faster on CPU), 'cpu_kernel' (stn_jax's
      direct-convolution and max-pool CPU kernels where they take the layer, else patches; see layers.Conv) or 'auto'
      (cpu_kernel on one CPU device, patches on several, xla elsewhere; the trainer records the choice in the run's
      config). The same function in each, other rounding.
    num_classes: number of logits.
    dtype: what the convolutions and dense layers compute in (config.compute_dtype; None = float32); the parameters
      are float32 whatever it is, and so are the logits returned.
    rngs: parameter initialisation.

  Raises:
    ValueError: naming the option at fault (features or hidden not positive ints, a bad per-layer option, an input
      that the convolutions shrink to nothing).
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
    conv: str = "auto",
    num_classes: int = 10,
    dtype=None,
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
      dtype=dtype,
      rngs=rngs,
    )
    self.dense, width = dense_stack(h * w * c, hidden, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = apply_conv_stack(self.convs, self.pools, x)
    x = x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
    return self.head(x).astype(jnp.float32)

  def embed_parts(self, x: jax.Array) -> list[jax.Array]:
    """Every hidden layer's activations (each convolution block's, each dense layer's) and the logits, each flattened:
    the parts of the co-localisation encoder e() (the paper's A.2 concatenates its CNN's hidden layers and its
    pre-softmax layer).

    Args:
      x: (N, H, W, C) inputs.

    Returns:
      A float32 (N, D_i) array per layer, the first convolution block's first and the logits last.
    """
    parts = []
    for conv, pooled in zip(self.convs, self.pools, strict=True):
      x = apply_conv_layer(conv, pooled, x)
      parts.append(x.reshape(x.shape[0], -1))
    x = parts[-1] if parts else x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
      parts.append(x)
    parts.append(self.head(x))
    return [p.astype(jnp.float32) for p in parts]


class FCNClassifier(_Embedding, nnx.Module):
  """flatten -> dense ReLU layers -> the logits (the paper's FCN has three weight layers: two hidden + output).

  Args:
    in_shape: (H, W, C) of the input.
    hidden: widths of the dense ReLU layers before the logits.
    num_classes: number of logits.
    dtype: what the dense layers compute in (None = float32); float32 parameters and logits whatever it is.
    rngs: parameter initialisation.

  Raises:
    ValueError: hidden widths that are not positive ints.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    hidden: Sequence[int] = (128, 128),
    num_classes: int = 10,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    options.check_positive_ints("FCNClassifier", hidden=hidden)
    self.dense, width = dense_stack(math.prod(in_shape), hidden, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(width, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
    return self.head(x).astype(jnp.float32)

  def embed_parts(self, x: jax.Array) -> list[jax.Array]:
    """Every hidden layer's activations and the logits (as CNNClassifier.embed_parts).

    Args:
      x: (N, H, W, C) inputs.

    Returns:
      A float32 (N, D_i) array per layer, the logits last.
    """
    x, parts = x.reshape(x.shape[0], -1), []
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
      parts.append(x)
    parts.append(self.head(x))
    return [p.astype(jnp.float32) for p in parts]


CLASSIFIERS = {"cnn": CNNClassifier, "fcn": FCNClassifier}
