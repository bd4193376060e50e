"""grid_sample against torch.nn.functional.grid_sample and scipy.ndimage, under jit / vmap / grad, and on bad input."""

import itertools
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import ndimage

import stn_jax
from stn_jax.spatial import cpu_kernels
from tests import helpers

COMBOS = list(itertools.product(stn_jax.MODES, stn_jax.PADDING_MODES, (False, True)))
# Bilinear sampling of images runs on XLA or on the CPU kernel (stn_jax.spatial.cpu_kernels): both are held to torch.
KERNEL = pytest.param(
  "cpu_kernel", marks=pytest.mark.skipif(not cpu_kernels.available(), reason="the CPU kernel is not built")
)
IMPLEMENTATIONS = ["xla", KERNEL]
COMBOS_BY_IMPLEMENTATION = [(*c, "xla") for c in COMBOS] + [
  (*c, KERNEL.values[0]) for c in COMBOS if c[0] == "bilinear"
]


def _implementation(mode, implementation):
  """The implementation to ask for: the CPU kernel samples bilinearly only."""
  return implementation if mode == "bilinear" else "xla"


def _value_and_grads(image, grid, cotangent, **options):
  out, vjp = jax.vjp(lambda i, g: stn_jax.grid_sample(i, g, **options), jnp.asarray(image), jnp.asarray(grid))
  g_image, g_grid = vjp(jnp.asarray(cotangent))
  return np.asarray(out), np.asarray(g_image), np.asarray(g_grid)


@pytest.mark.parametrize(("mode", "padding_mode", "align_corners", "implementation"), COMBOS_BY_IMPLEMENTATION)
def test_matches_torch_values_and_gradients(mode, padding_mode, align_corners, implementation):
  helpers.torch_or_skip()
  rng = np.random.default_rng(zlib.crc32(f"{mode}-{padding_mode}-{align_corners}".encode()))
  image = helpers.random_image(rng, (3, 7, 9, 2))
  grid = helpers.random_grid(rng, (3,), (6, 5), (7, 9), align_corners=align_corners)
  cotangent = helpers.random_image(rng, (3, 6, 5, 2))
  options = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
  ours = _value_and_grads(image, grid, cotangent, **options, implementation=implementation)
  reference = helpers.torch_grid_sample(image, grid, cotangent, **options)
  # float32 rounding: bicubic sums 16 weighted taps (and their weights' derivatives), bilinear and nearest 4 or 1.
  atol = 1e-5 if mode == "bicubic" else 2e-6
  for name, a, b in zip(("value", "image grad", "grid grad"), ours, reference, strict=True):
    scale = max(1.0, np.abs(b).max())
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol * scale, err_msg=f"{name} differs from torch")
  if mode != "nearest":  # the grid gradient is really exercised, not zero everywhere
    assert np.abs(reference[2]).max() > 0.1


@pytest.mark.parametrize(("mode", "padding_mode", "align_corners", "implementation"), COMBOS_BY_IMPLEMENTATION)
def test_identity_grid_reproduces_input_exactly(mode, padding_mode, align_corners, implementation):
  rng = np.random.default_rng(1)
  image = helpers.random_image(rng, (2, 11, 13, 3))
  grid = jnp.broadcast_to(stn_jax.identity_grid((11, 13), align_corners=align_corners), (2, 11, 13, 2))
  options = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners, implementation=implementation)
  out = stn_jax.grid_sample(image, grid, **options)
  np.testing.assert_array_equal(np.asarray(out), image)


def _scipy_bilinear(image, grid):
  """Reference: scipy's order-1 map_coordinates with zero padding ('grid-constant'), align_corners=False."""
  h, w, c = image.shape
  cols = ((grid[..., 0] + 1) * w - 1) / 2
  rows = ((grid[..., 1] + 1) * h - 1) / 2
  return np.stack(
    [ndimage.map_coordinates(image[..., k], [rows, cols], order=1, mode="grid-constant") for k in range(c)], -1
  )


