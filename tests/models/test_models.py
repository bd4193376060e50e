"""Models: shapes, the identity initialisation, and the paper's four model families by config."""

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stn_jax
from configs import default
from stn_jax import models


def _model(in_size=32, *, classifier="cnn", localization="fcn", cnn_hidden=None, **overrides):
  config = default.get_config()
  for key, value in overrides.items():
    setattr(config.model, key, value)
  config.model.classifier.kind = classifier
  config.model.localization.kind = localization
  if cnn_hidden:
    config.model.classifier.cnn.hidden = cnn_hidden
  return models.create_model(config.model, (in_size, in_size, 1), seed=0)


@pytest.mark.parametrize("transform", models.TRANSFORMS)
@pytest.mark.parametrize("classifier", models.CLASSIFIERS)
def test_logits_shape_for_every_transform_and_classifier(transform, classifier):
  model = _model(transform=transform, classifier=classifier, cnn_hidden=(64,))
  x = jnp.asarray(np.random.default_rng(0).random((3, 32, 32, 1)), jnp.float32)
  assert model(x).shape == (3, 10)
  assert (model.transformer is None) == (transform == "none")


@pytest.mark.parametrize("transform", ["affine", "projective", "tps", "attention"])
@pytest.mark.parametrize("localization", models.LOCALIZATIONS)
def test_untrained_transformer_returns_its_input(transform, localization):
  model = _model(transform=transform, localization=localization)
  x = jnp.asarray(np.random.default_rng(1).random((4, 32, 32, 1)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(model.transformer(x)), np.asarray(x))
  theta, _ = model.transformer.params_and_grid(x)
  identity = stn_jax.identity_params(transform, batch_shape=(4,))
  np.testing.assert_array_equal(np.asarray(theta), np.asarray(identity))
  # Training mode (dropout on) changes nothing at initialisation: the final kernel is zero.
  trained = model.transformer(x, train=True, rngs=jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(trained), np.asarray(x))


def test_output_size_resamples_the_whole_input():
  model = _model(in_size=60, stn_output_size=(40, 40))
  x = jnp.asarray(np.random.default_rng(2).random((2, 60, 60, 1)), jnp.float32)
  out = model.transformer(x)
  assert out.shape == (2, 40, 40, 1)
  expected = stn_jax.grid_sample(x, jnp.broadcast_to(stn_jax.identity_grid((40, 40)), (2, 40, 40, 2)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)
  assert model(x).shape == (2, 10)


def test_localization_final_layer_is_zero_kernel_identity_bias_and_unsquashed():
  model = _model()
  out = model.transformer.localization.out
  np.testing.assert_array_equal(np.asarray(out.kernel[...]), 0.0)
  np.testing.assert_array_equal(np.asarray(out.bias[...]), np.eye(2, 3).reshape(6))
  # Nothing squashes theta: a large bias passes through unchanged.
  out.bias[...] = out.bias[...] * 3.0
  x = jnp.ones((1, 32, 32, 1))
  np.testing.assert_allclose(np.asarray(model.transformer.localization(x))[0], 3 * np.eye(2, 3), atol=1e-6)


def test_seed_cnn_matches_the_seed_architecture():
  model = _model(in_size=40, transform="none")
  classifier = model.classifier
  assert [c.kernel[...].shape for c in classifier.convs] == [(3, 3, 1, 16), (3, 3, 16, 16)]
  assert classifier.dense[0].kernel[...].shape == (1600, 1024)  # 10 x 10 x 16 after two stride-2 convs
  assert classifier.head.kernel[...].shape == (1024, 10)


@pytest.mark.parametrize("classifier", models.CLASSIFIERS)
@pytest.mark.parametrize("transform", ["affine", "tps"])
def test_baselines_match_the_parameter_budget_of_their_st_version(classifier, transform):
  st = models.count_params(_model(in_size=40, classifier=classifier, transform=transform, cnn_hidden=(256,)))
  plain = models.count_params(_model(in_size=40, classifier=classifier, transform="none", cnn_hidden=(256,)))
  matched_model = _model(
    in_size=40, classifier=classifier, transform="none", match_params_of=transform, cnn_hidden=(256,)
  )
  matched = models.count_params(matched_model)
  assert plain < st
  # One unit of the widened layer adds (its inputs + 1 bias + the next layer's outputs) parameters: the match is
  # within one unit.
  dense = [*matched_model.classifier.dense, matched_model.classifier.head]
  inputs, _ = dense[0].kernel[...].shape
  unit = inputs + 1 + dense[1].kernel[...].shape[1]
  assert abs(matched - st) <= unit, (matched, st, unit)


def test_each_kind_gets_its_sub_config_as_keyword_arguments():
  config = default.get_config()
  m = config.model
  m.localization.kind = "cnn"
  m.localization.cnn.features, m.localization.cnn.kernel_size, m.localization.cnn.hidden = (3, 5), (7,), (11,)
  m.classifier.cnn.features, m.classifier.cnn.kernel_size, m.classifier.cnn.hidden = (6,), (5,), (13, 9)
  model = models.create_model(m, (40, 40, 1), seed=0)
  loc, cls = model.transformer.localization, model.classifier
  assert isinstance(loc, models.CNNLocalization) and isinstance(cls, models.CNNClassifier)
  assert [c.kernel[...].shape for c in loc.convs] == [(7, 7, 1, 3), (7, 7, 3, 5)]
  assert loc.dense[0].kernel[...].shape == (10 * 10 * 5, 11)
  assert [c.kernel[...].shape for c in cls.convs] == [(5, 5, 1, 6)]
  assert [d.kernel[...].shape[1] for d in cls.dense] == [13, 9]
  m.localization.kind, m.localization.fcn.activation, m.localization.fcn.hidden = "fcn", "relu", (4, 3)
  m.classifier.kind, m.classifier.fcn.hidden = "fcn", (17,)
  model = models.create_model(m, (40, 40, 1), seed=0)
  assert model.transformer.localization.activation == "relu"
  assert [d.kernel[...].shape for d in model.transformer.localization.dense] == [(1600, 4), (4, 3)]
  assert [d.kernel[...].shape for d in model.classifier.dense] == [(1600, 17)]


@pytest.mark.parametrize("section", ["localization", "classifier"])
def test_every_constructor_option_is_a_documented_config_field(section):
  kinds = {"localization": models.LOCALIZATIONS, "classifier": models.CLASSIFIERS}[section]
  config = default.get_config()
  docs = models.config_docs()
  for kind, cls in kinds.items():
    params = inspect.signature(cls.__init__).parameters
    # num_classes and dtype are the builder's (dtype: config.compute_dtype, for the whole model)
    keyword = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    options = keyword - {"num_classes", "dtype"}
    assert set(config.model[section][kind]) == options, (kind, options)
    for name in options:
      assert config.model[section][kind][name] == params[name].default
      assert len(docs[f"{section}.{kind}.{name}"]) > 10, (kind, name)


def test_classifiers_take_no_stray_keyword_arguments():
  model = _model(transform="none")
  x = jnp.ones((2, 32, 32, 1))
  with pytest.raises(TypeError, match="train"):
    model.classifier(x, train=True)
  with pytest.raises(TypeError):
    _model(classifier="fcn", transform="none").classifier(x, rngs=None)


@pytest.mark.parametrize("impl", ["patches", "cpu_kernel"])
@pytest.mark.parametrize(
  ("strides", "kernel", "c_out", "padding"),
  [(1, 5, 6, "SAME"), (2, 3, 6, "SAME"), (1, 4, 16, "SAME"), (1, 3, 32, "VALID"), (2, 3, 16, "SAME")],
)
def test_patches_and_kernel_convolutions_are_the_same_function_as_lax_conv(impl, strides, kernel, c_out, padding):
  from stn_jax.models.layers import Conv

  rng = np.random.default_rng()
  x = jnp.asarray(rng.standard_normal((3, 11, 10, 4)), jnp.float32)
  options = dict(strides=strides, padding=padding)
  reference = Conv(4, c_out, (kernel, kernel), **options, rngs=nnx.Rngs(0))
  other = Conv(4, c_out, (kernel, kernel), impl=impl, **options, rngs=nnx.Rngs(0))
  other.bias[...] = reference.bias[...] = jnp.asarray(rng.standard_normal(c_out), jnp.float32)
  np.testing.assert_array_equal(np.asarray(other.kernel[...]), np.asarray(reference.kernel[...]))  # same params
  # the kernel runs stride-1 layers with 16k output channels (and the others as patches)
  assert impl == "patches" or other._in_kernel(x) == (strides == 1 and c_out % 16 == 0)
  with jax.default_matmul_precision("highest"):
    want, got = np.asarray(reference(x)), np.asarray(other(x))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1))
  with jax.default_matmul_precision("highest"):
    (g_ref, gx_ref), (g_other, gx_other) = grad(reference, x), grad(other, x)
  np.testing.assert_allclose(np.asarray(gx_other), np.asarray(gx_ref), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_other.kernel[...]), np.asarray(g_ref.kernel[...]), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(g_other.bias[...]), np.asarray(g_ref.bias[...]), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="conv must be one of 'auto', 'xla', 'patches', 'cpu_kernel'; got 'fft'"):
    Conv(4, 6, (3, 3), impl="fft", rngs=nnx.Rngs(0))


