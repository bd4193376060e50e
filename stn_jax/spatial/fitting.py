"""Transforms fitted to point pairs: affine (least squares) and projective (kornia's get_perspective_transform).

Direction: a grid maps *output* coordinates to *input* coordinates, so the transform that moves the content at the
`src` points onto the `dst` points is the one that maps each dst point to its src point. Both functions return that
one: warping an image with it (`stn_jax.warp`) puts what was at src[k] at dst[k]. All points are normalised (x, y)
(see stn_jax.spatial.grids), batched over any leading axes, and the fits are differentiable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.spatial import _validation as v

HIGHEST = jax.lax.Precision.HIGHEST


def _check_pairs(func: str, src, dst, minimum: int) -> tuple[jax.Array, jax.Array]:
  src, dst = v.as_array(func, "src", src), v.as_array(func, "dst", dst)
  for name, x in (("src", src), ("dst", dst)):
    v.check_floating(func, name, x)
    v.check_trailing_shape(func, name, x, (None, 2), what="(..., N, 2)")
  if jnp.shape(src) != jnp.shape(dst):
    raise ValueError(f"{func}: src and dst must have the same shape; got {jnp.shape(src)} and {jnp.shape(dst)}.")
  if src.shape[-2] < minimum:
    raise ValueError(f"{func}: needs N >= {minimum} point pairs; got {src.shape[-2]}.")
  dtype = jnp.promote_types(jnp.result_type(src, dst), jnp.float32)
  return src.astype(dtype), dst.astype(dtype)


def _check_rank(func: str, what: str, matrix, rank: int) -> None:
  """Where the points are concrete (not traced), refuses a degenerate configuration by the rank of `matrix`."""
  if isinstance(matrix, jax.core.Tracer):
    return
  ranks = np.linalg.matrix_rank(np.asarray(matrix, np.float64).reshape(-1, *matrix.shape[-2:]))
  if np.any(ranks < rank):
    raise ValueError(f"{func}: degenerate points: {what}; got ranks {ranks.tolist()} (need {rank}).")


@v.keyword_only()
def affine_from_points(src: jax.Array, dst: jax.Array) -> jax.Array:
  """The least-squares affine theta that moves the content at `src` onto `dst`.

  Args:
    src: (..., N, 2) normalised (x, y), N >= 3; where the content is.
    dst: (..., N, 2); where it should go.

  Returns:
    (..., 2, 3) theta minimising sum_k |theta (dst_k, 1) - src_k|^2 (theta maps output to input, so
    `warp(image, theta)` moves src[k]'s content to dst[k]). Exact for N = 3 points in general position. Refuses
    fewer than 3 points, and (for concrete inputs) collinear dst points.
  """
  func = "affine_from_points"
  src, dst = _check_pairs(func, src, dst, 3)
  design = jnp.concatenate([dst, jnp.ones_like(dst[..., :1])], axis=-1)  # (..., N, 3)
  _check_rank(func, "the dst points are collinear", design, 3)
  gram = jnp.einsum("...ni,...nj->...ij", design, design, precision=HIGHEST)
  moment = jnp.einsum("...ni,...nj->...ij", design, src, precision=HIGHEST)  # (..., 3, 2)
  return jnp.swapaxes(jnp.linalg.solve(gram, moment), -1, -2)


def _normalising(points: jax.Array) -> jax.Array:
  """Hartley's normalisation: the (..., 3, 3) similarity moving the points' centroid to 0 and their mean distance
  from it to sqrt(2)."""
  centre = points.mean(-2)
  scale = jnp.sqrt(2.0) / jnp.maximum(jnp.linalg.norm(points - centre[..., None, :], axis=-1).mean(-1), 1e-12)
  zero, one = jnp.zeros_like(scale), jnp.ones_like(scale)
  rows = [
    jnp.stack([scale, zero, -scale * centre[..., 0]], -1),
    jnp.stack([zero, scale, -scale * centre[..., 1]], -1),
    jnp.stack([zero, zero, one], -1),
  ]
  return jnp.stack(rows, -2)


def _apply(matrix: jax.Array, points: jax.Array) -> jax.Array:
  homogeneous = jnp.concatenate([points, jnp.ones_like(points[..., :1])], -1)
  out = jnp.einsum("...ij,...nj->...ni", matrix, homogeneous, precision=HIGHEST)
  return out[..., :2] / out[..., 2:]


@v.keyword_only()
def homography_from_points(src: jax.Array, dst: jax.Array) -> jax.Array:
  """The homography that moves the content at `src` onto `dst`: kornia's get_perspective_transform(src, dst), in
  stn_jax's direction.

  Args:
    src: (..., N, 2) normalised (x, y), N >= 4; where the content is.
    dst: (..., N, 2); where it should go.

  Returns:
    (..., 3, 3) H with H (dst_k, 1) proportional to (src_k, 1), H[2, 2] = 1 (H maps output to input, so
    `warp(image, H, kind='projective')` moves src[k]'s content to dst[k]). N = 4: the exact solution of the 8x8
    system with H[2, 2] = 1. N > 4: the normalised direct linear transform (Hartley), the least-squares H in the
    normalised coordinates. Refuses fewer than 4 pairs and (for concrete inputs) degenerate ones (three collinear
    points of four, all points on one line).
  """
  func = "homography_from_points"
  src, dst = _check_pairs(func, src, dst, 4)
  if src.shape[-2] == 4:
    x, y, u, vv = dst[..., 0], dst[..., 1], src[..., 0], src[..., 1]
    zeros, ones = jnp.zeros_like(x), jnp.ones_like(x)
    rows_u = jnp.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = jnp.stack([zeros, zeros, zeros, x, y, ones, -vv * x, -vv * y], -1)
    system = jnp.concatenate([rows_u, rows_v], -2)  # (..., 8, 8)
    _check_rank(func, "three of the four points are collinear", system, 8)
    h = jnp.linalg.solve(system, jnp.concatenate([u, vv], -1)[..., None])[..., 0]
    return jnp.concatenate([h, jnp.ones_like(h[..., :1])], -1).reshape(*h.shape[:-1], 3, 3)
  t_src, t_dst = _normalising(src), _normalising(dst)
  s, d = _apply(t_src, src), _apply(t_dst, dst)
  x, y, u, vv = d[..., 0], d[..., 1], s[..., 0], s[..., 1]
  zeros, ones = jnp.zeros_like(x), jnp.ones_like(x)
  rows_u = jnp.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y, -u], -1)
  rows_v = jnp.stack([zeros, zeros, zeros, x, y, ones, -vv * x, -vv * y, -vv], -1)
  design = jnp.concatenate([rows_u, rows_v], -2)  # (..., 2N, 9)
  _check_rank(func, "the points do not determine a homography", design, 8)
  gram = jnp.einsum("...ni,...nj->...ij", design, design, precision=HIGHEST)
  _, vectors = jnp.linalg.eigh(gram)
  normalised = vectors[..., :, 0].reshape(*vectors.shape[:-2], 3, 3)  # the least-squares null vector
  h = jnp.einsum("...ij,...jk,...kl->...il", jnp.linalg.inv(t_src), normalised, t_dst, precision=HIGHEST)
  return h / h[..., 2:3, 2:3]
