"""Dense displacement fields: warps against scipy.ndimage.map_coordinates, composition, diffeomorphic integration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax

scipy_ndimage = pytest.importorskip("scipy.ndimage")


def _smooth_field(rng, shape, amplitude, frequencies=(0.5, 2.0)):
  """A smooth random (..., H, W, 2) field: a few low-frequency sinusoids (cycles per image), in pixels."""
  *batch, h, w, _ = shape
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  field = np.zeros(shape)
  for _ in range(3):
    fx, fy = rng.uniform(*frequencies, 2)
    phase = rng.uniform(0, 2 * np.pi, (*batch, 1, 1, 2))
    field += np.sin(2 * np.pi * (fx * x / w + fy * y / h))[..., None] * np.cos(phase)
  return (amplitude * field / 3).astype(np.float32)


@pytest.mark.parametrize("align_corners", [False, True])
def test_flow_warp_reads_the_input_at_p_plus_flow_like_map_coordinates(align_corners):
  rng = np.random.default_rng()
  image = rng.random((2, 11, 13, 3)).astype(np.float32)
  flow = rng.uniform(-3, 3, (2, 11, 13, 2)).astype(np.float32)
  out = np.asarray(stn_jax.warp(image, flow, kind="flow", align_corners=align_corners))
  rows, cols = np.meshgrid(np.arange(11), np.arange(13), indexing="ij")
  for n in range(2):
    coords = [rows + flow[n, ..., 1], cols + flow[n, ..., 0]]
    for c in range(3):
      want = scipy_ndimage.map_coordinates(image[n, ..., c], coords, order=1, mode="grid-constant", cval=0.0)
      np.testing.assert_allclose(out[n, ..., c], want, atol=1e-5)
  zero = np.asarray(stn_jax.warp(image, np.zeros_like(flow), kind="flow", align_corners=align_corners))
  np.testing.assert_array_equal(zero, image)  # a zero flow is the identity, exactly


def test_composed_flows_are_b_plus_a_read_at_p_plus_b():
  rng = np.random.default_rng()
  a, b = (_smooth_field(rng, (2, 16, 18, 2), 2.5) for _ in range(2))
  composed = np.asarray(stn_jax.compose_flows(jnp.asarray(a), jnp.asarray(b)))
  rows, cols = np.meshgrid(np.arange(16), np.arange(18), indexing="ij")
  for n in range(2):
    at = [rows + b[n, ..., 1], cols + b[n, ..., 0]]
    for c in range(2):  # the edge values beyond the border: scipy's 'nearest'
      want = b[n, ..., c] + scipy_ndimage.map_coordinates(a[n, ..., c], at, order=1, mode="nearest")
      np.testing.assert_allclose(composed[n, ..., c], want, atol=1e-4)
  # and warping by it is warping by a, then by b: exactly so for an image that bilinear sampling reproduces exactly
  # (a linear ramp), away from the border
  ramp = jnp.asarray((0.3 * cols + 0.7 * rows + 1.0)[..., None], jnp.float32)
  twice = stn_jax.warp(stn_jax.warp(ramp, a[0], kind="flow"), b[0], kind="flow")
  once = stn_jax.warp(ramp, jnp.asarray(composed[0]), kind="flow")
  np.testing.assert_allclose(np.asarray(once)[6:-6, 6:-6], np.asarray(twice)[6:-6, 6:-6], rtol=1e-4)


def test_integrating_v_then_minus_v_is_nearly_the_identity():
  rng = np.random.default_rng()
  velocity = jnp.asarray(_smooth_field(rng, (2, 32, 32, 2), 2.0, frequencies=(0.3, 1.0)))
  forward = stn_jax.integrate_velocity(velocity)
  backward = stn_jax.integrate_velocity(-velocity)
  assert float(jnp.abs(forward).max()) > 0.5  # it moves things
  round_trip = np.asarray(stn_jax.compose_flows(forward, backward))[:, 4:-4, 4:-4]
  assert np.abs(round_trip).max() < 0.05  # pixels
  # zero steps is the velocity itself; the result is differentiable
  np.testing.assert_array_equal(np.asarray(stn_jax.integrate_velocity(velocity, num_steps=0)), np.asarray(velocity))
  grad = jax.grad(lambda v: jnp.sum(jnp.sin(stn_jax.integrate_velocity(v, num_steps=3))))(velocity)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_bad_flows_are_refused_by_name():
  image = np.zeros((1, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match=r"warp: a flow must have the image's shape.*flow \(1, 8, 9, 2\)"):
    stn_jax.warp(image, np.zeros((1, 8, 9, 2), np.float32), kind="flow")
  with pytest.raises(ValueError, match=r"flow_grid: flow must have shape \(\.\.\., H, W, 2\) or .*\(8, 8, 4\)"):
    stn_jax.flow_grid(np.zeros((8, 8, 4), np.float32))
  with pytest.raises(ValueError, match=r"compose_flows: a and b must have the same spatial shape"):
    stn_jax.compose_flows(np.zeros((8, 8, 2), np.float32), np.zeros((8, 9, 2), np.float32))
  with pytest.raises(ValueError, match=r"integrate_velocity: num_steps must be an int >= 0; got -1"):
    stn_jax.integrate_velocity(np.zeros((8, 8, 2), np.float32), num_steps=-1)


def test_volume_flows_read_at_p_plus_flow_compose_and_integrate():
  rng = np.random.default_rng()
  volume = rng.random((2, 5, 6, 7, 2)).astype(np.float32)
  flow = rng.uniform(-2, 2, (2, 5, 6, 7, 3)).astype(np.float32)
  out = np.asarray(stn_jax.warp(volume, flow, kind="flow"))
  depth, rows, cols = np.meshgrid(np.arange(5), np.arange(6), np.arange(7), indexing="ij")
  for n in range(2):  # flow's last axis is (x, y, z): x along W (cols), z along D
    coords = [depth + flow[n, ..., 2], rows + flow[n, ..., 1], cols + flow[n, ..., 0]]
    for c in range(2):
      want = scipy_ndimage.map_coordinates(volume[n, ..., c], coords, order=1, mode="grid-constant", cval=0.0)
      np.testing.assert_allclose(out[n, ..., c], want, atol=1e-5)
  a, b = (jnp.asarray(rng.uniform(-1, 1, (5, 6, 7, 3)), jnp.float32) for _ in range(2))
  composed = np.asarray(stn_jax.compose_flows(a, b))
  at = [depth + np.asarray(b)[..., 2], rows + np.asarray(b)[..., 1], cols + np.asarray(b)[..., 0]]
  for c in range(3):
    want = np.asarray(b)[..., c] + scipy_ndimage.map_coordinates(np.asarray(a)[..., c], at, order=1, mode="nearest")
    np.testing.assert_allclose(composed[..., c], want, atol=1e-4)
  phase = rng.uniform(0, 2 * np.pi, 3)
  wave = np.sin(2 * np.pi * (cols / 7 + rows / 6 + depth / 5)[..., None] / 3 + phase)  # smooth, about 1 px
  velocity = jnp.asarray(wave, jnp.float32)
  round_trip = stn_jax.compose_flows(stn_jax.integrate_velocity(velocity), stn_jax.integrate_velocity(-velocity))
  assert float(jnp.abs(stn_jax.integrate_velocity(velocity)).max()) > 0.5
  assert float(jnp.abs(round_trip[1:-1, 1:-1, 1:-1]).max()) < 0.15  # pixels, for a 1-px field on 5 x 6 x 7