def test_auto_convolutions_are_the_kernel_on_one_cpu_device_only():
  from stn_jax.spatial import cpu_kernels

  assert models.resolve_conv("auto", "cpu") == ("cpu_kernel" if cpu_kernels.available() else "patches")
  assert models.resolve_conv("auto", "cpu", num_devices=8) == "patches"  # custom calls are not partitioned
  assert models.resolve_conv("auto", "gpu") == "xla" and models.resolve_conv("patches", "gpu") == "patches"


@pytest.mark.parametrize("conv", ["xla", "patches", "cpu_kernel"])
def test_a_vmapped_population_of_patch_convolutions_has_no_grouped_convolution(conv):
  from stn_jax.training import optim, steps, train
  from tests.helpers import tiny_config

  k = 4
  config = tiny_config(**{"num_seeds": k, "model.classifier.cnn.conv": conv})
  if conv == "cpu_kernel":  # layers the kernel runs: stride 1 (the default's are stride 2), pooled
    config.model.classifier.cnn.strides, config.model.classifier.cnn.pool = (1,), (True,)
  graphdef, params = train.create_params(config)
  tx = optim.create_optimizer(config, steps.member_slice(params, 0, k), 12)
  state = (params, optim.init_state(config, params, 12), steps.zero_metric_sums(k))
  batch = {"image": jnp.zeros((k, 16, 32, 32, 1)), "label": jnp.zeros((k, 16), jnp.int32)}
  step = steps.make_train_step(graphdef, tx, 0, num_members=k, seed_mapping="vmap")
  hlo = step.lower(*state, batch, 0).compile().as_text()
  groups = [int(g) for g in re.findall(r"feature_group_count=(\d+)", hlo)]
  if conv == "xla":  # what the issue found: every per-model convolution becomes a grouped one
    assert k in groups
  elif conv == "patches":  # no convolution at all: strided slices, and products batched over the population
    assert "convolution(" not in hlo
    assert re.search(r"dot\(.*lhs_batch_dims=\{0\}", hlo)
  else:  # the kernel's convolutions take the population as their group axis
    assert "convolution(" not in hlo and "stn_conv" in hlo and "stn_max_pool" in hlo


