"""The spatial transformer (localisation net -> grid generator -> sampler) and the ST classifier.

The localisation net's final layer starts at the identity transform (zero kernel, identity bias) and nothing squashes
its output, so an untrained transformer returns its input exactly (resampled to the output size) and can zoom out as
freely as in.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import stn_jax
from stn_jax import transforms
from stn_jax.models.classifiers import CNNClassifier, FCNClassifier, dense_stack

TRANSFORMS = ("affine", "projective", "tps", "attention", "none")
LOCALIZATIONS = ("fcn", "cnn")
CLASSIFIERS = ("cnn", "fcn")


class LocalizationNet(nnx.Module):
  """Predicts transform parameters from the input image.

  fcn: flatten -> dense `hidden` tanh -> dropout -> dense (the seed's: one hidden layer of 20).
  cnn: conv 5x5 `features[0]` ReLU -> 2x2 max-pool -> conv 5x5 `features[1]` ReLU -> 2x2 max-pool -> flatten ->
       dense `hidden` ReLU -> dropout -> dense.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    identity: np.ndarray,
    *,
    kind: str = "fcn",
    hidden: Sequence[int] = (20,),
    features: Sequence[int] = (20, 20),
    dropout: float = 0.2,
    rngs: nnx.Rngs,
  ):
    h, w, c = in_shape
    self.kind = kind
    convs = []
    if kind == "cnn":
      for f in features:
        convs.append(nnx.Conv(c, f, (5, 5), padding="SAME", rngs=rngs))
        h, w, c = h // 2, w // 2, f
    self.convs = nnx.List(convs)
    self.dense, width = dense_stack(h * w * c, hidden, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.shape = identity.shape
    flat_identity = jnp.asarray(identity.reshape(-1), jnp.float32)
    self.out = nnx.Linear(
      width,
      flat_identity.size,
      kernel_init=nnx.initializers.zeros,
      bias_init=lambda *_: flat_identity,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    for conv in self.convs:
      x = nnx.max_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    activation = jnp.tanh if self.kind == "fcn" else jax.nn.relu
    for layer in self.dense:
      x = activation(layer(x))
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.out(x).reshape(x.shape[0], *self.shape)


class SpatialTransformer(nnx.Module):
  """Localisation net + grid generator + bilinear sampler, channels-last.

  Args:
    in_shape: (H, W, C) of its input.
    transform: 'affine', 'projective', 'tps' (`num_control_points`) or 'attention' (scale, tx, ty).
    out_size: (H_out, W_out) of its output; default the input's.
    localization: 'fcn' or 'cnn'; `loc_hidden`, `loc_features`, `loc_dropout` size it.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    transform: str = "affine",
    out_size: Sequence[int] | None = None,
    localization: str = "fcn",
    loc_hidden: Sequence[int] = (20,),
    loc_features: Sequence[int] = (20, 20),
    loc_dropout: float = 0.2,
    num_control_points: int = 16,
    align_corners: bool = False,
    rngs: nnx.Rngs,
  ):
    if transform not in stn_jax.KINDS:
      raise ValueError(f"transform must be one of {', '.join(map(repr, stn_jax.KINDS))}; got {transform!r}.")
    if localization not in LOCALIZATIONS:
      raise ValueError(f"localization must be one of {', '.join(map(repr, LOCALIZATIONS))}; got {localization!r}.")
    self.transform = transform
    self.out_size = tuple(out_size or in_shape[:2])
    self.align_corners = align_corners
    identity = transforms.identity_array(transform, num_control_points=num_control_points)
    self.localization = LocalizationNet(
      in_shape, identity, kind=localization, hidden=loc_hidden, features=loc_features, dropout=loc_dropout, rngs=rngs
    )

  def params_and_grid(self, x, *, train: bool = False, rngs=None):
    """The predicted transform parameters (N, *param_shape) and sampling grid (N, H_out, W_out, 2)."""
    params = self.localization(x, train=train, rngs=rngs)
    grid = stn_jax.params_to_grid(params, self.out_size, kind=self.transform, align_corners=self.align_corners)
    return params, grid

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None) -> jax.Array:
    _, grid = self.params_and_grid(x, train=train, rngs=rngs)
    return stn_jax.grid_sample(x, grid.astype(x.dtype), align_corners=self.align_corners)


class STNClassifier(nnx.Module):
  """An optional spatial transformer in front of a classifier (FCN, CNN, ST-FCN, ST-CNN)."""

  def __init__(self, transformer: SpatialTransformer | None, classifier: nnx.Module):
    self.transformer = transformer
    self.classifier = classifier

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None) -> jax.Array:
    if self.transformer is not None:
      x = self.transformer(x, train=train, rngs=rngs)
    return self.classifier(x)


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _build(m, in_shape, seed, *, transform, first_width=None) -> STNClassifier:
  rngs = nnx.Rngs(params=seed)
  transformer = None
  classifier_in = tuple(in_shape)
  if transform != "none":
    out_size = tuple(m.stn_output_size) if m.stn_output_size else tuple(in_shape[:2])
    transformer = SpatialTransformer(
      in_shape,
      transform=transform,
      out_size=out_size,
      localization=m.localization,
      loc_hidden=tuple(m.loc_hidden),
      loc_features=tuple(m.loc_features),
      loc_dropout=m.loc_dropout,
      num_control_points=m.num_control_points,
      rngs=rngs,
    )
    classifier_in = (*out_size, in_shape[2])

  def widen(widths):
    return (first_width, *widths[1:]) if first_width else tuple(widths)

  if m.classifier == "cnn":
    classifier = CNNClassifier(
      classifier_in,
      features=tuple(m.cnn_features),
      kernel_size=m.cnn_kernel_size,
      strides=m.cnn_strides,
      pool=m.cnn_pool,
      hidden=widen(m.cnn_hidden),
      rngs=rngs,
    )
  else:
    classifier = FCNClassifier(classifier_in, hidden=widen(m.fcn_hidden), rngs=rngs)
  return STNClassifier(transformer, classifier)


def _abstract_count(m, in_shape, transform, first_width=None) -> int:
  abstract = nnx.eval_shape(lambda: _build(m, in_shape, 0, transform=transform, first_width=first_width))
  return count_params(abstract)


def budget_width(model_config, in_shape: Sequence[int]) -> int:
  """The first hidden width that gives a baseline (`transform='none'`) the parameter count of the same config with
  `model.match_params_of` as its transform (the paper compares models of equal size). The count is affine in that
  width, so two evaluations give it exactly."""
  m = model_config
  target = _abstract_count(m, in_shape, m.match_params_of)
  at_1, at_2 = (_abstract_count(m, in_shape, "none", w) for w in (1, 2))
  return max(1, round(1 + (target - at_1) / (at_2 - at_1)))


def create_model(model_config, in_shape: Sequence[int], *, seed: int) -> STNClassifier:
  """Builds the model a config's `model` section describes (see configs/default.py).

  With `transform='none'` and `match_params_of` set to a transform, the classifier's first hidden layer is widened so
  that the baseline has as many parameters as its spatial-transformer counterpart.
  """
  m = model_config
  width = None
  if m.transform == "none" and m.get("match_params_of"):
    width = budget_width(m, in_shape)
  return _build(m, in_shape, seed, transform=m.transform, first_width=width)
