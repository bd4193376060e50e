"""Differentiable image sampling: the sampler of a spatial transformer.

`grid_sample` is numerically the function `torch.nn.functional.grid_sample` (values, and gradients with respect to the
image and to the grid, in every mode and padding mode), but channels-last: image (N, H, W, C) or (H, W, C).

The bilinear path has a hand-written JVP (`jax.custom_jvp`), so forward mode (`jax.jvp`, `jax.jacfwd`, `jax.hessian`)
works through it, and reverse mode is JAX's transpose of it. On CPU, XLA's autodiff of a gather-based sampler spends
most of its backward pass re-deriving what the forward already had; this tangent is written so that its transpose is
the backward pass a hand-written VJP would do: to the grid, the four taps times the channels of g and a few fused
multiply-adds per point; to the image, one scatter-add into a zero-padded buffer with no masks. The trilinear sampler
of volumes has one of the same kind (eight taps). Nearest and bicubic sampling are differentiated by JAX's autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from stn_jax.spatial import _validation as v
from stn_jax.spatial import cpu_kernels

MODES = ("bilinear", "nearest", "bicubic")
# How bilinear sampling of images runs: XLA's gathers and scatters (every backend), or spatial.cpu_kernels (CPU).
IMPLEMENTATIONS = ("xla", "cpu_kernel")
PADDING_MODES = ("zeros", "border", "reflection")
_CUBIC_A = -0.75  # Keys' cubic convolution parameter, as in torch and OpenCV.
_INDEX_LIMIT = 2**31 - 1


# ----------------------------------------------------------------------------------------------------------------------
# Coordinates: normalised [-1, 1] -> pixel index space, then the padding mode.
# ----------------------------------------------------------------------------------------------------------------------


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  if align_corners:
    return (coord + 1) / 2 * (size - 1)
  return ((coord + 1) * size - 1) / 2


def _clip(coord: jax.Array, size: int) -> jax.Array:
  # Written with `where` so the gradient is exactly 1 inside [0, size - 1] (ends included) and 0 outside, as torch's.
  return jnp.where(coord < 0, 0.0, jnp.where(coord > size - 1, float(size - 1), coord)).astype(coord.dtype)


def _reflect(coord: jax.Array, twice_low: int, twice_high: int) -> jax.Array:
  """Reflects `coord` into [twice_low / 2, twice_high / 2] about its ends, as often as needed."""
  if twice_low == twice_high:
    return jnp.zeros_like(coord)
  low = twice_low / 2
  span = (twice_high - twice_low) / 2
  d = coord - low
  d = jnp.where(d < 0, -d, d)
  extra = jnp.fmod(d, span)
  flips = jnp.floor(d / span)
  odd = jnp.fmod(flips, 2.0) == 1.0
  return jnp.where(odd, span - extra + low, extra + low)


def _apply_padding(coord: jax.Array, size: int, padding_mode: str, align_corners: bool) -> jax.Array:
  if padding_mode == "border":
    return _clip(coord, size)
  if padding_mode == "reflection":
    coord = _reflect(coord, 0, 2 * (size - 1)) if align_corners else _reflect(coord, -1, 2 * size - 1)
    return _clip(coord, size)
  return coord


def _snap(coord: jax.Array, size: int) -> jax.Array:
  """Rounds coordinates within a few ulps of a pixel centre onto it.

  The normalised coordinates of pixel centres are not exact in floating point, so without this an identity transform
  would read a pixel as 1e-7 of its neighbour plus the rest of itself. The band is a few ulps of the largest pixel
  index wide; torch parity is unaffected outside it. Gradients are taken at the snapped position (the one-sided
  derivative, as at any exact integer).
  """
  tol = 4 * float(jnp.finfo(coord.dtype).eps) * (size + 1)
  nearest = jnp.round(coord)
  return jnp.where(jnp.abs(coord - nearest) <= tol, nearest, coord)


# ----------------------------------------------------------------------------------------------------------------------
# Gathers from a zero-padded, flattened image: any out-of-range tap reads a zero, no masks needed.
# ----------------------------------------------------------------------------------------------------------------------


def _padded_flat(image: jax.Array) -> jax.Array:
  n, h, w, c = image.shape
  return jnp.pad(image, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n * (h + 2) * (w + 2), c)


def _padded_index(xi: jax.Array, yi: jax.Array, shape) -> jax.Array:
  """Flat index into `_padded_flat` of integer pixel (xi, yi) per batch row; out-of-range pixels hit the zero border."""
  n, h, w, _ = shape
  xp = jnp.clip(xi + 1, 0, w + 1)
  yp = jnp.clip(yi + 1, 0, h + 1)
  offset = (jnp.arange(n, dtype=jnp.int32) * ((h + 2) * (w + 2))).reshape((n,) + (1,) * (xi.ndim - 1))
  return offset + yp * (w + 2) + xp


def _take(flat: jax.Array, index: jax.Array) -> jax.Array:
  return flat.at[index].get(mode="promise_in_bounds")


# ----------------------------------------------------------------------------------------------------------------------
# Bilinear, with a custom JVP whose tangent is linear in the tangents (so JAX transposes it to the reverse pass).
# ----------------------------------------------------------------------------------------------------------------------


def _clamp_and_snap(coord: jax.Array, size: int) -> jax.Array:
  """A coordinate clamped to [-2, size + 1], which changes no tap's in/out status (so no value) and keeps huge or
  infinite coordinates out of integer overflow, and snapped onto pixel centres (`_snap`). NaN stays NaN."""
  return _snap(jnp.clip(coord, -2.0, size + 1.0), size)


def _clamped(shape, ix: jax.Array, iy: jax.Array):
  """`_clamp_and_snap` of an image's (N, H, W, C) coordinates."""
  _, h, w, _ = shape
  return _clamp_and_snap(ix, w), _clamp_and_snap(iy, h)


