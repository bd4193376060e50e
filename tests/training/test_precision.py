"""Sampling coordinates must not depend on the backend: every matrix product of grid generation and the transform
helpers, and of their gradients, runs at HIGHEST precision. On GPUs the default for float32 products is TF32 (a
10-bit mantissa); the lowered program is the same on every backend, so CPU can check it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stn_jax
from tests.helpers import product_precisions


def unprecise_products(fn, *args) -> list[str]:
  """The precisions of fn's lowered matrix products and convolutions that are not HIGHEST."""
  return [p for p in product_precisions(jax.jit(fn).lower(*args).as_text()) if p != "HIGHEST"]


def _inputs():
  rng = np.random.default_rng()
  lattice = np.asarray(stn_jax.tps_control_points(16))
  return {
    "theta": jnp.asarray(np.eye(2, 3) + 0.1 * rng.standard_normal((3, 2, 3)), jnp.float32),
    "matrix": jnp.asarray(np.eye(3) + 0.05 * rng.standard_normal((3, 3, 3)), jnp.float32),
    "points": jnp.asarray(lattice + 0.05 * rng.standard_normal((3, 16, 2)), jnp.float32),
    "target": jnp.asarray(lattice + 0.02 * rng.standard_normal((16, 2)), jnp.float32),
    "attention": jnp.asarray([1.0, 0.0, 0.0] + 0.1 * rng.standard_normal((3, 3)), jnp.float32),
    "image": jnp.asarray(rng.random((3, 9, 8, 2)), jnp.float32),
    "grid": jnp.asarray(rng.uniform(-1.2, 1.2, (3, 5, 6, 2)), jnp.float32),
    "angles": jnp.asarray(rng.uniform(-1, 1, (3,)), jnp.float32),
    "theta3": jnp.asarray(np.eye(3, 4) + 0.1 * rng.standard_normal((3, 3, 4)), jnp.float32),
    "volume": jnp.asarray(rng.random((3, 4, 5, 6, 2)), jnp.float32),
  }