@pytest.mark.parametrize("transform", ["eager", "jit", "vmap"])
def test_bilinear_matches_scipy_eager_jit_vmap(transform):
  rng = np.random.default_rng(2)
  images = helpers.random_image(rng, (4, 8, 10, 3))
  grids = helpers.random_grid(rng, (4,), (5, 7), (8, 10), align_corners=False, spread=0.3)
  if transform == "eager":
    with jax.disable_jit():
      out = stn_jax.grid_sample(images, grids)
  elif transform == "jit":
    out = jax.jit(lambda i, g: stn_jax.grid_sample(i, g))(images, grids)
  else:  # the unbatched function, vmapped
    out = jax.vmap(stn_jax.grid_sample)(images, grids)
  expected = np.stack(
    [_scipy_bilinear(i.astype(np.float64), g.astype(np.float64)) for i, g in zip(images, grids, strict=True)]
  )
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_unbatched_equals_batched():
  rng = np.random.default_rng(3)
  image = helpers.random_image(rng, (6, 5, 2))
  grid = helpers.random_grid(rng, (), (4, 3), (6, 5), align_corners=False)
  out = stn_jax.grid_sample(image, grid, mode="bicubic", padding_mode="reflection")
  batched = stn_jax.grid_sample(image[None], grid[None], mode="bicubic", padding_mode="reflection")
  assert out.shape == (4, 3, 2)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(batched[0]))


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_bilinear_check_grads_first_and_second_order(padding_mode):
  rng = np.random.default_rng(4)
  with jax.enable_x64(True):
    image = jnp.asarray(rng.standard_normal((2, 5, 6, 2)))
    grid = jnp.asarray(helpers.random_grid(rng, (2,), (3, 4), (5, 6), align_corners=False).astype(np.float64))
    fn = lambda i, g: stn_jax.grid_sample(i, g, padding_mode=padding_mode)
    check_grads(fn, (image, grid), order=2, modes=["rev"], eps=1e-4, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("mode", stn_jax.MODES)
def test_low_precision_runs_and_keeps_dtype(dtype, mode, implementation):
  if implementation != "xla" and mode != "bilinear":
    pytest.skip("the CPU kernel samples bilinearly")
  rng = np.random.default_rng(5)
  image = helpers.random_image(rng, (2, 6, 6, 3))
  grid = helpers.random_grid(rng, (2,), (4, 4), (6, 6), align_corners=False, spread=0.2)
  options = dict(mode=mode, implementation=implementation)
  out = stn_jax.grid_sample(jnp.asarray(image, dtype), jnp.asarray(grid, dtype), **options)
  assert out.dtype == dtype
  reference = stn_jax.grid_sample(
    jnp.asarray(image, dtype).astype(jnp.float32), jnp.asarray(grid, dtype).astype(jnp.float32), **options
  )
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference), atol=0.05 * np.abs(image).max())
  g_image, g_grid = jax.grad(lambda i, g: stn_jax.grid_sample(i, g, **options).astype(jnp.float32).sum(), (0, 1))(
    jnp.asarray(image, dtype), jnp.asarray(grid, dtype)
  )
  assert g_image.dtype == dtype and g_grid.dtype == dtype
  assert np.isfinite(np.asarray(g_image, np.float32)).all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_gradients_finite_at_integer_positions_and_far_outside(implementation):
  rng = np.random.default_rng(6)
  image = jnp.asarray(helpers.random_image(rng, (1, 6, 6, 1)))
  centres = stn_jax.pixel_centers(6)
  x, y = np.meshgrid(centres, centres)
  far = np.full((6, 6), 1e6)
  grid = jnp.asarray(
    np.stack([np.stack([x, y], -1), np.stack([far, -far], -1)])[None].reshape(1, 12, 6, 2), jnp.float32
  )
  for padding_mode in stn_jax.PADDING_MODES:
    for mode in stn_jax.MODES:
      options = dict(mode=mode, padding_mode=padding_mode, implementation=_implementation(mode, implementation))
      g_image, g_grid = jax.grad(lambda i, g, o=options: (stn_jax.grid_sample(i, g, **o) ** 2).sum(), (0, 1))(
        image, grid
      )
      assert np.isfinite(np.asarray(g_grid)).all() and np.isfinite(np.asarray(g_image)).all(), (mode, padding_mode)
      if padding_mode == "zeros":
        np.testing.assert_array_equal(np.asarray(g_grid)[:, 6:], 0.0)
  # At integer positions the bilinear gradient is the one-sided (forward) difference, as torch's.
  g_grid = jax.grad(lambda g: stn_jax.grid_sample(image, g, implementation=implementation).sum())(grid[:, :6])
  step = np.asarray(image)[0, :, 1:, 0] - np.asarray(image)[0, :, :-1, 0]
  np.testing.assert_allclose(np.asarray(g_grid)[0, :, :-1, 0], step * 6 / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e30, -1e30])
