"""Grid generators: the transform T_theta of a spatial transformer.

A sampling grid has shape (..., H_out, W_out, 2); its last axis holds the normalised (x, y) input coordinates that each
output pixel reads, x running left to right and y top to bottom, both in [-1, 1] (the convention of
`torch.nn.functional.affine_grid`). With `align_corners=False` (the default) -1 and 1 are the outer edges of the corner
pixels, so pixel i of a row of W has centre (2i + 1) / W - 1; with `align_corners=True` they are the centres of the
corner pixels, so pixel i sits at 2i / (W - 1) - 1.

All functions are pure and accept any number of leading batch axes. `affine_grid`, `projective_grid` and `tps_grid`
are thin wrappers that convert nested lists with `jnp.asarray`, normalise the static `size` (any sequence of two
ints) and `align_corners`, and call a core jitted once at import.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.spatial import _validation as v

# Every matrix product of grid generation runs at full float32 precision: on GPUs the backend's default for float32
# products is TF32 (a 10-bit mantissa), which moves sampling coordinates by ~1e-3 (0.1 px on a 128-px image).
HIGHEST = jax.lax.Precision.HIGHEST


@v.keyword_only()
def pixel_centers(n: int, *, align_corners: bool = False) -> np.ndarray:
  """Normalised coordinates of the centres of `n` pixels along one axis, as float64 numpy.

  Args:
    n: number of pixels, >= 1.
    align_corners: see the module docstring.

  Returns:
    (n,) array: (2i + 1) / n - 1, or 2i / (n - 1) - 1 with `align_corners` (0 when n == 1).
  """
  i = np.arange(n, dtype=np.float64)
  if align_corners:
    return 2.0 * i / (n - 1) - 1.0 if n > 1 else np.zeros(1)
  return (2.0 * i + 1.0) / n - 1.0


def centre_coordinates(size: tuple[int, ...], *, align_corners: bool = False) -> np.ndarray:
  """(*size, k) float64 normalised coordinates (x, y[, z]) of the pixel (voxel) centres of a (H, W) or (D, H, W)
  grid: the identity grid, as numpy (a constant even where JAX is tracing)."""
  axes = np.meshgrid(*(pixel_centers(n, align_corners=align_corners) for n in size), indexing="ij")
  return np.stack(axes[::-1], -1)


def _identity_xy(size: tuple[int, int], align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
  height, width = size
  x, y = np.meshgrid(
    pixel_centers(width, align_corners=align_corners), pixel_centers(height, align_corners=align_corners)
  )
  return x, y


@v.keyword_only()
def identity_grid(size, *, align_corners: bool = False, dtype=jnp.float32) -> jax.Array:
  """The grid that reads every pixel at its own centre: `grid_sample(image, identity_grid(...))` returns `image`.

  Args:
    size: (H_out, W_out).
    align_corners: see the module docstring.
    dtype: floating dtype of the result.

  Returns:
    (H_out, W_out, 2) grid of (x, y).
  """
  size = v.check_size("identity_grid", "size", size)
  align_corners = v.check_bool("identity_grid", "align_corners", align_corners)
  x, y = _identity_xy(size, align_corners)
  return jnp.asarray(np.stack([x, y], axis=-1), dtype=dtype)


@v.keyword_only()
def affine_grid(theta: jax.Array, size, *, align_corners: bool = False) -> jax.Array:
  """Affine sampling grid, as `torch.nn.functional.affine_grid` but channels-last and with any batch shape.

  Args:
    theta: (..., 2, 3) floating; maps output normalised (x, y, 1) to input normalised (x, y). A nested list is
      converted with `jnp.asarray`. For a volume, (..., 3, 4) on (x, y, z, 1), as torch's 5-D affine_grid.
    size: (H_out, W_out), static: any sequence of two positive ints (a tuple, a list, numpy ints); for a volume
      (D_out, H_out, W_out).
    align_corners: see the module docstring.

  Returns:
    (..., H_out, W_out, 2) grid of input (x, y), dtype of `theta`; for a volume (..., D_out, H_out, W_out, 3) of
    (x, y, z).
  """
  func = "affine_grid"
  theta = v.as_array(func, "theta", theta)
  align_corners = v.check_bool(func, "align_corners", align_corners)
  if jnp.shape(theta)[-2:] == (3, 4):  # a volume
    v.check_floating(func, "theta", theta)
    size = _check_size_3d(func, size)
    return _affine_grid_3d_jit(theta, size, align_corners)
  size = v.check_size(func, "size", size)
  check_affine(func, "theta", theta)
  return _affine_grid_jit(theta, size, align_corners)


def _check_size_3d(func: str, size) -> tuple[int, int, int]:
  message = f"{func}: size must be three positive ints (depth, height, width) with a (..., 3, 4) theta; got {size!r}."
  try:
    items = tuple(int(s) for s in size if not isinstance(s, (bool, np.bool_)) and float(s) == int(s))
  except (TypeError, ValueError):
    raise TypeError(message) from None
  if len(items) != 3 or len(tuple(size)) != 3 or min(items) < 1:
    raise ValueError(message)
  return items


def _affine_grid_3d(theta, size, align_corners):
  """(..., 3, 4) theta -> (..., D, H, W, 3) grid of (x, y, z): torch's 5-D affine_grid, channels-last."""
  x, y, z = (
    jnp.asarray(c, theta.dtype) for c in np.moveaxis(centre_coordinates(size, align_corners=align_corners), -1, 0)
  )
  t = theta[..., None, None, None, :, :]
  return jnp.stack([t[..., i, 0] * x + t[..., i, 1] * y + t[..., i, 2] * z + t[..., i, 3] for i in range(3)], -1)