def _bilinear_taps(shape, ix: jax.Array, iy: jax.Array):
  """Fractional parts and the four flat tap indices (top-left, top-right, bottom-left, bottom-right)."""
  ix, iy = _clamped(shape, ix, iy)
  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  fx = ix - x0
  fy = iy - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  top_left = _padded_index(x0, y0, shape)
  bottom_left = _padded_index(x0, y0 + 1, shape)
  # x0 + 1 is clamped like x0, so top-right is top-left + 1 except where the tap is clipped onto the border.
  top_right = _padded_index(x0 + 1, y0, shape)
  bottom_right = _padded_index(x0 + 1, y0 + 1, shape)
  return fx, fy, (top_left, top_right, bottom_left, bottom_right)


def _bilinear_gather(shape, image, ix, iy):
  """The four taps' values (N, P, C) and the fractional parts (N, P, 1)."""
  fx, fy, taps = _bilinear_taps(shape, ix, iy)
  flat = _padded_flat(image)
  v00, v01, v10, v11 = (_take(flat, t) for t in taps)
  return (v00, v01, v10, v11), fx[..., None], fy[..., None], taps


def _source_coords(grid, shape, padding_mode, align_corners):
  """Pixel-index coordinates (ix, iy), each (N, P), of normalised grid points (N, P, 2), after the padding mode."""
  _, h, w, _ = shape
  ix = _apply_padding(_unnormalize(grid[..., 0], w, align_corners), w, padding_mode, align_corners)
  iy = _apply_padding(_unnormalize(grid[..., 1], h, align_corners), h, padding_mode, align_corners)
  return ix, iy


def _lerp(v00, v01, v10, v11, fx, fy):
  """Bilinear interpolation of the four taps (top-left, top-right, bottom-left, bottom-right)."""
  top = v00 + (v01 - v00) * fx
  bottom = v10 + (v11 - v10) * fx
  return top + (bottom - top) * fy


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _bilinear(padding_mode, align_corners, image, grid):
  ix, iy = _source_coords(grid, image.shape, padding_mode, align_corners)
  (v00, v01, v10, v11), fx, fy, _ = _bilinear_gather(image.shape, image, ix, iy)
  return _lerp(v00, v01, v10, v11, fx, fy)


def _is_zero(tangent) -> bool:
  return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


def _broadcast_channels(x: jax.Array, c: int) -> jax.Array:
  """(N, P) -> (N, P, C). Reverse mode transposes this to a sum over channels; for a few channels it is written as
  copies, so that the sum is unrolled adds: XLA:CPU reduces a short minor axis far more slowly than it adds
  (docs/benchmarks.md has the measurements)."""
  if c == 1 or c > 8:
    return jnp.broadcast_to(x[..., None], (*x.shape, c))
  return jnp.stack([x] * c, -1)


def _coords_and_tangents(grid, d_grid, shape, padding_mode, align_corners):
  """(ix, iy, d_ix, d_iy): the pixel-index coordinates of the grid's points and their tangents (None without one)."""

  def coords(gr):
    return _source_coords(gr, shape, padding_mode, align_corners)

  if _is_zero(d_grid):
    return (*coords(grid), None, None)
  (ix, iy), (d_ix, d_iy) = jax.jvp(coords, (grid,), (d_grid,))
  return ix, iy, d_ix, d_iy