def test_auto_seed_mapping_unrolls_on_cpu_only_for_lax_convolutions():
  from stn_jax.training import steps

  m = default.get_config().model
  assert m.classifier.cnn.conv == "auto" and not models.has_xla_convolutions(m)  # 'auto' is patches on CPU
  m.classifier.cnn.conv = m.localization.cnn.conv = "xla"
  assert models.has_xla_convolutions(m) and steps.resolve_seed_mapping("auto", xla_convolutions=True) == "unroll"
  m.classifier.cnn.conv = "patches"
  assert not models.has_xla_convolutions(m)  # an FCN localisation net and a patch-convolution classifier
  assert steps.resolve_seed_mapping("auto", xla_convolutions=False) == "vmap"
  m.localization.kind = "cnn"
  assert models.has_xla_convolutions(m)
  assert steps.resolve_seed_mapping("unroll", xla_convolutions=False) == "unroll"


# ----------------------------------------------------------------------------------------------------------------------
# Per-layer CNN options (the paper's networks).
# ----------------------------------------------------------------------------------------------------------------------


def _reference_stack(convs, pools, x):
  """conv (lax, the layer's own padding and stride) -> ReLU (-> 2x2 max-pool) with reduce_window: the reference."""
  for conv, pooled in zip(convs, pools, strict=True):
    y = jax.lax.conv_general_dilated(
      x,
      conv.kernel[...],
      (conv.strides,) * 2 if isinstance(conv.strides, int) else conv.strides,
      conv.padding,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )
    x = jax.nn.relu(y + conv.bias[...])
    if pooled:
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  return x


