"""Distorted-MNIST variants, generated with stn_jax's own warps (jitted, vmapped).

Every distortion is a pure function of (one 28x28 digit in [0, 1], a PRNG key); the key of example i of a split is
`fold_in(fold_in(fold_in(PRNGKey(seed), split), epoch), i)`, so an image depends only on (seed, split, epoch, index).
Exact parameters (normalised units span [-1, 1] across the output image, so 1 px = 2 / size):

  seed40  40x40  the seed project's recipe: digit zero-padded to 40x40; rotation U(-30, 30) deg, shear U(-0.05, 0.05)
                 rad (matrix [[1, -sin s], [0, cos s]]), isotropic zoom U(0.95, 1.05), shift U(-25, 25) % of the side
                 per axis (+-10 px); bilinear, zero fill.
  R      32x32  digit padded to 32x32, rotation U(-90, 90) deg.
  RTS    42x42  digit padded to 42x42, rotation U(-45, 45) deg, scale U(0.7, 1.2), placement U(-7, 7) px per axis.
  P      32x32  digit padded to 32x32, isotropic scale U(0.75, 1.0), then each of the four image corners moved by
                 N(0, 0.1^2) per coordinate (normalised; ~1.6 px); the homography through the moved corners.
  E      32x32  digit padded to 32x32; elastic warping (Simard et al. 2003): per-pixel displacements U(-1, 1) smoothed
                 by a Gaussian of sigma 4 px and scaled by alpha = 34 px.
  TC     60x60  the digit translated to a uniformly random position inside a 60x60 image, over clutter: 8 random 6x6
                 crops (from the central 20x20) of random digits of the same split, each at a uniformly random
                 position; pixelwise maximum.

The paper's variants as its Appendix A and the public code encoding it describe them (docs/paper_recipe.md gives the
source of each setting); new names, so that the variants above keep their meaning:

  paper-RTS  42x42  rotation U(-45, 45) deg and scale s ~ U(0.7, 1.2) about the digit's centre, then the 28x28 frame
                    placed uniformly anywhere it fits in the 42x42 canvas: U(-m, m) px per axis, m = (42 - 28 s) / 2.
  paper-P    32x32  isotropic scale U(0.75, 1.0), then each of the four image corners moved by N(0, 5^2) px per
                    coordinate; the homography through the moved corners.
  paper-E    32x32  isotropic scale U(0.75, 1.0), then a thin plate spline whose 16 control points (a regular 4x4
                    lattice over the image) are each moved by N(0, 1.5^2) px per coordinate.
  paper-TC   60x60  the digit at a uniformly random position in a black 60x60 canvas, plus 6 random 6x6 crops (from
                    anywhere in random digits of the same split) at uniformly random positions; everything added and
                    clipped to [0, 1].

The paper's MNIST addition (its Appendix A.1), as images of two channels:

  addition   42x42x2  channel 0 the split's digit i, channel 1 a partner digit j of the same split (uniformly random,
                      drawn from example i's key: a function of (seed, split, epoch, i) like the distortions), each
                      distorted independently as paper-RTS; the label is the sum of the two digits' labels (0-18).

The paper's co-localisation images (its Appendix A.2), each with the digit's box (`distort_boxes`: x0, y0, x1, y1 in
pixels, the 28x28 frame the digit was placed in):

  coloc          84x84  the digit at a uniformly random integer position in a black 84x84 canvas.
  coloc-clutter  84x84  the same, plus 16 random 6x6 crops (from anywhere in random digits of the same split) at
                        uniformly random positions; everything added and clipped to [0, 1], as paper-TC.

The content transform A (where a point of the digit goes) is sampled; the sampler reads output -> input, so the
warp uses its inverse.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.spatial import fitting, grids, sampling, transforms

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Variant:
  """A distorted-MNIST variant.

  Attributes:
    name: its name (NAMES).
    size: S of its (S, S) images.
    description: one line on what it does.
    channels: C of its images: uint8 (S, S) when 1, (S, S, C) otherwise.
    num_classes: its labels are 0 .. num_classes - 1.
    boxes: each image has the box of its digit (`distort_boxes`).
  """

  name: str
  size: int
  description: str
  channels: int = 1
  num_classes: int = 10
  boxes: bool = False


VARIANTS = {
  "seed40": Variant("seed40", 40, "the seed's rotation / shear / zoom / shift on 40x40"),
  "R": Variant("R", 32, "rotation +-90 deg"),
  "RTS": Variant("RTS", 42, "rotation +-45 deg, scale 0.7-1.2, placement in 42x42"),
  "P": Variant("P", 32, "projective: corners perturbed"),
  "E": Variant("E", 32, "elastic warping"),
  "TC": Variant("TC", 60, "translated in 60x60 with clutter"),
  "paper-RTS": Variant("paper-RTS", 42, "the paper's RTS: rotation +-45 deg, scale 0.7-1.2, placed anywhere in 42x42"),
  "paper-P": Variant("paper-P", 32, "the paper's P: scale 0.75-1, corners moved by N(0, 5 px)"),
  "paper-E": Variant("paper-E", 32, "the paper's E: scale 0.75-1, 16-point TPS moved by N(0, 1.5 px)"),
  "paper-TC": Variant("paper-TC", 60, "the paper's TC: placed in 60x60, 6 random 6x6 crops added and clipped"),
  "addition": Variant("addition", 42, "two paper-RTS digits in two channels; the label is their sum", 2, 19),
  "coloc": Variant("coloc", 84, "the digit anywhere in a black 84x84 canvas, with its box", boxes=True),
  "coloc-clutter": Variant("coloc-clutter", 84, "coloc with 16 random 6x6 crops added and clipped", boxes=True),
}
NAMES = tuple(VARIANTS)


def _pad(digit: jax.Array, size: int) -> jax.Array:
  before = (size - 28) // 2
  return jnp.pad(digit, ((before, size - 28 - before), (before, size - 28 - before)))


def _warp_content(image: jax.Array, content: jax.Array) -> jax.Array:
  """Moves the content of a (S, S) image by the affine map `content` (2, 3); zero fill."""
  theta = transforms.invert_affine(content)
  return sampling.grid_sample(image[..., None], grids.affine_grid(theta, image.shape))[..., 0]


def _seed40(key, digit, _):
  k = jax.random.split(key, 4)
  deg = math.pi / 180
  content = transforms.affine_theta(
    rotation=jax.random.uniform(k[0], (), minval=-30 * deg, maxval=30 * deg),
    shear=jax.random.uniform(k[1], (), minval=-0.05, maxval=0.05),
    scale=jax.random.uniform(k[2], (), minval=0.95, maxval=1.05),
    translation=jax.random.uniform(k[3], (2,), minval=-0.5, maxval=0.5),  # 25 % of the side = 0.5 normalised
  )
  return _warp_content(_pad(digit, 40), content)


def _rotated(key, digit, _):
  angle = jax.random.uniform(key, (), minval=-math.pi / 2, maxval=math.pi / 2)
  return _warp_content(_pad(digit, 32), transforms.affine_theta(rotation=angle))


def _rts(key, digit, _):
  k = jax.random.split(key, 3)
  content = transforms.affine_theta(
    rotation=jax.random.uniform(k[0], (), minval=-math.pi / 4, maxval=math.pi / 4),
    scale=jax.random.uniform(k[1], (), minval=0.7, maxval=1.2),
    translation=jax.random.uniform(k[2], (2,), minval=-7.0, maxval=7.0) * (2.0 / 42),
  )
  return _warp_content(_pad(digit, 42), content)


def _paper_rts(key, digit, _, *, size=42):
  k = jax.random.split(key, 3)
  scale = jax.random.uniform(k[1], (), minval=0.7, maxval=1.2)
  margin = (size - 28 * scale) / 2  # px the scaled 28x28 frame may move each way and stay in the canvas
  content = transforms.affine_theta(
    rotation=jax.random.uniform(k[0], (), minval=-math.pi / 4, maxval=math.pi / 4),
    scale=scale,
    translation=jax.random.uniform(k[2], (2,), minval=-1.0, maxval=1.0) * margin * (2.0 / size),
  )
  return _warp_content(_pad(digit, size), content)


def _projective(key, digit, _, *, sigma=0.1):
  """`sigma`: the corners' displacement, normalised (P: 0.1; paper-P: 5 px of 32)."""
  k = jax.random.split(key, 2)
  corners = jnp.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
  scale = jax.random.uniform(k[0], (), minval=0.75, maxval=1.0)
  moved = corners * scale + sigma * jax.random.normal(k[1], (4, 2))
  matrix = fitting.homography_from_points(src=corners, dst=moved)  # output (moved) -> input (original) corners
  image = _pad(digit, 32)
  return sampling.grid_sample(image[..., None], grids.projective_grid(matrix, (32, 32)))[..., 0]