@functools.partial(_bilinear.defjvp, symbolic_zeros=True)
def _bilinear_jvp(padding_mode, align_corners, primals, tangents):
  # Reverse mode is this rule linearised and transposed: what involves no tangent runs in the forward pass, and the
  # tangent, linear in (d_image, d_grid), is written so that its transpose is the backward pass a hand-written VJP
  # would do (XLA fuses it with the gathers it needs into one loop):
  #   d_grid -> (d out / d ix) d ix + (d out / d iy) d iy, transposed to a few multiply-adds per point;
  #   d_image -> the same bilinear interpolation of d_image, transposed to a scatter-add of the bilinear weights
  #     times g into a zero-padded buffer with no masks.
  image, grid = primals
  d_image, d_grid = tangents
  shape = image.shape
  c = shape[-1]
  ix, iy, d_ix, d_iy = _coords_and_tangents(grid, d_grid, shape, padding_mode, align_corners)
  # XLA:CPU fuses whatever it can into per-element loops and then recomputes shared inputs for every element; the
  # optimization barrier materialises the small (N, P) intermediates once instead.
  fx, fy, taps = lax.optimization_barrier(_bilinear_taps(shape, ix, iy))
  fx, fy = fx[..., None], fy[..., None]
  flat = _padded_flat(image)
  v00, v01, v10, v11 = (_take(flat, t) for t in taps)
  out = _lerp(v00, v01, v10, v11, fx, fy)
  tangent_out = []
  if not _is_zero(d_grid):
    # d out = sum_k v_k a_k, with a_k the derivatives of the four bilinear weights times (d ix, d iy), written so
    # that the transpose is: s_k = sum_c g_c v_k,c, then g_ix = (s01 - s00) + ((s11 - s10) - (s01 - s00)) fy and
    # g_iy = (s10 - s00) + ((s11 - s01) - (s10 - s00)) fx, the per-point multiply-adds of the backward pass.
    w_x = fy[..., 0] * d_ix
    p_x = d_ix - w_x
    w_y = fx[..., 0] * d_iy
    p_y = d_iy - w_y
    weights = (-p_x - p_y, p_x - w_y, p_y - w_x, w_x + w_y)
    taps_times_weights = (v * _broadcast_channels(a, c) for v, a in zip((v00, v01, v10, v11), weights, strict=True))
    tangent_out.append(functools.reduce(jnp.add, taps_times_weights))
  if not _is_zero(d_image):
    d_flat = _padded_flat(d_image)
    # Reverse mode transposes this gather to a scatter-add, which XLA:CPU runs as one serial loop over the values;
    # one gather of all four taps keeps it to one scatter. With one channel the taps go one after another
    # (the order of four chained scatters, the fastest there); with several, each point's four taps together (fewer
    # passes over the buffer).
    if c == 1:
      p = taps[0].shape[-1]
      gathered = _take(d_flat, jnp.concatenate(taps, -1))  # (N, 4P, 1)
      d_taps = [gathered[:, k * p : (k + 1) * p] for k in range(4)]
    else:
      gathered = _take(d_flat, jnp.stack(taps, -1))  # (N, P, 4, C)
      d_taps = [gathered[..., k, :] for k in range(4)]
    tangent_out.append(_lerp(*d_taps, fx, fy))
  return out, functools.reduce(jnp.add, tangent_out)


# ----------------------------------------------------------------------------------------------------------------------
# Bilinear on the CPU kernel (stn_jax.spatial.cpu_kernels): the same function, the same custom JVP structure.
# ----------------------------------------------------------------------------------------------------------------------


def _kernel_reference(padding_mode, align_corners, image, grid):
  """What the kernel's `sample_grid` computes, in JAX (its fallback off the CPU)."""
  return cpu_kernels.sample(
    image, *_clamped(image.shape, *_source_coords(grid, image.shape, padding_mode, align_corners))
  )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _bilinear_kernel(padding_mode, align_corners, image, grid):
  # The primal pass alone (no derivative taken): coordinates and sample in one loop of the kernel.
  fallback = functools.partial(_kernel_reference, padding_mode, align_corners)
  return cpu_kernels.sample_grid(image, grid, padding_mode, align_corners, fallback)