def test_huge_and_infinite_coordinates_follow_the_padding_mode(value, implementation):
  rng = np.random.default_rng(7)
  image = helpers.random_image(rng, (1, 4, 5, 1))
  grid = np.zeros((1, 1, 1, 2), np.float32)
  grid[..., 0] = value  # x far left or right, y at the centre
  zeros = stn_jax.grid_sample(image, grid, padding_mode="zeros", mode="bilinear", implementation=implementation)
  np.testing.assert_array_equal(np.asarray(zeros), 0.0)
  border = stn_jax.grid_sample(image, grid, padding_mode="border", mode="nearest")
  column = 4 if value > 0 else 0
  np.testing.assert_array_equal(np.asarray(border)[0, 0, 0], image[0, 2, column])
  for mode in stn_jax.MODES:  # runs without error and stays within the image's range
    options = dict(padding_mode="border", mode=mode, implementation=_implementation(mode, implementation))
    out = np.asarray(stn_jax.grid_sample(image, grid, **options))
    assert np.isfinite(out).all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_nan_coordinates_give_nan_without_crashing(implementation):
  image = jnp.ones((1, 4, 4, 1))
  grid = jnp.full((1, 2, 2, 2), jnp.nan)
  assert np.isnan(np.asarray(stn_jax.grid_sample(image, grid, implementation=implementation))).all()
  g_grid = jax.grad(lambda g: stn_jax.grid_sample(image, g, implementation=implementation).sum())(grid)
  assert g_grid.shape == grid.shape
  assert (np.asarray(stn_jax.grid_sample(image, grid, mode="nearest")) == 0).all()


@pytest.mark.parametrize(
  ("image_shape", "grid_shape", "options", "error", "words"),
  [
    ((4, 5), (4, 5, 2), {}, ValueError, ["image", "(N, H, W, C) or (H, W, C)", "(4, 5)"]),
    ((2, 4, 5, 1), (2, 4, 5, 4), {}, ValueError, ["grid", "(N, H_out, W_out, 2)", "(2, 4, 5, 4)"]),
    ((2, 4, 5, 1), (4, 5, 2), {}, ValueError, ["grid", "(2, 4, 5, 1)", "(4, 5, 2)"]),
    ((2, 4, 5, 1), (3, 4, 5, 2), {}, ValueError, ["batch size", "(2, 4, 5, 1)", "(3, 4, 5, 2)"]),
    ((2, 4, 5, 1), (2, 4, 5, 2), {"mode": "cubic"}, ValueError, ["mode", "'cubic'", "'bilinear'", "'bicubic'"]),
    ((2, 4, 5, 1), (2, 4, 5, 2), {"padding_mode": "wrap"}, ValueError, ["padding_mode", "'wrap'", "'reflection'"]),
    ((2, 4, 5, 1), (2, 4, 5, 2), {"align_corners": "yes"}, TypeError, ["align_corners", "'yes'", "bool"]),
  ],
)
def test_bad_input_errors_name_the_problem(image_shape, grid_shape, options, error, words):
  with pytest.raises(error) as info:
    stn_jax.grid_sample(jnp.ones(image_shape), jnp.zeros(grid_shape), **options)
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_integer_image_is_a_type_error():
  with pytest.raises(TypeError, match=r"image must have a floating dtype.*int32"):
    stn_jax.grid_sample(jnp.ones((1, 4, 4, 1), jnp.int32), jnp.zeros((1, 2, 2, 2)))


