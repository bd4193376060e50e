"""The public API keeps its conventions: documented, options keyword-only, every name exported."""

import inspect
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax

# Array arguments that may be passed positionally; everything else must be keyword-only.
_POSITIONAL = {
  "affine_grid": ("theta", "size"),
  "projective_grid": ("matrix", "size"),
  "tps_grid": ("source_points", "size"),
  "identity_grid": ("size",),
  "pixel_centers": ("n",),
  "tps_control_points": ("num_points",),
  "grid_sample": ("image", "grid"),
  "warp": ("image", "params"),
  "params_to_grid": ("params", "size"),
  "param_shape": ("kind",),
  "identity_params": ("kind",),
  "affine_theta": (),
  "attention_theta": ("params",),
  "compose_affine": ("a", "b"),
  "invert_affine": ("theta",),
  "theta_to_pixel_matrix": ("theta",),
  "pixel_matrix_to_theta": ("matrix",),
  "affine_from_points": ("src", "dst"),
  "homography_from_points": ("src", "dst"),
  "tps_transform_points": ("points", "source_points"),
  "flow_grid": ("flow",),
  "compose_flows": ("a", "b"),
  "integrate_velocity": ("velocity",),
}


def test_every_public_function_is_exported_documented_and_keyword_only():
  functions = {name: getattr(stn_jax, name) for name in stn_jax.__all__ if callable(getattr(stn_jax, name))}
  assert set(functions) == set(_POSITIONAL), set(functions) ^ set(_POSITIONAL)
  for name, fn in functions.items():
    doc = inspect.getdoc(fn) or ""
    assert len(doc) > 40, f"{name} has no real docstring"
    parameters = inspect.signature(fn).parameters.values()
    positional = tuple(p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY)
    assert positional == _POSITIONAL[name], (name, positional)


def test_image_functions_document_shapes():
  for name in ("affine_grid", "projective_grid", "tps_grid", "grid_sample", "warp"):
    doc = inspect.getdoc(getattr(stn_jax, name))
    assert "Args:" in doc and "Returns:" in doc and "H_out" in doc, name


def _keyword_only_options(fn):
  return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_an_option_given_positionally_names_the_function_the_option_and_the_value():
  rng = np.random.default_rng()
  for name, positional in _POSITIONAL.items():
    fn = getattr(stn_jax, name)
    options = _keyword_only_options(fn)
    if not options:
      continue
    value = int(rng.integers(1000, 10**6))  # matches no option's choices: the first keyword-only option is named
    with pytest.raises(TypeError) as info:
      fn(*[object()] * len(positional), value)
    message = str(info.value)
    assert "\n" not in message, message
    for word in (f"{name}: {options[0]} is keyword-only", f"got {value} as positional argument {len(positional) + 1}"):
      assert word in message, (word, message)
    assert f"{name}({', '.join(positional)}{', ' if positional else ''}{options[0]}={value})" in message, message


def test_a_positional_option_is_matched_to_the_option_it_fits():
  rng = np.random.default_rng()
  image, theta = jnp.ones((2, 5, 5, 1)), jnp.tile(jnp.eye(2, 3), (2, 1, 1))
  grid = stn_jax.affine_grid(theta, (3, 3))
  for option, choices in (("mode", stn_jax.MODES), ("padding_mode", stn_jax.PADDING_MODES)):
    value = str(rng.choice(choices))
    for fn, second in ((stn_jax.grid_sample, grid), (stn_jax.warp, theta)):
      with pytest.raises(TypeError, match=rf": {option} is keyword-only; got '{value}' .*{option}='{value}'"):
        fn(image, second, value)
  kind = str(rng.choice(stn_jax.KINDS))
  with pytest.raises(TypeError, match=rf"^warp: kind is keyword-only; got '{kind}' as positional argument 3"):
    stn_jax.warp(image, theta, kind)
  flag = bool(rng.integers(2))
  with pytest.raises(TypeError, match=rf"^affine_grid: align_corners is keyword-only; got {flag} "):
    stn_jax.affine_grid(theta, (3, 3), flag)
  size = [int(s) for s in rng.integers(2, 50, 2)]
  with pytest.raises(TypeError, match=rf"^warp: size is keyword-only; got \[{size[0]}, {size[1]}\] "):
    stn_jax.warp(image, theta, size)
  with pytest.raises(TypeError, match=r"^theta_to_pixel_matrix: input_size is keyword-only; got \(.*\) as positional"):
    stn_jax.theta_to_pixel_matrix(theta, tuple(size))


@pytest.mark.parametrize("form", ["list", "numpy ints", "numpy array"])
def test_size_may_be_any_sequence_of_two_ints_and_compiles_once(form, caplog):
  rng = np.random.default_rng()
  h, w = (int(s) for s in rng.integers(2, 9, 2))
  size = {"list": [h, w], "numpy ints": (np.int64(h), np.int32(w)), "numpy array": np.array([h, w])}[form]
  theta = jnp.asarray(np.eye(2, 3) + 0.1 * rng.standard_normal((2, 2, 3)), jnp.float32)
  image = jnp.asarray(rng.standard_normal((2, 6, 7, 1)), jnp.float32)
  matrix = jnp.concatenate([theta, jnp.broadcast_to(jnp.asarray([[0.0, 0.0, 1.0]]), (2, 1, 3))], axis=1)
  points = stn_jax.identity_params("tps", batch_shape=(2,)) + 0.05
  calls = {
    "affine_grid": lambda s: stn_jax.affine_grid(theta, s),
    "projective_grid": lambda s: stn_jax.projective_grid(matrix, s),
    "tps_grid": lambda s: stn_jax.tps_grid(points, s),
    "params_to_grid": lambda s: stn_jax.params_to_grid(theta, s, kind="affine"),
    "warp": lambda s: stn_jax.warp(image, theta, size=s),
    "identity_grid": lambda s: stn_jax.identity_grid(s),
  }
  for name, call in calls.items():
    expected = np.asarray(call((h, w)))
    assert expected.shape[-3:-1] == (h, w), name
    np.testing.assert_array_equal(np.asarray(call(size)), expected, err_msg=name)
  # The sizes are normalised before the jitted core: the same (h, w) compiles once, whatever sequence holds it.
  with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
    stn_jax.affine_grid(theta, size)
    stn_jax.affine_grid(theta, (h, w))
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]
    new_size = (20 + 10 * ["list", "numpy ints", "numpy array"].index(form) + h, w)  # compiled by no other test
    stn_jax.affine_grid(theta, new_size)  # a new size does compile (the check can fail)
  assert len([r for r in caplog.records if "Compiling" in r.getMessage()]) == 1


@pytest.mark.parametrize(
  ("call", "words"),
  [
    (
      lambda: stn_jax.affine_grid(jnp.zeros((2, 3)), [4.0, 4.0]),
      ["affine_grid: size", "pair of positive ints", "[4.0, 4.0]"],
    ),
    (lambda: stn_jax.warp(jnp.ones((4, 4, 1)), jnp.eye(2, 3), size="44"), ["warp: size", "'44'"]),
    (lambda: stn_jax.tps_grid(jnp.zeros((4, 2)), [4, 4, 4]), ["tps_grid: size", "[4, 4, 4]"]),
  ],
)
def test_bad_sizes_name_the_function_and_the_value(call, words):
  with pytest.raises(TypeError) as info:
    call()
  for word in words:
    assert word in str(info.value), (word, str(info.value))