@functools.partial(_bilinear_kernel.defjvp, symbolic_zeros=True)
def _bilinear_kernel_jvp(padding_mode, align_corners, primals, tangents):
  # As `_bilinear_jvp`: the primal pass runs the kernel once (with the derivatives of the output in ix and iy when
  # the grid has a tangent), and the tangent is linear: d_grid -> elementwise products with those derivatives
  # (transposed: a product with g, summed over channels), d_image -> the kernel's sample of d_image (transposed:
  # the kernel's scatter).
  image, grid = primals
  d_image, d_grid = tangents
  shape = image.shape
  c = shape[-1]
  ix, iy, d_ix, d_iy = _coords_and_tangents(grid, d_grid, shape, padding_mode, align_corners)
  x, y = _clamped(shape, ix, iy)
  tangent_out = []
  if _is_zero(d_grid):
    out = cpu_kernels.sample(image, x, y)
  else:
    out, out_x, out_y = cpu_kernels.jacobian(image, x, y)
    tangent_out.append(out_x * _broadcast_channels(d_ix, c) + out_y * _broadcast_channels(d_iy, c))
  if not _is_zero(d_image):
    tangent_out.append(cpu_kernels.sample(d_image, x, y))
  return out, functools.reduce(jnp.add, tangent_out)


def resolve_implementation(func: str, implementation, mode: str, dtype) -> str:
  """'xla' or 'cpu_kernel': what `implementation` (None, 'xla' or 'cpu_kernel') means for this call. None is the
  CPU kernel where it applies (bilinear or trilinear sampling computed in float32, JAX's default backend the CPU, the
  kernel built) and XLA otherwise; 'cpu_kernel' where it cannot apply is a ValueError, and where it is not built a
  RuntimeError saying why."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f"{func}: implementation must be None or one of {', '.join(map(repr, IMPLEMENTATIONS))}; got {implementation!r}."
    )
  applies = mode == "bilinear" and jnp.dtype(dtype) == jnp.float32
  if implementation is None:
    return "cpu_kernel" if applies and jax.default_backend() == "cpu" and cpu_kernels.available() else "xla"
  if implementation == "cpu_kernel":
    if not applies:
      raise ValueError(
        f"{func}: implementation='cpu_kernel' samples bilinearly (trilinearly for volumes) in float32 (bfloat16 and "
        f"float16 inputs are computed in float32); got mode={mode!r}, compute dtype {jnp.dtype(dtype).name}."
      )
    if not cpu_kernels.available():
      raise RuntimeError(f"{func}: implementation='cpu_kernel' is not available: {cpu_kernels.unavailable_reason()}.")
  return implementation


# ----------------------------------------------------------------------------------------------------------------------
# Nearest and bicubic (autodiff).
# ----------------------------------------------------------------------------------------------------------------------


def _nearest_index(coord: jax.Array, size: int) -> jax.Array:
  """The integer pixel (voxel) nearest to `coord` along an axis of `size`: jnp.round rounds half to even, as torch's
  nearbyint; NaN is sent outside, where it reads a zero."""
  return lax.stop_gradient(jnp.round(jnp.clip(jnp.nan_to_num(coord, nan=-2.0), -2.0, size + 1.0))).astype(jnp.int32)


def _nearest(image, ix, iy):
  xi = _nearest_index(ix, image.shape[2])
  yi = _nearest_index(iy, image.shape[1])
  return _take(_padded_flat(image), _padded_index(xi, yi, image.shape))


def _cubic_weights(t: jax.Array) -> list[jax.Array]:
  """Keys' cubic convolution weights of the taps at offsets -1, 0, 1, 2 from floor(x), for t = x - floor(x)."""
  a = _CUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic(image, gx, gy, padding_mode, align_corners):
  shape = image.shape
  _, h, w, _ = shape

  # Clamp before flooring so huge or infinite coordinates stay integral and in int32 range. With zero padding any
  # position beyond 2 pixels outside reads only zeros; the other modes need the true position (reflection repeats),
  # and lose nothing they could represent by a cap at 2^22.
  def clamp(coord, size):
    return jnp.clip(coord, -4.0, size + 3.0) if padding_mode == "zeros" else jnp.clip(coord, -(2.0**22), 2.0**22)

  def snap(coord, size):  # straight-through: the value is snapped, the gradient flows as if it were not
    return coord + lax.stop_gradient(_snap(coord, size) - coord)

  ix = snap(clamp(_unnormalize(gx, w, align_corners), w), w)
  iy = snap(clamp(_unnormalize(gy, h, align_corners), h), h)
  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  wx = _cubic_weights(ix - x0)
  wy = _cubic_weights(iy - y0)
  x0 = lax.stop_gradient(x0)
  y0 = lax.stop_gradient(y0)

  def tap_coords(base, offset, size):
    # Each tap is an integer position; the padding mode maps it (border / reflection) before the bounds check.
    return _apply_padding(base + offset, size, padding_mode, align_corners).astype(jnp.int32)

  xs = [tap_coords(x0, i - 1.0, w) for i in range(4)]
  ys = [tap_coords(y0, j - 1.0, h) for j in range(4)]
  flat = _padded_flat(image)
  out = 0.0
  for j in range(4):
    row = sum(wx[i][..., None] * _take(flat, _padded_index(xs[i], ys[j], shape)) for i in range(4))
    out = out + wy[j][..., None] * row
  return out