@pytest.mark.parametrize("conv", ["xla", "patches", "cpu_kernel"])
def test_paper_cnn_classifier_per_layer_kernels_padding_and_pooling(conv):
  rng = np.random.default_rng()
  features = tuple(int(f) for f in rng.integers(2, 7, size=2))
  if conv == "cpu_kernel":  # channel counts the kernel computes (and 16 * 5 - 12 = 68, one it pads)
    features = (16 * features[0], 16 * features[1] - 12)
  model = models.CNNClassifier(
    (42, 42, 1),
    features=features,
    kernel_size=(9, 7),
    strides=(1,),
    padding=("VALID",),
    pool=(True,),
    hidden=(),
    conv=conv,
    rngs=nnx.Rngs(int(rng.integers(1000))),
  )
  assert [c.kernel[...].shape for c in model.convs] == [(9, 9, 1, features[0]), (7, 7, features[0], features[1])]
  assert len(model.dense) == 0 and model.head.kernel[...].shape == (5 * 5 * features[1], 10)  # 42-8=34/2=17-6=11/2=5
  x = jnp.asarray(rng.random((3, 42, 42, 1)), jnp.float32)
  with jax.default_matmul_precision("highest"):
    got = model(x)
  features_out = _reference_stack(model.convs, model.pools, x).reshape(3, -1)
  expected = features_out @ model.head.kernel[...] + model.head.bias[...]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_paper_cnn_localization_downsamples_and_pools_between_its_convolutions():
  rng = np.random.default_rng()
  identity = stn_jax.identity_params("affine")
  loc = models.CNNLocalization(
    (42, 42, 1),
    np.asarray(identity),
    downsample=2,
    features=(3, 4),
    kernel_size=(5,),
    padding=("VALID",),
    pool=(True, False),
    hidden=(7,),
    dropout=0.0,
    rngs=nnx.Rngs(int(rng.integers(1000))),
  )
  assert loc.dense[0].kernel[...].shape == (4 * 4 * 4, 7)  # 42/2=21-4=17/2=8-4=4
  for layer in (*loc.dense, loc.out):  # random weights, so the output depends on every layer
    layer.kernel[...] = jnp.asarray(rng.normal(size=layer.kernel[...].shape), jnp.float32)
  x = jnp.asarray(rng.random((2, 42, 42, 1)), jnp.float32)
  with jax.default_matmul_precision("highest"):
    got = loc(x)
  down = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
  h = _reference_stack(loc.convs, loc.pools, down).reshape(2, -1)
  h = jax.nn.relu(h @ loc.dense[0].kernel[...] + loc.dense[0].bias[...])
  expected = (h @ loc.out.kernel[...] + loc.out.bias[...]).reshape(2, 2, 3)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  ("options", "words"),
  [
    ({"kernel_size": (3, 5, 7)}, ["CNNClassifier", "kernel_size", "one per convolution (2)", "(3, 5, 7)"]),
    ({"padding": ("FULL",)}, ["CNNClassifier", "padding", "'SAME' or 'VALID'", "FULL"]),
    ({"pool": (1,)}, ["CNNClassifier", "pool", "True or False", "(1,)"]),
    ({"strides": (0,)}, ["CNNClassifier", "strides", "positive ints", "(0,)"]),
    ({"kernel_size": (9,), "padding": ("VALID",), "pool": (True,)}, ["20x20", "shrinks to nothing", "convolution 2"]),
  ],
)
def test_bad_per_layer_options_are_named(options, words):
  with pytest.raises(ValueError) as info:
    models.CNNClassifier((20, 20, 1), **{"strides": (1,), **options}, rngs=nnx.Rngs(0))
  for word in words:
    assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("in_size", [32, 42])
