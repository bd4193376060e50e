"""stn_jax: Spatial Transformer Networks (Jaderberg et al., 2015) in JAX.

The public namespace re-exports the pure, jitted sampling library:

  grids        affine_grid, projective_grid, tps_grid, identity_grid, pixel_centers, tps_control_points,
               tps_transform_points
  fitting      affine_from_points, homography_from_points
  flows        flow_grid, compose_flows, integrate_velocity (dense displacement fields; warp(..., kind='flow'))
  sampling     grid_sample
  transforms   warp, params_to_grid, param_shape, identity_params, affine_theta, attention_theta,
               compose_affine, invert_affine, theta_to_pixel_matrix, pixel_matrix_to_theta

All image functions are channels-last (NHWC), work batched and unbatched, take their options keyword-only, and
compose with jax.jit, jax.vmap and jax.grad.
"""

__version__ = "0.1.0"

from stn_jax.spatial.fitting import affine_from_points, homography_from_points
from stn_jax.spatial.flows import compose_flows, flow_grid, integrate_velocity
from stn_jax.spatial.grids import (
  affine_grid,
  identity_grid,
  pixel_centers,
  projective_grid,
  tps_control_points,
  tps_grid,
  tps_transform_points,
)
from stn_jax.spatial.sampling import MODES, PADDING_MODES, grid_sample
from stn_jax.spatial.transforms import (
  KINDS,
  affine_theta,
  attention_theta,
  compose_affine,
  identity_params,
  invert_affine,
  param_shape,
  params_to_grid,
  pixel_matrix_to_theta,
  theta_to_pixel_matrix,
  warp,
)

__all__ = [
  "KINDS",
  "MODES",
  "PADDING_MODES",
  "affine_from_points",
  "affine_grid",
  "affine_theta",
  "attention_theta",
  "compose_affine",
  "compose_flows",
  "flow_grid",
  "grid_sample",
  "homography_from_points",
  "identity_grid",
  "identity_params",
  "integrate_velocity",
  "invert_affine",
  "param_shape",
  "params_to_grid",
  "pixel_centers",
  "pixel_matrix_to_theta",
  "projective_grid",
  "theta_to_pixel_matrix",
  "tps_control_points",
  "tps_grid",
  "tps_transform_points",
  "warp",
]