def test_nested_lists_are_converted_like_arrays():
  rng = np.random.default_rng()
  image = helpers.random_image(rng, (5, 6, 2))
  grid = helpers.random_grid(rng, (), (3, 4), (5, 6), align_corners=False, spread=0.2)
  mode = str(rng.choice(stn_jax.MODES))
  np.testing.assert_array_equal(
    np.asarray(stn_jax.grid_sample(image.tolist(), grid.tolist(), mode=mode)),
    np.asarray(stn_jax.grid_sample(image, grid, mode=mode)),
  )
  with pytest.raises(TypeError, match=r"^grid_sample: grid must be an array .*got 'grid' of type str\.$"):
    stn_jax.grid_sample(image, "grid")


def _random_channels_first_shape(rng, batched):
  c = int(rng.choice([1, 2, 3, 4]))
  side = int(rng.integers(max(4 * c, 8), 65))
  return ((int(rng.integers(1, 5)),) if batched else ()) + (c, side, side)


@pytest.mark.parametrize("batched", [True, False])
def test_a_channels_first_image_warns(batched):
  rng = np.random.default_rng()
  shape = _random_channels_first_shape(rng, batched)
  image = jnp.zeros(shape)
  grid = jnp.zeros((*shape[:-3], 2, 2, 2))
  theta = jnp.zeros((*shape[:-3], 2, 3))
  for func, call in (("grid_sample", stn_jax.grid_sample), ("warp", stn_jax.warp)):
    with pytest.warns(UserWarning) as record:
      call(image, grid if func == "grid_sample" else theta)
    assert len(record) == 1
    message = str(record[0].message)
    h, w, c = shape[-3:]
    for word in (f"{func}: image of shape {shape}", "channels-last NHWC", f"H={h}, W={w}, C={c}", "moveaxis"):
      assert word in message, (word, message)
    assert record[0].filename == __file__  # points at the caller


@pytest.mark.parametrize(
  "shape", [(2, 4, 4, 256), (2, 100, 3), (3, 28, 28, 1), (2, 64, 64, 3), (1, 1, 8, 7), (2, 2, 7, 64), (1, 3, 11, 64)]
)
def test_legitimate_small_or_channels_last_images_do_not_warn(shape):
  rng = np.random.default_rng()
  image = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  batch = shape[:-3]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    stn_jax.grid_sample(image, jnp.zeros((*batch, 2, 2, 2)))
    stn_jax.warp(image, jnp.broadcast_to(jnp.eye(2, 3), (*batch, 2, 3)))


def test_forward_mode_works_in_every_mode():
  # docs/sampling.md's "Autodiff" bullet; tests/spatial/test_forward_mode.py checks every padding mode and
  # align_corners too.
  rng = np.random.default_rng()
  image = jnp.asarray(helpers.random_image(rng, (1, 5, 6, 2)))
  # points mostly inside the image, so that the grid derivative is large somewhere (checked below)
  grid = jnp.asarray(helpers.random_grid(rng, (1,), (3, 3), (5, 6), align_corners=False, spread=0.1))
  for mode in stn_jax.MODES:
    for argnums in (0, 1):
      fn = lambda i, g, m=mode: stn_jax.grid_sample(i, g, mode=m)
      forward = jax.jacfwd(fn, argnums=argnums)(image, grid)
      np.testing.assert_allclose(
        np.asarray(forward), np.asarray(jax.jacrev(fn, argnums=argnums)(image, grid)), rtol=1e-5, atol=1e-5
      )
      if mode != "nearest" and argnums == 1:
        assert np.abs(np.asarray(forward)).max() > 0.1, mode  # the grid derivative is really exercised
