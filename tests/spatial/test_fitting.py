"""Transforms fitted to point pairs: exact on exact pairs, least squares against numpy, the direction (warping moves
src's content onto dst), batching, jit and grad, and clear errors; the TPS point map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax


def _project(h, points):
  homogeneous = np.concatenate([points, np.ones_like(points[..., :1])], -1)
  out = np.einsum("...ij,...nj->...ni", h, homogeneous)
  return out[..., :2] / out[..., 2:]


def test_affine_from_points_is_exact_for_exact_pairs_and_least_squares_otherwise():
  rng = np.random.default_rng()
  theta = np.eye(2, 3) + 0.3 * rng.standard_normal((5, 2, 3))
  dst = rng.uniform(-1, 1, (5, 7, 2))
  src = _project(np.concatenate([theta, np.tile([[0.0, 0.0, 1.0]], (5, 1, 1))], -2), dst)
  fitted = stn_jax.affine_from_points(jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32))
  np.testing.assert_allclose(np.asarray(fitted), theta, atol=2e-5)
  noisy = src + 0.05 * rng.standard_normal(src.shape)
  got = np.asarray(jax.jit(stn_jax.affine_from_points)(noisy.astype(np.float32), dst.astype(np.float32)))
  for b in range(5):  # numpy's least squares of [dst, 1] @ theta^T = src
    want, *_ = np.linalg.lstsq(np.concatenate([dst[b], np.ones((7, 1))], -1), noisy[b], rcond=None)
    np.testing.assert_allclose(got[b], want.T, atol=2e-4)


@pytest.mark.parametrize("n", [4, 9])
def test_homography_from_points_recovers_the_homography(n):
  rng = np.random.default_rng()
  h = np.eye(3) + 0.1 * rng.standard_normal((3, 3, 3))
  h /= h[..., 2:3, 2:3]
  dst = rng.uniform(-1, 1, (3, n, 2))
  src = _project(h, dst)
  fitted = np.asarray(stn_jax.homography_from_points(src.astype(np.float32), dst.astype(np.float32)))
  np.testing.assert_allclose(fitted[..., 2, 2], 1.0)
  np.testing.assert_allclose(_project(fitted, dst), src, atol=2e-4)  # H (dst, 1) ~ (src, 1)
  np.testing.assert_allclose(fitted, h, atol=2e-3)


@pytest.mark.parametrize("kind", ["affine", "projective"])
def test_warping_with_a_fitted_transform_moves_the_src_content_onto_dst(kind):
  rng = np.random.default_rng()
  size = 16
  image = rng.random((size, size, 1)).astype(np.float32)
  centres = np.asarray(stn_jax.pixel_centers(size))
  cells = rng.choice(size * size, 6, replace=False)
  dst = np.stack([centres[cells % size], centres[cells // size]], -1)
  shift = rng.integers(-3, 4, 2) * (2.0 / size)  # whole pixels: src lands on pixel centres too
  src = dst + shift
  fit = stn_jax.affine_from_points if kind == "affine" else stn_jax.homography_from_points
  params = fit(jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32))
  out = np.asarray(stn_jax.warp(jnp.asarray(image), params, kind=kind, mode="nearest"))
  # the output pixel at dst[k] shows the input pixel at src[k] (zero where src[k] is off the image)
  pixel = lambda c: int(np.rint((c + 1) * size / 2 - 0.5))
  for (dx, dy), (sx, sy) in zip(dst, src, strict=True):
    di, dj, si, sj = pixel(dy), pixel(dx), pixel(sy), pixel(sx)
    want = image[si, sj, 0] if 0 <= si < size and 0 <= sj < size else 0.0
    assert out[di, dj, 0] == pytest.approx(want, abs=1e-6)


def test_fits_are_differentiable_and_vmappable():
  rng = np.random.default_rng()
  dst = jnp.asarray(rng.uniform(-1, 1, (6, 2)), jnp.float32)
  src = dst * 0.8 + 0.1
  for fit in (stn_jax.affine_from_points, stn_jax.homography_from_points):
    grad = jax.grad(lambda s, fit=fit: jnp.sum(jnp.sin(fit(s, dst))))(src)
    assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).max() > 0
    batched = jax.vmap(fit)(jnp.stack([src, src + 0.05]), jnp.stack([dst, dst]))
    np.testing.assert_allclose(np.asarray(batched[0]), np.asarray(fit(src, dst)), atol=1e-5)


def test_too_few_or_degenerate_points_are_refused():
  line = np.stack([np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 5)], -1).astype(np.float32)
  with pytest.raises(ValueError, match=r"affine_from_points: needs N >= 3 point pairs; got 2"):
    stn_jax.affine_from_points(line[:2], line[:2])
  with pytest.raises(ValueError, match=r"affine_from_points: degenerate points: the dst points are collinear"):
    stn_jax.affine_from_points(line, line)
  with pytest.raises(ValueError, match=r"homography_from_points: needs N >= 4 point pairs; got 3"):
    stn_jax.homography_from_points(line[:3], line[:3])
  with pytest.raises(ValueError, match=r"homography_from_points: degenerate points"):
    stn_jax.homography_from_points(line[:4], line[:4])
  with pytest.raises(ValueError, match=r"src and dst must have the same shape"):
    stn_jax.homography_from_points(line[:4], line[:5])


def test_tps_transform_points_is_what_tps_grid_samples():
  rng = np.random.default_rng()
  source = jnp.asarray(stn_jax.tps_control_points(16) + 0.1 * rng.standard_normal((2, 16, 2)), jnp.float32)
  size = (7, 9)
  grid = np.asarray(stn_jax.tps_grid(source, size))
  centres = np.asarray(stn_jax.identity_grid(size)).reshape(1, -1, 2).repeat(2, 0)
  points = np.asarray(stn_jax.tps_transform_points(jnp.asarray(centres), source))
  np.testing.assert_allclose(points.reshape(2, *size, 2), grid, atol=1e-5)
  # the control points themselves go exactly where the spline sends them
  at_controls = stn_jax.tps_transform_points(stn_jax.tps_control_points(16), source[0])
  np.testing.assert_allclose(np.asarray(at_controls), np.asarray(source[0]), atol=1e-5)
  target = stn_jax.tps_control_points(16) * 0.9
  moved = stn_jax.tps_transform_points(target, source[0], target_points=target)
  np.testing.assert_allclose(np.asarray(moved), np.asarray(source[0]), atol=1e-5)


def _eight_by_eight(source, target):
  """The private solver the P distortion used before homography_from_points (the reference it must equal)."""
  x, y = target[:, 0], target[:, 1]
  u, v = source[:, 0], source[:, 1]
  zeros, ones = jnp.zeros(4), jnp.ones(4)
  rows_u = jnp.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
  rows_v = jnp.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
  h = jnp.linalg.solve(jnp.concatenate([rows_u, rows_v]), jnp.concatenate([u, v]))
  return jnp.concatenate([h, jnp.ones(1)]).reshape(3, 3)


def test_four_pairs_give_bitwise_the_solver_the_p_distortion_used():
  rng = np.random.default_rng()
  corners = jnp.array([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
  moved = jnp.asarray(corners * 0.9 + 0.1 * rng.standard_normal((64, 4, 2)), jnp.float32)
  ours = jax.jit(jax.vmap(lambda m: stn_jax.homography_from_points(src=corners, dst=m)))(moved)
  reference = jax.jit(jax.vmap(lambda m: _eight_by_eight(corners, m)))(moved)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))