# ----------------------------------------------------------------------------------------------------------------------
# Public entry point.
# ----------------------------------------------------------------------------------------------------------------------


def check_sample_options(func: str, mode, padding_mode, align_corners) -> tuple[str, str, bool]:
  """The static options of `grid_sample` (and `warp`), validated and normalised to hashable Python values."""
  return (
    v.check_choice(func, "mode", mode, MODES),
    v.check_choice(func, "padding_mode", padding_mode, PADDING_MODES),
    v.check_bool(func, "align_corners", align_corners),
  )


def check_image(func: str, image) -> None:
  """An (N, H, W, C) or (H, W, C) floating image, small enough for int32 indexing."""
  v.check_floating(func, "image", image)
  image_shape = jnp.shape(image)
  if len(image_shape) not in (3, 4):
    raise ValueError(f"{func}: image must have shape (N, H, W, C) or (H, W, C); got shape {image_shape}.")
  if min(image_shape[-3:]) < 1:
    raise ValueError(f"{func}: image must have H, W, C >= 1; got shape {image_shape}.")
  n = image_shape[0] if len(image_shape) == 4 else 1
  if n * (image_shape[-3] + 2) * (image_shape[-2] + 2) > _INDEX_LIMIT:
    raise ValueError(f"{func}: image of shape {image_shape} has too many pixels for int32 indexing; split the batch.")


def _check_grid_sample_args(func, image, grid):
  check_image(func, image)
  v.check_floating(func, "grid", grid)
  image_shape, grid_shape = jnp.shape(image), jnp.shape(grid)
  want = "(N, H_out, W_out, 2)" if len(image_shape) == 4 else "(H_out, W_out, 2)"
  if len(grid_shape) != len(image_shape) or grid_shape[-1] != 2:
    raise ValueError(f"{func}: grid must have shape {want} to go with image of shape {image_shape}; got {grid_shape}.")
  if len(image_shape) == 4 and image_shape[0] != grid_shape[0]:
    raise ValueError(
      f"{func}: image and grid must have the same batch size; got image {image_shape} and grid {grid_shape}."
    )


@v.keyword_only(mode=MODES, padding_mode=PADDING_MODES)
def grid_sample(
  image: jax.Array,
  grid: jax.Array,
  *,
  mode: str = "bilinear",
  padding_mode: str = "zeros",
  align_corners: bool = False,
  implementation: str | None = None,
) -> jax.Array:
  """Samples `image` at the normalised (x, y) positions of `grid`, as `torch.nn.functional.grid_sample`.

  Nested lists are converted with `jnp.asarray`; the options are keyword-only and static.

  Args:
    image: (N, H, W, C) or (H, W, C), floating: channels-last. An image that looks channels-first, H <= 4 while W and
      C are both >= 4 H and >= 8 (as (N, 1, 28, 28) or (N, 3, 64, 64)), draws a UserWarning. A volume: (N, D, H, W, C)
      or (D, H, W, C) with a grid (..., D_out, H_out, W_out, 3) of (x, y, z), as torch's 5-D grid_sample.
    grid: (N, H_out, W_out, 2) or (H_out, W_out, 2), floating; (x, y) in [-1, 1] as from `affine_grid`.
    mode: 'bilinear' (trilinear for volumes), 'nearest' (round half to even) or 'bicubic' (Keys' cubic convolution,
      A = -0.75; images only).
    padding_mode: what lies outside the image: 'zeros', 'border' (the edge pixels repeated) or 'reflection' (the
      image mirrored about its edges: the outer pixel edges, or the corner pixel centres with `align_corners`).
    align_corners: whether -1 and 1 are the centres (True) or the outer edges (False) of the corner pixels.
    implementation: how bilinear sampling runs: 'xla' (gathers and scatters, every backend), 'cpu_kernel'
      (stn_jax.spatial.cpu_kernels: a C++ kernel through jax.ffi, float32 compute; for volumes the kernel takes the
      backward pass to the volume and XLA the rest), or None (the default): the CPU kernel when JAX's default
      backend is the CPU and the kernel is built, else 'xla'. Both are the same
      function (equal to float32 rounding; the tests hold both to torch) with the same derivatives in every mode
      of autodiff. Resolved when the call is traced.

  Returns:
    (N, H_out, W_out, C) or (H_out, W_out, C) with the dtype of `image`. bfloat16 and float16 are computed in float32.
    Coordinates far outside or infinite follow the padding mode; NaN coordinates give NaN (bilinear, bicubic) or zero
    (nearest). Gradients are finite at integer positions (one-sided, as torch's) and zero far outside the image.
  """
  func = "grid_sample"
  image = v.as_array(func, "image", image)
  grid = v.as_array(func, "grid", grid)
  options = check_sample_options(func, mode, padding_mode, align_corners)
  if jnp.ndim(grid) >= 1 and jnp.shape(grid)[-1] == 3:  # a volume
    _check_volume_args(func, image, grid, options[0])
    implementation = resolve_implementation(func, implementation, options[0], compute_dtype(image, grid))
    return _grid_sample_3d_jit(image, grid, *options, implementation)
  _check_grid_sample_args(func, image, grid)
  v.warn_if_channels_first(func, image, stacklevel=3)  # the caller, past this function and `keyword_only`'s wrapper
  implementation = resolve_implementation(func, implementation, options[0], compute_dtype(image, grid))
  return _grid_sample_jit(image, grid, *options, implementation)