@functools.lru_cache(maxsize=8)
def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
  """(size, size) matrix applying a zero-padded 1-D Gaussian blur (rows sum to at most 1)."""
  i = np.arange(size)
  g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  return (g / g.sum(axis=1, keepdims=True).max()).astype(np.float32)


def _elastic(key, digit, _, *, alpha=34.0, sigma=4.0, size=32):
  blur = jnp.asarray(_gaussian_matrix(size, sigma))
  field = jax.random.uniform(key, (2, size, size), minval=-1.0, maxval=1.0)
  smooth = blur @ field @ blur.T
  displacement = jnp.moveaxis(alpha * smooth, 0, -1) * (2.0 / size)  # pixels -> normalised
  grid = grids.identity_grid((size, size)) + displacement
  return sampling.grid_sample(_pad(digit, size)[..., None], grid)[..., 0]


def _paper_elastic(key, digit, _, *, size=32, sigma_px=1.5):
  k = jax.random.split(key, 2)
  scale = jax.random.uniform(k[0], (), minval=0.75, maxval=1.0)
  lattice = grids.tps_control_points(16)
  moved = lattice + sigma_px * (2.0 / size) * jax.random.normal(k[1], lattice.shape)
  grid = grids.tps_grid(moved, (size, size)) / scale  # the spline's input coordinates, of the digit scaled by s
  return sampling.grid_sample(_pad(digit, size)[..., None], grid)[..., 0]


