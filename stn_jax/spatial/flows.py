"""Dense displacement fields: VoxelMorph-style warps, their composition, and diffeomorphic integration.

A flow is (..., H, W, 2) for images or (..., D, H, W, 3) for volumes, channels-last, in *pixel* units, its last axis
(x, y[, z]) like the grids': output pixel p reads the input at p + flow[p] (VoxelMorph's convention). A VoxelMorph
field is channels-first (N, 2, H, W) / (N, 3, D, H, W) with its channels in index order ((depth,) row, col):
`jnp.moveaxis(field, 1, -1)[..., ::-1]` converts it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stn_jax.spatial import _validation as v
from stn_jax.spatial import grids
from stn_jax.spatial.sampling import grid_sample


def _check_flow(func: str, flow) -> jax.Array:
  flow = v.as_array(func, "flow", flow)
  v.check_floating(func, "flow", flow)
  shape = jnp.shape(flow)
  if not (len(shape) >= 3 and shape[-1] in (2, 3) and len(shape) >= shape[-1] + 1):
    raise ValueError(f"{func}: flow must have shape (..., H, W, 2) or (..., D, H, W, 3); got shape {shape}.")
  return flow


def _spatial(flow) -> int:
  """2 or 3: the flow's spatial dimensions (its last axis)."""
  return flow.shape[-1]


def _pixel_scale(size: tuple[int, ...], align_corners: bool) -> jax.Array:
  """Normalised units per pixel along (x, y[, z]) of a (H, W) or (D, H, W) grid."""
  return jnp.asarray([2.0 / max(n - 1, 1) if align_corners else 2.0 / n for n in reversed(size)])


@v.keyword_only()
def flow_grid(flow: jax.Array, *, align_corners: bool = False) -> jax.Array:
  """The sampling grid of a displacement field: identity + flow.

  Args:
    flow: (..., H, W, 2) or (..., D, H, W, 3) displacements in pixels, (x, y[, z]): output pixel p reads the
      input at p + flow[p].
    align_corners: the grid convention (see stn_jax.spatial.grids); pixels are the same either way.

  Returns:
    The normalised grid, of the flow's shape, for `grid_sample` (an input of the same spatial size is what the
    pixel units mean).
  """
  func = "flow_grid"
  flow = _check_flow(func, flow)
  align_corners = v.check_bool(func, "align_corners", align_corners)
  k = _spatial(flow)
  size = tuple(flow.shape[-k - 1 : -1])
  scale = _pixel_scale(size, align_corners).astype(flow.dtype)
  return jnp.asarray(grids.centre_coordinates(size, align_corners=align_corners), flow.dtype) + flow * scale


def _sample_flow(field: jax.Array, flow: jax.Array) -> jax.Array:
  """`field` (..., [D,] H, W, C) read at p + flow[p], (tri)linear, the edge values beyond the border."""
  k = _spatial(flow)
  batch = flow.shape[: -k - 1]
  grid = flow_grid(flow)
  flat = lambda x: x.reshape(-1, *x.shape[-k - 1 :])
  field = jnp.broadcast_to(field, (*batch, *field.shape[-k - 1 :]))
  out = grid_sample(flat(field), flat(grid), padding_mode="border")
  return out.reshape(*batch, *out.shape[-k - 1 :])


@v.keyword_only()
def compose_flows(a: jax.Array, b: jax.Array) -> jax.Array:
  """The flow of warping by `a` and then by `b`: c(p) = b(p) + a(p + b(p)).

  `warp(warp(image, a, kind='flow'), b, kind='flow')` equals `warp(image, compose_flows(a, b), kind='flow')` up to
  the resampling of `a` (bilinear, edge values beyond the border).

  Args:
    a, b: (..., H, W, 2) or (..., D, H, W, 3) flows in pixels (batch shapes broadcast).

  Returns:
    The composed flow.
  """
  func = "compose_flows"
  a, b = _check_flow(func, a), _check_flow(func, b)
  k = _spatial(a)
  if a.shape[-k - 1 :] != b.shape[-k - 1 :]:
    raise ValueError(f"{func}: a and b must have the same spatial shape; got shapes {a.shape} and {b.shape}.")
  batch = jnp.broadcast_shapes(a.shape[: -k - 1], b.shape[: -k - 1])
  b = jnp.broadcast_to(b, (*batch, *b.shape[-k - 1 :]))
  return b + _sample_flow(a, b)


@v.keyword_only()
def integrate_velocity(velocity: jax.Array, *, num_steps: int = 7) -> jax.Array:
  """The flow of a stationary velocity field by scaling and squaring (a diffeomorphic warp, VoxelMorph's VecInt).

  Args:
    velocity: (..., H, W, 2) or (..., D, H, W, 3) in pixels.
    num_steps: squarings: the field is divided by 2^num_steps, then composed with itself num_steps times.

  Returns:
    The flow, of the velocity's shape; integrating -velocity gives (nearly) its inverse.
  """
  func = "integrate_velocity"
  velocity = _check_flow(func, velocity)
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
    raise ValueError(f"{func}: num_steps must be an int >= 0; got {num_steps!r}.")
  flow = velocity / (2.0**num_steps)
  for _ in range(num_steps):
    flow = flow + _sample_flow(flow, flow)
  return flow
