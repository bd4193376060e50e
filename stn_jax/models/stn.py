"""The spatial transformer (localisation net -> grid generator -> sampler) and the ST classifier.

The localisation net's final layer starts at the identity transform (zero kernel, identity bias) and nothing squashes
its output, so an untrained transformer returns its input exactly (resampled to the output size) and can zoom out as
freely as in.

`create_model(config.model, in_shape, seed=...)` builds a model from a config's `model` section: the localisation net
and the classifier are chosen by `kind` and get their sub-config (`config.model.localization[kind]`,
`config.model.classifier[kind]`) as keyword arguments, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import stn_jax
from stn_jax.models import options
from stn_jax.models.classifiers import CLASSIFIERS, dense_stack
from stn_jax.models.layers import apply_conv_stack, conv_stack, max_pool, resolve_conv
from stn_jax.spatial import cpu_kernels, transforms

TRANSFORMS = (*stn_jax.KINDS, "none")
PROJECTIVE_PARAMS = (8, 9)  # a homography's predicted entries: 8 (h33 fixed to 1, the paper's) or all 9
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "elu": jax.nn.elu, "gelu": jax.nn.gelu}


def localization_identity(transform: str, *, num_control_points: int = 16, projective_params: int = 8) -> np.ndarray:
  """What a transformer's localisation net predicts at initialisation: the identity transform's parameters, less
  the fixed h33 of an 8-parameter homography.

  Args:
    transform: 'affine', 'projective', 'tps' or 'attention'.
    num_control_points: the TPS's control points.
    projective_params: 8 or 9 (PROJECTIVE_PARAMS), projective only.

  Returns:
    The identity's parameters, shaped as the net's output ((8,) for an 8-parameter homography).

  Raises:
    ValueError: projective_params not in PROJECTIVE_PARAMS.
  """
  check_projective_params(projective_params)
  identity = transforms.identity_array(transform, num_control_points=num_control_points)
  return identity.reshape(-1)[:8] if transform == "projective" and projective_params == 8 else identity


def check_projective_params(value, name: str = "projective_params") -> None:
  """Refuses a projective_params other than 8 or 9.

  Args:
    value: the value given.
    name: what to call it in the message (a config field, say).

  Raises:
    ValueError: naming `name`, the value and what is allowed.
  """
  if value not in PROJECTIVE_PARAMS or isinstance(value, bool):
    raise ValueError(f"{name} must be 8 (h33 fixed to 1) or 9 (all entries predicted); got {value!r}.")


def _identity_head(width: int, identity: np.ndarray, rngs: nnx.Rngs) -> nnx.Linear:
  """The final regression layer: zero kernel, the identity transform as bias (the paper's initialisation). It
  computes in float32 whatever the model's compute dtype: its outputs are the transform's parameters, which set the
  sampling coordinates (a bfloat16 parameter near 1 moves in steps of 2^-8)."""
  flat_identity = jnp.asarray(identity.reshape(-1), jnp.float32)
  return nnx.Linear(
    width,
    flat_identity.size,
    kernel_init=nnx.initializers.zeros,
    bias_init=lambda *_: flat_identity,
    dtype=jnp.float32,
    rngs=rngs,
  )


def _activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"FCNLocalization: activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {name!r}.")
  return ACTIVATIONS[name]


class FCNLocalization(nnx.Module):
  """flatten -> dense `hidden` layers (`activation`) -> dropout -> dense to the transform parameters.

  The defaults are the seed's: one hidden layer of 20 tanh units, dropout 0.2.

  Args:
    in_shape: (H, W, C) of the input.
    identity: the identity transform's parameters (the final layer's initial bias).
    hidden: widths of the hidden dense layers.
    activation: the hidden layers' nonlinearity: 'tanh', 'relu', 'elu' or 'gelu'.
    dropout: dropout rate before the final layer (training only).
    dtype: what the hidden layers compute in (None = float32); the final layer, the parameters and the transform
      parameters returned are float32 whatever it is.
    rngs: parameter initialisation.

  Raises:
    ValueError: hidden widths that are not positive ints, a dropout rate outside [0, 1), an unknown activation.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    identity: np.ndarray,
    *,
    hidden: Sequence[int] = (20,),
    activation: str = "tanh",
    dropout: float = 0.2,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    options.check_positive_ints("FCNLocalization", hidden=hidden)
    options.check_rate("FCNLocalization", "dropout", dropout)
    self.activation = activation
    _activation(activation)
    self.dense, width = dense_stack(int(np.prod(in_shape)), hidden, dtype=dtype, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.shape = identity.shape
    self.out = _identity_head(width, identity, rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = _activation(self.activation)(layer(x))
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.out(x).reshape(x.shape[0], *self.shape)


class CNNLocalization(nnx.Module):
  """A CNN localisation net: convolutions, then dense ReLU layers, dropout and dense to the transform parameters.

  (max-pool `downsample`x) -> conv ReLU (-> 2x2 max-pool) per entry of `features` -> flatten -> dense `hidden` ReLU
  -> dropout -> dense to the transform parameters.

  The paper's ST-CNN localisation net (its Appendix A): downsample=2, features=(20, 20), kernel_size=(5,),
  padding=('VALID',), pool=(True, False) (max-pooling between the two convolutions), hidden=(50,), dropout=0.

  Args:
    in_shape: (H, W, C) of the input.
    identity: the identity transform's parameters (the final layer's initial bias).
    downsample: the input is max-pooled by this factor (window and stride) before the convolutions; 1 = not.
    features: output channels of each convolution.
    kernel_size: side of the square kernels: one for every convolution, or one per convolution.
    strides: stride of the convolutions: one for all, or one per convolution (the co-localisation net's 4).
    padding: 'SAME' or 'VALID': one for all, or one per convolution.
    pool: whether a 2x2 max-pooling follows the convolution: one for all, or one per convolution.
    hidden: widths of the dense ReLU layers after the convolutions.
    dropout: dropout rate before the final layer (training only).
    conv: how the convolutions run: 'xla', 'patches', 'cpu_kernel' or 'auto' (see CNNClassifier).
    dtype: what the convolutions and hidden layers compute in (None = float32); the final layer, the parameters and
      the transform parameters returned are float32 whatever it is.
    rngs: parameter initialisation.

  Raises:
    ValueError: naming the option at fault (downsample, features or hidden not positive ints, a dropout rate outside
      [0, 1), an input smaller than `downsample`, a bad per-layer option, an input the convolutions shrink to
      nothing).
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    identity: np.ndarray,
    *,
    downsample: int = 1,
    features: Sequence[int] = (20, 20),
    kernel_size: Sequence[int] = (5,),
    strides: Sequence[int] = (1,),
    padding: Sequence[str] = ("SAME",),
    pool: Sequence[bool] = (True,),
    hidden: Sequence[int] = (20,),
    dropout: float = 0.2,
    conv: str = "auto",
    dtype=None,
    rngs: nnx.Rngs,
  ):
    options.check_positive_ints("CNNLocalization", downsample=downsample, features=features, hidden=hidden)
    options.check_rate("CNNLocalization", "dropout", dropout)
    h, w, c = in_shape
    if min(h, w) < downsample:
      raise ValueError(f"CNNLocalization: downsample {downsample} needs an input of >= {downsample} px; got {h}x{w}.")
    self.downsample = downsample
    self.convs, self.pools, (h, w, c) = conv_stack(
      "CNNLocalization",
      (h // downsample, w // downsample, c),
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
    self.dropout = nnx.Dropout(dropout)
    self.shape = identity.shape
    self.out = _identity_head(width, identity, rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | jax.Array | None = None) -> jax.Array:
    if self.downsample > 1:
      x = max_pool(x, self.downsample, self.convs[0].impl)
    x = apply_conv_stack(self.convs, self.pools, x)
    x = x.reshape(x.shape[0], -1)
    for layer in self.dense:
      x = jax.nn.relu(layer(x))
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    return self.out(x).reshape(x.shape[0], *self.shape)


LOCALIZATIONS = {"fcn": FCNLocalization, "cnn": CNNLocalization}
SAMPLERS = ("auto", "xla", "cpu_kernel")


def resolve_sampler(sampler: str, backend: str | None = None, num_devices: int = 1) -> str:
  """What the sampler option 'auto' means on a backend.

  'cpu_kernel' on the CPU backend when the kernel is built (spatial.cpu_kernels) and the run uses one device, else
  'xla': XLA does not partition the kernel's custom calls, so under a data-parallel jit over several (CPU) devices it
  would gather the whole batch onto each.

  Args:
    sampler: 'auto', 'xla' or 'cpu_kernel' (the last two returned as they are).
    backend: JAX's backend to choose for (default: the default backend).
    num_devices: the devices the run is data parallel over.

  Returns:
    'xla' or 'cpu_kernel'.

  Raises:
    ValueError: a `sampler` not in SAMPLERS.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}; got {sampler!r}.")
  if sampler != "auto":
    return sampler
  one_device = num_devices == 1
  return (
    "cpu_kernel" if (backend or jax.default_backend()) == "cpu" and one_device and cpu_kernels.available() else "xla"
  )


class SpatialTransformer(nnx.Module):
  """Localisation net + grid generator + bilinear sampler, channels-last.

  Args:
    in_shape: (H, W, C) of its input.
    transform: 'affine', 'projective', 'tps' (`num_control_points`) or 'attention' (scale, tx, ty).
    out_size: (H_out, W_out) of its output; default the input's.
    localization: 'fcn' or 'cnn' (LOCALIZATIONS).
    localization_options: keyword arguments of that localisation net (see FCNLocalization, CNNLocalization).
    num_control_points: TPS control points, a perfect square.
    projective_params: projective only: the localisation net predicts 8 entries of the homography and h33 is 1
      (the paper's 8-parameter projective transformation, kornia's too), or all 9 (free scale: stn_jax's runs
      before the option; its h33 drifts, and the horizon w = 0 can cross the output, where x / w diverges).
    align_corners: the grid and sampler convention.
    sampler: how the bilinear sampling runs (SAMPLERS): 'auto' (grid_sample's implementation=None: the CPU kernel
      on CPU when it is built, else XLA), 'xla' or 'cpu_kernel' (see stn_jax.grid_sample). A trainer records what
      'auto' chose (resolve_sampler) in the run's config.
    dtype: what the localisation net's convolutions and hidden layers compute in (None = float32). The transform
      parameters, the grid and the sampling are float32 whatever it is (the sampler computes in at least float32).
    rngs: parameter initialisation.

  Raises:
    ValueError: a sampler, transform or localization not among those allowed, num_control_points not a perfect
      square >= 4 (tps), projective_params not 8 or 9, or a localisation option that net refuses.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    *,
    transform: str = "affine",
    out_size: Sequence[int] | None = None,
    localization: str = "fcn",
    localization_options: dict | None = None,
    num_control_points: int = 16,
    projective_params: int = 8,
    align_corners: bool = False,
    sampler: str = "auto",
    dtype=None,
    rngs: nnx.Rngs,
  ):
    if sampler not in SAMPLERS:
      raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}; got {sampler!r}.")
    if transform not in stn_jax.KINDS:
      raise ValueError(f"transform must be one of {', '.join(map(repr, stn_jax.KINDS))}; got {transform!r}.")
    if localization not in LOCALIZATIONS:
      raise ValueError(f"localization must be one of {', '.join(map(repr, LOCALIZATIONS))}; got {localization!r}.")
    self.transform = transform
    self.out_size = tuple(out_size or in_shape[:2])
    self.align_corners = align_corners
    self.implementation = None if sampler == "auto" else sampler
    identity = localization_identity(
      transform, num_control_points=num_control_points, projective_params=projective_params
    )
    self.projective_params = projective_params
    self.localization = LOCALIZATIONS[localization](
      in_shape, identity, **(localization_options or {}), dtype=dtype, rngs=rngs
    )

  def transform_params(self, x, *, train: bool = False, rngs=None) -> jax.Array:
    """The predicted transform parameters ``(N, *param_shape)``: the localisation net's output, an 8-parameter
    homography's completed with h33 = 1."""
    params = self.localization(x, train=train, rngs=rngs)
    if self.transform == "projective" and self.projective_params == 8:
      params = jnp.concatenate([params, jnp.ones_like(params[:, :1])], axis=-1).reshape(-1, 3, 3)
    return params

  def params_and_grid(self, x, *, train: bool = False, rngs=None):
    """The predicted transform parameters ``(N, *param_shape)`` and sampling grid (N, H_out, W_out, 2).

    Args:
      x: (N, H, W, C) inputs, channels-last, of the transformer's `in_shape`.
      train: run the localisation net in training mode (dropout on).
      rngs: dropout's randomness where `train` (nnx.Rngs or a key), else None.

    Returns:
      (params, grid): the transform parameters ``(N, *param_shape)`` and the sampling grid (N, H_out, W_out, 2) of
      normalised input (x, y).
    """
    params = self.transform_params(x, train=train, rngs=rngs)
    grid = stn_jax.params_to_grid(params, self.out_size, kind=self.transform, align_corners=self.align_corners)
    return params, grid

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None) -> jax.Array:
    params = self.transform_params(x, train=train, rngs=rngs)  # float32, whatever x is, so the grid is too
    options = dict(kind=self.transform, size=self.out_size, align_corners=self.align_corners)
    return stn_jax.warp(x, params, **options, implementation=self.implementation)