def _paste(canvas: jax.Array, patch: jax.Array, at: jax.Array, combine) -> jax.Array:
  """`canvas` with combine(its region, `patch`) written over the region of the patch's shape at `at` (row, col)."""
  region = jax.lax.dynamic_slice(canvas, (at[0], at[1]), patch.shape)
  return jax.lax.dynamic_update_slice(canvas, combine(region, patch), (at[0], at[1]))


def _clutter(keys, canvas, others, *, pieces: int, piece: int, margin: int, combine) -> jax.Array:
  """`canvas` with `pieces` crops of piece x piece px (at least `margin` px inside their 28x28 digits) of random
  digits of `others` combined into it, each at a uniformly random position."""
  k_sources, k_crops, k_places = keys
  size = canvas.shape[0]
  sources = jax.random.randint(k_sources, (pieces,), 0, others.shape[0])
  crop_at = jax.random.randint(k_crops, (pieces, 2), margin, 28 - margin - piece + 1)
  place_at = jax.random.randint(k_places, (pieces, 2), 0, size - piece + 1)
  for p in range(pieces):
    crop = jax.lax.dynamic_slice(others[sources[p]], (crop_at[p, 0], crop_at[p, 1]), (piece, piece))
    canvas = _paste(canvas, crop, place_at[p], combine)
  return canvas


def _paper_cluttered(key, digit, others, *, size=60, pieces=6, piece=6):
  k = jax.random.split(key, 4)
  offset = jax.random.randint(k[0], (2,), 0, size - 28 + 1)
  canvas = _paste(jnp.zeros((size, size)), digit, offset, jnp.add)
  canvas = _clutter(k[1:], canvas, others, pieces=pieces, piece=piece, margin=0, combine=jnp.add)
  return jnp.clip(canvas, 0.0, 1.0)


