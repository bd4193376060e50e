"""Grid generators: torch parity for affine_grid, projective == affine, the TPS identity and affine properties."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax
from stn_jax.spatial import cpu_kernels, grids
from tests import helpers


def _random_theta(rng, batch):
  return (np.eye(2, 3) + 0.3 * rng.standard_normal((*batch, 2, 3))).astype(np.float32)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_matches_torch(align_corners):
  torch = helpers.torch_or_skip()
  rng = np.random.default_rng(10)
  theta = _random_theta(rng, (3,))
  ours = stn_jax.affine_grid(theta, (5, 7), align_corners=align_corners)
  reference = torch.nn.functional.affine_grid(torch.tensor(theta), (3, 1, 5, 7), align_corners=align_corners)
  np.testing.assert_allclose(np.asarray(ours), reference.numpy(), rtol=1e-6, atol=1e-6)


def test_affine_grid_gradient_matches_autodiff_of_the_formula():
  rng = np.random.default_rng(11)
  theta = jnp.asarray(_random_theta(rng, (2, 3)))
  cotangent = jnp.asarray(rng.standard_normal((2, 3, 4, 6, 2)), jnp.float32)
  base = jnp.asarray(
    np.concatenate([np.asarray(stn_jax.identity_grid((4, 6))), np.ones((4, 6, 1))], -1), jnp.float32
  )  # (H, W, 3)
  plain = lambda t: jnp.einsum("hwk,...jk->...hwj", base, t)
  np.testing.assert_allclose(np.asarray(stn_jax.affine_grid(theta, (4, 6))), np.asarray(plain(theta)), atol=1e-6)
  ours = jax.vjp(lambda t: stn_jax.affine_grid(t, (4, 6)), theta)[1](cotangent)[0]
  reference = jax.vjp(plain, theta)[1](cotangent)[0]
  np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_with_affine_last_row_equals_affine(align_corners):
  rng = np.random.default_rng(12)
  theta = _random_theta(rng, (4,))
  matrix = np.concatenate([theta, np.broadcast_to([[0.0, 0.0, 1.0]], (4, 1, 3))], axis=1).astype(np.float32)
  np.testing.assert_allclose(
    np.asarray(stn_jax.projective_grid(matrix, (6, 5), align_corners=align_corners)),
    np.asarray(stn_jax.affine_grid(theta, (6, 5), align_corners=align_corners)),
    rtol=1e-6,
    atol=1e-6,
  )


def test_projective_divides_by_the_third_component():
  rng = np.random.default_rng(13)
  matrix = (np.eye(3) + 0.2 * rng.standard_normal((3, 3))).astype(np.float64)
  grid = np.asarray(stn_jax.projective_grid(matrix.astype(np.float32), (3, 4)))
  x, y = np.meshgrid(stn_jax.pixel_centers(4), stn_jax.pixel_centers(3))
  h = np.einsum("jk,hwk->hwj", matrix, np.stack([x, y, np.ones_like(x)], -1))
  np.testing.assert_allclose(grid, h[..., :2] / h[..., 2:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_points", [4, 9, 16])
@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_identity_is_exact(num_points, align_corners):
  points = stn_jax.tps_control_points(num_points)
  grid = stn_jax.tps_grid(jnp.broadcast_to(points, (2, num_points, 2)), (7, 9), align_corners=align_corners)
  identity = stn_jax.identity_grid((7, 9), align_corners=align_corners)
  np.testing.assert_array_equal(np.asarray(grid), np.broadcast_to(np.asarray(identity), (2, 7, 9, 2)))


@pytest.mark.parametrize("num_points", [9, 16])
def test_tps_of_affinely_moved_points_is_the_affine_grid(num_points):
  rng = np.random.default_rng(14)
  theta = _random_theta(rng, (3,))
  target = np.asarray(stn_jax.tps_control_points(num_points), np.float64)
  source = np.einsum("njk,pk->npj", theta.astype(np.float64), np.concatenate([target, np.ones((num_points, 1))], -1))
  grid = stn_jax.tps_grid(jnp.asarray(source, jnp.float32), (8, 6))
  np.testing.assert_allclose(np.asarray(grid), np.asarray(stn_jax.affine_grid(theta, (8, 6))), atol=2e-5)


def test_tps_interpolates_its_control_points_and_accepts_custom_targets():
  rng = np.random.default_rng(15)
  # Control points on pixel centres of a 5x5 output (align_corners=True puts them at -1, -0.5, 0, 0.5, 1).
  target = np.asarray(stn_jax.tps_control_points(9), np.float32)
  source = target + 0.2 * rng.standard_normal(target.shape).astype(np.float32)
  grid = np.asarray(stn_jax.tps_grid(source, (5, 5), align_corners=True))
  np.testing.assert_allclose(grid[::2, ::2].reshape(9, 2), source, atol=1e-5)
  # The same targets given explicitly (a traced array) give the same grid as the cached default.
  explicit = jax.jit(lambda s, t: stn_jax.tps_grid(s, (5, 5), target_points=t, align_corners=True))(source, target)
  np.testing.assert_allclose(np.asarray(explicit), grid, atol=1e-5)


def test_tps_is_smooth_between_points_and_differentiable():
  rng = np.random.default_rng(16)
  source = stn_jax.tps_control_points(16) + 0.1 * jnp.asarray(rng.standard_normal((16, 2)), jnp.float32)
  g = jax.grad(lambda s: (stn_jax.tps_grid(s, (6, 6)) ** 2).sum())(source)
  assert g.shape == (16, 2) and np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


@pytest.mark.parametrize(
  ("fn", "args", "error", "words"),
  [
    (stn_jax.affine_grid, (np.zeros((2, 3, 3), np.float32), (4, 4)), ValueError, ["theta", "(..., 2, 3)", "(2, 3, 3)"]),
    (stn_jax.affine_grid, (np.zeros((2, 3), np.float32), (4, 0)), ValueError, ["size", "positive", "(4, 0)"]),
    (stn_jax.affine_grid, (np.zeros((2, 3), np.float32), 4), TypeError, ["size", "(height, width)", "4"]),
    (stn_jax.affine_grid, (np.zeros((2, 3), np.int32), (4, 4)), TypeError, ["theta", "floating", "int32"]),
    (stn_jax.projective_grid, (np.zeros((2, 3), np.float32), (4, 4)), ValueError, ["matrix", "(..., 3, 3)"]),
    (stn_jax.tps_grid, (np.zeros((10, 2), np.float32), (4, 4)), ValueError, ["perfect square", "10"]),
    (stn_jax.tps_grid, (np.zeros((16, 3), np.float32), (4, 4)), ValueError, ["source_points", "(..., K, 2)"]),
  ],
)
def test_grid_errors_name_the_problem(fn, args, error, words):
  with pytest.raises(error) as info:
    fn(*args)
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_tps_target_points_shape_mismatch():
  with pytest.raises(ValueError, match=r"target_points must have shape \(\.\.\., K, 2\) = \(\.\.\., 16, 2\).*\(9, 2\)"):
    stn_jax.tps_grid(jnp.zeros((16, 2)), (4, 4), target_points=jnp.zeros((9, 2)))


def test_nested_lists_are_converted_like_arrays():
  rng = np.random.default_rng()
  theta = _random_theta(rng, (2,))
  matrix = (np.eye(3) + 0.1 * rng.standard_normal((3, 3))).astype(np.float32)
  points = (np.asarray(stn_jax.tps_control_points(9)) + 0.1 * rng.standard_normal((9, 2))).astype(np.float32)
  target = np.asarray(stn_jax.tps_control_points(9))
  pairs = [
    (stn_jax.affine_grid(theta.tolist(), [5, 4]), stn_jax.affine_grid(theta, (5, 4))),
    (stn_jax.projective_grid(matrix.tolist(), [3, 6]), stn_jax.projective_grid(matrix, (3, 6))),
    (stn_jax.tps_grid(points.tolist(), [4, 4]), stn_jax.tps_grid(points, (4, 4))),
    (stn_jax.tps_grid(points, (4, 4), target_points=target.tolist()), stn_jax.tps_grid(points, (4, 4))),
  ]
  for got, expected in pairs:
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)
  # A list of ints becomes an int32 array, which is not a transform: the error says to write floats.
  with pytest.raises(TypeError, match=r"^affine_grid: theta must have a floating dtype .*; got int32 \(Python ints"):
    stn_jax.affine_grid([[1, 0, 0], [0, 1, 0]], (4, 4))
  with pytest.raises(TypeError, match=r"write floats, e\.g\. 1\.0"):
    stn_jax.affine_grid([[1, 0, 0], [0, 1, 0]], (4, 4))


def test_a_positional_option_of_a_function_without_positional_arguments_says_so():
  with pytest.raises(TypeError) as info:
    stn_jax.affine_theta(0.5)
  message = str(info.value)
  assert "Write affine_theta(rotation=0.5); every argument is keyword-only" in message and "nothing" not in message


@pytest.mark.parametrize(
  ("call", "words"),
  [
    (lambda: stn_jax.affine_grid("theta", (4, 4)), ["affine_grid: theta must be an array", "'theta'", "str"]),
    (lambda: stn_jax.projective_grid([[1.0, 0.0], [1.0]], (4, 4)), ["projective_grid: matrix", "[[1.0, 0.0], [1.0]]"]),
    (lambda: stn_jax.tps_grid(None, (4, 4)), ["tps_grid: source_points", "None", "NoneType"]),
    (lambda: stn_jax.tps_grid(jnp.zeros((4, 2)), (4, 4), target_points={"a": 1}), ["target_points", "{'a': 1}"]),
  ],
)
def test_what_is_not_array_like_is_a_type_error_naming_the_argument(call, words):
  with pytest.raises(TypeError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message and "must be an array" in message, message
  for word in words:
    assert word in message, (word, message)


def test_forward_mode_works_through_every_grid():
  # docs/sampling.md's "Autodiff" bullet: affine_grid has a custom JVP; the other grids are plain JAX.
  rng = np.random.default_rng()
  matrix = jnp.asarray(np.eye(3) + 0.1 * rng.standard_normal((2, 3, 3)), jnp.float32)
  points = stn_jax.tps_control_points(9) + 0.1 * jnp.asarray(rng.standard_normal((9, 2)), jnp.float32)
  theta = jnp.asarray(_random_theta(rng, (2,)))
  for fn, x in (
    (lambda m: stn_jax.projective_grid(m, (3, 4)), matrix),
    (lambda p: stn_jax.tps_grid(p, (3, 4)), points),
    (lambda t: stn_jax.affine_grid(t, (3, 4)), theta),
  ):
    np.testing.assert_allclose(np.asarray(jax.jacfwd(fn)(x)), np.asarray(jax.jacrev(fn)(x)), rtol=1e-5, atol=1e-5)
  affine = lambda t: stn_jax.affine_grid(t, (3, 4))
  hessian = jax.hessian(lambda t: (affine(t) ** 2).sum())(theta)
  np.testing.assert_allclose(
    np.asarray(hessian), np.asarray(jax.jacrev(jax.jacrev(lambda t: (affine(t) ** 2).sum()))(theta)), rtol=1e-5
  )
  assert np.abs(np.asarray(hessian)).max() > 0


def test_tps_grid_takes_a_batch_of_target_point_sets():
  rng = np.random.default_rng()
  lattice = np.asarray(stn_jax.tps_control_points(9))
  source = jnp.asarray(lattice + 0.1 * rng.standard_normal((3, 9, 2)), jnp.float32)
  target = jnp.asarray(lattice + 0.05 * rng.standard_normal((3, 9, 2)), jnp.float32)
  batched = np.asarray(stn_jax.tps_grid(source, (5, 6), target_points=target))
  for b in range(3):
    one = np.asarray(stn_jax.tps_grid(source[b], (5, 6), target_points=target[b]))
    np.testing.assert_allclose(batched[b], one, atol=1e-6)
  points = stn_jax.tps_transform_points(target, source, target_points=target)  # control points map exactly
  np.testing.assert_allclose(np.asarray(points), np.asarray(source), atol=1e-5)
  with pytest.raises(ValueError, match=r"target_points must have shape .*broadcasting.*got shape \(2, 9, 2\)"):
    stn_jax.tps_grid(source, (5, 6), target_points=target[:2])


def test_a_torch_style_size_is_refused_with_the_size_to_pass():
  theta = jnp.broadcast_to(jnp.eye(2, 3), (2, 2, 3))
  with pytest.raises(TypeError, match=re.escape("torch's (N, C, H, W) size is (H, W) here, size[-2:] = (48, 64).")):
    stn_jax.affine_grid(theta, (2, 3, 48, 64))
  assert stn_jax.affine_grid(theta, (48, 64)).shape == (2, 48, 64, 2)


@pytest.mark.parametrize("implementation", ["xla", "cpu_kernel"])
def test_a_horizon_through_the_output_keeps_the_grid_and_the_gradients_finite(implementation):
  """w' = 0 exactly at some output points (the horizon of the homography through them; float rounding in training
  hits it): the grid there is far outside the image (|w'| taken as HOMOGENEOUS_EPS, its sign kept), elsewhere
  x' / w'; the warp and its gradient with respect to the matrix are finite (they were inf and NaN)."""
  if implementation == "cpu_kernel" and not cpu_kernels.available():
    pytest.skip("the CPU kernel is not built")
  rng = np.random.default_rng()
  size = (5, 7)  # odd: the middle column's x is exactly 0 (align_corners=False)
  a, b = rng.uniform(0.5, 2.0, 2)
  matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [a, 0.0, 0.0]], np.float32)  # w' = a x
  matrix[:2] += rng.normal(0, 0.1, (2, 3)).astype(np.float32)
  matrix[2, 1] = 0.0
  grid = np.asarray(stn_jax.projective_grid(matrix, size))
  x, y = np.meshgrid(stn_jax.pixel_centers(size[1]), stn_jax.pixel_centers(size[0]))
  h = np.einsum("jk,hwk->hwj", matrix.astype(np.float64), np.stack([x, y, np.ones_like(x)], -1))
  on = h[..., 2] == 0
  assert on[:, size[1] // 2].all() and on.sum() == size[0]
  eps = grids.HOMOGENEOUS_EPS
  np.testing.assert_allclose(grid[~on], h[~on][:, :2] / h[~on][:, 2:], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grid[on], h[on][:, :2] / eps, rtol=1e-4)
  assert np.isfinite(grid).all()
  image = jnp.asarray(rng.random((1, 6, 8, 2)), jnp.float32)
  weights = jnp.asarray(rng.random((1, *size, 2)), jnp.float32)

  def loss(m):
    out = stn_jax.warp(image, m[None], kind="projective", size=size, implementation=implementation)
    return jnp.sum(out * weights) * b

  value, grad = jax.value_and_grad(loss)(jnp.asarray(matrix))
  assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
  # The gradient is the finite-difference slope of the loss (the horizon column samples zeros: constant).
  direction = rng.normal(0, 1, (3, 3)).astype(np.float32)
  direction[2] = 0.0  # moving the last row moves the horizon off the grid points: a jump, not a slope
  step = 1e-3
  slope = (loss(jnp.asarray(matrix + step * direction)) - loss(jnp.asarray(matrix - step * direction))) / (2 * step)
  np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(slope), rtol=2e-2, atol=2e-3)