class ParallelTransformers(nnx.Module):
  """Spatial transformers side by side (the paper's 2xST-FCN): each sees the whole input, and their outputs are
  concatenated along channels, transformer 0's channels first.

  Args:
    transformers: the SpatialTransformers, all of one output size.
  """

  def __init__(self, transformers: Sequence[SpatialTransformer]):
    self.members = nnx.List(list(transformers))

  @property
  def out_size(self) -> tuple[int, int]:
    return self.members[0].out_size

  def params_and_grid(self, x, *, train: bool = False, rngs=None):
    """Each transformer's parameters and grid, stacked along axis 1.

    Args:
      x: (N, H, W, C) inputs.
      train: the localisation nets in training mode.
      rngs: dropout's randomness where `train`.

    Returns:
      (params ``(N, T, *param_shape)``, grids (N, T, H_out, W_out, 2)) for T transformers.
    """
    pairs = [t.params_and_grid(x, train=train, rngs=_member_rngs(rngs, i)) for i, t in enumerate(self.members)]
    return tuple(jnp.stack(parts, axis=1) for parts in zip(*pairs, strict=True))

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None) -> jax.Array:
    outputs = [t(x, train=train, rngs=_member_rngs(rngs, i)) for i, t in enumerate(self.members)]
    return jnp.concatenate(outputs, axis=-1)