def test_a_cnn_baseline_without_hidden_layers_is_widened_at_its_last_convolution(in_size):
  config = default.get_config()
  m = config.model
  m.classifier.cnn.features, m.classifier.cnn.kernel_size, m.classifier.cnn.strides = (8, 8), (9, 7), (1,)
  m.classifier.cnn.padding, m.classifier.cnn.pool, m.classifier.cnn.hidden = ("VALID",), (True,), ()
  m.localization.kind, m.transform = "cnn", "affine"
  st = models.param_count(m, (in_size, in_size, 1))
  m.transform, m.match_params_of = "none", "affine"
  matched = models.create_model(m, (in_size, in_size, 1), seed=0)
  last = matched.classifier.convs[-1].kernel[...].shape
  assert last[-1] > 8
  # One more channel of the last convolution adds its kernel's 7*7*8 inputs, a bias and its share of the head.
  unit = 7 * 7 * 8 + 1 + matched.classifier.head.kernel[...].shape[0] // last[-1] * 10
  assert abs(models.count_params(matched) - st) <= unit


def _addition_model(**overrides):
  config = default.get_config()
  config.model.classifier.kind = "fcn"
  for key, value in overrides.items():
    setattr(config.model, key, value)
  return config, models.create_model(config.model, (32, 32, 2), seed=0, num_classes=19)


def test_parallel_transformers_each_see_the_whole_input_and_concatenate_their_outputs():
  _, model = _addition_model(num_transformers=2)
  members = model.transformer.members
  assert isinstance(model.transformer, models.ParallelTransformers) and len(members) == 2
  # Move transformer 1 off the identity: the two then differ, and the concatenation keeps their order.
  members[1].localization.out.bias[...] = jnp.asarray([0.6, 0.1, 0.2, -0.1, 0.7, -0.2])
  x = jnp.asarray(np.random.default_rng(4).random((3, 32, 32, 2)), jnp.float32)
  out = np.asarray(model.transformer(x))
  assert out.shape == (3, 32, 32, 4)
  np.testing.assert_array_equal(out[..., :2], np.asarray(x))  # transformer 0 is still the identity
  np.testing.assert_array_equal(out[..., 2:], np.asarray(members[1](x)))
  expected = stn_jax.warp(x, jnp.broadcast_to(jnp.asarray([[0.6, 0.1, 0.2], [-0.1, 0.7, -0.2]]), (3, 2, 3)))
  np.testing.assert_allclose(out[..., 2:], np.asarray(expected), atol=1e-6)
  theta, grids = model.transformer.params_and_grid(x)
  assert theta.shape == (3, 2, 2, 3) and grids.shape == (3, 2, 32, 32, 2)
  np.testing.assert_array_equal(np.asarray(theta[:, 1]), np.asarray(members[1].params_and_grid(x)[0]))
  logits = model(x)
  assert logits.shape == (3, 19)
  # The classifier reads all four channels: changing transformer 1's output changes the logits.
  members[1].localization.out.bias[...] = jnp.asarray([0.5, 0.0, 0.0, 0.0, 0.5, 0.0])
  assert not np.allclose(np.asarray(model(x)), np.asarray(logits))
  # Each transformer has its own localisation net, initialised independently.
  k0, k1 = (np.asarray(m.localization.dense[0].kernel[...]) for m in members)
  assert k0.shape == (32 * 32 * 2, 20) and not np.array_equal(k0, k1)