def compute_dtype(image, grid):
  """What the sampler computes in: the promoted type of image and grid, at least float32."""
  return jnp.promote_types(jnp.promote_types(jnp.result_type(image), jnp.result_type(grid)), jnp.float32)


def grid_sample_core(image, grid, mode, padding_mode, align_corners, implementation="xla"):
  """`grid_sample` of checked arguments and a resolved implementation, unjitted (`warp` inlines it)."""
  batched = image.ndim == 4
  if not batched:
    image, grid = image[None], grid[None]
  n, _h, _w, c = image.shape
  _, h_out, w_out, _ = grid.shape
  dtype = compute_dtype(image, grid)
  x, grid = image.astype(dtype), grid.astype(dtype)
  points = grid.reshape(n, h_out * w_out, 2)
  if mode == "bilinear" and implementation == "cpu_kernel":  # on the (N, H_out, W_out) points: no reshape copy
    out = _bilinear_kernel(padding_mode, align_corners, x, grid)
  elif mode == "bilinear":
    out = _bilinear(padding_mode, align_corners, x, points)
  elif mode == "nearest":
    out = _nearest(x, *_source_coords(points, x.shape, padding_mode, align_corners))
  else:
    out = _bicubic(x, points[..., 0], points[..., 1], padding_mode, align_corners)
  out = out.reshape(n, h_out, w_out, c).astype(image.dtype)
  return out if batched else out[0]


_grid_sample_jit = jax.jit(grid_sample_core, static_argnums=(2, 3, 4, 5))


# ----------------------------------------------------------------------------------------------------------------------
# Volumes: (N, D, H, W, C) sampled at (x, y, z) grids, trilinear (a custom JVP, as the bilinear one) or nearest
# (autodiff).
# ----------------------------------------------------------------------------------------------------------------------


def _check_volume_args(func, image, grid, mode):
  v.check_floating(func, "image", image)
  v.check_floating(func, "grid", grid)
  image_shape, grid_shape = jnp.shape(image), jnp.shape(grid)
  if len(image_shape) not in (4, 5):
    raise ValueError(
      f"{func}: a grid of (x, y, z) points samples a volume (N, D, H, W, C) or (D, H, W, C); got image shape "
      f"{image_shape}."
    )
  want = "(N, D_out, H_out, W_out, 3)" if len(image_shape) == 5 else "(D_out, H_out, W_out, 3)"
  if len(grid_shape) != len(image_shape) or (len(image_shape) == 5 and grid_shape[0] != image_shape[0]):
    raise ValueError(f"{func}: grid must have shape {want} to go with volume {image_shape}; got {grid_shape}.")
  if min(image_shape[-4:]) < 1:
    raise ValueError(f"{func}: a volume must have D, H, W, C >= 1; got shape {image_shape}.")
  if mode == "bicubic":
    raise ValueError(f"{func}: mode must be 'bilinear' or 'nearest' for a volume (as torch's); got 'bicubic'.")
  n = image_shape[0] if len(image_shape) == 5 else 1
  if n * (image_shape[-4] + 2) * (image_shape[-3] + 2) * (image_shape[-2] + 2) > _INDEX_LIMIT:
    raise ValueError(f"{func}: volume of shape {image_shape} has too many voxels for int32 indexing; split the batch.")


