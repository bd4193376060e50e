"""Volumes: 3-D affine_grid and grid_sample against torch's 5-D functions (values and both gradients, every mode,
padding and align_corners), exact identity, forward mode, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax
from tests import helpers


def _random_grid_3d(rng, batch, out_shape, in_shape, *, align_corners, spread=0.6):
  """(N, Do, Ho, Wo, 3) normalised (x, y, z) whose voxel coordinates keep 0.05 away from integers and half-integers."""
  coords = []
  for size in (in_shape[2], in_shape[1], in_shape[0]):  # x runs along W, y along H, z along D
    shape = (batch, *out_shape)
    whole = rng.integers(int(np.floor(-spread * size)), int(np.ceil((1 + spread) * size)), shape)
    voxel = whole + rng.uniform(0.05, 0.45, shape) + 0.5 * rng.integers(0, 2, shape)
    coords.append(2 * voxel / (size - 1) - 1 if align_corners else (2 * voxel + 1) / size - 1)
  return np.stack(coords, -1).astype(np.float32)


@pytest.mark.parametrize(
  ("mode", "padding_mode", "align_corners"),
  list(itertools.product(["bilinear", "nearest"], ["zeros", "border", "reflection"], [False, True])),
)
def test_grid_sample_of_a_volume_matches_torch(mode, padding_mode, align_corners):
  torch = helpers.torch_or_skip()
  rng = np.random.default_rng()
  image = rng.standard_normal((2, 4, 5, 6, 3)).astype(np.float32)
  grid = _random_grid_3d(rng, 2, (3, 4, 2), (4, 5, 6), align_corners=align_corners)
  cotangent = rng.standard_normal((2, 3, 4, 2, 3)).astype(np.float32)
  t_image = torch.tensor(np.moveaxis(image, -1, 1).copy(), requires_grad=True)
  t_grid = torch.tensor(grid, requires_grad=True)
  t_out = torch.nn.functional.grid_sample(
    t_image, t_grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners
  )
  t_out.backward(torch.tensor(np.moveaxis(cotangent, -1, 1).copy()))
  options = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
  out, vjp = jax.vjp(lambda i, g: stn_jax.grid_sample(i, g, **options), jnp.asarray(image), jnp.asarray(grid))
  g_image, g_grid = vjp(jnp.asarray(cotangent))
  np.testing.assert_allclose(np.asarray(out), np.moveaxis(t_out.detach().numpy(), 1, -1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_image), np.moveaxis(t_image.grad.numpy(), 1, -1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(g_grid), t_grid.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_grid_of_a_volume_matches_torch_and_the_identity_is_exact(align_corners):
  torch = helpers.torch_or_skip()
  rng = np.random.default_rng()
  theta = (np.eye(3, 4) + 0.2 * rng.standard_normal((2, 3, 4))).astype(np.float32)
  ours = np.asarray(stn_jax.affine_grid(theta, (3, 4, 5), align_corners=align_corners))
  theirs = torch.nn.functional.affine_grid(torch.tensor(theta), (2, 1, 3, 4, 5), align_corners=align_corners)
  np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-6)
  volume = rng.random((4, 5, 6, 2)).astype(np.float32)
  identity = stn_jax.affine_grid(np.eye(3, 4, dtype=np.float32), [4, 5, 6], align_corners=align_corners)
  for mode in ("bilinear", "nearest"):
    out = stn_jax.grid_sample(volume, identity, mode=mode, align_corners=align_corners)
    np.testing.assert_array_equal(np.asarray(out), volume)


def test_forward_mode_works_through_volume_sampling():
  rng = np.random.default_rng()
  volume = jnp.asarray(rng.standard_normal((3, 4, 5, 1)), jnp.float32)
  theta = jnp.asarray(np.eye(3, 4) + 0.1 * rng.standard_normal((3, 4)), jnp.float32)

  def f(t):
    return stn_jax.grid_sample(volume, stn_jax.affine_grid(t, (2, 3, 2)))

  np.testing.assert_allclose(np.asarray(jax.jacfwd(f)(theta)), np.asarray(jax.jacrev(f)(theta)), atol=1e-5)


def test_volume_errors_name_the_problem():
  volume = np.zeros((1, 4, 5, 6, 1), np.float32)
  grid = np.zeros((1, 2, 2, 2, 3), np.float32)
  with pytest.raises(ValueError, match=r"grid_sample: mode must be 'bilinear' or 'nearest' for a volume"):
    stn_jax.grid_sample(volume, grid, mode="bicubic")
  with pytest.raises(ValueError, match=r"grid_sample: a grid of \(x, y, z\) points samples a volume"):
    stn_jax.grid_sample(np.zeros((4, 5, 1), np.float32), np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r"affine_grid: size must be three positive ints"):
    stn_jax.affine_grid(np.eye(3, 4, dtype=np.float32), (4, 5))


def test_warp_and_identity_params_know_volumes():
  rng = np.random.default_rng()
  volume = jnp.asarray(rng.random((2, 4, 5, 6, 1)), jnp.float32)
  identity = stn_jax.identity_params("affine", batch_shape=(2,), spatial_dims=3)
  assert stn_jax.param_shape("affine", spatial_dims=3) == (3, 4) and identity.shape == (2, 3, 4)
  np.testing.assert_array_equal(np.asarray(stn_jax.warp(volume, identity)), np.asarray(volume))
  theta = identity + 0.1 * jnp.asarray(rng.standard_normal((2, 3, 4)), jnp.float32)
  want = stn_jax.grid_sample(volume, stn_jax.affine_grid(theta, (3, 3, 3)), mode="nearest")
  np.testing.assert_array_equal(np.asarray(stn_jax.warp(volume, theta, size=(3, 3, 3), mode="nearest")), want)
  with pytest.raises(ValueError, match=r"param_shape: kind \(of a volume\) must be one of 'affine'; got 'tps'"):
    stn_jax.param_shape("tps", spatial_dims=3)
  with pytest.raises(ValueError, match=r"warp: a \(\.\.\., 3, 4\) theta warps a volume"):
    stn_jax.warp(volume, identity[:1])
