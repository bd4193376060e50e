"""Flax NNX models: the spatial transformer and the classifiers it feeds (FCN, CNN, ST-FCN, ST-CNN)."""

from stn_jax.models.classifiers import CNNClassifier, FCNClassifier
from stn_jax.models.stn import (
  CLASSIFIERS,
  LOCALIZATIONS,
  TRANSFORMS,
  LocalizationNet,
  SpatialTransformer,
  STNClassifier,
  count_params,
  create_model,
)

__all__ = [
  "CLASSIFIERS",
  "LOCALIZATIONS",
  "TRANSFORMS",
  "CNNClassifier",
  "FCNClassifier",
  "LocalizationNet",
  "STNClassifier",
  "SpatialTransformer",
  "count_params",
  "create_model",
]