_affine_grid_3d_jit = jax.jit(_affine_grid_3d, static_argnums=(1, 2))


def check_affine(func: str, name: str, theta) -> None:
  v.check_floating(func, name, theta)
  v.check_trailing_shape(func, name, theta, (2, 3), what="(..., 2, 3)")


def affine_grid_core(theta, size, align_corners):
  """`affine_grid` of checked arguments, unjitted (the transforms inline it)."""
  return _affine_grid(size, align_corners, theta)


_affine_grid_jit = jax.jit(affine_grid_core, static_argnums=(1, 2))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _affine_grid(size, align_corners, theta):
  x, y = (jnp.asarray(c, theta.dtype) for c in _identity_xy(size, align_corners))
  # Written out rather than as a matmul: a contraction over 3 is far slower than three fused multiply-adds on CPU.
  t = theta[..., None, None, :, :]
  gx = t[..., 0, 0] * x + t[..., 0, 1] * y + t[..., 0, 2]
  gy = t[..., 1, 0] * x + t[..., 1, 1] * y + t[..., 1, 2]
  return jnp.stack([gx, gy], axis=-1)


@_affine_grid.defjvp
def _affine_grid_jvp(size, align_corners, primals, tangents):
  # The grid is linear in theta, so its tangent is the grid of the tangent; here as one contraction with the
  # (P, 3) pixel coordinates, so that reverse mode (its transpose) is one contraction over the H_out * W_out pixels
  # (the transpose of the multiply-adds above would be six separate reductions).
  (theta,), (d_theta,) = primals, tangents
  x, y = _identity_xy(size, align_corners)
  base = jnp.asarray(np.stack([x.ravel(), y.ravel(), np.ones(x.size)], axis=-1), d_theta.dtype)  # (P, 3)
  d_grid = jnp.einsum("...jk,pk->...pj", d_theta, base, precision=HIGHEST)
  return _affine_grid(size, align_corners, theta), d_grid.reshape(*d_theta.shape[:-2], *size, 2)


@v.keyword_only()
def projective_grid(matrix: jax.Array, size, *, align_corners: bool = False) -> jax.Array:
  """Projective (homography) sampling grid.

  Args:
    matrix: (..., 3, 3) floating; maps output normalised (x, y, 1) to homogeneous input coordinates (x', y', w'),
      and the grid holds (x' / w', y' / w'). A last row of (0, 0, 1) gives exactly `affine_grid(matrix[..., :2, :])`.
      A nested list is converted with `jnp.asarray`.
    size: (H_out, W_out), static: any sequence of two positive ints (a tuple, a list, numpy ints).
    align_corners: see the module docstring.

  Returns:
    (..., H_out, W_out, 2) grid of input (x, y), dtype of `matrix`. Where |w'| < HOMOGENEOUS_EPS (an output point on
    the transform's horizon, w' = 0, which float rounding hits exactly now and then) w' is taken as +-HOMOGENEOUS_EPS
    (its sign; + for 0): the point lies about 1e12 times (x', y') away, far outside any image, and the grid and its
    gradients stay finite (x' / 0 would be infinite and its gradient NaN). Elsewhere the grid is (x' / w', y' / w').
  """
  func = "projective_grid"
  matrix = v.as_array(func, "matrix", matrix)
  size = v.check_size(func, "size", size)
  align_corners = v.check_bool(func, "align_corners", align_corners)
  check_projective(func, "matrix", matrix)
  return _projective_grid_jit(matrix, size, align_corners)


def check_projective(func: str, name: str, matrix) -> None:
  v.check_floating(func, name, matrix)
  v.check_trailing_shape(func, name, matrix, (3, 3), what="(..., 3, 3)")


# The smallest |w'| a projective grid divides by: x' / eps stays far outside the image, and the gradient x' / eps^2 a
# finite float32 (the sampler's zero gradient outside the image then cancels it, where an infinity made NaN).
HOMOGENEOUS_EPS = 1e-12


