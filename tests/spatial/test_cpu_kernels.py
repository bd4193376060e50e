"""The CPU kernels (spatial.cpu_kernels): the bilinear sampler against the pure-JAX path (implementation='xla') and
its own reference (values and derivatives of every order, under jit / vmap / eagerly, every padding mode, and the
fallbacks); the convolution and max-pool against lax.conv and reduce_window.

torch parity of both implementations is in tests/spatial/test_sampling.py (test_matches_torch_values_and_gradients).
"""

import functools
import os
import subprocess
import sys
import textwrap
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stn_jax
from stn_jax.spatial import cpu_kernels, sampling
from tests import helpers

pytestmark = pytest.mark.skipif(
  not cpu_kernels.available(), reason=f"no CPU kernel: {cpu_kernels.unavailable_reason()}"
)
OPTIONS = [(p, a) for p in stn_jax.PADDING_MODES for a in (False, True)]


def _inputs(rng, n, in_hw, out_hw, c, *, align_corners, spread=0.7):
  image = jnp.asarray(helpers.random_image(rng, (n, *in_hw, c)))
  grid = jnp.asarray(helpers.random_grid(rng, (n,), out_hw, in_hw, align_corners=align_corners, spread=spread))
  # a few points far outside, and some exactly at pixel centres (where the snap and the one-sided derivatives act)
  grid = grid.at[:, 0, 0].set(5.0).at[:, 0, 1].set(-3.0)
  centres = stn_jax.identity_grid(out_hw, align_corners=align_corners) if out_hw == in_hw else None
  if centres is not None:
    grid = grid.at[:, -1].set(centres[-1])
  return image, grid


def _sample(implementation, padding_mode, align_corners):
  return lambda i, g: stn_jax.grid_sample(
    i, g, padding_mode=padding_mode, align_corners=align_corners, implementation=implementation
  )


def _close(a, b, what, rtol=1e-5, atol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    scale = max(1.0, float(np.abs(np.asarray(y)).max()))
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale, err_msg=what)


@pytest.mark.parametrize(("padding_mode", "align_corners"), OPTIONS)
@pytest.mark.parametrize("c", [1, 3])
def test_values_and_gradients_equal_the_xla_path(padding_mode, align_corners, c):
  rng = np.random.default_rng(zlib.crc32(f"{padding_mode}{align_corners}{c}".encode()))
  image, grid = _inputs(rng, 3, (7, 9), (7, 9), c, align_corners=align_corners, spread=1.2)
  cotangent = jnp.asarray(rng.standard_normal((3, 7, 9, c)), jnp.float32)
  results = {}
  for implementation in ("xla", "cpu_kernel"):
    fn = _sample(implementation, padding_mode, align_corners)

    @jax.jit
    def run(i, g, ct, fn=fn):
      out, vjp = jax.vjp(fn, i, g)
      return out, vjp(ct), fn(i, g)  # the last: the primal pass alone (the kernel's grid entry point)

    results[implementation] = run(image, grid, cotangent)
  out, (g_image, g_grid), primal = results["cpu_kernel"]
  expected_out, (expected_image, expected_grid), _ = results["xla"]
  _close(out, expected_out, "value (differentiated)")
  _close(primal, expected_out, "value (primal only)")
  _close(g_image, expected_image, "image gradient")
  _close(g_grid, expected_grid, "grid gradient", atol=1e-4)
  assert np.abs(np.asarray(expected_grid)).max() > 0.1  # the grid gradient is really exercised


@pytest.mark.parametrize(("padding_mode", "align_corners"), OPTIONS)
def test_forward_mode_and_second_order_equal_the_xla_path(padding_mode, align_corners):
  rng = np.random.default_rng(zlib.crc32(f"second {padding_mode}{align_corners}".encode()))
  image, grid = _inputs(rng, 2, (6, 7), (4, 5), 2, align_corners=align_corners, spread=0.4)
  t_image, t_grid = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (image, grid))
  results = {}
  for implementation in ("xla", "cpu_kernel"):
    fn = _sample(implementation, padding_mode, align_corners)
    loss = lambda i, g, fn=fn: jnp.sum(jnp.sin(fn(i, g)))

    @jax.jit
    def run(i, g, ti, tg, fn=fn, loss=loss):
      grad = jax.grad(loss, argnums=(0, 1))
      return dict(
        jvp=jax.jvp(fn, (i, g), (ti, tg)),
        jacfwd=jax.jacfwd(fn, argnums=1)(i[:1], g[:1]),
        # forward over reverse and reverse over reverse: the primitives' JVP and transpose rules
        hvp=jax.jvp(grad, (i, g), (ti, tg))[1],
        rev_rev=jax.grad(lambda i, g: jnp.vdot(grad(i, g)[1], tg), argnums=(0, 1))(i, g),
      )

    results[implementation] = run(image, grid, t_image, t_grid)
  for name in ("jvp", "jacfwd", "hvp", "rev_rev"):
    _close(results["cpu_kernel"][name], results["xla"][name], name, rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(results["xla"]["hvp"][1])).max() > 0.1


