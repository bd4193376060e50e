"""Transform parameterisations shared by the models and the data generators, and `warp`.

A transform always maps *output* coordinates to *input* coordinates (the sampler reads the input where the grid says),
so the warped image shows the content moved by the inverse map: `warp(image, affine_theta(scale=2.0))` zooms *out*.
To move the content by a map A, warp with `invert_affine(A)`.

Kinds and their parameters (per image):
  affine      (2, 3) theta, normalised (x, y, 1) -> (x, y)
  projective  (3, 3) homography in the same coordinates
  tps         (K, 2) source control points (x, y) of a thin-plate spline over `tps_control_points(K)`
  attention   (3,) (scale, tx, ty): theta = [[scale, 0, tx], [0, scale, ty]], the paper's attention transformer
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from stn_jax.spatial import _validation as v
from stn_jax.spatial import cpu_kernels, flows, grids, sampling

KINDS = ("affine", "projective", "tps", "attention")
WARP_KINDS = (*KINDS, "flow")  # warp also takes dense displacement fields (stn_jax.spatial.flows)


@v.keyword_only()
def param_shape(kind: str, *, num_control_points: int = 16, spatial_dims: int = 2) -> tuple[int, ...]:
  """The per-image parameter shape of a transform kind (see the module docstring).

  Args:
    kind: 'affine', 'projective', 'tps' or 'attention' (KINDS).
    num_control_points: K, the TPS's control points (a perfect square >= 4).
    spatial_dims: 2 for images, 3 for volumes (affine only).

  Returns:
    (2, 3), (3, 3), (K, 2) or (3,); (3, 4) on (x, y, z, 1) for a volume.
  """
  v.check_choice("param_shape", "kind", kind, KINDS)
  if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
    raise ValueError(f"param_shape: spatial_dims must be 2 or 3; got {spatial_dims!r}.")
  if spatial_dims == 3:
    v.check_choice("param_shape", "kind (of a volume)", kind, ("affine",))
    return (3, 4)
  if kind == "tps":
    grids.tps_control_points(num_control_points)  # validates K
  return {"affine": (2, 3), "projective": (3, 3), "tps": (num_control_points, 2), "attention": (3,)}[kind]


@v.keyword_only()
def identity_params(
  kind: str, *, batch_shape=(), num_control_points: int = 16, spatial_dims: int = 2, dtype=jnp.float32
) -> jax.Array:
  """Parameters of the identity transform of `kind`: the biases of a localisation net's final layer at init.

  Args:
    kind: 'affine', 'projective', 'tps' or 'attention' (KINDS).
    batch_shape: leading shape to broadcast to.
    num_control_points: K, the TPS's control points (its identity is the lattice of `tps_control_points(K)`).
    spatial_dims: 2 for images, 3 for volumes (affine only: eye(3, 4)).
    dtype: the result's dtype.

  Returns:
    (*batch_shape, *param_shape(kind)) parameters; `warp` with them returns the image unchanged.
  """
  p = identity_array(kind, num_control_points=num_control_points, spatial_dims=spatial_dims)
  return jnp.broadcast_to(jnp.asarray(p, dtype), tuple(batch_shape) + p.shape)


def identity_array(kind: str, *, num_control_points: int = 16, spatial_dims: int = 2) -> np.ndarray:
  """`identity_params` of one image as a float64 numpy array (usable where JAX is tracing)."""
  shape = param_shape(kind, num_control_points=num_control_points, spatial_dims=spatial_dims)
  if spatial_dims == 3:
    return np.eye(3, 4)
  if kind == "affine":
    p = np.eye(2, 3)
  elif kind == "projective":
    p = np.eye(3)
  elif kind == "tps":
    p = grids.control_lattice(num_control_points)
  else:
    p = np.array([1.0, 0.0, 0.0])
  return p.reshape(shape)


@v.keyword_only()
def affine_theta(
  *, rotation=0.0, shear=0.0, scale=1.0, scale_xy=None, translation=(0.0, 0.0), aspect=None, dtype=jnp.float32
):
  """`theta = [R(rotation) @ Shear(shear) @ diag(scale * scale_xy) | translation]`, broadcast over batch shapes.

  R(a) = [[cos a, -sin a], [sin a, cos a]] and Shear(s) = [[1, -sin s], [0, cos s]] (the seed project's shear) act
  on normalised (x, y). Every argument broadcasts against the others' batch shape.

  Normalised coordinates run over [-1, 1] along both axes whatever the image's shape (torch's convention too), so on a
  non-square image a rotation in them is not rigid: squares become parallelograms. `aspect` = W / H of the image
  (input and output of one shape, or of one aspect ratio) makes the linear part act in pixels instead, rigid as
  kornia's `rotate`: theta's linear part is diag(1 / aspect, 1) @ A @ diag(aspect, 1) for the A above; the translation
  stays normalised. `aspect=1.0` is the same theta, bit for bit, as `aspect=None`.

  Args:
    rotation: (...) radians.
    shear: (...) radians.
    scale: (...) isotropic factor.
    scale_xy: optional (..., 2) per-axis factors (x, y), multiplied into `scale`.
    translation: (..., 2) normalised (tx, ty).
    aspect: None (the linear part acts on normalised coordinates) or a positive width / height of the image (it acts
      on pixels).
    dtype: floating dtype of the result.

  Returns:
    (..., 2, 3) theta mapping output to input coordinates.
  """
  number = isinstance(aspect, (int, float, np.integer, np.floating)) and not isinstance(aspect, (bool, np.bool_))
  if aspect is not None and not (number and np.isfinite(aspect) and aspect > 0):  # a static number, never an array
    raise ValueError(f"affine_theta: aspect must be None or a positive width / height; got {v.describe(aspect)}.")
  aspect = None if aspect is None else float(aspect)  # weakly typed: theta keeps `dtype`
  rotation, shear, scale = (jnp.asarray(a, dtype) for a in (rotation, shear, scale))
  translation = jnp.asarray(translation, dtype)
  v.check_trailing_shape("affine_theta", "translation", translation, (2,), what="(..., 2)")
  sx = sy = scale
  if scale_xy is not None:
    scale_xy = jnp.asarray(scale_xy, dtype)
    v.check_trailing_shape("affine_theta", "scale_xy", scale_xy, (2,), what="(..., 2)")
    sx, sy = scale * scale_xy[..., 0], scale * scale_xy[..., 1]
  cos, sin = jnp.cos(rotation), jnp.sin(rotation)
  # R @ Shear = [[cos, -cos sin_s - sin cos_s], [sin, -sin sin_s + cos cos_s]] = [[cos, -sin(a + s)], [sin, cos(a + s)]]
  a00, a01 = cos * sx, -jnp.sin(rotation + shear) * sy
  a10, a11 = sin * sx, jnp.cos(rotation + shear) * sy
  if aspect is not None:  # diag(1 / r, 1) @ A @ diag(r, 1): the linear map in pixels, seen in normalised coordinates
    a01, a10 = a01 / aspect, a10 * aspect
  a00, a01, a10, a11, tx, ty = jnp.broadcast_arrays(a00, a01, a10, a11, translation[..., 0], translation[..., 1])
  return jnp.stack([jnp.stack([a00, a01, tx], -1), jnp.stack([a10, a11, ty], -1)], -2)


def attention_theta(params: jax.Array) -> jax.Array:
  """The affine theta of an attention transform (isotropic scale and translation).

  Args:
    params: (..., 3) floating (s, tx, ty), in normalised coordinates.

  Returns:
    (..., 2, 3) theta [[s, 0, tx], [0, s, ty]].
  """
  params = jnp.asarray(params)
  v.check_trailing_shape("attention_theta", "params", params, (3,), what="(..., 3) (scale, tx, ty)")
  s, tx, ty = params[..., 0], params[..., 1], params[..., 2]
  zero = jnp.zeros_like(s)
  return jnp.stack([jnp.stack([s, zero, tx], -1), jnp.stack([zero, s, ty], -1)], -2)


def _to_3x3(theta: jax.Array) -> jax.Array:
  last = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], theta.dtype), (*theta.shape[:-2], 1, 3))
  return jnp.concatenate([theta, last], axis=-2)


def compose_affine(a: jax.Array, b: jax.Array) -> jax.Array:
  """The theta of x -> a(b(x)): `warp(warp(img, a), b)` is `warp(img, compose_affine(a, b))` (up to resampling).

  Args:
    a, b: (..., 2, 3) thetas; batch shapes broadcast.

  Returns:
    (..., 2, 3).
  """
  for name, t in (("a", a), ("b", b)):
    v.check_trailing_shape("compose_affine", name, t, (2, 3), what="(..., 2, 3)")
  return _matmul(_to_3x3(jnp.asarray(a)), _to_3x3(jnp.asarray(b)))[..., :2, :]


def invert_affine(theta: jax.Array) -> jax.Array:
  """The inverse map of an affine theta, in closed form.

  Args:
    theta: (..., 2, 3) floating affine maps.

  Returns:
    (..., 2, 3) theta of the inverse maps: `compose_affine(theta, invert_affine(theta))` is the identity (non-finite
    where theta's 2x2 part is singular).
  """
  theta = jnp.asarray(theta)
  v.check_trailing_shape("invert_affine", "theta", theta, (2, 3), what="(..., 2, 3)")
  a, b, tx = theta[..., 0, 0], theta[..., 0, 1], theta[..., 0, 2]
  c, d, ty = theta[..., 1, 0], theta[..., 1, 1], theta[..., 1, 2]
  det = a * d - b * c
  ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
  row0 = jnp.stack([ia, ib, -(ia * tx + ib * ty)], -1)
  row1 = jnp.stack([ic, id_, -(ic * tx + id_ * ty)], -1)
  return jnp.stack([row0, row1], -2)


def _index_to_normalised(size: tuple[int, int], align_corners: bool, func: str) -> np.ndarray:
  """3x3 matrix taking pixel index (row, col, 1) to normalised (x, y, 1)."""
  h, w = size
  if align_corners and min(h, w) < 2:
    raise ValueError(f"{func}: align_corners=True needs sizes >= 2 (pixel centres at -1 and 1); got {size}.")
  if align_corners:
    ax, bx, ay, by = 2.0 / (w - 1), -1.0, 2.0 / (h - 1), -1.0
  else:
    ax, bx, ay, by = 2.0 / w, 1.0 / w - 1.0, 2.0 / h, 1.0 / h - 1.0
  return np.array([[0.0, ax, bx], [ay, 0.0, by], [0.0, 0.0, 1.0]])


def _index_maps(func, input_size, output_size, align_corners, dtype):
  """(input index -> normalised, its inverse, output index -> normalised, its inverse) 3x3 matrices, computed in
  float64 numpy (constants: no matrix inverse runs on the device) and cast to >= float32."""
  input_size = v.check_size(func, "input_size", input_size)
  output_size = input_size if output_size is None else v.check_size(func, "output_size", output_size)
  dtype = jnp.promote_types(dtype, jnp.float32)
  maps = []
  for size in (input_size, output_size):
    m = _index_to_normalised(size, align_corners, func)
    maps += [jnp.asarray(m, dtype), jnp.asarray(np.linalg.inv(m), dtype)]
  return tuple(maps)


def _matmul(a, b):
  """a @ b at full float32 precision on every backend (TF32 would move a pixel coordinate by ~1e-3)."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


@v.keyword_only()
def theta_to_pixel_matrix(theta, *, input_size, output_size=None, align_corners: bool = False) -> jax.Array:
  """Converts a normalised theta into the pixel-index matrix of scipy.ndimage.affine_transform and dm-pix.

  The result maps output (row, col, 1) to input (row, col, 1), pixel centres at integer indices, so
  `scipy.ndimage.affine_transform(img, m, order=1, mode='grid-constant')` equals the bilinear zero-padded warp.

  Args:
    theta: (..., 2, 3).
    input_size: (H_in, W_in).
    output_size: (H_out, W_out); defaults to `input_size`.
    align_corners: the convention `theta` is meant for.

  Returns:
    (..., 3, 3), last row (0, 0, 1).
  """
  func = "theta_to_pixel_matrix"
  theta = jnp.asarray(theta)
  v.check_trailing_shape(func, "theta", theta, (2, 3), what="(..., 2, 3)")
  _, norm_to_in, out_to_norm, _ = _index_maps(func, input_size, output_size, align_corners, theta.dtype)
  return _matmul(_matmul(norm_to_in, _to_3x3(theta.astype(out_to_norm.dtype))), out_to_norm)


@v.keyword_only()
def pixel_matrix_to_theta(matrix, *, input_size, output_size=None, align_corners: bool = False) -> jax.Array:
  """The inverse of `theta_to_pixel_matrix`.

  Args:
    matrix: (..., 3, 3) floating map of pixel indices (row, col, 1), output -> input, as scipy.ndimage and dm-pix use.
    input_size: (H, W) of the input image.
    output_size: (H_out, W_out) of the output (default: input_size).
    align_corners: the normalised convention theta is in (see `affine_grid`).

  Returns:
    (..., 2, 3) theta on normalised (x, y, 1).
  """
  func = "pixel_matrix_to_theta"
  matrix = jnp.asarray(matrix)
  v.check_trailing_shape(func, "matrix", matrix, (3, 3), what="(..., 3, 3)")
  in_to_norm, _, _, norm_to_out = _index_maps(func, input_size, output_size, align_corners, matrix.dtype)
  return _matmul(_matmul(in_to_norm, matrix.astype(in_to_norm.dtype)), norm_to_out)[..., :2, :]


@v.keyword_only(kind=KINDS)
def params_to_grid(params: jax.Array, size, *, kind: str = "affine", align_corners: bool = False) -> jax.Array:
  """The sampling grid of transform parameters of any kind: `(..., *param_shape) -> (..., H_out, W_out, 2)`.

  Args:
    params: (..., *param_shape(kind)) floating transform parameters (see the module docstring). A nested list is
      converted with `jnp.asarray`.
    size: (H_out, W_out), static: any sequence of two positive ints (a tuple, a list, numpy ints).
    kind: 'affine', 'projective', 'tps' or 'attention'.
    align_corners: as `affine_grid`.

  Returns:
    (..., H_out, W_out, 2) grid of input (x, y), dtype of `params`.
  """
  func = "params_to_grid"
  params = v.as_array(func, "params", params)
  kind = v.check_choice(func, "kind", kind, KINDS)
  size = v.check_size(func, "size", size)
  align_corners = v.check_bool(func, "align_corners", align_corners)
  _check_params(func, params, kind)
  return _params_to_grid_jit(params, size, kind, align_corners)


def _check_params(func: str, params, kind: str) -> None:
  if kind == "affine":
    grids.check_affine(func, "params", params)
  elif kind == "projective":
    grids.check_projective(func, "params", params)
  elif kind == "tps":
    grids.check_tps(func, "params", params)
  else:
    v.check_floating(func, "params", params)
    v.check_trailing_shape(func, "params", params, (3,), what="(..., 3) (scale, tx, ty)")


def _params_to_grid_core(params, size, kind, align_corners):
  if kind == "affine":
    return grids.affine_grid_core(params, size, align_corners)
  if kind == "projective":
    return grids.projective_grid_core(params, size, align_corners)
  if kind == "tps":
    return grids.tps_grid_core(params, size, None, align_corners)
  return grids.affine_grid_core(attention_theta(params), size, align_corners)


_params_to_grid_jit = jax.jit(_params_to_grid_core, static_argnums=(1, 2, 3))


@v.keyword_only(kind=WARP_KINDS, mode=sampling.MODES, padding_mode=sampling.PADDING_MODES)
def warp(
  image: jax.Array,
  params: jax.Array,
  *,
  kind: str = "affine",
  size=None,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  align_corners: bool = False,
  implementation: str | None = None,
) -> jax.Array:
  """Warps `image` by transform parameters: `grid_sample(image, params_to_grid(params, size, kind=kind))`.

  Args:
    image: (N, H, W, C) with params (N, *param_shape(kind)), or (H, W, C) with params (*param_shape(kind)); channels
      last (an image that looks channels-first draws a UserWarning, as in `grid_sample`).
    params: transform parameters (see the module docstring). Nested lists (image or params) are converted with
      `jnp.asarray`.
    kind: 'affine', 'projective', 'tps', 'attention', or 'flow': params is then a displacement field of the image's
      shape with 2 channels (a volume's with 3), in pixels, output pixel p reading the input at p + flow[p]
      (stn_jax.spatial.flows).
    size: output (H_out, W_out), static: any sequence of two positive ints; defaults to the input's (H, W) (None
      for a flow). A volume (N, D, H, W, C) warps with kind='affine' and theta (N, 3, 4), its size
      (D_out, H_out, W_out).
    mode, padding_mode, align_corners, implementation: as `grid_sample`.

  Returns:
    (N, H_out, W_out, C) or (H_out, W_out, C), dtype of `image`.
  """
  func = "warp"
  image = v.as_array(func, "image", image)
  params = v.as_array(func, "params", params)
  kind = v.check_choice(func, "kind", kind, WARP_KINDS)
  options = sampling.check_sample_options(func, mode, padding_mode, align_corners)
  image_shape, params_shape = jnp.shape(image), jnp.shape(params)
  if kind == "affine" and params_shape[-2:] == (3, 4):  # a volume; affine_grid checks a (D, H, W) size
    want = (image_shape[0], 3, 4) if len(image_shape) == 5 else (3, 4)
    if len(image_shape) not in (4, 5) or params_shape != want:
      raise ValueError(
        f"{func}: a (..., 3, 4) theta warps a volume (N, D, H, W, C) with theta (N, 3, 4) or (D, H, W, C) with "
        f"(3, 4); got image {image_shape} and theta {params_shape}."
      )
    grid = grids.affine_grid(params, image_shape[-4:-1] if size is None else size, align_corners=options[2])
    return sampling.grid_sample(
      image, grid, mode=options[0], padding_mode=options[1], align_corners=options[2], implementation=implementation
    )
  if kind == "flow":  # (N, [D,] H, W, C) with a flow (N, [D,] H, W, k) of the image's spatial shape
    k = params_shape[-1] if params_shape else 0
    want = (*image_shape[:-1], k)
    if k not in (2, 3) or params_shape != want or len(image_shape) not in (k + 1, k + 2) or size is not None:
      raise ValueError(
        f"{func}: a flow must have the image's shape with 2 (image) or 3 (volume) channels, and size must be None; "
        f"got image {image_shape}, flow {params_shape} and size {size}."
      )
    grid = flows.flow_grid(params, align_corners=options[2])
    return sampling.grid_sample(
      image, grid, mode=options[0], padding_mode=options[1], align_corners=options[2], implementation=implementation
    )
  size = None if size is None else v.check_size(func, "size", size)
  sampling.check_image(func, image)
  per_image = param_shape(kind, num_control_points=params_shape[-2] if kind == "tps" and len(params_shape) >= 2 else 16)
  want = ((image_shape[0],) if len(image_shape) == 4 else ()) + per_image
  if params_shape != want:
    raise ValueError(
      f"{func}: params for kind={kind!r} must have shape {want} to go with image of shape {image_shape}; "
      f"got {params_shape}."
    )
  _check_params(func, params, kind)
  v.warn_if_channels_first(func, image, stacklevel=3)  # the caller, past this function and `keyword_only`'s wrapper
  implementation = sampling.resolve_implementation(
    func, implementation, options[0], sampling.compute_dtype(image, params)
  )
  return _warp_jit(image, params, kind, image_shape[-3:-1] if size is None else size, *options, implementation)


def _affine_reference(size, padding_mode, align_corners, image, theta):
  """A bilinear affine warp on the kernel's grid_sample: what `_affine_kernel` computes, and how it differentiates."""
  grid = grids.affine_grid_core(theta, size, align_corners)
  return sampling.grid_sample_core(image, grid, "bilinear", padding_mode, align_corners, "cpu_kernel")


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _affine_kernel(size, padding_mode, align_corners, image, theta):
  # The primal pass alone: the grid's points computed inside the kernel's loop (no (N, H_out, W_out, 2) grid).
  xs, ys = (grids.pixel_centers(n, align_corners=align_corners).astype(np.float32) for n in size[::-1])
  fallback = functools.partial(_affine_reference, size, padding_mode, align_corners)
  return cpu_kernels.sample_affine(image, theta, xs, ys, padding_mode, align_corners, fallback)


@functools.partial(_affine_kernel.defjvp, symbolic_zeros=True)
def _affine_kernel_jvp(size, padding_mode, align_corners, primals, tangents):
  # Differentiated, the warp is affine_grid then grid_sample, each with its own custom JVP.
  reference = functools.partial(_affine_reference, size, padding_mode, align_corners)
  (image, theta), (d_image, d_theta) = primals, tangents
  zero = (
    isinstance(d_image, jax.custom_derivatives.SymbolicZero),
    isinstance(d_theta, jax.custom_derivatives.SymbolicZero),
  )
  if zero[1]:
    return jax.jvp(lambda i: reference(i, theta), (image,), (d_image,))
  if zero[0]:
    return jax.jvp(lambda t: reference(image, t), (theta,), (d_theta,))
  return jax.jvp(reference, (image, theta), (d_image, d_theta))


def _warp_core(image, params, kind, size, mode, padding_mode, align_corners, implementation):
  if kind == "affine" and mode == "bilinear" and implementation == "cpu_kernel":
    dtype = sampling.compute_dtype(image, params)  # float32 (the kernel's)
    out = _affine_kernel(tuple(size), padding_mode, align_corners, image.astype(dtype), params.astype(dtype))
    return out.astype(image.dtype)
  grid = _params_to_grid_core(params, size, kind, align_corners)
  return sampling.grid_sample_core(image, grid.astype(params.dtype), mode, padding_mode, align_corners, implementation)


_warp_jit = jax.jit(_warp_core, static_argnums=(2, 3, 4, 5, 6, 7))