def projective_grid_core(matrix, size, align_corners):
  """`projective_grid` of checked arguments, unjitted (the transforms inline it)."""
  x, y = (jnp.asarray(c, matrix.dtype) for c in _identity_xy(size, align_corners))
  m = matrix[..., None, None, :, :]
  hx = m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2]
  hy = m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2]
  hw = m[..., 2, 0] * x + m[..., 2, 1] * y + m[..., 2, 2]
  eps = jnp.asarray(HOMOGENEOUS_EPS, hw.dtype)
  hw = jnp.where(hw >= 0, jnp.maximum(hw, eps), jnp.minimum(hw, -eps))  # off the horizon; gradient 0 where clamped
  return jnp.stack([hx / hw, hy / hw], axis=-1)


_projective_grid_jit = jax.jit(projective_grid_core, static_argnums=(1, 2))


@v.keyword_only()
def tps_control_points(num_points: int = 16, *, dtype=jnp.float32) -> jax.Array:
  """The default thin-plate-spline control points: a regular sqrt(K) x sqrt(K) lattice over [-1, 1]^2.

  Args:
    num_points: K, a perfect square >= 4 (the paper uses 16).
    dtype: floating dtype of the result.

  Returns:
    (K, 2) points (x, y) in row-major order (y outer, x inner).
  """
  return jnp.asarray(control_lattice(num_points), dtype=dtype)


def control_lattice(num_points: int) -> np.ndarray:
  """`tps_control_points` as float64 numpy (a constant even where JAX is tracing); validates `num_points`."""
  side = round(float(num_points) ** 0.5) if isinstance(num_points, (int, np.integer)) else 0
  if isinstance(num_points, bool) or side < 2 or side * side != num_points:
    raise ValueError(
      f"tps: the number of control points must be a perfect square >= 4 (4, 9, 16, ...); got {num_points!r}."
    )
  c = np.linspace(-1.0, 1.0, side)
  x, y = np.meshgrid(c, c)
  return np.stack([x.ravel(), y.ravel()], axis=-1)


def _tps_radial(d2, xp):
  """U(r) = r^2 log r^2, with U(0) = 0."""
  safe = xp.where(d2 > 0, d2, 1.0)
  return xp.where(d2 > 0, d2 * xp.log(safe), 0.0)


def _tps_weights(target, query, xp):
  """(P, K) matrix M such that the spline through (target_k -> value_k) takes the value M @ value at `query`.

  Solves the usual TPS system [[U, P], [P^T, 0]] [w; a] = [value; 0] with P = [1, x, y]; the interpolant at a point q
  is [U(q, target), 1, q] @ [w; a], linear in the values.
  """
  k = target.shape[0]
  d2 = ((target[:, None, :] - target[None, :, :]) ** 2).sum(-1)
  poly = xp.concatenate([xp.ones((k, 1), target.dtype), target], axis=1)
  system = xp.concatenate(
    [
      xp.concatenate([_tps_radial(d2, xp), poly], axis=1),
      xp.concatenate([poly.T, xp.zeros((3, 3), target.dtype)], axis=1),
    ],
    axis=0,
  )
  rhs = xp.concatenate([xp.eye(k, dtype=target.dtype), xp.zeros((3, k), target.dtype)], axis=0)
  coefficients = xp.linalg.solve(system, rhs)  # (K + 3, K)
  q2 = ((query[..., :, None, :] - target[None, :, :]) ** 2).sum(-1)
  ones = xp.ones((*query.shape[:-1], 1), query.dtype)
  basis = xp.concatenate([_tps_radial(q2, xp), ones, query], axis=-1)
  return jnp.matmul(basis, coefficients, precision=HIGHEST) if xp is jnp else basis @ coefficients


def batched_tps_weights(target: jax.Array, query: jax.Array) -> jax.Array:
  """`_tps_weights` over any batch axes of the target points (..., K, 2) and the query points (..., P, 2)."""
  return jnp.vectorize(lambda t, q: _tps_weights(t, q, jnp), signature="(k,d),(p,d)->(p,k)")(target, query)