def test_vmap_eager_and_unbatched_calls_equal_the_batched_jit():
  rng = np.random.default_rng(11)
  image, grid = _inputs(rng, 4, (8, 10), (5, 6), 3, align_corners=False)
  fn = _sample("cpu_kernel", "zeros", False)
  expected = jax.jit(fn)(image, grid)
  with jax.disable_jit():
    eager = fn(image, grid)
  vmapped = jax.vmap(fn)(image, grid)  # unbatched calls, vmapped
  nested = jax.vmap(jax.vmap(fn))(image.reshape(2, 2, 8, 10, 3), grid.reshape(2, 2, 5, 6, 2)).reshape(expected.shape)
  grads = jax.vmap(jax.grad(lambda i, g: fn(i, g).sum(), argnums=(0, 1)))(image, grid)
  expected_grads = jax.grad(lambda i, g: fn(i, g).sum(), argnums=(0, 1))(image, grid)
  for name, value in (("eager", eager), ("vmap", vmapped), ("vmap of vmap", nested)):
    _close(value, expected, name, rtol=0, atol=1e-6)
  _close(grads, expected_grads, "vmap of grad", rtol=0, atol=1e-6)


@pytest.mark.parametrize("c", [1, 2, 5])
def test_primitives_equal_their_reference_and_scatter_is_the_transpose_of_sample(c):
  rng = np.random.default_rng(c)
  n, h, w = 3, 6, 7
  image = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  # (N, 4, 5) points: -2 .. size + 1 as grid_sample passes them, integers among them, one NaN
  ix = jnp.asarray(rng.uniform(-2, w + 1, (n, 4, 5)), jnp.float32).at[:, 0].set(jnp.arange(5.0) - 1)
  iy = jnp.asarray(rng.uniform(-2, h + 1, (n, 4, 5)), jnp.float32).at[0, 1, 1].set(jnp.nan)
  g = jnp.asarray(rng.standard_normal((n, 4, 5, c)), jnp.float32)
  sample = jax.jit(cpu_kernels.sample)(image, ix, iy)
  _close(sample, cpu_kernels.reference["sample"](image, ix, iy), "sample", rtol=0, atol=1e-6)
  nan = np.zeros(sample.shape[:-1], bool)
  nan[0, 1, 1] = True
  assert np.isnan(np.asarray(sample)[nan]).all() and np.isfinite(np.asarray(sample)[~nan]).all()
  kernel, reference = jax.jit(cpu_kernels.jacobian)(image, ix, iy), cpu_kernels.reference["jacobian"](image, ix, iy)
  for a, b in zip(kernel, reference, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
  finite = ~jnp.isnan(iy)
  ix, iy = jnp.where(finite, ix, 0.0), jnp.where(finite, iy, 0.0)
  scatter = jax.jit(cpu_kernels.scatter, static_argnums=3)(g, ix, iy, image.shape)
  _close(scatter, cpu_kernels.reference["scatter"](g, ix, iy, shape=image.shape), "scatter", rtol=0, atol=1e-5)
  # <sample(x), g> = <x, scatter(g)>: scatter is the adjoint
  lhs = jnp.vdot(cpu_kernels.sample(image, ix, iy), g)
  np.testing.assert_allclose(float(lhs), float(jnp.vdot(image, scatter)), rtol=1e-5)


def test_concurrent_kernel_calls_do_not_deadlock():
  # Eight independent samples in one program: XLA may run them at once on its thread pool, each splitting its rows
  # over the same pool. The caller takes chunks itself and waits only for started ones; a hang fails at the timeout.
  code = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, stn_jax
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((8, 64, 40, 40, 1), np.float32))
    grids = jnp.asarray(rng.uniform(-1.2, 1.2, (8, 64, 40, 40, 2)).astype(np.float32))
    f = jax.jit(lambda i, g: [stn_jax.grid_sample(i[k], g[k], implementation="cpu_kernel").sum() for k in range(8)])
    for _ in range(20):
      out = f(images, grids)
    want = [float(stn_jax.grid_sample(images[k], grids[k], implementation="xla").sum()) for k in range(8)]
    np.testing.assert_allclose([float(o) for o in out], want, rtol=1e-4)
    print("ok")
    """
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def _python(code: str, **env):
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    timeout=240,
    env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
  )


FALLBACK = """
  import jax.numpy as jnp, numpy as np, stn_jax
  from stn_jax.spatial import cpu_kernels, sampling
  print("reason:", cpu_kernels.unavailable_reason())
  print("default:", sampling.resolve_implementation("grid_sample", None, "bilinear", jnp.float32))
  out = stn_jax.grid_sample(jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 2, 2, 2)))
  np.testing.assert_allclose(np.asarray(out), 1.0)
  try:
    stn_jax.grid_sample(jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 2, 2, 2)), implementation="cpu_kernel")
  except RuntimeError as e:
    print("error:", e)
  from stn_jax.models import resolve_conv
  print("conv:", resolve_conv("auto", "cpu"))
  x, k = jnp.ones((1, 2, 5, 5, 1)), jnp.ones((1, 3, 3, 1, 16))
  np.testing.assert_allclose(np.asarray(cpu_kernels.conv(x, k)), 9.0)  # the reference computes it
  pooled = cpu_kernels.max_pool(jnp.arange(16.0).reshape(1, 4, 4, 1))
  np.testing.assert_allclose(np.asarray(pooled).ravel(), [5, 7, 13, 15])
