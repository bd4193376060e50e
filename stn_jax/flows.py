"""Dense displacement fields (2-D): VoxelMorph-style warps, their composition, and diffeomorphic integration.

A flow is (..., H, W, 2), channels-last, in *pixel* units, its last axis (x, y) like the grids': output pixel p reads
the input at p + flow[p] (VoxelMorph's convention). A VoxelMorph field is channels-first (N, 2, H, W) with its
channels in index order (row, col) = (y, x): `jnp.moveaxis(field, 1, -1)[..., ::-1]` converts it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stn_jax import _validation as v
from stn_jax import grids
from stn_jax.sampling import grid_sample


def _check_flow(func: str, flow) -> jax.Array:
  flow = v.as_array(func, "flow", flow)
  v.check_floating(func, "flow", flow)
  v.check_trailing_shape(func, "flow", flow, (None, None, 2), what="(..., H, W, 2)")
  return flow


def _pixel_scale(size: tuple[int, int], align_corners: bool) -> jax.Array:
  """Normalised units per pixel along (x, y)."""
  h, w = size
  if align_corners:
    return jnp.asarray([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
  return jnp.asarray([2.0 / w, 2.0 / h])


@v.keyword_only()
def flow_grid(flow: jax.Array, *, align_corners: bool = False) -> jax.Array:
  """The sampling grid of a displacement field: identity + flow.

  Args:
    flow: (..., H, W, 2) displacements in pixels, (x, y): output pixel p reads the input at p + flow[p].
    align_corners: the grid convention (see stn_jax.grids); pixels are the same either way.

  Returns:
    (..., H, W, 2) normalised grid, for `grid_sample` (an input of the same size H x W is what the pixel units mean).
  """
  func = "flow_grid"
  flow = _check_flow(func, flow)
  align_corners = v.check_bool(func, "align_corners", align_corners)
  size = tuple(flow.shape[-3:-1])
  scale = _pixel_scale(size, align_corners).astype(flow.dtype)
  return grids.identity_grid(size, align_corners=align_corners, dtype=flow.dtype) + flow * scale


def _sample_flow(field: jax.Array, flow: jax.Array) -> jax.Array:
  """`field` (..., H, W, C) read at p + flow[p], bilinear, the edge values beyond the border."""
  batch = flow.shape[:-3]
  grid = flow_grid(flow)
  flat = lambda x: x.reshape(-1, *x.shape[-3:])
  field = jnp.broadcast_to(field, (*batch, *field.shape[-3:]))
  out = grid_sample(flat(field), flat(grid), padding_mode="border")
  return out.reshape(*batch, *out.shape[-3:])


@v.keyword_only()
def compose_flows(a: jax.Array, b: jax.Array) -> jax.Array:
  """The flow of warping by `a` and then by `b`: c(p) = b(p) + a(p + b(p)).

  `warp(warp(image, a, kind='flow'), b, kind='flow')` equals `warp(image, compose_flows(a, b), kind='flow')` up to
  the resampling of `a` (bilinear, edge values beyond the border).

  Args:
    a, b: (..., H, W, 2) flows in pixels (batch shapes broadcast).

  Returns:
    (..., H, W, 2).
  """
  func = "compose_flows"
  a, b = _check_flow(func, a), _check_flow(func, b)
  if a.shape[-3:] != b.shape[-3:]:
    raise ValueError(f"{func}: a and b must have the same H, W; got shapes {a.shape} and {b.shape}.")
  batch = jnp.broadcast_shapes(a.shape[:-3], b.shape[:-3])
  b = jnp.broadcast_to(b, (*batch, *b.shape[-3:]))
  return b + _sample_flow(a, b)


@v.keyword_only()
def integrate_velocity(velocity: jax.Array, *, num_steps: int = 7) -> jax.Array:
  """The flow of a stationary velocity field by scaling and squaring (a diffeomorphic warp, VoxelMorph's VecInt).

  Args:
    velocity: (..., H, W, 2) in pixels.
    num_steps: squarings: the field is divided by 2^num_steps, then composed with itself num_steps times.

  Returns:
    (..., H, W, 2) flow; integrating -velocity gives (nearly) its inverse.
  """
  func = "integrate_velocity"
  velocity = _check_flow(func, velocity)
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
    raise ValueError(f"{func}: num_steps must be an int >= 0; got {num_steps!r}.")
  flow = velocity / (2.0**num_steps)
  for _ in range(num_steps):
    flow = flow + _sample_flow(flow, flow)
  return flow