@v.keyword_only()
def tps_transform_points(points: jax.Array, source_points: jax.Array, *, target_points: jax.Array | None = None):
  """Maps points through the thin-plate spline `tps_grid` samples with: target control points onto source ones.

  Args:
    points: (..., P, 2) normalised (x, y) output coordinates.
    source_points: (..., K, 2) input coordinates of the control points (batch shape as `points`'s, or none).
    target_points: (..., K, 2) their output coordinates (batched or not); by default `tps_control_points(K)`.

  Returns:
    (..., P, 2): the input coordinates the spline gives each point, i.e. what `tps_grid` holds at a pixel centre
    (the output maps to the input: content at the returned point is drawn at `points`).
  """
  func = "tps_transform_points"
  points, source_points = v.as_array(func, "points", points), v.as_array(func, "source_points", source_points)
  for name, x in (("points", points), ("source_points", source_points)):
    v.check_floating(func, name, x)
    v.check_trailing_shape(func, name, x, (None, 2), what="(..., N, 2)")
  k = source_points.shape[-2]
  dtype = jnp.promote_types(jnp.result_type(points, source_points), jnp.float32)
  if target_points is None:
    target = jnp.asarray(control_lattice(k), dtype)
  else:
    target = v.as_array(func, "target_points", target_points).astype(dtype)
    check_tps(func, "source_points", source_points, target)
  weights = batched_tps_weights(target, points.astype(dtype))  # (..., P, K)
  displacement = jnp.einsum("...pk,...kd->...pd", weights, source_points.astype(dtype) - target, precision=HIGHEST)
  return points.astype(dtype) + displacement


@functools.lru_cache(maxsize=64)
def _default_tps_weights(num_points: int, size: tuple[int, int], align_corners: bool) -> np.ndarray:
  x, y = _identity_xy(size, align_corners)
  query = np.stack([x.ravel(), y.ravel()], axis=-1)
  return _tps_weights(control_lattice(num_points), query, np)


@v.keyword_only()
def tps_grid(source_points: jax.Array, size, *, target_points: jax.Array | None = None, align_corners: bool = False):
  """Thin-plate-spline sampling grid (the paper's TPS transformer).

  The spline maps each target control point (in output coordinates) onto its source point (in input coordinates) and
  interpolates with minimal bending in between. It is computed as the identity grid plus the spline of the
  displacements `source - target`, so equal points give exactly the identity grid, and points that are an affine image
  of the targets give the affine grid (to rounding).

  Args:
    source_points: (..., K, 2) floating (x, y) normalised input coordinates. A nested list is converted with
      `jnp.asarray`.
    size: (H_out, W_out), static: any sequence of two positive ints (a tuple, a list, numpy ints).
    target_points: (..., K, 2) output-space control points: one set, or a batch broadcasting with source_points'
      batch shape; by default `tps_control_points(K)`, whose spline weights are computed once in float64 and cached.
    align_corners: see the module docstring.

  Returns:
    (..., H_out, W_out, 2) grid of input (x, y), dtype of `source_points`.
  """
  func = "tps_grid"
  source_points = v.as_array(func, "source_points", source_points)
  if target_points is not None:
    target_points = v.as_array(func, "target_points", target_points)
  size = v.check_size(func, "size", size)
  align_corners = v.check_bool(func, "align_corners", align_corners)
  check_tps(func, "source_points", source_points, target_points)
  return _tps_grid_jit(source_points, size, target_points, align_corners)


def check_tps(func: str, name: str, source_points, target_points=None) -> None:
  v.check_floating(func, name, source_points)
  v.check_trailing_shape(func, name, source_points, (None, 2), what="(..., K, 2)")
  k = jnp.shape(source_points)[-2]
  if target_points is None:
    control_lattice(k)  # K must be a perfect square >= 4
    return
  v.check_floating(func, "target_points", target_points)
  shape = tuple(jnp.shape(target_points))
  try:
    np.broadcast_shapes(shape[:-2], tuple(jnp.shape(source_points))[:-2])
    ok = shape[-2:] == (k, 2)
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
      f"{func}: target_points must have shape (..., K, 2) = (..., {k}, 2), its batch shape broadcasting with "
      f"{name}'s; got shape {shape}."
    )


def tps_grid_core(source_points, size, target_points, align_corners):
  """`tps_grid` of checked arguments, unjitted (the transforms inline it)."""
  k = source_points.shape[-2]
  dtype = source_points.dtype
  if target_points is None:
    weights = jnp.asarray(_default_tps_weights(k, size, align_corners), dtype)
    target = jnp.asarray(control_lattice(k), dtype)
  else:
    target = jnp.asarray(target_points).astype(jnp.promote_types(dtype, jnp.float32))
    x, y = _identity_xy(size, align_corners)
    query = jnp.asarray(np.stack([x.ravel(), y.ravel()], axis=-1), target.dtype)
    weights = batched_tps_weights(target, query).astype(dtype)  # (..., P, K): a batch of target point sets too
    target = target.astype(dtype)
  displacement = jnp.einsum("...pk,...kd->...pd", weights, source_points - target, precision=HIGHEST)
  base = identity_grid(size, align_corners=align_corners, dtype=dtype)
  return base + displacement.reshape(*displacement.shape[:-2], *size, 2)


_tps_grid_jit = jax.jit(tps_grid_core, static_argnums=(1, 3))