def _member_rngs(rngs, index: int):
  """Dropout's randomness for transformer `index`: its own key when given a key (an nnx.Rngs draws anew anyway)."""
  return jax.random.fold_in(rngs, index) if isinstance(rngs, jax.Array) else rngs


class STNClassifier(nnx.Module):
  """An optional spatial transformer (or several in parallel) in front of a classifier (FCN, CNN, ST-FCN, ST-CNN).

  Args:
    transformer: the SpatialTransformer, a ParallelTransformers, or None (a baseline).
    classifier: the classifier module (CLASSIFIERS), taking the transformer's output.
    in_channels: C of the inputs the model takes (checked at every call); None = not checked.

  Raises:
    ValueError: at a call, an input whose channels are not `in_channels`.
  """

  def __init__(self, transformer: SpatialTransformer | None, classifier: nnx.Module, in_channels: int | None = None):
    self.transformer = transformer
    self.classifier = classifier
    self.in_channels = in_channels

  def __call__(self, x: jax.Array, *, train: bool = False, rngs=None) -> jax.Array:
    check_channels(x, self.in_channels)
    if self.transformer is not None:
      x = self.transformer(x, train=train, rngs=rngs)
    return self.classifier(x)


def check_channels(x, channels: int | None) -> None:
  """Refuses inputs of another channel count than a model's.

  Args:
    x: the (N, H, W, C) inputs.
    channels: C of the model's inputs, or None (anything goes).

  Raises:
    ValueError: naming both channel counts.
  """
  if channels is not None and (x.ndim != 4 or x.shape[-1] != channels):
    got = f"{x.shape[-1]} channel(s), shape {tuple(x.shape)}" if x.ndim == 4 else f"shape {tuple(x.shape)}"
    raise ValueError(f"the model takes (N, H, W, {channels}) images of {channels} channel(s); got {got}.")