def _placement(key: jax.Array, size: int) -> jax.Array:
  """Where (row, col) a co-localisation image puts its 28x28 digit: uniform over the positions that fit."""
  return jax.random.randint(jax.random.fold_in(key, 2), (2,), 0, size - 28 + 1)


def _coloc(key, digit, others, *, size=84, pieces=0, piece=6):
  canvas = _paste(jnp.zeros((size, size)), digit, _placement(key, size), jnp.add)
  if pieces:
    k = jax.random.split(key, 3)
    canvas = _clutter(k, canvas, others, pieces=pieces, piece=piece, margin=0, combine=jnp.add)
  return jnp.clip(canvas, 0.0, 1.0)


def _cluttered(key, digit, others, *, size=60, pieces=8, piece=6):
  k = jax.random.split(key, 4)
  offset = jax.random.randint(k[0], (2,), 0, size - 28 + 1)
  # The crops come from the central 20x20 (margin 4), where the ink is.
  canvas = _clutter(k[1:], jnp.zeros((size, size)), others, pieces=pieces, piece=piece, margin=4, combine=jnp.maximum)
  return _paste(canvas, digit, offset, jnp.maximum)


def partner(key: jax.Array, count: int) -> jax.Array:
  """The partner digit of an addition example.

  Args:
    key: the example's key (`example_keys`).
    count: the split's digits.

  Returns:
    The partner's index in the split, int32 in [0, count).
  """
  return jax.random.randint(jax.random.fold_in(key, 1), (), 0, count)


def _addition(key, digit, others):
  k = jax.random.split(key, 2)
  other = others[partner(key, others.shape[0])]
  return jnp.stack([_paper_rts(k[0], digit, None), _paper_rts(k[1], other, None)], axis=-1)


_FUNCTIONS = {
  "seed40": _seed40,
  "R": _rotated,
  "RTS": _rts,
  "P": _projective,
  "E": _elastic,
  "TC": _cluttered,
  "paper-RTS": _paper_rts,
  "paper-P": functools.partial(_projective, sigma=5 * 2 / 32),
  "paper-E": _paper_elastic,
  "paper-TC": _paper_cluttered,
  "addition": _addition,
  "coloc": _coloc,
  "coloc-clutter": functools.partial(_coloc, pieces=16),
}
CLUTTERED = ("TC", "paper-TC", "coloc-clutter")  # variants drawing their clutter from the other digits of the split
_FROM_SPLIT = (*CLUTTERED, "addition")  # variants that read other digits of the split than their own


def example_keys(seed: int, split: str, epoch: int, indices) -> jax.Array:
  """The PRNG key of each example: a function of (seed, split, epoch, index) only.

  Args:
    seed: the distortions' seed (config.dataset.seed).
    split: 'train', 'validation' or 'test'.
    epoch: the epoch (0 for a split distorted once).
    indices: the examples' indices in the split.

  Returns:
    The keys, one per index.
  """
  base = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), SPLIT_IDS[split]), epoch)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


@functools.partial(jax.jit, static_argnames=("name",))
def _distort_batch(name, keys, digits, others):
  fn = _FUNCTIONS[name]
  out = jax.vmap(lambda k, d: fn(k, d, others))(keys, digits.astype(jnp.float32) / 255.0)
  return jnp.clip(jnp.round(out * 255.0), 0, 255).astype(jnp.uint8)


def check_name(name: str) -> Variant:
  """The variant of a name.

  Args:
    name: a variant's name.

  Returns:
    Its Variant.

  Raises:
    ValueError: an unknown name, with the list of valid ones.
  """
  if name not in VARIANTS:
    raise ValueError(f"dataset must be one of {', '.join(map(repr, NAMES))}; got {name!r}.")
  return VARIANTS[name]


