"""Parameterisation helpers and warp, against scipy.ndimage and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import stn_jax
from tests import helpers


def test_affine_theta_matches_its_formula():
  rng = np.random.default_rng(20)
  rotation, shear, scale = rng.uniform(-1, 1, 4), rng.uniform(-0.3, 0.3, 4), rng.uniform(0.5, 2, 4)
  scale_xy, translation = rng.uniform(0.5, 2, (4, 2)), rng.uniform(-1, 1, (4, 2))
  theta = np.asarray(
    stn_jax.affine_theta(rotation=rotation, shear=shear, scale=scale, scale_xy=scale_xy, translation=translation)
  )
  for i in range(4):
    c, s = np.cos(rotation[i]), np.sin(rotation[i])
    r = np.array([[c, -s], [s, c]])
    sh = np.array([[1, -np.sin(shear[i])], [0, np.cos(shear[i])]])
    linear = r @ sh @ np.diag(scale[i] * scale_xy[i])
    np.testing.assert_allclose(theta[i], np.concatenate([linear, translation[i][:, None]], 1), rtol=1e-5, atol=1e-6)


def test_affine_theta_broadcasts_scalars_against_batches():
  theta = stn_jax.affine_theta(rotation=jnp.zeros(5), translation=(0.1, 0.2))
  assert theta.shape == (5, 2, 3)
  np.testing.assert_allclose(np.asarray(theta[3]), [[1, 0, 0.1], [0, 1, 0.2]], atol=1e-7)


def test_compose_and_invert():
  rng = np.random.default_rng(21)
  a = (np.eye(2, 3) + 0.3 * rng.standard_normal((3, 2, 3))).astype(np.float32)
  b = (np.eye(2, 3) + 0.3 * rng.standard_normal((3, 2, 3))).astype(np.float32)
  identity = np.broadcast_to(np.eye(2, 3), (3, 2, 3))
  np.testing.assert_allclose(np.asarray(stn_jax.compose_affine(a, stn_jax.invert_affine(a))), identity, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stn_jax.compose_affine(stn_jax.invert_affine(a), a)), identity, atol=1e-5)
  # compose(a, b) maps a point through b, then a.
  point = rng.standard_normal(2)
  apply = lambda t, p: t[:, :2] @ p + t[:, 2]
  composed = np.asarray(stn_jax.compose_affine(a, b))[0]
  np.testing.assert_allclose(apply(composed, point), apply(a[0], apply(b[0], point)), rtol=1e-5, atol=1e-5)


def test_compose_then_warp_equals_two_warps_for_grids():
  rng = np.random.default_rng(22)
  a = (np.eye(2, 3) + 0.2 * rng.standard_normal((2, 2, 3))).astype(np.float32)
  b = (np.eye(2, 3) + 0.2 * rng.standard_normal((2, 2, 3))).astype(np.float32)
  # The grid of compose(a, b) is a applied to the grid of b.
  grid_b = np.asarray(stn_jax.affine_grid(b, (5, 6)))
  through_a = np.einsum("njk,nhwk->nhwj", a[:, :, :2], grid_b) + a[:, None, None, :, 2]
  np.testing.assert_allclose(
    np.asarray(stn_jax.affine_grid(stn_jax.compose_affine(a, b), (5, 6))), through_a, rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("align_corners", [False, True])
def test_pixel_matrix_round_trip(align_corners):
  rng = np.random.default_rng(23)
  theta = (np.eye(2, 3) + 0.2 * rng.standard_normal((4, 2, 3))).astype(np.float32)
  sizes = dict(input_size=(12, 10), output_size=(7, 9), align_corners=align_corners)
  matrix = stn_jax.theta_to_pixel_matrix(theta, **sizes)
  assert matrix.shape == (4, 3, 3)
  np.testing.assert_allclose(np.asarray(matrix[:, 2]), np.broadcast_to([0, 0, 1], (4, 3)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(stn_jax.pixel_matrix_to_theta(matrix, **sizes)), theta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_matches_scipy_affine_transform_through_the_pixel_matrix(align_corners):
  rng = np.random.default_rng(24)
  image = helpers.random_image(rng, (9, 11, 2))
  theta = (np.eye(2, 3) + 0.15 * rng.standard_normal((2, 3))).astype(np.float32)
  matrix = np.asarray(
    stn_jax.theta_to_pixel_matrix(theta, input_size=(9, 11), output_size=(8, 7), align_corners=align_corners),
    np.float64,
  )
  expected = np.stack(
    [
      ndimage.affine_transform(
        image[..., c].astype(np.float64), matrix, output_shape=(8, 7), order=1, mode="grid-constant"
      )
      for c in range(2)
    ],
    -1,
  )
  out = stn_jax.warp(image, theta, size=(8, 7), align_corners=align_corners)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", stn_jax.KINDS)
def test_identity_params_warp_is_the_identity(kind):
  rng = np.random.default_rng(25)
  image = helpers.random_image(rng, (3, 10, 12, 2))
  params = stn_jax.identity_params(kind, batch_shape=(3,))
  assert params.shape == (3, *stn_jax.param_shape(kind))
  np.testing.assert_array_equal(np.asarray(stn_jax.warp(image, params, kind=kind)), image)


def test_attention_is_scale_and_translation():
  rng = np.random.default_rng(26)
  params = rng.uniform(0.3, 1.0, (4, 3)).astype(np.float32)
  theta = np.asarray(stn_jax.attention_theta(params))
  np.testing.assert_allclose(theta[:, 0], np.stack([params[:, 0], 0 * params[:, 0], params[:, 1]], -1))
  np.testing.assert_allclose(theta[:, 1], np.stack([0 * params[:, 0], params[:, 0], params[:, 2]], -1))
  image = helpers.random_image(rng, (4, 8, 8, 1))
  np.testing.assert_allclose(
    np.asarray(stn_jax.warp(image, params, kind="attention", size=(4, 4))),
    np.asarray(stn_jax.warp(image, theta, size=(4, 4))),
    atol=1e-6,
  )


def test_warp_is_differentiable_and_vmappable_for_every_kind():
  rng = np.random.default_rng(27)
  image = jnp.asarray(helpers.random_image(rng, (2, 8, 8, 1)))
  for kind in stn_jax.KINDS:
    params = stn_jax.identity_params(kind, batch_shape=(2,)) + 0.05 * jnp.asarray(
      rng.standard_normal((2, *stn_jax.param_shape(kind))), jnp.float32
    )
    g = jax.grad(lambda p, k=kind: (stn_jax.warp(image, p, kind=k) ** 2).sum())(params)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0, kind
    single = jax.vmap(lambda i, p, k=kind: stn_jax.warp(i, p, kind=k))(image, params)
    np.testing.assert_allclose(np.asarray(single), np.asarray(stn_jax.warp(image, params, kind=kind)), atol=1e-6)


@pytest.mark.parametrize(
  ("call", "error", "words"),
  [
    (lambda: stn_jax.warp(jnp.ones((2, 4, 4, 1)), jnp.zeros((2, 6))), ValueError, ["params", "(2, 2, 3)", "(2, 6)"]),
    (lambda: stn_jax.warp(jnp.ones((4, 4, 1)), jnp.zeros((2, 3)), kind="rigid"), ValueError, ["kind", "'rigid'"]),
    (lambda: stn_jax.warp(jnp.ones((4, 4)), jnp.zeros((2, 3))), ValueError, ["image", "(4, 4)"]),
    (lambda: stn_jax.identity_params("tps", num_control_points=8), ValueError, ["perfect square", "8"]),
    (lambda: stn_jax.affine_theta(translation=(1.0, 2.0, 3.0)), ValueError, ["translation", "(..., 2)"]),
    (
      lambda: stn_jax.theta_to_pixel_matrix(jnp.zeros((2, 3)), input_size=(1, 5), align_corners=True),
      ValueError,
      ["align_corners", "(1, 5)"],
    ),
  ],
)
def test_transform_errors_name_the_problem(call, error, words):
  with pytest.raises(error) as info:
    call()
  for word in words:
    assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 1e30, -1e30])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_non_finite_or_huge_theta_never_crashes(value, padding_mode):
  rng = np.random.default_rng(28)
  image = helpers.random_image(rng, (2, 6, 6, 1))
  theta = np.tile(np.eye(2, 3, dtype=np.float32), (2, 1, 1))
  theta[0, 0, 2] = value  # a huge / non-finite shift of the first image; the second stays the identity
  for mode in ("bilinear", "nearest", "bicubic"):
    out = np.asarray(stn_jax.warp(image, theta, mode=mode, padding_mode=padding_mode))
    np.testing.assert_array_equal(out[1], image[1])
    if np.isfinite(value) and padding_mode == "zeros":
      np.testing.assert_array_equal(out[0], 0.0)
    grad = jax.grad(lambda t, m=mode: jnp.nansum(stn_jax.warp(image, t, mode=m, padding_mode=padding_mode)))(theta)
    assert np.isfinite(np.asarray(grad)[1]).all()


def test_warp_and_params_to_grid_accept_nested_lists():
  rng = np.random.default_rng()
  image = helpers.random_image(rng, (6, 7, 2))
  theta = (np.eye(2, 3) + 0.2 * rng.standard_normal((2, 3))).astype(np.float32)
  size = [int(s) for s in rng.integers(2, 9, 2)]
  expected = np.asarray(stn_jax.warp(image, theta, size=tuple(size)))
  np.testing.assert_array_equal(np.asarray(stn_jax.warp(image.tolist(), theta.tolist(), size=size)), expected)
  np.testing.assert_array_equal(
    np.asarray(stn_jax.params_to_grid(theta.tolist(), size)), np.asarray(stn_jax.affine_grid(theta, size))
  )
  attention = rng.uniform(0.5, 1.0, 3).astype(np.float32)
  np.testing.assert_array_equal(
    np.asarray(stn_jax.params_to_grid(attention.tolist(), size, kind="attention")),
    np.asarray(stn_jax.affine_grid(stn_jax.attention_theta(attention), size)),
  )


@pytest.mark.parametrize(
  ("call", "error", "words"),
  [
    (lambda: stn_jax.params_to_grid(jnp.zeros((3, 2)), (4, 4)), ValueError, ["params_to_grid: params", "(..., 2, 3)"]),
    (
      lambda: stn_jax.params_to_grid(jnp.zeros((4,)), (4, 4), kind="attention"),
      ValueError,
      ["params_to_grid: params", "(..., 3)", "(4,)"],
    ),
    (lambda: stn_jax.params_to_grid(jnp.zeros((9, 2), jnp.int32), (4, 4), kind="tps"), TypeError, ["params", "int32"]),
    (lambda: stn_jax.params_to_grid(jnp.zeros((2, 3)), (4, 4), kind="rigid"), ValueError, ["kind", "'rigid'"]),
    (lambda: stn_jax.warp(jnp.ones((4, 4, 1)), jnp.zeros(5), kind="tps"), ValueError, ["warp: params", "(5,)"]),
    (lambda: stn_jax.warp(jnp.ones((4, 4, 1), jnp.int32), jnp.eye(2, 3)), TypeError, ["warp: image", "int32"]),
    (lambda: stn_jax.warp("image", jnp.eye(2, 3)), TypeError, ["warp: image must be an array", "'image'"]),
  ],
)
def test_params_errors_name_the_calling_function(call, error, words):
  with pytest.raises(error) as info:
    call()
  assert "\n" not in str(info.value), str(info.value)  # raised before jit, so JAX appends no traceback note
  for word in words:
    assert word in str(info.value), (word, str(info.value))


def test_forward_mode_through_warp_of_every_kind_and_mode():
  # docs/sampling.md's "Autodiff" bullet: jax.jvp / jax.jacfwd work for every kind and sampling mode.
  rng = np.random.default_rng()
  image = jnp.asarray(helpers.random_image(rng, (2, 7, 8, 1)))
  for kind in stn_jax.KINDS:
    params = stn_jax.identity_params(kind, batch_shape=(2,)) + 0.05 * jnp.asarray(
      rng.standard_normal((2, *stn_jax.param_shape(kind))), jnp.float32
    )
    for mode in stn_jax.MODES:
      fn = lambda p, k=kind, m=mode: stn_jax.warp(image, p, kind=k, mode=m, size=(4, 5))
      np.testing.assert_allclose(
        np.asarray(jax.jacfwd(fn)(params)), np.asarray(jax.jacrev(fn)(params)), rtol=1e-4, atol=1e-5
      )
  # An affine theta and the same transform as a projective matrix (last row 0, 0, 1) warp alike, tangents included.
  theta = stn_jax.identity_params("affine", batch_shape=(2,)) + 0.1 * jnp.asarray(rng.standard_normal((2, 2, 3)))
  matrix = jnp.concatenate([theta, jnp.broadcast_to(jnp.asarray([[0.0, 0.0, 1.0]]), (2, 1, 3))], axis=1)
  direction = jnp.asarray(rng.standard_normal((2, 2, 3)), jnp.float32)
  _, affine_tangent = jax.jvp(lambda t: stn_jax.warp(image, t), (theta,), (direction,))
  _, projective_tangent = jax.jvp(
    lambda m: stn_jax.warp(image, m, kind="projective"), (matrix,), (jnp.pad(direction, ((0, 0), (0, 1), (0, 0))),)
  )
  np.testing.assert_allclose(np.asarray(affine_tangent), np.asarray(projective_tangent), rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(affine_tangent)).max() > 0


def _run_lengths(line: np.ndarray) -> list[int]:
  """Lengths of the runs of equal values along a 1-D array, the first and last (cut by the edges) left off."""
  edges = np.flatnonzero(np.diff(line) != 0)
  return list(np.diff(edges))


@pytest.mark.parametrize("angle", [np.pi / 2, np.pi / 6])
def test_a_rotation_with_the_aspect_keeps_a_non_square_checkerboards_cells_square(angle):
  # 48 x 64 checkerboard of 8-pixel cells, rotated about its centre: with aspect = W / H the cells stay 8 x 8 squares
  # (along rows and columns alike, runs of 8 / (|cos| + |sin|) on average: a line crosses both families of cell
  # edges); in normalised coordinates they do not.
  h, w, cell = 48, 64, 8
  y, x = np.mgrid[:h, :w]
  board = (((x // cell) + (y // cell)) % 2).astype(np.float32)[None, ..., None]
  runs = {}
  for aspect in (None, w / h):
    theta = stn_jax.affine_theta(rotation=angle, aspect=aspect)[None]
    out = np.asarray(stn_jax.warp(board, theta, mode="nearest"))[0, ..., 0]
    rows = [r for k in range(16, 32) for r in _run_lengths(out[k, 8:-8])]
    cols = [r for k in range(24, 40) for r in _run_lengths(out[8:-8, k])]
    runs[aspect] = (np.mean(rows), np.mean(cols))
  rows, cols = runs[w / h]
  step = cell / (abs(np.cos(angle)) + abs(np.sin(angle)))
  assert abs(rows - cols) <= 0.5 and abs(rows - step) <= 0.5, runs
  rows, cols = runs[None]
  assert abs(rows - cols) >= 1, runs  # not rigid without it


def test_a_quarter_turn_with_the_aspect_is_numpys_rot90_of_the_centre_square():
  # 48 x 64 (H x W) image: with aspect = W / H, output pixel (dx, dy) from the centre samples input (-dy, dx) in pixels,
  # so the output's middle 48 columns are np.rot90 of the input's middle 48 x 48 square, at pixel centres (exact); the
  # columns outside it sample beyond the input's rows (zeros). Without the aspect the turn is stretched: not rot90.
  h, w = 48, 64
  image = jax.random.uniform(jax.random.key(7), (h, w, 3))
  centre = slice((w - h) // 2, (w + h) // 2)
  expected = np.rot90(np.asarray(image)[:, centre])
  for run in (lambda f, *a: f(*a), lambda f, *a: jax.jit(f)(*a)):
    theta = stn_jax.affine_theta(rotation=np.pi / 2, aspect=w / h)
    out = np.asarray(run(lambda im, t: stn_jax.warp(im[None], t[None])[0], image, theta))
    np.testing.assert_allclose(out[:, centre], expected, atol=1e-5)
    np.testing.assert_allclose(out[:, : centre.start], 0, atol=1e-5)
    np.testing.assert_allclose(out[:, centre.stop :], 0, atol=1e-5)
  stretched = np.asarray(stn_jax.warp(image[None], stn_jax.affine_theta(rotation=np.pi / 2)[None])[0])
  assert np.abs(stretched[:, centre] - expected).mean() > 0.1
  # aspect=1 is today's theta, bit for bit
  angles = jax.random.uniform(jax.random.key(8), (5,), minval=-3, maxval=3)
  np.testing.assert_array_equal(
    stn_jax.affine_theta(rotation=angles, shear=0.2, aspect=1.0), stn_jax.affine_theta(rotation=angles, shear=0.2)
  )


@pytest.mark.parametrize(
  "aspect, shown",
  [
    (-1, "-1"),
    (0.0, "0.0"),
    (float("inf"), "inf"),
    (float("nan"), "nan"),
    (True, "True"),
    ("4/3", "'4/3'"),
    ((4, 3), r"\(4, 3\)"),
    (jnp.float32(1.5), r"an array of shape \(\) and dtype float32"),  # a static number, never an array
  ],
)
def test_a_bad_aspect_is_a_one_line_error(aspect, shown):
  with pytest.raises(
    ValueError, match=rf"^affine_theta: aspect must be None or a positive width / height; got {shown}\.$"
  ):
    stn_jax.affine_theta(rotation=0.3, aspect=aspect)


def test_a_numpy_aspect_is_taken_as_a_number_and_keeps_the_dtype():
  expected = stn_jax.affine_theta(rotation=0.3, aspect=64 / 48)
  for aspect in (np.float64(64 / 48), np.float32(64 / 48)):
    theta = stn_jax.affine_theta(rotation=0.3, aspect=aspect)
    assert theta.dtype == jnp.float32
    np.testing.assert_allclose(theta, expected, rtol=1e-6)