def _volume_axis_coord(coord, size, padding_mode, align_corners):
  """One axis of `_volume_coords`: normalised -> voxel index, after the padding mode."""
  return _apply_padding(_unnormalize(coord, size, align_corners), size, padding_mode, align_corners)


def _volume_coords(points, shape, padding_mode, align_corners):
  """Voxel-index coordinates (ix, iy, iz), each (N, P), of normalised points (N, P, 3), after the padding mode."""
  _, d, h, w, _ = shape
  return tuple(
    _volume_axis_coord(points[..., axis], size, padding_mode, align_corners) for axis, size in enumerate((w, h, d))
  )


def _volume_flat(volume: jax.Array) -> jax.Array:
  c = volume.shape[-1]
  return jnp.pad(volume, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0))).reshape(-1, c)


def _volume_index(xi, yi, zi, shape) -> jax.Array:
  """Flat index into `_volume_flat` of integer voxel (xi, yi, zi); out-of-range voxels land on the zero border."""
  n, d, h, w, _ = shape
  batch_offset = (jnp.arange(n, dtype=jnp.int32) * ((d + 2) * (h + 2) * (w + 2)))[:, None]
  xp, yp, zp = (jnp.clip(i + 1, 0, size + 1) for i, size in ((xi, w), (yi, h), (zi, d)))
  return batch_offset + (zp * (h + 2) + yp) * (w + 2) + xp


def _clamped3(shape, coords):
  """`_clamp_and_snap` of a volume's (N, D, H, W, C) three coordinates."""
  _, d, h, w, _ = shape
  return [_clamp_and_snap(coord, size) for coord, size in zip(coords, (w, h, d), strict=True)]


def _trilinear_taps(shape, coords):
  """Fractional parts (fx, fy, fz), each (N, P), and the eight flat tap indices, x fastest, then y, then z."""
  # As in `_bilinear_taps`: the clamp changes no tap's in/out status and keeps the indices in int32.
  snapped = _clamped3(shape, coords)
  lows = [jnp.floor(coord) for coord in snapped]
  fracs = tuple(coord - low for coord, low in zip(snapped, lows, strict=True))
  lows = [low.astype(jnp.int32) for low in lows]
  taps = tuple(
    _volume_index(lows[0] + dx, lows[1] + dy, lows[2] + dz, shape) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)
  )
  return fracs, taps


def _trilinear_combine(values, fracs):
  """sum_k w_k v_k over the eight taps (order of `_trilinear_taps`), w_k the product of fx or 1 - fx, etc."""
  fracs = [frac[..., None] for frac in fracs]
  out = 0.0
  taps = iter(values)
  for dz in (0, 1):
    for dy in (0, 1):
      for dx in (0, 1):
        weight = 1.0
        for frac, step in zip(fracs, (dx, dy, dz), strict=True):
          weight = weight * (frac if step else 1.0 - frac)
        out = out + weight * next(taps)
  return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _trilinear(padding_mode, align_corners, kernel, volume, points):
  fracs, taps = _trilinear_taps(volume.shape, _volume_coords(points, volume.shape, padding_mode, align_corners))
  flat = _volume_flat(volume)
  return _trilinear_combine([_take(flat, t) for t in taps], fracs)


def _split(fracs, tangent):
  """(1 - f) t and f t for the fractional part f of the other axis: a linear split of a tangent per point."""
  high = fracs * tangent
  return tangent - high, high