"""


def test_disabled_kernel_falls_back_to_xla_and_an_explicit_request_says_why(tmp_path):
  result = _python(FALLBACK, STN_JAX_CPU_KERNEL="0", STN_JAX_KERNEL_DIR=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "default: xla" in result.stdout and "conv: patches" in result.stdout
  assert "error: grid_sample: implementation='cpu_kernel' is not available: STN_JAX_CPU_KERNEL=0." in result.stdout
  assert not list(tmp_path.iterdir())  # nothing built


def test_a_failed_build_warns_once_and_falls_back_to_xla(tmp_path):
  result = _python(FALLBACK, CXX="/bin/false", STN_JAX_KERNEL_DIR=str(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "default: xla" in result.stdout and "/bin/false" in result.stdout and "conv: patches" in result.stdout
  assert result.stderr.count("the CPU kernels are unavailable") == 1
  assert not list(tmp_path.glob("*.so"))  # no half-built library left behind


def test_the_build_is_cached_per_source_and_compiler(tmp_path, monkeypatch):
  monkeypatch.setenv("STN_JAX_KERNEL_DIR", str(tmp_path))
  path = cpu_kernels.build()
  assert path.parent == tmp_path and path.exists()
  mtime = path.stat().st_mtime_ns
  assert cpu_kernels.build() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
  assert cpu_kernels.library_path("another-c++") != path


@pytest.mark.parametrize(
  ("kwargs", "error", "words"),
  [
    (dict(implementation="cuda"), ValueError, ["implementation must be None or one of 'xla', 'cpu_kernel'", "'cuda'"]),
    (dict(implementation="cpu_kernel", mode="bicubic"), ValueError, ["bilinearly", "mode='bicubic'"]),
  ],
)
def test_bad_implementation_is_a_one_line_error(kwargs, error, words):
  with pytest.raises(error) as info:
    stn_jax.grid_sample(jnp.ones((1, 4, 4, 1)), jnp.zeros((1, 2, 2, 2)), **kwargs)
  message = str(info.value)
  assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize(("padding_mode", "align_corners"), OPTIONS)
@pytest.mark.parametrize("c", [1, 3])
def test_volumes_equal_the_xla_path_in_value_and_derivatives(padding_mode, align_corners, c):
  # The kernel takes the volume's tangent and its transpose (the backward pass to the volume); the rest is XLA's.
  rng = np.random.default_rng(zlib.crc32(f"volume {padding_mode}{align_corners}{c}".encode()))
  volume = jnp.asarray(rng.standard_normal((2, 4, 5, 6, c)), jnp.float32)
  grid = jnp.asarray(rng.uniform(-1.3, 1.3, (2, 3, 4, 2, 3)), jnp.float32)
  t_volume, t_grid = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (volume, grid))
  cotangent = jnp.asarray(rng.standard_normal((2, 3, 4, 2, c)), jnp.float32)
  results = {}
  for implementation in ("xla", "cpu_kernel"):
    options = dict(padding_mode=padding_mode, align_corners=align_corners, implementation=implementation)
    fn = lambda v, g, o=options: stn_jax.grid_sample(v, g, **o)

    @jax.jit
    def run(v, g, tv, tg, ct, fn=fn):
      out, vjp = jax.vjp(fn, v, g)
      grad = lambda v, g: vjp_of(fn, v, g, ct)
      return dict(
        value=out,
        vjp=vjp(ct),
        jvp=jax.jvp(fn, (v, g), (tv, tg)),
        vmap=jax.vmap(fn)(v, g),
        # reverse over reverse through the volume's transpose: the primitives' own JVP and transpose rules
        second=jax.grad(lambda v: jnp.sum(grad(v, g)[0] ** 2))(v),
      )

    results[implementation] = run(volume, grid, t_volume, t_grid, cotangent)
  for name in ("value", "vjp", "jvp", "vmap", "second"):
    _close(results["cpu_kernel"][name], results["xla"][name], name, atol=1e-4)
  assert np.abs(np.asarray(results["xla"]["vjp"][0])).max() > 0.1


def vjp_of(fn, *args_and_cotangent):
  *args, cotangent = args_and_cotangent
  return jax.vjp(fn, *args)[1](cotangent)


def test_volumes_of_other_modes_cannot_ask_for_the_kernel():
  with pytest.raises(ValueError, match="mode='nearest'"):
    stn_jax.grid_sample(
      jnp.ones((1, 3, 4, 4, 1)), jnp.zeros((1, 2, 2, 2, 3)), mode="nearest", implementation="cpu_kernel"
    )


def test_the_default_is_the_kernel_on_cpu_for_float32_bilinear_sampling_only():
  resolve = sampling.resolve_implementation
  assert resolve("f", None, "bilinear", jnp.float32) == "cpu_kernel"
  assert resolve("f", None, "nearest", jnp.float32) == "xla"
  assert resolve("f", None, "bilinear", jnp.float64) == "xla"
  assert resolve("f", "xla", "bilinear", jnp.float32) == "xla"


@pytest.mark.parametrize(("padding_mode", "align_corners"), OPTIONS)
@pytest.mark.parametrize("c", [1, 3, 6])
def test_affine_warp_equals_the_xla_path_in_value_and_every_derivative(padding_mode, align_corners, c):
  # warp(kind='affine') on the kernel computes the grid's points in the kernel's loop when nothing is differentiated,
  # and differentiates as affine_grid then grid_sample.
  rng = np.random.default_rng(zlib.crc32(f"affine {padding_mode}{align_corners}{c}".encode()))
  image = jnp.asarray(helpers.random_image(rng, (3, 9, 8, c)))
  theta = jnp.asarray(np.eye(2, 3) + 0.4 * rng.standard_normal((3, 2, 3)), jnp.float32)
  t_image, t_theta = (jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (image, theta))
  results = {}
  for implementation in ("xla", "cpu_kernel"):
    options = dict(size=(6, 7), padding_mode=padding_mode, align_corners=align_corners, implementation=implementation)
    fn = lambda i, t, o=options: stn_jax.warp(i, t, **o)
    loss = lambda i, t, fn=fn: jnp.sum(jnp.sin(fn(i, t)))

    @jax.jit
    def run(i, t, ti, tt, fn=fn, loss=loss):
      return dict(
        value=fn(i, t),
        vmap=jax.vmap(fn)(i, t),
        grads=jax.grad(loss, argnums=(0, 1))(i, t),
        jvp=jax.jvp(fn, (i, t), (ti, tt)),
        hessian_theta=jax.hessian(lambda t: loss(i, t))(t),
      )

    results[implementation] = run(image, theta, t_image, t_theta)
  for name in ("value", "vmap", "grads", "jvp"):
    _close(results["cpu_kernel"][name], results["xla"][name], name, atol=1e-4)
  _close(results["cpu_kernel"]["hessian_theta"], results["xla"]["hessian_theta"], "hessian", rtol=1e-3, atol=1e-3)
  assert np.abs(np.asarray(results["xla"]["grads"][1])).max() > 0.1


def test_the_kernel_is_deterministic_whatever_the_threads_do():
  # Rows are split over threads but each row is summed in one order, so repeated calls (a resumed run's steps) are
  # bitwise equal, however the pool schedules them.
  rng = np.random.default_rng()
  image, grid = _inputs(rng, 64, (20, 24), (16, 18), 2, align_corners=False, spread=1.0)
  cotangent = jnp.asarray(rng.standard_normal((64, 16, 18, 2)), jnp.float32)
  fn = jax.jit(lambda i, g, ct: jax.vjp(_sample("cpu_kernel", "zeros", False), i, g)[1](ct))
  first = fn(image, grid, cotangent)
  for _ in range(5):
    for a, b in zip(fn(image, grid, cotangent), first, strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------------------------------------
# The models' layers: direct convolution and 2x2 max-pooling.
# ----------------------------------------------------------------------------------------------------------------------


def _lax_conv(x, kernel):
  """The reference: lax.conv per group at the highest precision, (G, N, OH, OW, CO)."""
  conv = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=(1, 1),
    padding="VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=jax.lax.Precision.HIGHEST,
  )
  return jax.vmap(conv)(x, kernel)


# (x shape (G, N, H, W, C), kernel (KH, KW, CO)): the paper's layers, a channel count the kernel pads (68 -> 80), one
# it leaves to the reference (20), several groups, input channels that are and are not a multiple of 16.
CONV_CASES = [
  ((1, 3, 12, 12, 64), (7, 7, 64)),
  ((1, 2, 32, 32, 1), (9, 9, 64)),
  ((1, 2, 12, 11, 16), (7, 5, 68)),
  ((2, 3, 10, 9, 3), (3, 4, 32)),
  ((3, 2, 8, 8, 32), (3, 3, 20)),
]


@pytest.mark.parametrize(("x_shape", "kernel_shape"), CONV_CASES)
def test_convolution_equals_lax_conv_in_value_and_both_gradients(x_shape, kernel_shape):
  rng = np.random.default_rng()
  kh, kw, co = kernel_shape
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((x_shape[0], kh, kw, x_shape[-1], co)) / np.sqrt(kh * kw), jnp.float32)
  want = _lax_conv(x, k)
  got = jax.jit(cpu_kernels.conv)(x, k)
  assert got.shape == want.shape
  _close(got, want, "conv", rtol=1e-4, atol=1e-4)
  g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
  dx, dk = jax.jit(jax.grad(lambda x, k: jnp.vdot(cpu_kernels.conv(x, k), g), (0, 1)))(x, k)
  dx_ref, dk_ref = jax.grad(lambda x, k: jnp.vdot(_lax_conv(x, k), g), (0, 1))(x, k)
  _close(dx, dx_ref, "d x", rtol=1e-4, atol=1e-3)
  _close(dk, dk_ref, "d kernel", rtol=1e-4, atol=1e-3)


def test_convolution_forward_mode_second_order_and_vmap_equal_lax_conv():
  rng = np.random.default_rng()
  x = jnp.asarray(rng.standard_normal((1, 2, 9, 8, 16)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 3, 3, 16, 32)) / 3, jnp.float32)
  dx, dk = (jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in (x, k))
  out, tangent = jax.jvp(cpu_kernels.conv, (x, k), (dx, dk))
  out_ref, tangent_ref = jax.jvp(_lax_conv, (x, k), (dx, dk))
  _close(out, out_ref, "jvp primal", rtol=1e-4, atol=1e-4)
  _close(tangent, tangent_ref, "jvp tangent", rtol=1e-4, atol=1e-4)

  def second(fn):  # d/dk of a function of d/dx: reverse over reverse through both transposes
    return jax.grad(lambda k: jnp.sum(jnp.sin(jax.grad(lambda x: jnp.sum(fn(x, k) ** 2))(x))))(k)

  _close(jax.jit(second, static_argnums=0)(cpu_kernels.conv), second(_lax_conv), "second order", rtol=1e-3, atol=1e-3)
  # vmap over a population (x and kernel mapped: groups) and over inputs alone (one kernel: folded into N)
  xs = jnp.asarray(rng.standard_normal((4, 1, 2, 9, 8, 16)), jnp.float32)
  ks = jnp.asarray(rng.standard_normal((4, 1, 3, 3, 16, 32)) / 3, jnp.float32)
  _close(jax.vmap(cpu_kernels.conv)(xs, ks), jax.vmap(_lax_conv)(xs, ks), "vmap both", rtol=1e-4, atol=1e-4)
  _close(jax.vmap(cpu_kernels.conv, (0, None))(xs, k), jax.vmap(_lax_conv, (0, None))(xs, k), "vmap x")
  _close(jax.vmap(cpu_kernels.conv, (None, 0))(x, ks), jax.vmap(_lax_conv, (None, 0))(x, ks), "vmap kernel")
  g = jnp.asarray(rng.standard_normal((4, 1, 2, 7, 6, 32)), jnp.float32)
  dks = jax.vmap(jax.grad(lambda k, x, g: jnp.vdot(cpu_kernels.conv(x, k), g)))(ks, xs, g)
  dks_ref = jax.vmap(jax.grad(lambda k, x, g: jnp.vdot(_lax_conv(x, k), g)))(ks, xs, g)
  _close(dks, dks_ref, "vmapped kernel gradient", rtol=1e-4, atol=1e-3)


def test_a_zero_border_promise_only_skips_work():
  rng = np.random.default_rng()
  inner = jnp.asarray(rng.standard_normal((1, 3, 7, 6, 16)), jnp.float32)
  border = (2, 1, 3, 2)
  x = jnp.pad(inner, ((0, 0), (0, 0), border[:2], border[2:], (0, 0)))
  k = jnp.asarray(rng.standard_normal((1, 4, 5, 16, 32)), jnp.float32)
  plain = jax.jit(cpu_kernels.conv)(x, k)
  np.testing.assert_array_equal(np.asarray(jax.jit(cpu_kernels.conv, static_argnums=2)(x, k, border)), plain)
  g = jnp.asarray(rng.standard_normal(plain.shape), jnp.float32)
  np.testing.assert_array_equal(
    np.asarray(cpu_kernels.conv_kernel_gradient(x, g, (4, 5), border)),
    np.asarray(cpu_kernels.conv_kernel_gradient(x, g, (4, 5))),
  )


def _pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@pytest.mark.parametrize("shape", [(3, 8, 6, 16), (2, 13, 10, 5), (2, 24, 24, 64), (1, 5, 7, 37)])
def test_max_pool_equals_reduce_window_in_value_and_derivatives(shape):
  rng = np.random.default_rng()
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  x = x.at[0, :2, :2, 0].set(0.5)  # a window of equal values: the gradient goes to the first, as XLA sends it
  np.testing.assert_array_equal(np.asarray(jax.jit(cpu_kernels.max_pool)(x)), np.asarray(_pool(x)))
  np.testing.assert_array_equal(np.asarray(cpu_kernels.reference_max_pool(x)), np.asarray(_pool(x)))
  g = jnp.asarray(rng.standard_normal(_pool(x).shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.vdot(cpu_kernels.max_pool(x), g)))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(jax.grad(lambda x: jnp.vdot(_pool(x), g))(x)))
  dx = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  np.testing.assert_array_equal(
    np.asarray(jax.jvp(cpu_kernels.max_pool, (x,), (dx,))[1]), np.asarray(jax.jvp(_pool, (x,), (dx,))[1])
  )
  # reverse over reverse (the select's transpose is the scatter and back), and vmap
  hvp = jax.grad(lambda x: jnp.sum(jax.grad(lambda y: jnp.sum(jnp.sin(cpu_kernels.max_pool(y))))(x) * dx))(x)
  hvp_ref = jax.grad(lambda x: jnp.sum(jax.grad(lambda y: jnp.sum(jnp.sin(_pool(y))))(x) * dx))(x)
  np.testing.assert_allclose(np.asarray(hvp), np.asarray(hvp_ref), rtol=1e-6, atol=1e-6)
  xs = jnp.stack([x, -x])
  np.testing.assert_array_equal(np.asarray(jax.vmap(cpu_kernels.max_pool)(xs)), np.asarray(jax.vmap(_pool)(xs)))


def test_max_pool_propagates_nan_as_torch_does():
  x = jnp.asarray(np.random.default_rng().standard_normal((2, 4, 4, 17)), jnp.float32)
  x = x.at[1, 2, 3, 4].set(jnp.nan).at[0, 0, 0, 16].set(jnp.nan)
  for out in (jax.jit(cpu_kernels.max_pool)(x), cpu_kernels.reference_max_pool(x)):
    nan = np.argwhere(np.isnan(np.asarray(out)))
    assert nan.tolist() == [[0, 0, 0, 16], [1, 1, 1, 4]]