CASES = {
  "affine_grid": (lambda x: stn_jax.affine_grid(x["theta"], (5, 6)), ("theta",)),
  "projective_grid": (lambda x: stn_jax.projective_grid(x["matrix"], (5, 6)), ("matrix",)),
  "tps_grid": (lambda x: stn_jax.tps_grid(x["points"], (5, 6)), ("points",)),
  "tps_grid(target_points)": (
    lambda x: stn_jax.tps_grid(x["points"], (5, 6), target_points=x["target"]),
    ("points", "target"),
  ),
  "tps_transform_points": (
    lambda x: stn_jax.tps_transform_points(x["target"] * 0.7, x["points"], target_points=x["target"]),
    ("points", "target"),
  ),
  "affine_from_points": (lambda x: stn_jax.affine_from_points(x["points"], x["points"] * 0.9 + 0.05), ("points",)),
  "homography_from_points(4)": (
    lambda x: stn_jax.homography_from_points(x["points"][:, :4], x["points"][:, :4] * 0.9 + 0.05),
    ("points",),
  ),
  "homography_from_points(16)": (
    lambda x: stn_jax.homography_from_points(x["points"], x["points"] * 0.9 + 0.05),
    ("points",),
  ),
  "affine_grid(volume)": (
    lambda x: stn_jax.grid_sample(x["volume"], stn_jax.affine_grid(x["theta3"], (2, 3, 4))),
    ("volume", "theta3"),
  ),
  "integrate_velocity": (lambda x: stn_jax.integrate_velocity(2 * x["grid"], num_steps=3), ("grid",)),
  "compose_affine": (lambda x: stn_jax.compose_affine(x["theta"], x["theta"][::-1]), ("theta",)),
  "invert_affine": (lambda x: stn_jax.invert_affine(x["theta"]), ("theta",)),
  "affine_theta": (lambda x: stn_jax.affine_theta(rotation=x["angles"], shear=0.1 * x["angles"]), ("angles",)),
  "attention_theta": (lambda x: stn_jax.attention_theta(x["attention"]), ("attention",)),
  "theta_to_pixel_matrix": (
    lambda x: stn_jax.theta_to_pixel_matrix(x["theta"], input_size=(9, 8), output_size=(5, 6)),
    ("theta",),
  ),
  "pixel_matrix_to_theta": (
    lambda x: stn_jax.pixel_matrix_to_theta(x["matrix"], input_size=(9, 8), output_size=(5, 6)),
    ("matrix",),
  ),
  **{
    f"grid_sample({mode})": (
      lambda x, mode=mode: stn_jax.grid_sample(x["image"], x["grid"], mode=mode),
      ("image", "grid"),
    )
    for mode in stn_jax.MODES
  },
  **{
    f"warp({kind})": (
      lambda x, kind=kind, key=key: stn_jax.warp(x["image"], x[key], kind=kind, size=(5, 6)),
      ("image", key),
    )
    for kind, key in (("affine", "theta"), ("projective", "matrix"), ("tps", "points"), ("attention", "attention"))
  },
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_product_of_grids_transforms_and_their_gradients_is_at_highest_precision(name):
  fn, differentiable = CASES[name]
  x = _inputs()
  assert unprecise_products(fn, x) == [], "forward"
  for arg in differentiable:

    def loss(value, arg=arg):
      out = fn({**x, arg: value})
      return jnp.sum(out * jnp.cos(out))

    assert unprecise_products(jax.grad(loss), x[arg]) == [], f"gradient with respect to {arg}"


def test_the_check_finds_a_default_precision_product():
  a = jnp.ones((4, 3))
  assert len(unprecise_products(lambda m: m @ m.T, a)) == 1
  assert unprecise_products(lambda m: jnp.matmul(m, m.T, precision=jax.lax.Precision.HIGHEST), a) == []
  conv = lambda m: jax.lax.conv(m[None, None], m[None, None, :2, :2], (1, 1), "VALID")
  assert len(unprecise_products(conv, a)) == 1


@pytest.mark.parametrize("precision", ["default", "high", "highest"])
def test_matmul_precision_sets_the_models_own_products(precision):
  from stn_jax.training import optim, steps, train
  from tests.helpers import tiny_config

  config = tiny_config(matmul_precision=precision)
  graphdef, params = train.create_params(config)
  tx = optim.create_optimizer(config, params, 12)
  state = (params, tx.init(params), steps.zero_metric_sums())
  batch = {"image": jnp.zeros((16, 32, 32, 1)), "label": jnp.zeros((16,), jnp.int32)}
  train_step = steps.make_train_step(graphdef, tx, 0, precision=precision)
  found = product_precisions(train_step.lower(*state, batch, 0).as_text())
  assert len(found) > 10  # the model's dense layers and convolutions, forward and backward
  want = {"default": "DEFAULT", "high": "HIGH", "highest": "HIGHEST"}[precision]
  assert set(found) == ({want} if precision == "highest" else {want, "HIGHEST"})
  # the HIGHEST ones at lower settings are the grid's (affine_grid's VJP contraction): always exact
  assert precision == "highest" or found.count("HIGHEST") == 1
  evaluation = steps.make_eval_step(graphdef, precision=precision).lower(params, {**batch, "mask": batch["label"] > 0})
  assert set(product_precisions(evaluation.as_text())) == {want}


@pytest.mark.parametrize("conv", ["xla", "patches"])
def test_bfloat16_runs_the_layers_in_bfloat16_and_keeps_the_grid_and_the_state_float32(conv, monkeypatch):
  from stn_jax.training import optim, steps, train
  from tests.helpers import products, tiny_config

  config = tiny_config(
    compute_dtype="bfloat16",
    **{"model.localization.kind": "cnn", "model.localization.cnn.conv": conv, "model.classifier.cnn.conv": conv},
  )
  graphdef, params = train.create_params(config)
  tx = optim.create_optimizer(config, params, 12)
  state = (params, tx.init(params), steps.zero_metric_sums())
  rng = np.random.default_rng()
  batch = {
    "image": jnp.asarray(rng.random((16, 32, 32, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
  }
  seen = []  # what reaches the warp (grid and sampler) inside the train step
  warp = stn_jax.warp
  monkeypatch.setattr(stn_jax, "warp", lambda x, p, **kw: seen.append((x.dtype, p.dtype)) or warp(x, p, **kw))
  train_step = steps.make_train_step(graphdef, tx, 0)
  found = products(train_step.lower(*state, batch, 0).as_text())
  assert seen == [(jnp.float32, jnp.float32)]  # the input image and the transform (so its grid is float32 too)
  convolutions = [p for p in found if p["op"] == "convolution"]
  dots = [p for p in found if p["op"] == "dot_general"]
  if conv == "xla":  # 4 convolutions, each forward and backward (the first layers' data gradients included)
    assert len(convolutions) >= 8 and all(p["operands"] == ["bf16", "bf16"] for p in convolutions), convolutions
  else:
    assert convolutions == []
  in_bf16 = [p for p in dots if p["operands"] == ["bf16", "bf16"]]
  in_f32 = [p for p in dots if p not in in_bf16]
  assert len(in_bf16) >= 8  # the dense layers (and the patch products), forward and backward
  # In float32: only the localisation head (6 affine parameters) and the grid generator's contraction (HIGHEST).
  assert all(p["operands"] == ["f32", "f32"] for p in in_f32), in_f32
  head = [p for p in in_f32 if any(s.endswith("x6") or s.startswith("6x") or "x6x" in s for s in p["shapes"])]
  grid = [p for p in in_f32 if p["precision"] == "HIGHEST"]
  assert len(head) == 3 and len(grid) == 1 and len(in_f32) == 4, in_f32
  # The state stays float32 after a step; the loss is finite.
  new_params, new_opt_state, sums = train_step(*state, batch, 0)
  leaves = jax.tree.leaves((new_params, new_opt_state))
  assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
  assert sums["loss"].dtype == jnp.float32 and np.isfinite(float(sums["loss"]))


def test_bfloat16_logits_are_float32_and_near_the_float32_models():
  from stn_jax.training import train
  from tests.helpers import tiny_config

  rng = np.random.default_rng()
  x = jnp.asarray(rng.random((8, 32, 32, 1)), jnp.float32)
  logits = {}
  for dtype in ("float32", "bfloat16"):
    graphdef, params = train.create_params(tiny_config(compute_dtype=dtype))  # the same parameters (seed 0)
    logits[dtype] = nnx.merge(graphdef, params)(x)
  assert logits["bfloat16"].dtype == jnp.float32
  scale = float(jnp.abs(logits["float32"]).max())
  error = float(jnp.abs(logits["bfloat16"] - logits["float32"]).max())
  assert 0 < error < 0.05 * scale  # rounded (not float32 in disguise), but only by bfloat16's 8 bits per layer
