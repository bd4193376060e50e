"""Flax NNX models: the spatial transformer and the classifiers it feeds (FCN, CNN, ST-FCN, ST-CNN)."""

from stn_jax.models.classifiers import CLASSIFIERS, CNNClassifier, FCNClassifier
from stn_jax.models.layers import CONV_CHOICES, CONV_IMPLS, resolve_conv
from stn_jax.models.stn import (
  ACTIVATIONS,
  LOCALIZATIONS,
  SAMPLERS,
  TRANSFORMS,
  CNNLocalization,
  FCNLocalization,
  SpatialTransformer,
  STNClassifier,
  check_config,
  config_docs,
  count_params,
  create_model,
  default_config,
  has_xla_convolutions,
  param_count,
  resolve_sampler,
)

__all__ = [
  "ACTIVATIONS",
  "CLASSIFIERS",
  "CONV_CHOICES",
  "CONV_IMPLS",
  "LOCALIZATIONS",
  "SAMPLERS",
  "TRANSFORMS",
  "CNNClassifier",
  "CNNLocalization",
  "FCNClassifier",
  "FCNLocalization",
  "STNClassifier",
  "SpatialTransformer",
  "check_config",
  "config_docs",
  "count_params",
  "create_model",
  "default_config",
  "has_xla_convolutions",
  "param_count",
  "resolve_conv",
  "resolve_sampler",
]