@pytest.mark.parametrize("transform", ["affine", "tps"])
def test_match_transformers_sizes_every_model_to_the_two_transformer_one(transform):
  _, reference = _addition_model(transform=transform, num_transformers=2)
  target = models.count_params(reference)
  for overrides in (
    dict(transform=transform, num_transformers=1, match_transformers=2),
    dict(transform="none", match_params_of=transform, match_transformers=2),
  ):
    _, model = _addition_model(**overrides)
    dense = [*model.classifier.dense, model.classifier.head]
    unit = dense[0].kernel[...].shape[0] + 1 + dense[1].kernel[...].shape[1]
    assert abs(models.count_params(model) - target) <= unit, overrides
    _, unmatched = _addition_model(**{**overrides, "match_transformers": 0})
    assert models.count_params(unmatched) < target - unit
  # match_transformers equal to the model's own count changes nothing.
  _, same = _addition_model(transform=transform, num_transformers=2, match_transformers=2)
  assert models.count_params(same) == target


def test_a_model_refuses_inputs_of_another_channel_count_and_bad_transformer_counts():
  _, model = _addition_model(num_transformers=2)
  with pytest.raises(ValueError, match=r"takes \(N, H, W, 2\) images of 2 channel\(s\); got 1 channel\(s\)"):
    model(jnp.zeros((2, 32, 32, 1)))
  one = _model()
  with pytest.raises(ValueError, match=r"takes \(N, H, W, 1\) images of 1 channel\(s\); got 2 channel\(s\)"):
    one(jnp.zeros((2, 32, 32, 2)))
  for field, value in (("num_transformers", 0), ("num_transformers", -2), ("match_transformers", -1)):
    config = default.get_config()
    setattr(config.model, field, value)
    with pytest.raises(ValueError, match=rf"config.model.{field} must be an int >= \d; got {value!r}"):
      models.check_config(config.model, (32, 32, 1))


@pytest.mark.parametrize("count", models.PROJECTIVE_PARAMS)
def test_a_projective_transformer_predicts_8_entries_with_h33_one_or_all_9(count):
  """projective_params = 8: the localisation net has 8 outputs and h33 is 1 whatever its weights; 9: all entries
  predicted. Either way the transformer warps with the full matrix, as stn_jax.warp does with it."""
  rng = np.random.default_rng()
  model = _model(transform="projective", projective_params=count)
  out = model.transformer.localization.out
  assert out.bias[...].shape == (count,)
  np.testing.assert_array_equal(np.asarray(out.bias[...]), np.eye(3).reshape(-1)[:count])
  out.kernel[...] = jnp.asarray(rng.normal(0, 1e-4, out.kernel[...].shape), jnp.float32)
  out.bias[...] = out.bias[...] + jnp.asarray(rng.normal(0, 0.05, count), jnp.float32)
  x = jnp.asarray(rng.random((3, 32, 32, 1)), jnp.float32)
  theta, grid = model.transformer.params_and_grid(x)
  raw = np.asarray(model.transformer.localization(x)).reshape(3, count)
  assert theta.shape == (3, 3, 3)
  np.testing.assert_array_equal(np.asarray(theta).reshape(3, 9)[:, :count], raw)
  if count == 8:
    np.testing.assert_array_equal(np.asarray(theta)[:, 2, 2], 1.0)
  np.testing.assert_allclose(np.asarray(grid), np.asarray(stn_jax.projective_grid(theta, (32, 32))), atol=1e-6)
  expected = stn_jax.warp(x, theta, kind="projective", size=(32, 32), implementation="xla")
  np.testing.assert_allclose(np.asarray(model.transformer(x)), np.asarray(expected), atol=1e-5)
  # The parameter count differs by the h33 output (its kernel column and bias) of the 8-parameter net.
  other = _model(transform="projective", projective_params=17 - count)
  width = out.kernel[...].shape[0]
  assert models.count_params(model) - models.count_params(other) == (count - (17 - count)) * (width + 1)


def test_bad_projective_params_are_refused_and_old_configs_read_as_nine():
  from stn_jax.training import config_lib

  for value in (7, 10, True):
    config = default.get_config()
    config.model.transform = "projective"
    config.model.projective_params = value
    with pytest.raises(ValueError, match=rf"config.model.projective_params must be 8 .* or 9 .*; got {value!r}"):
      models.check_config(config.model, (32, 32, 1))
  old = config_lib.to_dict(default.get_config())
  del old["model"]["projective_params"]
  assert config_lib.migrate(old)["model"]["projective_params"] == 9
  assert default.get_config().model.projective_params == 8