def count_params(model: nnx.Module) -> int:
  """The number of parameters of a model.

  Args:
    model: an NNX module.

  Returns:
    The count of its nnx.Param entries.
  """
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------------------------------------------------
# Building a model from a config's `model` section.
# ----------------------------------------------------------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
  """The `model` section of a config: the seed's affine ST-CNN.

  Every option of every localisation net and classifier kind is present (from the constructors' signatures), so each
  is overridable from the command line.

  Returns:
    The ConfigDict.
  """
  m = ml_collections.ConfigDict()
  m.transform = "affine"  # TRANSFORMS
  m.num_control_points = 16  # tps only: a perfect square
  m.projective_params = 8  # projective only: 8 (h33 = 1, the paper's) or 9 (all predicted: runs before the option)
  m.stn_output_size = ()  # () = the input's size
  m.match_params_of = ""  # baselines only: widen the classifier to this transform's parameter count
  m.num_transformers = 1  # spatial transformers in parallel, their outputs concatenated along channels
  m.match_transformers = 0  # > 0: widen the classifier to the count of the model with this many transformers
  m.sampler = "auto"  # SAMPLERS: how the bilinear sampling runs
  m.localization = ml_collections.ConfigDict({"kind": "fcn"})
  for kind, cls in LOCALIZATIONS.items():
    m.localization[kind] = options.default_options(cls)
  m.classifier = ml_collections.ConfigDict({"kind": "cnn"})
  for kind, cls in CLASSIFIERS.items():
    m.classifier[kind] = options.default_options(cls)
  return m