def distort(name: str, digits: np.ndarray, *, seed: int, split: str, epoch: int = 0, indices=None, chunk: int = 10_000):
  """Distorts uint8 digits (N, 28, 28) into uint8 (N, S, S) images of variant `name` ((N, S, S, C) for C > 1).

  Args:
    name: one of NAMES.
    digits: the split's MNIST digits, uint8 (N, 28, 28); for TC also the source of the clutter, for addition of the
      partners.
    seed: the distortions' seed (config.dataset.seed); with `split` and `epoch` it selects the randomness (see the
      module docstring).
    split: 'train', 'validation' or 'test'.
    epoch: the epoch (0 for a split distorted once).
    indices: which examples of the split to make (default: all); example i of the split is the same image whichever
      other indices are asked for.
    chunk: examples per jitted call (bounds memory).

  Returns:
    uint8 (len(indices), S, S), or (len(indices), S, S, C) for a variant of C > 1 channels.

  Raises:
    ValueError: an unknown variant name or split.
  """
  _check_name_and_split(name, split)
  digits = np.asarray(digits)
  indices = np.arange(len(digits)) if indices is None else np.asarray(indices)
  others = jnp.asarray(digits, jnp.float32) / 255.0 if name in _FROM_SPLIT else jnp.zeros((1, 28, 28))
  out = []
  for start in range(0, len(indices), chunk):
    idx = indices[start : start + chunk]
    keys = example_keys(seed, split, epoch, idx)
    out.append(np.asarray(_distort_batch(name, keys, jnp.asarray(digits[idx]), others)))
  variant = VARIANTS[name]
  empty = (0, variant.size, variant.size) + ((variant.channels,) if variant.channels > 1 else ())
  return np.concatenate(out) if out else np.zeros(empty, np.uint8)


def distort_labels(name: str, labels: np.ndarray, *, seed: int, split: str, epoch: int = 0, indices=None):
  """The labels of `distort`'s images: the digits' own, or for `addition` the sum of each pair's.

  Args:
    name: one of NAMES.
    labels: the split's MNIST labels, int (N,).
    seed: as `distort` takes it.
    split: as `distort` takes it.
    epoch: as `distort` takes it.
    indices: as `distort` takes them (default: all).

  Returns:
    int32 (len(indices),).
  """
  _check_name_and_split(name, split)
  labels = np.asarray(labels, np.int32)
  indices = np.arange(len(labels)) if indices is None else np.asarray(indices, np.int64)
  if name != "addition" or not len(indices):
    return labels[indices]
  partners = jax.vmap(lambda k: partner(k, len(labels)))(example_keys(seed, split, epoch, indices))
  return labels[indices] + labels[np.asarray(partners)]


def distort_boxes(name: str, *, seed: int, split: str, epoch: int = 0, indices) -> np.ndarray:
  """The digit's box in each of `distort`'s images of a variant with boxes (coloc, coloc-clutter).

  Args:
    name: a variant whose `boxes` is True.
    seed: as `distort` takes it.
    split: as `distort` takes it.
    epoch: as `distort` takes it.
    indices: the examples' indices in the split.

  Returns:
    int32 (len(indices), 4): x0, y0, x1, y1 in pixels (x1, y1 exclusive) of the 28x28 frame the digit was placed in.

  Raises:
    ValueError: a variant without boxes, or an unknown name or split.
  """
  _check_name_and_split(name, split)
  variant = VARIANTS[name]
  if not variant.boxes:
    with_boxes = ", ".join(repr(n) for n, v in VARIANTS.items() if v.boxes)
    raise ValueError(f"dataset {name!r} has no boxes; the variants with boxes are {with_boxes}.")
  indices = np.asarray(indices, np.int64)
  if not len(indices):
    return np.zeros((0, 4), np.int32)
  rows_cols = np.asarray(jax.vmap(lambda k: _placement(k, variant.size))(example_keys(seed, split, epoch, indices)))
  y0, x0 = rows_cols[:, 0], rows_cols[:, 1]
  return np.stack([x0, y0, x0 + 28, y0 + 28], axis=1).astype(np.int32)


def _check_name_and_split(name: str, split: str) -> None:
  check_name(name)
  if split not in SPLIT_IDS:
    raise ValueError(f"split must be one of {', '.join(map(repr, SPLIT_IDS))}; got {split!r}.")
