"""stn_jax: Spatial Transformer Networks in JAX."""

__version__ = "0.1.0"

from stn_jax.grids import affine_grid, identity_grid, pixel_centers, projective_grid, tps_control_points, tps_grid
from stn_jax.sampling import grid_sample
