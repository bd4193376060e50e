"""Unsupervised co-localisation (the paper's Appendix A.2): an attention transformer learns, from a set of images that
share a digit class and nothing else (no labels, no boxes), to crop that digit.

The loss is the paper's hinge triplet loss over the pairs n != m of the set's crops: an encoder e() (a classification
network trained elsewhere, loaded from its workdir and frozen: the hidden layers and the logits of its classifier,
concatenated) should find two images' crops closer to each other than an image's crop to a random crop of the same
image,

    mean over n != m of max(0, |e(I_n^T) - e(I_m^T)|^2 - |e(I_n^T) - e(I_n^rand)|^2 + margin),

(the paper sums; the mean is the sum over a constant count). A localisation is correct when the crop's box overlaps
the digit's box (distortions.distort_boxes) with IoU > 0.5; a run reports the rate over its set at every evaluation,
and at the end over the test split's images of the same digit.

A config is `task = 'coloc'` with the fields `default_config` lists (configs/paper_coloc.py); `stn_jax.main` runs it
through `train_and_evaluate` here. A run writes config.json, metrics.jsonl, results.json and figures/boxes.png (the
predicted boxes on the first images at each evaluation) into its workdir; runs take a minute on a CPU, so a killed one
starts again from step 0 (no checkpoints), and a finished one is reported and left as it is.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.ndimage
from flax import nnx

import stn_jax
from stn_jax import data as data_lib
from stn_jax import models
from stn_jax.data import distortions
from stn_jax.training import checkpoints, config_lib, figures, steps, train, utils
from stn_jax.training.errors import ConfigError

log = logging.getLogger(__name__)
TASK = "coloc"
DATASETS = tuple(name for name, v in distortions.VARIANTS.items() if v.boxes)
NORMALISE = ("none", "per_layer")
SCHEDULES = ("constant", "cosine")
# Fields added after the first co-localisation runs, with the values those runs had: a config.json without them is
# the same run.
ADDED = {
  "model.learn_scale": True,
  "model.keep_inside": False,
  "blur_sigma": 0.0,
  "blur_start": 0.0,
  "blur_steps": 0,
  "embedding": {"normalise": "none", "weights": []},
  "schedule": "constant",
}


def default_config() -> ml_collections.ConfigDict:
  """A co-localisation config: the paper's A.2 as read (docs/paper_recipe.md), on `coloc` images of digit 0.

  Returns:
    The ConfigDict.
  """
  c = ml_collections.ConfigDict()
  c.task = TASK
  c.seed = 0
  c.num_seeds = 3  # runs, one after the other, each from its own seed (seed .. seed + num_seeds - 1)
  c.encoder_workdir = "runs/coloc_encoder"  # a finished classification run: its classifier is e()
  c.margin = 1.0  # the triplet loss's alpha
  c.dataset = ml_collections.ConfigDict(
    {"name": "coloc", "digit": 0, "num_images": 100, "split": "train", "seed": 0, "num_test_images": 1000}
  )
  c.model = ml_collections.ConfigDict()
  c.model.sampler = "auto"
  # The paper's localisation CNN as read: eight 9x9 filters at stride 4, 2x2 max-pooling, two 8-unit dense layers.
  c.model.localization = ml_collections.ConfigDict(
    {"features": (8,), "kernel_size": (9,), "strides": (4,), "padding": ("VALID",), "pool": (True,), "hidden": (8, 8)}
  )
  c.model.learn_scale = True  # False: the crop's side stays initial_scale (translation only)
  c.model.keep_inside = False  # True: the crop's centre bounded (tanh) so that the crop stays inside the image
  c.random_crop_scale = 1 / 3  # the side of a random crop, relative to the image's (the 28 px digit in 84 px)
  c.initial_scale = 1 / 3  # the attention's scale at initialisation (centred); 1 = the identity
  c.blur_sigma = 0.0  # a Gaussian smoothing of the images (px) before anything sees them; 0 = none
  # A smoothing that starts wider: sigma blur_start at step 0, moved linearly to blur_sigma by step blur_steps (in
  # steps of BLUR_QUANTUM px), blur_sigma after; blur_steps 0 = blur_sigma throughout.
  c.blur_start = 0.0
  c.blur_steps = 0
  # e(): 'none', the encoder's layers concatenated as they are; 'per_layer', each layer's activations L2-normalised,
  # weighted by sqrt(w_i / sum(w)) (weights: one per layer, the logits last; () = equal), then concatenated.
  c.embedding = ml_collections.ConfigDict({"normalise": "none", "weights": ()})
  c.learning_rate = 1e-3  # Adam
  c.schedule = "constant"  # or 'cosine': Adam's rate decayed to 0 over num_train_steps
  c.num_train_steps = 300
  c.eval_every_steps = 50
  return c


DOCS = {
  "task": "'coloc': this trainer (stn_jax.training.coloc)",
  "seed": "parameter init and the random crops of run 0",
  "num_seeds": "runs, one after another, from seeds seed .. seed + num_seeds - 1",
  "encoder_workdir": "a finished classification run whose classifier is the frozen encoder e() (its hidden layers "
  "and logits, concatenated); its input size is the crops' size",
  "margin": "the triplet loss's margin alpha",
  "dataset.name": f"the images: {', '.join(DATASETS)}",
  "dataset.digit": "the digit class the run's images share (0-9)",
  "dataset.num_images": "the run's set: the first this many examples of that digit in the split",
  "dataset.split": "the split the set is drawn from",
  "dataset.seed": "the distortions' seed",
  "dataset.num_test_images": "the first this many test-split images of the digit (all where it has fewer) the "
  "final IoU rate is also measured on (0 = none)",
  "model.sampler": "how the attention transformer's sampling runs (as the classification models' model.sampler)",
  "model.localization": "the localisation CNN's options (CNNLocalization's: features, kernel_size, strides, "
  "padding, pool, hidden)",
  "random_crop_scale": "the side of I_n^rand, the random crop of each image, relative to the image's",
  "initial_scale": "the attention transform's scale at initialisation, a centred crop of this relative side (1 = the "
  "whole image, the identity the classification models start at)",
  "model.learn_scale": "whether the attention's scale is learnt (False: the crop's side stays initial_scale, a "
  "translation-only attention)",
  "model.keep_inside": "bound the crop's centre (tanh) so that the crop stays inside the image",
  "blur_sigma": "a Gaussian smoothing (sigma in pixels) of the run's images before the transformer, the random crops "
  "and the encoder see them (0 = none); the boxes figure shows the images unsmoothed; with blur_steps, the sigma "
  "the run ends at (and the test images' sigma)",
  "blur_start": "with blur_steps > 0: the smoothing's sigma at step 0, moved linearly to blur_sigma by step "
  "blur_steps (a wide smoothing first, to widen the loss's basin)",
  "blur_steps": "the steps over which the smoothing goes from blur_start to blur_sigma (0 = blur_sigma throughout)",
  "embedding.normalise": "e() from the encoder's layers: 'none' (concatenated as they are, the paper as read) or "
  "'per_layer' (each layer's activations L2-normalised and weighted, so that e() has unit norm)",
  "embedding.weights": "per_layer: one weight per encoder layer (its convolution blocks, dense layers, then the "
  "logits), () = equal",
  "learning_rate": "Adam's learning rate",
  "schedule": "'constant', or 'cosine' (the learning rate decayed to 0 over num_train_steps)",
  "num_train_steps": "full-batch steps (the whole set each step)",
  "eval_every_steps": "the IoU rate (and the boxes figure) every this many steps",
}


def is_coloc(config) -> bool:
  """Whether a config is a co-localisation one.

  Args:
    config: a ConfigDict.

  Returns:
    True for task 'coloc'.
  """
  return config.get("task", "classify") == TASK


def validate(config) -> None:
  """Checks a co-localisation config before any work starts, the encoder included.

  Args:
    config: the ConfigDict.

  Raises:
    ConfigError: naming the field at fault.
  """
  d = config.dataset
  if d.name not in DATASETS:
    raise ConfigError(f"config.dataset.name must be one of {', '.join(map(repr, DATASETS))}; got {d.name!r}.")
  if not isinstance(d.digit, int) or not 0 <= d.digit <= 9:
    raise ConfigError(f"config.dataset.digit must be a digit 0-9; got {d.digit!r}.")
  for name, low in (("num_images", 2), ("num_test_images", 0)):
    if not isinstance(d[name], int) or d[name] < low:
      raise ConfigError(f"config.dataset.{name} must be an int >= {low}; got {d[name]!r}.")
  if d.split not in data_lib.SPLITS:
    raise ConfigError(f"config.dataset.split must be one of {', '.join(map(repr, data_lib.SPLITS))}; got {d.split!r}.")
  for name in ("num_seeds", "num_train_steps", "eval_every_steps"):
    if not isinstance(config[name], int) or config[name] < 1:
      raise ConfigError(f"config.{name} must be an int >= 1; got {config[name]!r}.")
  for name in ("random_crop_scale", "initial_scale"):
    if not isinstance(config[name], (int, float)) or not 0 < config[name] <= 1:
      raise ConfigError(f"config.{name} must be in (0, 1]; got {config[name]!r}.")
  if not config.learning_rate > 0:
    raise ConfigError(f"config.learning_rate must be > 0; got {config.learning_rate!r}.")
  for name in ("blur_sigma", "blur_start"):
    if isinstance(config[name], bool) or not isinstance(config[name], (int, float)) or config[name] < 0:
      raise ConfigError(f"config.{name} must be a number >= 0; got {config[name]!r}.")
  if isinstance(config.blur_steps, bool) or not isinstance(config.blur_steps, int) or config.blur_steps < 0:
    raise ConfigError(f"config.blur_steps must be an int >= 0; got {config.blur_steps!r}.")
  if config.blur_steps > config.num_train_steps:
    raise ConfigError(
      f"config.blur_steps must be at most num_train_steps ({config.num_train_steps}); got {config.blur_steps!r}."
    )
  for name in ("learn_scale", "keep_inside"):
    if not isinstance(config.model[name], bool):
      raise ConfigError(f"config.model.{name} must be True or False; got {config.model[name]!r}.")
  if config.schedule not in SCHEDULES:
    raise ConfigError(f"config.schedule must be one of {', '.join(map(repr, SCHEDULES))}; got {config.schedule!r}.")
  normalise, weights = config.embedding.normalise, tuple(config.embedding.weights)
  if normalise not in NORMALISE:
    raise ConfigError(
      f"config.embedding.normalise must be one of {', '.join(map(repr, NORMALISE))}; got {normalise!r}."
    )
  if weights and (normalise != "per_layer" or not all(isinstance(w, (int, float)) and w > 0 for w in weights)):
    raise ConfigError(
      f"config.embedding.weights must be () or positive numbers with normalise='per_layer'; got {weights!r} "
      f"with {normalise!r}."
    )
  encoder_shape(config.encoder_workdir)
  layers = encoder_layers(config.encoder_workdir)
  if weights and len(weights) != layers:
    raise ConfigError(
      f"config.embedding.weights has {len(weights)} weights; the encoder in {config.encoder_workdir!r} has "
      f"{layers} layers (its convolution blocks, dense layers and logits)."
    )
  try:
    nnx.eval_shape(lambda: _transformer(config, (28, 28), seed=0))
  except ValueError as e:
    raise ConfigError(f"config.model.localization: {e}") from None


def encoder_shape(workdir) -> tuple[int, int, int]:
  """The input shape of an encoder workdir's model, after checking that it is one.

  Args:
    workdir: config.encoder_workdir.

  Returns:
    (H, W, C) of the images its model takes.

  Raises:
    ConfigError: no workdir, no config, no checkpoint, a co-localisation run, or a model of several channels.
  """
  where = f"config.encoder_workdir={str(workdir)!r}"
  if not workdir:
    raise ConfigError("config.encoder_workdir is empty: a co-localisation run needs a trained classification workdir.")
  config = checkpoints.read_config(workdir)
  if config is None:
    raise ConfigError(f"{where}: no config.json there; train the encoder first (python -m stn_jax.main ...).")
  if is_coloc(config):
    raise ConfigError(f"{where}: a co-localisation run, not a classification one.")
  if not checkpoints.has_checkpoint(Path(workdir)):
    raise ConfigError(f"{where}: no checkpoint there yet; train the encoder first.")
  shape = config_lib.input_shape(config)
  if shape[2] != 1:
    raise ConfigError(f"{where}: its model takes {shape[2]}-channel images; the encoder must take 1 channel.")
  return shape


def encoder_layers(workdir) -> int:
  """How many layers e() concatenates for an encoder workdir: the length of its classifier's `embed_parts` (a CNN's
  convolution blocks, the dense layers and the logits), found by abstract evaluation (nothing is computed).

  Args:
    workdir: config.encoder_workdir (already checked by `encoder_shape`).

  Returns:
    The count.
  """
  config = checkpoints.read_config(workdir)
  shape = config_lib.input_shape(config)
  dtype = steps.compute_dtype(config.get("compute_dtype", "float32"))
  classes = config_lib.num_classes(config)

  def parts():
    model = models.create_model(config.model, shape, seed=0, dtype=dtype, num_classes=classes)
    return model.classifier.embed_parts(jnp.zeros((1, *shape), jnp.float32))

  return len(jax.eval_shape(parts))


def combine(parts: list[jax.Array], normalise: str, weights=()) -> jax.Array:
  """e() from the encoder's per-layer activations (config.embedding).

  Args:
    parts: float (N, D_i) per layer (the classifier's `embed_parts`).
    normalise: 'none' (concatenated as they are) or 'per_layer' (each L2-normalised, scaled by sqrt(w_i / sum(w))).
    weights: one per part, () = equal.

  Returns:
    (N, sum of D_i); of unit norm per row with 'per_layer'.
  """
  if normalise == "none":
    return jnp.concatenate(parts, axis=-1)
  w = np.asarray(weights if len(weights) else [1.0] * len(parts), np.float64)
  scale = np.sqrt(w / w.sum())
  unit = [p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-6) for p in parts]
  return jnp.concatenate([float(k) * u for k, u in zip(scale, unit, strict=True)], axis=-1)


def attention_params(config, raw: jax.Array) -> jax.Array:
  """The attention (scale, tx, ty) a co-localisation run crops with, from its localisation net's output.

  Args:
    config: the run's config (model.learn_scale, model.keep_inside, initial_scale).
    raw: (N, 3) the localisation net's output.

  Returns:
    (N, 3): the scale held at initial_scale unless learnt; the centre bounded to keep the crop inside the image where
    model.keep_inside.
  """
  s = raw[:, :1] if config.model.learn_scale else jnp.full_like(raw[:, :1], config.initial_scale)
  t = raw[:, 1:]
  if config.model.keep_inside:
    t = (1 - jnp.abs(s)) * jnp.tanh(t)
  return jnp.concatenate([s, t], axis=1)


def _with_added(stored: dict) -> dict:
  """A stored config.json with the fields added since (ADDED) filled in at the values its run had."""
  for path, value in ADDED.items():
    *parents, leaf = path.split(".")
    node = stored
    for p in parents:
      node = node.setdefault(p, {})
    node.setdefault(leaf, value)
  return stored


def load_encoder(workdir):
  """The frozen encoder e() of a classification workdir: its member 0's classifier.

  Args:
    workdir: config.encoder_workdir.

  Returns:
    (embed(crops (N, H, W, 1)) -> [(N, D_i) per layer], (H, W, 1), the checkpoint's step).

  Raises:
    ConfigError: as `encoder_shape`, or a checkpoint that does not hold the workdir's model.
  """
  shape = encoder_shape(workdir)
  config = checkpoints.read_config(workdir)
  graphdef, abstract = nnx.eval_shape(lambda: train.create_params(config))
  restored = checkpoints.restore_params(workdir, abstract)
  if restored is None:
    raise ConfigError(f"config.encoder_workdir={str(workdir)!r}: no readable checkpoint of its model.")
  step, params = restored
  classifier = nnx.merge(graphdef, steps.member_slice(params, 0, config.num_seeds)).classifier
  frozen_graph, frozen = nnx.split(classifier)

  def embed(crops):
    return nnx.merge(frozen_graph, jax.lax.stop_gradient(frozen)).embed_parts(crops)

  return embed, shape, step


def _transformer(config, out_size, *, seed: int) -> models.SpatialTransformer:
  size = distortions.VARIANTS[config.dataset.name].size
  options = {**models.default_config().localization.cnn.to_dict(), **config.model.localization.to_dict()}
  options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
  options.update(downsample=1, dropout=0.0)
  transformer = models.SpatialTransformer(
    (size, size, 1),
    transform="attention",
    out_size=tuple(out_size),
    localization="cnn",
    localization_options=options,
    sampler=config.model.get("sampler", "auto"),
    rngs=nnx.Rngs(params=seed),
  )
  head = transformer.localization.out  # zero kernel: the bias is the initial transform
  head.bias[...] = jnp.asarray([config.initial_scale, 0.0, 0.0], head.bias[...].dtype)
  return transformer


def param_count(config) -> int:
  """The attention transformer's parameter count (built abstractly).

  Args:
    config: a co-localisation ConfigDict (its encoder gives the crops' size).

  Returns:
    The count.
  """
  h, w, _ = encoder_shape(config.encoder_workdir)
  return models.count_params(nnx.eval_shape(lambda: _transformer(config, (h, w), seed=0)))


def attention_boxes(params: np.ndarray, size: int) -> np.ndarray:
  """The pixel boxes an attention transform (scale, tx, ty) crops, align_corners=False.

  Args:
    params: (N, 3) attention parameters.
    size: S of the (S, S) image.

  Returns:
    float (N, 4): x0, y0, x1, y1 in pixels.
  """
  s, tx, ty = (np.asarray(params, np.float64)[:, i] for i in range(3))
  to_px = lambda v: (v + 1) * size / 2
  return np.stack([to_px(tx - np.abs(s)), to_px(ty - np.abs(s)), to_px(tx + np.abs(s)), to_px(ty + np.abs(s))], 1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes.

  Args:
    a: (N, 4) x0, y0, x1, y1.
    b: (N, 4) x0, y0, x1, y1.

  Returns:
    (N,) in [0, 1].
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
  h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  inter = w * h
  return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def triplet_loss(embeddings: jax.Array, random_embeddings: jax.Array, margin: float) -> jax.Array:
  """The paper's hinge triplet loss, averaged over the ordered pairs n != m.

  Args:
    embeddings: (N, D) e(I_n^T).
    random_embeddings: (N, D) e(I_n^rand).
    margin: alpha.

  Returns:
    The scalar loss.
  """
  sq = jnp.sum(embeddings**2, -1)
  between = sq[:, None] + sq[None, :] - 2 * embeddings @ embeddings.T  # |e_n - e_m|^2
  to_random = jnp.sum((embeddings - random_embeddings) ** 2, -1)  # |e_n - e_n^rand|^2
  hinge = jax.nn.relu(between - to_random[:, None] + margin)
  n = embeddings.shape[0]
  return jnp.sum(jnp.where(jnp.eye(n, dtype=bool), 0.0, hinge)) / (n * (n - 1))


def random_crops(key: jax.Array, count: int, scale: float) -> jax.Array:
  """Attention parameters of random square crops that lie inside the image.

  Args:
    key: the randomness.
    count: N.
    scale: the crops' side relative to the image's.

  Returns:
    (N, 3): (scale, tx, ty), the centre uniform over where the crop fits.
  """
  centre = jax.random.uniform(key, (count, 2), minval=-(1 - scale), maxval=1 - scale)
  return jnp.concatenate([jnp.full((count, 1), scale), centre], axis=1)


def crops_loss(config, encode, images: jax.Array, crops: jax.Array, key: jax.Array) -> jax.Array:
  """The run's triplet loss of crops I_n^T of images against random crops I_n^rand of the same images.

  Args:
    config: the co-localisation config (random_crop_scale, margin).
    encode: e(), crops -> (N, D).
    images: (N, S, S, 1) the (smoothed) images.
    crops: (N, H, W, 1) their crops, H x W the encoder's input.
    key: draws the random crops.

  Returns:
    The scalar loss.
  """
  rand = random_crops(key, images.shape[0], config.random_crop_scale)
  others = stn_jax.warp(images, rand, kind="attention", size=crops.shape[1:3])
  return triplet_loss(encode(crops), encode(others), config.margin)


def digit_set(config, mnist, split: str, count: int, *, at_most: bool = False):
  """A co-localisation set: the first `count` examples of the config's digit in a split, distorted.

  Args:
    config: a co-localisation ConfigDict (its dataset: name, digit, seed).
    mnist: the loaded MNIST (stn_jax.data.load_mnist()).
    split: 'train' or 'test'.
    count: N.
    at_most: take all the split's examples of the digit where it has fewer than `count` (else an error).

  Returns:
    (images float32 (N, S, S, 1) in [0, 1], boxes float (N, 4): x0, y0, x1, y1 in pixels).

  Raises:
    ConfigError: the split has fewer than `count` examples of the digit (and not at_most).
  """
  digits, labels = mnist.split(split)
  indices = np.flatnonzero(labels == config.dataset.digit)[:count]
  if len(indices) < count and not at_most:
    raise ConfigError(
      f"config.dataset: the {split} split has {len(indices)} examples of digit {config.dataset.digit}, not {count}."
    )
  where = dict(seed=config.dataset.seed, split=split, indices=indices)
  images = distortions.distort(config.dataset.name, digits, **where)
  return data_lib.uint8_to_unit_float(images), distortions.distort_boxes(config.dataset.name, **where)


def smooth(images, sigma: float) -> np.ndarray:
  """Images smoothed as config.blur_sigma smooths a run's images.

  Args:
    images: (N, H, W, C).
    sigma: the Gaussian's sigma in pixels, in H and W (0: the images as they are).

  Returns:
    float32 (N, H, W, C).
  """
  images = np.asarray(images, np.float32)
  return scipy.ndimage.gaussian_filter(images, (0, sigma, sigma, 0)) if sigma else images


BLUR_QUANTUM = 0.25  # px: a blur schedule's sigmas are rounded to this, so that its smoothed images are few


def blur_at(config, step: int) -> float:
  """The smoothing's sigma at a step (config.blur_sigma, blur_start, blur_steps).

  Args:
    config: a co-localisation config.
    step: the training step (0 = before the first update).

  Returns:
    The sigma in pixels: blur_start at step 0 moved linearly to blur_sigma at blur_steps, rounded to BLUR_QUANTUM;
    blur_sigma from blur_steps on (and throughout where blur_steps is 0).
  """
  if config.blur_steps == 0 or step >= config.blur_steps:
    return float(config.blur_sigma)
  sigma = config.blur_start + (config.blur_sigma - config.blur_start) * step / config.blur_steps
  return round(sigma / BLUR_QUANTUM) * BLUR_QUANTUM


def same_run(stored: dict, config) -> bool:
  """Whether a workdir's config.json describes the run of `config` (the fields added since it was written read at the
  values its run had): a run finished with it is this run's result; otherwise the workdir holds another run.

  Args:
    stored: the config.json's content.
    config: the co-localisation ConfigDict.

  Returns:
    True when they are the same run.
  """
  return _with_added(json.loads(json.dumps(stored))) == json.loads(config_lib.to_json(config))


def train_and_evaluate(config, workdir: str | os.PathLike, *, sets=None) -> dict:
  """Trains `config.num_seeds` co-localisation runs of a config into `workdir` and reports their IoU rates.

  Args:
    config: a co-localisation ConfigDict (`default_config`).
    workdir: the run's directory.
    sets: {'train': (images, boxes), 'test': (images, boxes)} to use instead of MNIST (tests).

  Returns:
    The results (also in workdir/results.json): iou_rate (the mean over runs of the set's IoU > 0.5 rate),
    iou_rate_per_seed, mean_iou, test_iou_rate, and the per-seed values.

  Raises:
    ConfigError: a bad config or encoder, or a workdir holding another config's run.
  """
  validate(config)
  workdir = Path(workdir)
  text = config_lib.to_json(config)
  if (workdir / "config.json").exists():
    if not same_run(json.loads((workdir / "config.json").read_text()), config):
      raise ConfigError(f"{workdir} holds a run of another config; use another --workdir or move it aside.")
    if (workdir / "results.json").exists():
      results = json.loads((workdir / "results.json").read_text())
      log.info("%s holds this run, finished; its results: %s", workdir, results)
      return results
  workdir.mkdir(parents=True, exist_ok=True)
  utils.atomic_write(workdir / "config.json", text)
  embed, (h, w, _), encoder_step = load_encoder(config.encoder_workdir)
  log.info("encoder: the classifier of %s at step %d, crops of %dx%d", config.encoder_workdir, encoder_step, h, w)
  if sets is None:
    mnist = data_lib.load_mnist()
    sets = {"train": digit_set(config, mnist, config.dataset.split, config.dataset.num_images)}
    if config.dataset.num_test_images:
      sets["test"] = digit_set(config, mnist, "test", config.dataset.num_test_images, at_most=True)
  shown = np.asarray(sets["train"][0][:8])
  boxes = sets["train"][1]
  smoothed = {}  # sigma -> the train images smoothed by it, shared by the seeds

  def images_at(i):
    sigma = blur_at(config, i)
    if sigma not in smoothed:
      smoothed[sigma] = jnp.asarray(smooth(sets["train"][0], sigma))
    return smoothed[sigma]

  images = images_at(0)
  if "test" in sets:  # smoothed once for every seed's test
    test_images, test_boxes = jnp.asarray(smooth(sets["test"][0], config.blur_sigma)), sets["test"][1]
  size = images.shape[1]
  e = config.embedding
  encode = lambda crops: combine(embed(crops), e.normalise, tuple(e.weights))
  rows, per_seed = [], []
  (workdir / "figures").mkdir(exist_ok=True)
  for k in range(config.num_seeds):
    seed = config.seed + k
    transformer = _transformer(config, (h, w), seed=seed)
    graphdef, params = nnx.split(transformer)
    rate = config.learning_rate
    tx = optax.adam(optax.cosine_decay_schedule(rate, config.num_train_steps) if config.schedule == "cosine" else rate)
    opt_state = tx.init(params)

    def crop(params, x, graphdef=graphdef):
      """(the attention parameters, the crops) of images x."""
      model = nnx.merge(graphdef, params)
      theta = attention_params(config, model.localization(x))
      return theta, stn_jax.warp(x, theta, kind="attention", size=(h, w), implementation=model.implementation)

    def loss_fn(params, x, key):
      return crops_loss(config, encode, x, crop(params, x)[1], key)

    @jax.jit
    def step(params, opt_state, x, key, loss_fn=loss_fn, tx=tx):
      loss, grads = jax.value_and_grad(loss_fn)(params, x, key)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def locate(params, x, crop=crop):
      return crop(params, x)[0]

    key = jax.random.fold_in(jax.random.key(seed), 1)
    history = []
    loss = None
    for i in range(config.num_train_steps + 1):
      images = images_at(i)
      if i % config.eval_every_steps == 0 or i == config.num_train_steps:
        located = attention_boxes(np.asarray(locate(params, images)), size)
        overlaps = iou(located, boxes)
        row = {"seed": seed, "step": i, "loss": None if i == 0 else float(loss),  # no step taken yet at 0
               "iou_rate": float(np.mean(overlaps > 0.5)), "mean_iou": float(overlaps.mean())}  # fmt: skip
        if config.blur_steps:
          row["blur_sigma"] = blur_at(config, i)
        rows.append(row)
        history.append((i, located[: len(shown)]))
        shown_row = {k: round(v, 4) for k, v in row.items() if k not in ("seed", "step") and v is not None}
        log.info("seed %d, step %d: %s", seed, i, shown_row)
      if i == config.num_train_steps:
        break
      params, opt_state, loss = step(params, opt_state, images, jax.random.fold_in(key, i))
    result = {"seed": seed, "iou_rate": rows[-1]["iou_rate"], "mean_iou": rows[-1]["mean_iou"]}
    if "test" in sets:
      overlaps = iou(attention_boxes(np.asarray(locate(params, test_images)), size), test_boxes)
      result["test_iou_rate"] = float(np.mean(overlaps > 0.5))
    per_seed.append(result)
    if k == 0:
      figures.save_boxes(shown, boxes[:8], history, workdir / "figures" / "boxes.png",
                         title=f"{config.dataset.name}, digit {config.dataset.digit}, seed {seed}")  # fmt: skip
  utils.atomic_write(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
  results = {"num_seeds": config.num_seeds, "num_train_steps": config.num_train_steps, "digit": config.dataset.digit,
             "dataset": config.dataset.name, "encoder_step": encoder_step}  # fmt: skip
  for name in ("iou_rate", "mean_iou", "test_iou_rate"):
    values = [r[name] for r in per_seed if name in r]
    if values:
      results.update(train.member_summary(name, values if len(values) > 1 else values[0]))
  results["num_params"] = param_count(config)
  utils.atomic_write(workdir / "results.json", json.dumps(results, indent=2))
  log.info("IoU > 0.5 rate %.3f (%d run(s)); results in %s", results["iou_rate"], config.num_seeds, workdir)
  return results