def config_docs() -> dict[str, str]:
  """The documentation of the `model` section's fields, the per-kind options' read from their constructors' docstrings.

  Returns:
    {field under model.: its documentation}.
  """
  docs = {
    "transform": f"the spatial transformer's transform: {', '.join(TRANSFORMS)} (none = a baseline without one)",
    "num_control_points": "TPS control points (a perfect square >= 4; the paper's 16)",
    "projective_params": "projective only: the homography entries the localisation net predicts: 8 (h33 fixed to "
    "1: the paper's 8-parameter transformation) or 9 (all: stn_jax's runs before the option, whose free scale lets "
    "w = 0 cross the output)",
    "stn_output_size": "the transformer's output (H, W); () = the input's",
    "match_params_of": "baselines only: widen the classifier's first hidden layer (a CNN without one: its last "
    "convolution) to the parameter count of this transform's model ('' = off)",
    "num_transformers": "spatial transformers in parallel (the paper's 2xST-FCN: 2), each with its own localisation "
    "net seeing the whole input; their outputs are concatenated along channels for the classifier",
    "match_transformers": "0 = off; N > 0: the reference model of the parameter match has N transformers (of "
    "match_params_of's transform for a baseline, of its own for a transformer model, which is then widened as a "
    "baseline is): every model of a table the size of, say, the 2-transformer one",
    "sampler": "how the transformer's bilinear sampling runs: auto (the C++ CPU kernel on CPU when it is built, "
    "else xla; a run records its choice), xla or cpu_kernel (the same function to float32 rounding)",
    "localization.kind": f"the localisation net: {', '.join(LOCALIZATIONS)}",
    "classifier.kind": f"the classifier: {', '.join(CLASSIFIERS)}",
  }
  for section, kinds in (("localization", LOCALIZATIONS), ("classifier", CLASSIFIERS)):
    for kind, cls in kinds.items():
      for name, doc in options.option_docs(cls).items():
        if name in options.option_names(cls):
          docs[f"{section}.{kind}.{name}"] = doc
  return docs