@functools.partial(_trilinear.defjvp, symbolic_zeros=True)
def _trilinear_jvp(padding_mode, align_corners, kernel, primals, tangents):
  # As `_bilinear_jvp`, with eight taps: what involves no tangent runs in the forward pass, and the tangent, linear in
  # (d_volume, d_points), transposes to the backward pass a hand-written VJP would do.
  volume, points = primals
  d_volume, d_points = tangents
  shape = volume.shape
  c = shape[-1]

  def coords(p):
    return _volume_coords(p, shape, padding_mode, align_corners)

  if _is_zero(d_points):
    ixyz = coords(points)
  elif c == 1:
    ixyz, d_ixyz = jax.jvp(coords, (points,), (d_points,))
  else:
    # Per axis (each coordinate depends on its own axis alone), on a split of the tangent rather than an index of it:
    # reverse mode then assembles the three components of the points' cotangent with one concatenate, one loop with
    # the gathers fused in, instead of three loops that each redo the eight taps times the channels and add into
    # zero-padded copies (docs/benchmarks.md, volumes; with one channel the gathers, fused, would run
    # three times).
    _, d, h, w, _ = shape
    per_axis = [
      jax.jvp(
        functools.partial(_volume_axis_coord, size=size, padding_mode=padding_mode, align_corners=align_corners),
        (points[..., axis],),
        (part[..., 0],),
      )
      for axis, (size, part) in enumerate(zip((w, h, d), lax.split(d_points, (1, 1, 1), axis=-1), strict=True))
    ]
    ixyz, d_ixyz = tuple(p for p, _ in per_axis), tuple(t for _, t in per_axis)
  fracs, taps = lax.optimization_barrier(_trilinear_taps(shape, ixyz))
  flat = _volume_flat(volume)
  values = [_take(flat, t) for t in taps]
  out = _trilinear_combine(values, fracs)
  tangent_out = []
  if not _is_zero(d_points):
    # d out = sum_k v_k a_k, a_k the derivative of the k-th trilinear weight times (d ix, d iy, d iz). Along each axis
    # the derivative is the bilinear weight of the other two axes times +-1 (the tap's side), so a_k is the sum of
    # three terms, one per axis, each a bilinear split of that axis' tangent. Transposed: s_k = sum_c g_c v_k,c (the
    # copies of `_broadcast_channels` make it unrolled adds), then per axis the differences of s_k across it, weighted
    # bilinearly: a few multiply-adds per point.
    fx, fy, fz = fracs
    d_ix, d_iy, d_iz = d_ixyz

    def bilinear_split(tangent, f_a, f_b):  # [b][a]: (1 - f_b or f_b) (1 - f_a or f_a) tangent
      return [_split(f_a, part) for part in _split(f_b, tangent)]

    along_x = bilinear_split(d_ix, fy, fz)  # [dz][dy]
    along_y = bilinear_split(d_iy, fx, fz)  # [dz][dx]
    along_z = bilinear_split(d_iz, fx, fy)  # [dy][dx]
    weights = []
    for dz in (0, 1):
      for dy in (0, 1):
        for dx in (0, 1):
          terms = (along_x[dz][dy], along_y[dz][dx], along_z[dy][dx])
          signed = [term if step else -term for term, step in zip(terms, (dx, dy, dz), strict=True)]
          weights.append(signed[0] + signed[1] + signed[2])
    products = (v * _broadcast_channels(a, c) for v, a in zip(values, weights, strict=True))
    tangent_out.append(functools.reduce(jnp.add, products))
  if not _is_zero(d_volume) and kernel:
    # The CPU kernel's trilinear sample of d_volume, transposed to its scatter (one pass over the points).
    tangent_out.append(cpu_kernels.sample3(d_volume, *_clamped3(shape, ixyz)))
  elif not _is_zero(d_volume):
    # Eight gathers as the primal's, transposed to eight scatter-adds: for volumes faster than one scatter of all
    # eight taps together (docs/benchmarks.md, volumes).
    d_flat = _volume_flat(d_volume)
    tangent_out.append(_trilinear_combine([_take(d_flat, t) for t in taps], fracs))
  return out, functools.reduce(jnp.add, tangent_out)


def _grid_sample_3d(image, grid, mode, padding_mode, align_corners, implementation="xla"):
  batched = image.ndim == 5
  if not batched:
    image, grid = image[None], grid[None]
  n, d, h, w, c = image.shape
  out_shape = grid.shape[1:4]
  dtype = jnp.promote_types(jnp.promote_types(image.dtype, grid.dtype), jnp.float32)
  x = image.astype(dtype)
  points = grid.astype(dtype).reshape(n, -1, 3)
  if mode == "nearest":
    coords = _volume_coords(points, x.shape, padding_mode, align_corners)
    xi, yi, zi = (_nearest_index(coord, size) for coord, size in zip(coords, (w, h, d), strict=True))
    out = _take(_volume_flat(x), _volume_index(xi, yi, zi, x.shape))
  else:
    out = _trilinear(padding_mode, align_corners, implementation == "cpu_kernel", x, points)
  out = out.reshape(n, *out_shape, c).astype(image.dtype)
  return out if batched else out[0]


_grid_sample_3d_jit = jax.jit(_grid_sample_3d, static_argnums=(2, 3, 4, 5))
