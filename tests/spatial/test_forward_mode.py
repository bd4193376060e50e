"""Forward-mode autodiff (jax.jvp, jax.linearize, jax.jacfwd, jax.hessian) through every sampler mode and grid function:
against central finite differences in float64, against reverse mode, and under jit and vmap.

Every test draws fresh random inputs; a failure names its seed. Sampling positions keep at least 0.05 px away from
integers and half-integers (the kinks of bilinear and of the padding modes, the rounding ties of nearest), so the
finite differences are of a smooth function there.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import stn_jax

COMBOS_2D = list(itertools.product(stn_jax.MODES, stn_jax.PADDING_MODES, (False, True)))
COMBOS_3D = list(itertools.product(("bilinear", "nearest"), stn_jax.PADDING_MODES, (False, True)))
EPS = 1e-6  # central-difference step in float64: truncation ~EPS^2, rounding ~1e-16 / EPS


def _rng():
  seed = int(np.random.default_rng().integers(2**31))
  return np.random.default_rng(seed), f"seed {seed}"


def _random_points(rng, batch, out_shape, in_shape, *, align_corners, spread=0.4):
  """(*batch, *out_shape, k) float64 normalised (x, y[, z]) for an input of spatial shape `in_shape` ((H, W) or
  (D, H, W)): pixel-index coordinates at least 0.05 px from integers and half-integers (as tests.helpers.random_grid,
  in any dimension). About half the points lie inside the image, the others anywhere up to `spread` times the size
  beyond each side."""
  shape = (*batch, *out_shape)
  inside = rng.random(shape) < 0.5
  coords = []
  for size in in_shape[::-1]:  # x runs along the last axis
    anywhere = rng.integers(int(np.floor(-spread * size)), int(np.ceil((1 + spread) * size)), shape)
    whole = np.where(inside, rng.integers(0, size, shape), anywhere)
    pixel = whole + rng.uniform(0.05, 0.45, shape) + 0.5 * rng.integers(0, 2, shape)
    coords.append(2 * pixel / (size - 1) - 1 if align_corners else (2 * pixel + 1) / size - 1)
  return np.stack(coords, -1)


def _central_difference(fn, primals, tangents):
  plus = fn(*(p + EPS * t for p, t in zip(primals, tangents, strict=True)))
  minus = fn(*(p - EPS * t for p, t in zip(primals, tangents, strict=True)))
  return jax.tree.map(lambda a, b: (a - b) / (2 * EPS), plus, minus)


def _assert_close(actual, expected, what, seed, rtol=1e-6):
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape, seed)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=f"{what} ({seed})")


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _check_forward_mode(fn, primals, rng, seed, *, exercised, reverse=True):
  """jax.jvp and jax.linearize against central differences in a random direction t (a tangent of every argument at
  once) and, with `reverse`, against reverse mode: <c, jvp(t)> = <vjp(c), t> for a random cotangent c. The derivative
  with respect to argument `exercised` must not vanish (so that nothing compares zeros).

  One jitted function computes everything: one compilation, where each transformation run eagerly would compile its
  own (XLA's compilations are most of these tests' time)."""
  primals = tuple(jnp.asarray(p) for p in primals)
  tangents = tuple(jnp.asarray(rng.standard_normal(p.shape)) for p in primals)
  cotangent = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, *primals).shape))

  @jax.jit
  def results(primals, tangents, cotangent):
    out, tangent = jax.jvp(fn, primals, tangents)
    out_lin, fn_lin = jax.linearize(fn, *primals)
    alone = tuple(t if i == exercised else jnp.zeros_like(t) for i, t in enumerate(tangents))
    r = dict(
      value=fn(*primals),
      out=out,
      tangent=tangent,
      difference=_central_difference(fn, primals, tangents),
      out_lin=out_lin,
      tangent_lin=fn_lin(*tangents),
      exercised=jnp.abs(fn_lin(*alone)).max(),
    )
    if reverse:
      r["forward"] = _dot(cotangent, tangent)
      r["reverse"] = _dot(jax.vjp(fn, *primals)[1](cotangent), tangents)
    return r

  r = results(primals, tangents, cotangent)
  _assert_close(r["out"], r["value"], "jvp primal output", seed, rtol=1e-12)
  _assert_close(r["tangent"], r["difference"], "jvp against central differences", seed)
  _assert_close(r["out_lin"], r["out"], "linearize primal output", seed, rtol=1e-12)
  _assert_close(r["tangent_lin"], r["tangent"], "linearize tangent", seed, rtol=1e-12)
  if reverse:
    _assert_close(r["forward"], r["reverse"], "<c, jvp(t)> against <vjp(c), t>", seed, rtol=1e-10)
  assert r["exercised"] > 0.1, seed


def _shapes(volume):
  """(input spatial shape, output spatial shape) of the sampling tests."""
  return ((3, 4, 5), (2, 2, 3)) if volume else ((5, 6), (3, 4))


# ----------------------------------------------------------------------------------------------------------------------
# grid_sample: every mode x padding x align_corners, images and volumes.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("mode", "padding_mode", "align_corners", "volume"),
  [(*combo, False) for combo in COMBOS_2D] + [(*combo, True) for combo in COMBOS_3D],
)
def test_grid_sample_forward_mode_matches_finite_differences(mode, padding_mode, align_corners, volume):
  # jvp in a random direction (t_image, t_grid) against central differences, and for bilinear sampling of images and
  # volumes (whose custom JVPs, transposed, are their reverse mode) against reverse mode: <c, jvp(t)> = <vjp(c), t>
  # for a random cotangent c. Every mode's jacfwd against its jacrev, and jax.linearize, below.
  rng, seed = _rng()
  options = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
  in_shape, out_shape = _shapes(volume)
  reverse = mode == "bilinear"
  with jax.enable_x64(True):
    image = jnp.asarray(rng.standard_normal((2, *in_shape, 2)))
    grid = jnp.asarray(_random_points(rng, (2,), out_shape, in_shape, align_corners=align_corners))
    t_image, t_grid = (jnp.asarray(rng.standard_normal(x.shape)) for x in (image, grid))
    cotangent = jnp.asarray(rng.standard_normal((2, *out_shape, 2)))
    fn = lambda i, g: stn_jax.grid_sample(i, g, **options)

    @jax.jit  # one compilation (XLA's compilations are most of these tests' time)
    def results(image, grid, t_image, t_grid, cotangent):
      out, tangent = jax.jvp(fn, (image, grid), (t_image, t_grid))
      # The sampler at four points in one evaluation: the primal, either side of it along t, and the image tangent
      # at the primal grid, which is the tangent's image part (grid_sample is linear in the image).
      values = jax.vmap(fn)(
        jnp.stack([image, image + EPS * t_image, image - EPS * t_image, t_image]),
        jnp.stack([grid, grid + EPS * t_grid, grid - EPS * t_grid, grid]),
      )
      r = dict(out=out, tangent=tangent, value=values[0], difference=(values[1] - values[2]) / (2 * EPS))
      r["grid_part"] = tangent - values[3]
      if reverse:
        r["forward"] = jnp.vdot(cotangent, tangent)
        g_image, g_grid = jax.vjp(fn, image, grid)[1](cotangent)
        r["reverse"] = jnp.vdot(g_image, t_image) + jnp.vdot(g_grid, t_grid)
      return r

    r = results(image, grid, t_image, t_grid, cotangent)
  _assert_close(r["out"], r["value"], "jvp primal output", seed, rtol=1e-12)
  _assert_close(r["tangent"], r["difference"], "jvp against central differences", seed)
  if reverse:
    _assert_close(r["forward"], r["reverse"], "<c, jvp(t)> against <vjp(c), t>", seed, rtol=1e-10)
  grid_part = np.abs(np.asarray(r["grid_part"])).max()
  if mode == "nearest":  # piecewise constant in the grid; the image part is all
    assert grid_part == 0 and np.abs(np.asarray(r["tangent"])).max() > 0.1, seed
  else:  # the grid derivative is really exercised
    assert grid_part > 0.1, seed


@pytest.mark.parametrize(
  ("mode", "volume"), [*((mode, False) for mode in stn_jax.MODES), ("bilinear", True), ("nearest", True)]
)
def test_jacfwd_matches_jacrev_eagerly_under_jit_and_vmap(mode, volume):
  rng, seed = _rng()
  options = dict(mode=mode, padding_mode=str(rng.choice(stn_jax.PADDING_MODES)), align_corners=bool(rng.integers(2)))
  seed = f"{seed}, {options}"
  in_shape, out_shape = _shapes(volume)
  images = jnp.asarray(rng.standard_normal((3, *in_shape, 2)), jnp.float32)
  grids = jnp.asarray(_random_points(rng, (3,), out_shape, in_shape, align_corners=options["align_corners"]))
  grids = grids.astype(jnp.float32)
  t_images, t_grids = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (images, grids))
  fn = lambda i, g: stn_jax.grid_sample(i, g, **options)  # batched or not
  jvp = lambda i, g, ti, tg: jax.jvp(fn, (i, g), (ti, tg))
  expected = jvp(images, grids, t_images, t_grids)  # eagerly

  @jax.jit  # (jit of the batched jvp: the test above)
  def results(i, g, ti, tg):
    out, fn_lin = jax.linearize(fn, i, g)
    return dict(
      linearize=(out, fn_lin(ti, tg)),
      vmap_jvp=jax.vmap(jvp)(i, g, ti, tg),  # the unbatched function, vmapped
      jacfwd=jax.vmap(jax.jacfwd(fn, argnums=(0, 1)))(i, g),
      jacrev=jax.vmap(jax.jacrev(fn, argnums=(0, 1)))(i, g),
    )

  r = results(images, grids, t_images, t_grids)
  for name in ("linearize", "vmap_jvp"):
    _assert_close(r[name], expected, f"jit({name}) against the eager jvp", seed, rtol=1e-5)
  _assert_close(r["jacfwd"], r["jacrev"], "jacfwd against jacrev", seed, rtol=1e-5)
  assert np.abs(np.asarray(r["jacfwd"][0 if mode == "nearest" else 1])).max() > 0.1, seed


def test_bilinear_check_grads_forward_over_forward():
  rng, seed = _rng()
  options = dict(padding_mode=str(rng.choice(stn_jax.PADDING_MODES)), align_corners=bool(rng.integers(2)))
  with jax.enable_x64(True):
    image = jnp.asarray(rng.standard_normal((2, 4, 5, 2)))
    grid = jnp.asarray(_random_points(rng, (2,), (2, 3), (4, 5), align_corners=options["align_corners"]))
    fn = jax.jit(lambda i, g: stn_jax.grid_sample(i, g, **options))
    try:  # reverse over reverse: tests/spatial/test_sampling.py; reverse over forward: the Hessians below
      check_grads(fn, (image, grid), order=2, modes=["fwd"], eps=1e-4, atol=1e-5, rtol=1e-5)
    except AssertionError as e:
      raise AssertionError(f"{seed}, {options}") from e


# ----------------------------------------------------------------------------------------------------------------------
# Second order: the Hessian of a warp's loss with respect to theta, forward over reverse and every other way.
# ----------------------------------------------------------------------------------------------------------------------


def _theta_away_from_kinks(rng, in_hw, size, align_corners, margin=1e-4):
  """(2, 2, 3) random thetas near the identity whose grid keeps `margin` px away from integers and half-integers (the
  gradient of bilinear sampling jumps there, so central differences of the gradient must not straddle one)."""
  x, y = np.meshgrid(
    stn_jax.pixel_centers(size[1], align_corners=align_corners),
    stn_jax.pixel_centers(size[0], align_corners=align_corners),
  )
  base = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
  while True:
    theta = np.eye(2, 3) + 0.15 * rng.standard_normal((2, 2, 3))
    pixel = [
      (g + 1) / 2 * (n - 1) if align_corners else ((g + 1) * n - 1) / 2
      for g, n in zip(np.moveaxis(theta @ base, 1, 0), in_hw[::-1], strict=True)
    ]
    if all(np.abs(2 * p - np.round(2 * p)).min() > 2 * margin for p in pixel):
      return theta


@pytest.mark.parametrize("padding_mode", stn_jax.PADDING_MODES)
def test_hessian_of_a_bilinear_warp_loss(padding_mode):
  # Bilinear sampling and the 2-D affine grid, two functions with custom JVPs. (The Hessians of the other modes and
  # of volumes are as their jacfwd and jacrev above.)
  rng, seed = _rng()
  align_corners = bool(rng.integers(2))
  seed = f"{seed}, align_corners={align_corners}"
  with jax.enable_x64(True):
    image = jnp.asarray(rng.standard_normal((2, 7, 8, 2)))
    theta = jnp.asarray(_theta_away_from_kinks(rng, (7, 8), (5, 6), align_corners))
    direction = jnp.asarray(rng.standard_normal(theta.shape))

    def loss(t):
      grid = stn_jax.affine_grid(t, (5, 6), align_corners=align_corners)
      return jnp.sum(stn_jax.grid_sample(image, grid, padding_mode=padding_mode, align_corners=align_corners) ** 2)

    @jax.jit
    def results(t, d):
      return dict(
        hessian=jax.hessian(loss)(t),
        rev_rev=jax.jacrev(jax.jacrev(loss))(t),
        fwd_fwd=jax.jacfwd(jax.jacfwd(loss))(t),
        # the gradient either side of theta in a random direction, for central differences
        grads=jax.vmap(jax.grad(loss))(jnp.stack([t + EPS * d, t - EPS * d])),
      )

    r = results(theta, direction)
  hessian = r["hessian"]
  assert hessian.shape == 2 * theta.shape
  _assert_close(r["rev_rev"], hessian, "jacrev(jacrev) against hessian", seed, rtol=1e-10)
  _assert_close(r["fwd_fwd"], hessian, "jacfwd(jacfwd) against hessian", seed, rtol=1e-10)
  along = np.tensordot(np.asarray(hessian), np.asarray(direction), theta.ndim)
  difference = (np.asarray(r["grads"][0]) - np.asarray(r["grads"][1])) / (2 * EPS)
  _assert_close(along, difference, "hessian against differences of the gradient", seed, rtol=1e-5)
  assert np.abs(np.asarray(hessian)).max() > 0.1, seed


# ----------------------------------------------------------------------------------------------------------------------
# Grid functions.
# ----------------------------------------------------------------------------------------------------------------------


def _grid_case(name, rng, align_corners):
  """(fn, primals) in float64 for each grid function."""
  lattice = np.asarray(stn_jax.tps_control_points(9), np.float64)
  if name == "affine_grid":
    return lambda t: stn_jax.affine_grid(t, (3, 4), align_corners=align_corners), (
      np.eye(2, 3) + 0.2 * rng.standard_normal((2, 2, 3)),
    )
  if name == "affine_grid(volume)":
    return lambda t: stn_jax.affine_grid(t, (2, 3, 4), align_corners=align_corners), (
      np.eye(3, 4) + 0.2 * rng.standard_normal((2, 3, 4)),
    )
  if name == "projective_grid":
    return lambda m: stn_jax.projective_grid(m, (3, 4), align_corners=align_corners), (
      np.eye(3) + 0.1 * rng.standard_normal((2, 3, 3)),
    )
  if name == "tps_grid":
    return lambda p: stn_jax.tps_grid(p, (3, 4), align_corners=align_corners), (
      lattice + 0.1 * rng.standard_normal((2, 9, 2)),
    )
  if name == "tps_grid(target_points)":
    return lambda p, q: stn_jax.tps_grid(p, (3, 4), target_points=q, align_corners=align_corners), (
      lattice + 0.1 * rng.standard_normal((9, 2)),
      lattice + 0.05 * rng.standard_normal((9, 2)),
    )
  if name == "identity_grid":  # a constant: forward mode through a grid built on it (a displacement field)
    size = (3, 4)
    return lambda d: stn_jax.identity_grid(size, align_corners=align_corners, dtype=d.dtype) + d**2, (
      rng.standard_normal((*size, 2)),
    )
  assert name == "flow_grid"
  return lambda f: stn_jax.flow_grid(f, align_corners=align_corners), (rng.standard_normal((2, 3, 4, 2)),)


GRID_FUNCTIONS = [
  "affine_grid",
  "affine_grid(volume)",
  "projective_grid",
  "tps_grid",
  "tps_grid(target_points)",
  "identity_grid",
  "flow_grid",
]


@pytest.mark.parametrize("name", GRID_FUNCTIONS)
def test_grid_functions_forward_mode(name):
  rng, seed = _rng()
  align_corners = bool(rng.integers(2))
  seed = f"{seed}, align_corners={align_corners}"
  with jax.enable_x64(True):
    fn, primals = _grid_case(name, rng, align_corners)
    _check_forward_mode(fn, primals, rng, seed, exercised=0)
  # float32, under jit and vmap (over a new leading axis), against reverse mode
  primals = tuple(jnp.asarray(np.stack([p, p + 0.01 * rng.standard_normal(p.shape)]), jnp.float32) for p in primals)
  argnums = tuple(range(len(primals)))
  jacobians = jax.jit(lambda *p: [jax.vmap(jac(fn, argnums=argnums))(*p) for jac in (jax.jacfwd, jax.jacrev)])
  forward, reverse = jacobians(*primals)
  _assert_close(forward, reverse, "jit(vmap(jacfwd)) against jacrev", seed, rtol=1e-5)


def test_affine_grid_forward_mode_is_the_grid_of_the_tangent():
  # affine_grid is linear in theta: its tangent is exactly the grid of the tangent, in any dimension.
  rng, seed = _rng()
  for k, size in ((2, (5, 3)), (3, (2, 4, 3))):
    theta = jnp.asarray(rng.standard_normal((4, k, k + 1)), jnp.float32)
    direction = jnp.asarray(rng.standard_normal((4, k, k + 1)), jnp.float32)
    _, tangent = jax.jvp(lambda t, s=size: stn_jax.affine_grid(t, s), (theta,), (direction,))
    _assert_close(tangent, stn_jax.affine_grid(direction, size), f"{k}-D affine_grid tangent", seed, rtol=1e-6)


@pytest.mark.parametrize("kind", stn_jax.KINDS)
def test_warp_of_every_kind_bilinear_jacfwd_matches_jacrev(kind):
  rng, seed = _rng()
  image = jnp.asarray(rng.standard_normal((2, 7, 8, 1)), jnp.float32)
  params = stn_jax.identity_params(kind, batch_shape=(2,), num_control_points=9) + 0.05 * jnp.asarray(
    rng.standard_normal((2, *stn_jax.param_shape(kind, num_control_points=9))), jnp.float32
  )
  fn = lambda i, p: stn_jax.warp(i, p, kind=kind, size=(4, 5))
  forward, reverse = jax.jit(lambda i, p: [jac(fn, argnums=(0, 1))(i, p) for jac in (jax.jacfwd, jax.jacrev)])(
    image, params
  )
  _assert_close(forward, reverse, "jacfwd against jacrev", seed, rtol=1e-5)
  assert np.abs(np.asarray(forward[1])).max() > 0.1, seed