def _options(section) -> dict:
  """The chosen kind's options as plain keyword arguments (sequences as tuples: config.json stores lists)."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(section[section.kind]).items()}


def _build(
  m, in_shape, seed, *, transform, num_transformers=1, first_width=None, dtype=None, num_classes=10
) -> STNClassifier:
  rngs = nnx.Rngs(params=seed)
  transformer = None
  classifier_in = tuple(in_shape)
  if transform != "none":
    out_size = tuple(m.stn_output_size) if m.stn_output_size else tuple(in_shape[:2])
    members = [
      SpatialTransformer(
        in_shape,
        transform=transform,
        out_size=out_size,
        localization=m.localization.kind,
        localization_options=_options(m.localization),
        num_control_points=m.num_control_points,
        projective_params=m.get("projective_params", 9),
        sampler=m.get("sampler", "xla"),
        dtype=dtype,
        rngs=rngs,
      )
      for _ in range(num_transformers)
    ]
    transformer = members[0] if num_transformers == 1 else ParallelTransformers(members)
    classifier_in = (*out_size, in_shape[2] * num_transformers)
  classifier_options = _options(m.classifier)
  if first_width:
    classifier_options.update(_widened(m.classifier.kind, classifier_options, first_width))
  classifier = CLASSIFIERS[m.classifier.kind](
    classifier_in, **classifier_options, num_classes=num_classes, dtype=dtype, rngs=rngs
  )
  return STNClassifier(transformer, classifier, in_channels=in_shape[2])


def _widened(kind: str, classifier_options: dict, width: int) -> dict:
  """The classifier option that `match_params_of` widens: its first hidden layer, or a CNN's last convolution when
  it has no hidden layer."""
  hidden = tuple(classifier_options["hidden"])
  if hidden:
    return {"hidden": (width, *hidden[1:])}
  if kind == "cnn":
    return {"features": (*tuple(classifier_options["features"])[:-1], width)}
  raise ValueError("config.model.match_params_of needs a classifier with a hidden layer (or a CNN); got fcn with none.")


def _abstract_count(m, in_shape, transform, num_transformers, first_width=None, num_classes=10) -> int:
  options = dict(transform=transform, num_transformers=num_transformers, first_width=first_width)
  abstract = nnx.eval_shape(lambda: _build(m, in_shape, 0, **options, num_classes=num_classes))
  return count_params(abstract)


def param_count(model_config, in_shape: Sequence[int], num_classes: int = 10) -> int:
  """The number of parameters of the model a config's `model` section describes (built abstractly: no memory).

  Args:
    model_config: config.model.
    in_shape: the input's (H, W, C).
    num_classes: the classifier's logits.

  Returns:
    The count.
  """
  return count_params(nnx.eval_shape(lambda: create_model(model_config, in_shape, seed=0, num_classes=num_classes)))


def num_transformers(model_config) -> int:
  """The spatial transformers of the model a config's `model` section describes (0 for a baseline).

  Args:
    model_config: config.model (a config.json without the field: 1).

  Returns:
    The count.
  """
  return 0 if model_config.transform == "none" else int(model_config.get("num_transformers", 1))


def _reference(m) -> tuple[str, int] | None:
  """(transform, transformers) of the model whose parameter count this one is widened to, or None."""
  match = int(m.get("match_transformers", 0) or 0)
  if m.transform == "none":
    return (m.match_params_of, match or int(m.get("num_transformers", 1))) if m.get("match_params_of") else None
  if match and match != num_transformers(m):
    return (m.transform, match)
  return None


def has_xla_convolutions(model_config) -> bool:
  """Whether the model a config describes has lax.conv convolutions (CNN parts whose conv is, or resolves to, 'xla').

  Args:
    model_config: config.model.

  Returns:
    True when it has.
  """
  m = model_config
  parts = [m.classifier] + ([m.localization] if m.transform != "none" else [])  # a baseline has no localisation net
  return any(part.kind == "cnn" and resolve_conv(part.cnn.get("conv", "xla")) == "xla" for part in parts)


def budget_width(model_config, in_shape: Sequence[int], num_classes: int = 10) -> int:
  """The width that gives a model the parameter count of its reference model.

  The width (see `_widened`) of a baseline (`transform='none'`) that matches the same config with
  `model.match_params_of` as its transform (the paper compares models of equal size), with `match_transformers`
  transformers when it is set; or of a transformer model with `match_transformers` set, matching the same config with
  that many transformers. The count is affine in that width, so two evaluations give it exactly.

  Args:
    model_config: config.model of the model.
    in_shape: the input's (H, W, C).
    num_classes: the classifier's logits.

  Returns:
    The width.

  Raises:
    ValueError: a model with nothing to match (neither option set).
  """
  m = model_config
  reference = _reference(m)
  if reference is None:
    raise ValueError("config.model: nothing to match (match_params_of for a baseline, match_transformers otherwise).")
  target = _abstract_count(m, in_shape, *reference, num_classes=num_classes)
  own = (m.transform, num_transformers(m))
  at_1, at_2 = (_abstract_count(m, in_shape, *own, w, num_classes=num_classes) for w in (1, 2))
  return max(1, round(1 + (target - at_1) / (at_2 - at_1)))


def check_config(model_config, in_shape: Sequence[int], num_classes: int = 10) -> None:
  """Checks a config's `model` section by building the model abstractly (no parameters are allocated).

  So every option the constructors refuse is caught before any work.

  Args:
    model_config: config.model.
    in_shape: the input's (H, W, C).
    num_classes: the classifier's logits.

  Raises:
    ValueError: naming the `config.model` field at fault.
  """
  m = model_config
  for field, allowed in (
    ("transform", TRANSFORMS),
    ("localization.kind", tuple(LOCALIZATIONS)),
    ("classifier.kind", tuple(CLASSIFIERS)),
  ):
    value = m.transform if field == "transform" else m[field.split(".")[0]].kind
    if value not in allowed:
      raise ValueError(f"config.model.{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
  if m.transform == "tps":
    k = m.num_control_points
    side = round(k**0.5) if isinstance(k, int) and not isinstance(k, bool) and k > 0 else 0
    if side < 2 or side * side != k:
      raise ValueError(f"config.model.num_control_points must be a perfect square >= 4 (4, 9, 16, ...); got {k!r}.")
  if m.match_params_of and m.match_params_of not in stn_jax.KINDS:
    allowed = ", ".join(map(repr, stn_jax.KINDS))
    raise ValueError(f"config.model.match_params_of must be '' or one of {allowed}; got {m.match_params_of!r}.")
  for field, low in (("num_transformers", 1), ("match_transformers", 0)):
    value = m.get(field, low)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ValueError(f"config.model.{field} must be an int >= {low}; got {value!r}.")
  size = m.stn_output_size
  if size and (len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size)):
    raise ValueError(f"config.model.stn_output_size must be () or (height, width) > 0; got {tuple(size)!r}.")
  # Build each part abstractly (no parameters are allocated), so every option the constructors refuse is named.
  out_size = tuple(size) if size else tuple(in_shape[:2])
  parts = [("classifier", CLASSIFIERS, (*out_size, in_shape[2] * max(num_transformers(m), 1)), ())]
  if m.transform != "none":
    count = m.get("projective_params", 9)
    check_projective_params(count, "config.model.projective_params")  # named as the config field, before the build
    identity = localization_identity(m.transform, num_control_points=m.num_control_points, projective_params=count)
    parts.insert(0, ("localization", LOCALIZATIONS, tuple(in_shape), (identity,)))
  for section, kinds, shape, args in parts:
    cls, kwargs = kinds[m[section].kind], _options(m[section])
    try:
      nnx.eval_shape(
        lambda cls=cls, shape=shape, args=args, kwargs=kwargs: cls(shape, *args, **kwargs, rngs=nnx.Rngs(0))
      )
    except (TypeError, ValueError) as e:
      raise ValueError(f"config.model.{section}.{m[section].kind}: {e}") from None


def create_model(
  model_config, in_shape: Sequence[int], *, seed: int, dtype=None, num_classes: int = 10
) -> STNClassifier:
  """Builds the model a config's `model` section describes (see `default_config`).

  With `transform='none'` and `match_params_of` set to a transform, the classifier's first hidden layer is widened so
  that the baseline has as many parameters as its spatial-transformer counterpart (with `match_transformers`
  transformers when set); a transformer model with `match_transformers` set is widened to the count of the same model
  with that many transformers. `num_transformers` > 1 puts that many transformers in parallel (ParallelTransformers).

  Args:
    model_config: config.model.
    in_shape: the input's (H, W, C).
    seed: the parameters' initialisation (and dropout's base key).
    dtype: config.compute_dtype (None or float32, or bfloat16): what the convolutions and dense layers compute in;
      parameters, the transform's parameters, the grid, the sampler and the logits stay float32.
    num_classes: the classifier's logits (the dataset's classes: 19 for addition).

  Returns:
    The STNClassifier.

  Raises:
    ValueError: an option its constructors refuse, or `match_params_of` with an FCN classifier without a hidden
      layer.
  """
  m = model_config
  width = budget_width(m, in_shape, num_classes) if _reference(m) else None
  count = max(num_transformers(m), 1)
  return _build(
    m, in_shape, seed, transform=m.transform, num_transformers=count, first_width=width, dtype=dtype,
    num_classes=num_classes,
  )  # fmt: skip
