"""stn_jax's CPU kernels: C++ (csrc/ beside this module) registered through `jax.ffi`, as JAX primitives: the
bilinear sampler (bilinear.cc) and the models' convolutions and 2x2 max-pooling (layers.cc; `conv`, `max_pool` at the
end of this module, what the models' conv='cpu_kernel' runs).

`grid_sample(..., implementation='cpu_kernel')` and, on CPU, the default run on the sampler's. The C++ is compiled
with the system's C++ compiler the first time it is needed (or by `build()`, which `make install` runs through
`main()`) into a cache folder ($STN_JAX_KERNEL_DIR, default ~/.cache/stn_jax/kernels), one library per source,
jaxlib version and compiler; a machine without a compiler, or with STN_JAX_CPU_KERNEL=0, samples and convolves with
the pure-JAX paths instead.

The sampler's three primitives, each on pixel-index coordinates (ix, iy) (N, *points) already mapped through the
padding mode, clamped and snapped by stn_jax.spatial.sampling, and an image (N, H, W, C) float32 read as zero outside:

  sample(image, ix, iy)      (N, *points, C): the bilinear interpolation; linear in the image, its transpose is
                             `scatter`;
  jacobian(image, ix, iy)    (out, d out / d ix, d out / d iy), each (N, *points, C): what the JVP of grid_sample
                             needs;
  scatter(g, ix, iy, shape)  (N, H, W, C): the transpose of `sample` in the image; its transpose is `sample`.

They batch under `jax.vmap` (the mapped axis folded into N), transpose as above, and differentiate in every argument
through `reference`, the same functions in pure JAX, so forward mode and higher derivatives work as on the pure path.
On other backends the primitives lower to `reference`.

For volumes (N, D, H, W, C) at voxel-index points (ix, iy, iz), `sample3` and `scatter3` are the same pair for
trilinear sampling (the volume's tangent and its transpose, the backward pass to the volume).

`sample_grid` is the undifferentiated forward pass from a normalised grid: the coordinates computed in the kernel too
(operation for operation as spatial.sampling computes them), so the forward pass is one loop over the points; it is
what grid_sample's custom JVP calls as its primal function, never differentiated itself. `sample_affine` is the same
for an affine warp, the grid's points computed in the kernel from theta (the primal function of warp(kind='affine')).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

CSRC = pathlib.Path(__file__).with_name("csrc")
SOURCES = (CSRC / "bilinear.cc", CSRC / "layers.cc")  # compiled into one library
HEADERS = (CSRC / "parallel.h",)
# Handler symbols in the library, and the FFI target each is registered as.
TARGETS = {
  "stn_bilinear_sample": "StnBilinearSample",
  "stn_bilinear_jacobian": "StnBilinearJacobian",
  "stn_bilinear_scatter": "StnBilinearScatter",
  "stn_bilinear_sample_grid": "StnBilinearSampleGrid",
  "stn_bilinear_sample_affine": "StnBilinearSampleAffine",
  "stn_trilinear_sample": "StnTrilinearSample",
  "stn_trilinear_scatter": "StnTrilinearScatter",
  "stn_conv": "StnConv",
  "stn_conv_kernel": "StnConvKernel",
  "stn_max_pool": "StnMaxPool",
  "stn_max_pool_select": "StnMaxPoolSelect",
  "stn_max_pool_scatter": "StnMaxPoolScatter",
}
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}  # the kernel's Padding enum
# -ffp-contract=off: no fused multiply-adds, so the roundings are those of the pure-JAX path; -fno-trapping-math lets
# GCC turn the float selects into vector blends (no FP exceptions are looked at).
CXXFLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-w")
# Tried in order: the machine's vector units (AVX-512 or AVX2 gathers vectorise the taps; 512-bit vectors where the
# CPU has them), then a portable build (compilers or CPUs that refuse the flags).
ARCH_FLAGS = (("-march=native", "-mprefer-vector-width=512"), ("-march=native",), ())
_DISABLE = "STN_JAX_CPU_KERNEL"
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("STN_JAX_KERNEL_DIR") or pathlib.Path.home() / ".cache" / "stn_jax" / "kernels")


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _cpu_flags() -> str:
  """The CPU's feature flags (a -march=native library is only reused on a CPU with the same ones)."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    return ""


def library_path(compiler: str) -> pathlib.Path:
  """Where the library built from this source with `compiler` for this jaxlib and CPU lives."""
  import jaxlib

  key = hashlib.sha256()
  sources = [f.read_bytes() for f in (*SOURCES, *HEADERS)]
  for part in (*sources, jaxlib.__version__, compiler, " ".join(CXXFLAGS), repr(ARCH_FLAGS), _cpu_flags()):
    key.update(part.encode() if isinstance(part, str) else part)
  return cache_dir() / f"stn_bilinear-{key.hexdigest()[:16]}.so"


def build(*, force: bool = False) -> pathlib.Path:
  """Compiles the kernel (unless it is cached) and returns the library's path; raises RuntimeError saying why not."""
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
  path = library_path(compiler)
  if path.exists() and not force:
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  # Built under a temporary name and renamed: concurrent builds (test workers) never load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  try:
    for arch in ARCH_FLAGS:
      command = [compiler, *CXXFLAGS, *arch, f"-I{jax.ffi.include_dir()}", *map(str, SOURCES), "-o", tmp]
      done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
      if done.returncode == 0:
        break
    else:
      raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def _load() -> str | None:
  """Builds and registers the kernel once per process; returns None, or why it is unavailable."""
  with _lock:
    if "reason" in _state:
      return _state["reason"]
    reason = None
    if os.environ.get(_DISABLE, "1").strip().lower() in ("0", "false", "no", "off"):
      reason = f"{_DISABLE}={os.environ[_DISABLE]}"
    else:
      try:
        library = ctypes.cdll.LoadLibrary(str(build()))
        for target, symbol in TARGETS.items():
          jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
      except (RuntimeError, OSError, AttributeError, subprocess.SubprocessError) as e:
        reason = str(e)
        logging.warning(
          "stn_jax: the CPU kernels are unavailable, sampling and convolving with XLA instead: %s", reason
        )
    _state["reason"] = reason
    return reason


def available() -> bool:
  """Whether the CPU kernel is built and registered (building it on first call)."""
  return _load() is None


def unavailable_reason() -> str | None:
  """None when the kernel is available, else why not (no compiler, a build error, STN_JAX_CPU_KERNEL=0)."""
  return _load()


# ----------------------------------------------------------------------------------------------------------------------
# The reference: the kernels' functions in pure JAX.
# ----------------------------------------------------------------------------------------------------------------------


def _low(t):
  """floor(t) as int32, NaN sent outside (to -2), where it reads a zero, as the kernel does."""
  low = jnp.floor(t)
  return jnp.where(jnp.isnan(low), -2.0, low).astype(jnp.int32)


def _row_offsets(n: int, size: int, ndim: int):
  """(N, 1, ...) flat offsets of each batch row's first value, for indices of rank `ndim`."""
  return jnp.arange(n, dtype=jnp.int32).reshape((n,) + (1,) * (ndim - 1)) * size


def _taps(shape, ix, iy):
  """Per tap (top-left, top-right, bottom-left, bottom-right): its (N, P) flat pixel index and in-image mask."""
  n, h, w, _ = shape
  x0, y0 = _low(ix), _low(iy)
  rows = _row_offsets(n, h * w, ix.ndim)
  taps = []
  for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
    x, y = x0 + dx, y0 + dy
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    taps.append((jnp.where(inside, rows + y * w + x, 0), inside))
  return taps, ix - jnp.floor(ix), iy - jnp.floor(iy)


def _values(image, taps):
  n, h, w, c = image.shape
  flat = image.reshape(n * h * w, c)
  return [jnp.where(inside[..., None], flat[index], 0.0) for index, inside in taps]


def _reference_sample(image, ix, iy):
  taps, fx, fy = _taps(image.shape, ix, iy)
  v00, v01, v10, v11 = _values(image, taps)
  fx, fy = fx[..., None], fy[..., None]
  top = v00 + (v01 - v00) * fx
  bottom = v10 + (v11 - v10) * fx
  return top + (bottom - top) * fy


def _reference_jacobian(image, ix, iy):
  taps, fx, fy = _taps(image.shape, ix, iy)
  v00, v01, v10, v11 = _values(image, taps)
  fx, fy = fx[..., None], fy[..., None]
  top = v00 + (v01 - v00) * fx
  bottom = v10 + (v11 - v10) * fx
  d_top, d_bottom = v01 - v00, v11 - v10
  d_left, d_right = v10 - v00, v11 - v01
  return top + (bottom - top) * fy, d_top + (d_bottom - d_top) * fy, d_left + (d_right - d_left) * fx


def _reference_scatter(g, ix, iy, *, shape):
  # The transpose of the (linear in the image) sample, as JAX derives it.
  zeros = jnp.zeros(shape, g.dtype)
  return jax.linear_transpose(lambda image: _reference_sample(image, ix, iy), zeros)(g)[0]


def _reference_sample3(volume, ix, iy, iz):
  n, d, h, w, _ = volume.shape
  lows = [_low(t) for t in (ix, iy, iz)]
  fracs = [(t - jnp.floor(t))[..., None] for t in (ix, iy, iz)]
  flat = volume.reshape(n * d * h * w, -1)
  rows = _row_offsets(n, d * h * w, ix.ndim)
  out = 0.0
  for dz in (0, 1):
    for dy in (0, 1):
      for dx in (0, 1):
        x, y, z = lows[0] + dx, lows[1] + dy, lows[2] + dz
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h) & (z >= 0) & (z < d)
        value = jnp.where(inside[..., None], flat[jnp.where(inside, rows + (z * h + y) * w + x, 0)], 0.0)
        weight = 1.0
        for frac, step in zip(fracs, (dx, dy, dz), strict=True):
          weight = weight * (frac if step else 1.0 - frac)
        out = out + weight * value
  return out


def _reference_scatter3(g, ix, iy, iz, *, shape):
  zeros = jnp.zeros(shape, g.dtype)
  return jax.linear_transpose(lambda volume: _reference_sample3(volume, ix, iy, iz), zeros)(g)[0]


reference = {
  "sample": _reference_sample,
  "jacobian": _reference_jacobian,
  "scatter": _reference_scatter,
  "sample3": _reference_sample3,
  "scatter3": _reference_scatter3,
}


# ----------------------------------------------------------------------------------------------------------------------
# The primitives.
# ----------------------------------------------------------------------------------------------------------------------

sample_p = Primitive("stn_bilinear_sample")
jacobian_p = Primitive("stn_bilinear_jacobian")
jacobian_p.multiple_results = True
scatter_p = Primitive("stn_bilinear_scatter")
sample3_p = Primitive("stn_trilinear_sample")
scatter3_p = Primitive("stn_trilinear_scatter")


def sample(image: jax.Array, ix: jax.Array, iy: jax.Array) -> jax.Array:
  """(N, P, C): `image` (N, H, W, C) float32 at the pixel-index points (ix, iy), each (N, P)."""
  return sample_p.bind(image, ix, iy)


def jacobian(image: jax.Array, ix: jax.Array, iy: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(`sample(image, ix, iy)`, its derivatives with respect to ix and to iy), each (N, P, C)."""
  return tuple(jacobian_p.bind(image, ix, iy))


def scatter(g: jax.Array, ix: jax.Array, iy: jax.Array, shape) -> jax.Array:
  """The transpose of `sample` in the image: the (N, H, W, C) image whose sample's inner product with any image is
  the inner product of `g` (N, P, C) with that image's sample."""
  return scatter_p.bind(g, ix, iy, shape=tuple(shape))


def sample3(volume: jax.Array, ix: jax.Array, iy: jax.Array, iz: jax.Array) -> jax.Array:
  """(N, *points, C): `volume` (N, D, H, W, C) float32 trilinearly at the voxel-index points (ix, iy, iz)."""
  return sample3_p.bind(volume, ix, iy, iz)


def scatter3(g: jax.Array, ix: jax.Array, iy: jax.Array, iz: jax.Array, shape) -> jax.Array:
  """The transpose of `sample3` in the volume."""
  return scatter3_p.bind(g, ix, iy, iz, shape=tuple(shape))


def _primal(target: str, out, fallback, args, **attrs):
  """The kernel `target` on `args` with `attrs` on CPU (`fallback(*args)` where it is not built), `fallback(*args)`
  on other backends; batched under vmap with every operand given the mapped axis (the kernels fold it into N)."""

  def kernel(*args):
    if not available():
      return fallback(*args)
    return jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")(*args, **attrs)

  return jax.lax.platform_dependent(*args, cpu=kernel, default=fallback)


def sample_grid(image: jax.Array, grid: jax.Array, padding_mode: str, align_corners: bool, fallback) -> jax.Array:
  """(N, *points, C): `image` (N, H, W, C) float32 sampled at the normalised grid (N, *points, 2) with the padding mode,
  in the kernel on CPU; `fallback(image, grid)`, the same function in JAX, on other backends. Not differentiable
  (grid_sample's custom JVP differentiates it); batches under `jax.vmap`."""
  out = jax.ShapeDtypeStruct((*grid.shape[:-1], image.shape[-1]), image.dtype)
  attrs = dict(padding=np.int32(PADDING_CODES[padding_mode]), align_corners=bool(align_corners))
  return _primal("stn_bilinear_sample_grid", out, fallback, (image, grid), **attrs)


def sample_affine(image, theta, xs, ys, padding_mode: str, align_corners: bool, fallback) -> jax.Array:
  """(N, H_out, W_out, C): `image` (N, H, W, C) float32 sampled at the affine grid of theta (N, 2, 3) over the output
  pixel centres `xs` (W_out,) and `ys` (H_out,) (float32 numpy), with the padding mode, in the kernel on CPU;
  `fallback(image, theta)` elsewhere. Not differentiable (warp's custom JVP differentiates it); batches under vmap."""
  out = jax.ShapeDtypeStruct((*image.shape[:-3], len(ys), len(xs), image.shape[-1]), image.dtype)
  attrs = dict(padding=np.int32(PADDING_CODES[padding_mode]), align_corners=bool(align_corners))
  xs, ys = np.asarray(xs, np.float32), np.asarray(ys, np.float32)
  return _primal("stn_bilinear_sample_affine", out, fallback, (image, theta), xs=xs, ys=ys, **attrs)


def _sampled(x, *coords, **params):
  """A sample's result: the points' shape (N, *points) and the channels of `x`, in its dtype."""
  return jax.core.ShapedArray((*coords[0].shape, x.shape[-1]), x.dtype)


def _scattered(g, *coords, shape):
  """A scatter's result: the image or volume `shape`, in the cotangent's dtype."""
  return jax.core.ShapedArray(shape, g.dtype)


def _sampled_and_derivatives(x, *coords):
  return [_sampled(x, *coords)] * 3


def _kernel_or_reference(target, reference_fn, abstract, *args, **params):
  """A primitive's CPU lowering: its kernel (the results shaped as `abstract` gives them; `shape` is implied by the
  result), or `reference_fn` where the kernel is not built."""
  if not available():
    return reference_fn(*args, **params)
  out = abstract(*args, **params)
  if isinstance(out, list):
    results = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in out]
  else:
    results = jax.ShapeDtypeStruct(out.shape, out.dtype)
  return jax.ffi.ffi_call(target, results)(*args)


def _eager(cpu, ref, *args, **params):
  """An eager call: the CPU function (the kernel, if available) on the CPU backend, else the reference."""
  return (cpu if jax.default_backend() == "cpu" else ref)(*args, **params)


for _prim, _ref, _abstract in (
  (sample_p, _reference_sample, _sampled),
  (jacobian_p, _reference_jacobian, _sampled_and_derivatives),
  (scatter_p, _reference_scatter, _scattered),
  (sample3_p, _reference_sample3, _sampled),
  (scatter3_p, _reference_scatter3, _scattered),
):
  _prim.def_abstract_eval(_abstract)
  _cpu = functools.partial(_kernel_or_reference, _prim.name, _ref, _abstract)  # the FFI target is the primitive's name
  mlir.register_lowering(_prim, mlir.lower_fun(_cpu, multiple_results=_prim.multiple_results), platform="cpu")
  mlir.register_lowering(_prim, mlir.lower_fun(_ref, multiple_results=_prim.multiple_results))
  _prim.def_impl(functools.partial(_eager, _cpu, _ref))

  def _jvp(primals, tangents, _ref=_ref, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    return jax.jvp(functools.partial(_ref, **params), tuple(primals), tuple(tangents))

  ad.primitive_jvps[_prim] = _jvp


def _linear_transpose(name, transpose, ct, x, *coords, **params):
  """The transpose rule of a primitive linear in its first operand, given the primitive that transposes it."""
  if any(ad.is_undefined_primal(c) for c in coords):
    raise NotImplementedError(f"{name} is linear in its first operand only")
  if type(ct) is ad.Zero:
    return ad.Zero(x.aval), *([None] * len(coords))
  out = transpose(ct, *coords, **({} if "shape" in params else {"shape": x.aval.shape}))
  return out, *([None] * len(coords))


for _prim, _transpose in (
  (sample_p, scatter_p.bind),
  (scatter_p, sample_p.bind),
  (sample3_p, scatter3_p.bind),
  (scatter3_p, sample3_p.bind),
):
  ad.primitive_transposes[_prim] = functools.partial(_linear_transpose, _prim.name, _transpose)


def _batch(prim, args, dims, **params):
  """vmap: the mapped axis moved to the front, unmapped operands broadcast along it, and folded into N."""
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
  moved = [
    jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
    for a, d in zip(args, dims, strict=True)
  ]
  folded = [a.reshape((-1, *a.shape[2:])) for a in moved]
  if "shape" in params:
    params = {**params, "shape": (size * params["shape"][0], *params["shape"][1:])}
  out = prim.bind(*folded, **params)

  def unfold(x):
    return x.reshape((size, -1, *x.shape[1:]))

  if prim.multiple_results:
    return [unfold(x) for x in out], [0] * len(out)
  return unfold(out), 0


for _prim in (sample_p, jacobian_p, scatter_p, sample3_p, scatter3_p):
  batching.primitive_batchers[_prim] = functools.partial(_batch, _prim)

# ----------------------------------------------------------------------------------------------------------------------
# The convolutions: stride-1 'VALID' cross-correlations of grouped, channels-last images (csrc/layers.cc).
# ----------------------------------------------------------------------------------------------------------------------

LANES = 16  # the kernels' output channels come in vectors of 16 floats
NO_BORDER = (0, 0, 0, 0)

conv_p = Primitive("stn_conv")
conv_kernel_p = Primitive("stn_conv_kernel")


def conv(x: jax.Array, kernel: jax.Array, border=NO_BORDER) -> jax.Array:
  """The stride-1 'VALID' cross-correlation of x (G, N, H, W, C) with kernel (G, KH, KW, C, CO) (group g of x with
  kernel g; G = 1 for one model): (G, N, H - KH + 1, W - KW + 1, CO) float32. `border` (top, bottom, left, right) is a
  promise that so many rows and columns at x's edges are zeros (a padded input), which the kernel skips. Bilinear:
  differentiable to any order in both operands; batches under `jax.vmap`. In the kernel on CPU where it supports CO
  (`kernel_supports`; the kernel's channels padded with zeros up to a multiple of 16), else (and on other backends)
  `reference_conv`."""
  border = tuple(int(b) for b in border)
  c_out = kernel.shape[-1]
  lanes = -(-c_out // LANES) * LANES
  if lanes == c_out or not kernel_supports(c_out):
    return conv_p.bind(x, kernel, border=border)
  kernel = jnp.pad(kernel, ((0, 0),) * 4 + ((0, lanes - c_out),))
  return conv_p.bind(x, kernel, border=border)[..., :c_out]


def kernel_supports(c_out: int, dtype=jnp.float32) -> bool:
  """Whether a convolution to `c_out` channels in `dtype` runs in the CPU kernel (when it is built): float32, and
  `c_out` a multiple of 16 or at most a quarter short of the next one (computed with zero channels added)."""
  lanes = -(-c_out // LANES) * LANES
  return 4 * lanes <= 5 * c_out and jnp.dtype(dtype) == jnp.float32


def conv_kernel_gradient(x: jax.Array, g: jax.Array, kernel_size, border=NO_BORDER) -> jax.Array:
  """The transpose of `conv` in its kernel: d kernel (G, KH, KW, C, CO) of a cotangent g (G, N, OH, OW, CO)."""
  return conv_kernel_p.bind(x, g, kernel_size=tuple(kernel_size), border=tuple(int(b) for b in border))


def reference_conv(x, kernel, *, border=NO_BORDER):
  """`conv` in pure JAX: each output pixel's receptive field (an exact copy, features ordered (KH, KW, C)) times the
  kernel, one batched matrix product."""
  del border
  _, kh, kw, c, co = kernel.shape
  oh, ow = x.shape[2] - kh + 1, x.shape[3] - kw + 1
  taps = [x[:, :, a : a + oh, b : b + ow, :] for a in range(kh) for b in range(kw)]
  patches = jnp.concatenate(taps, axis=-1)  # (G, N, OH, OW, KH * KW * C)
  return jnp.einsum("gnyxp,gpf->gnyxf", patches, kernel.reshape(kernel.shape[0], kh * kw * c, co))


def _reference_conv_kernel(x, g, *, kernel_size, border):
  kh, kw = kernel_size
  zeros = jnp.zeros((x.shape[0], kh, kw, x.shape[-1], g.shape[-1]), g.dtype)
  return jax.linear_transpose(lambda k: reference_conv(x, k, border=border), zeros)(g)[0]


def _conv_input_transpose(g, kernel, x_shape):
  """The transpose of `conv` in x: the cotangent g (G, N, OH, OW, CO) correlated, zero-padded by the kernel's size - 1,
  with the kernel flipped and its channels swapped, (G, N, H, W, C), itself a `conv` (in the kernel when C is a multiple
  of 16 or near one); else the transpose of the reference (a product with the kernel and the patches' adjoint)."""
  _, kh, kw, c, _ = kernel.shape
  if not kernel_supports(c):
    zeros = jnp.zeros(x_shape, g.dtype)
    return jax.linear_transpose(lambda x: reference_conv(x, kernel), zeros)(g)[0]
  padded = jnp.pad(g, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
  flipped = jnp.swapaxes(kernel[:, ::-1, ::-1], 3, 4)
  return conv(padded, flipped, border=(kh - 1, kh - 1, kw - 1, kw - 1))


def _conv_abstract(x, kernel, *, border):
  g, n, h, w, _ = x.shape
  _, kh, kw, _, co = kernel.shape
  return jax.core.ShapedArray((g, n, h - kh + 1, w - kw + 1, co), x.dtype)


def _conv_kernel_abstract(x, g, *, kernel_size, border):
  return jax.core.ShapedArray((x.shape[0], *kernel_size, x.shape[-1], g.shape[-1]), g.dtype)


def _conv_cpu(target, reference_fn, abstract, *args, **params):
  """The CPU lowering of a convolution primitive: the kernel where it is built and supports the shapes."""
  out = abstract(*args, **params)
  if not (available() and out.shape[-1] % LANES == 0 and all(a.dtype == jnp.float32 for a in args)):
    return reference_fn(*args, **params)
  result = jax.ShapeDtypeStruct(out.shape, out.dtype)
  return jax.ffi.ffi_call(target, result)(*args, border=np.asarray(params["border"], np.int64))


for _prim, _ref, _abstract in (
  (conv_p, reference_conv, _conv_abstract),
  (conv_kernel_p, _reference_conv_kernel, _conv_kernel_abstract),
):
  _prim.def_abstract_eval(_abstract)
  _cpu = functools.partial(_conv_cpu, _prim.name, _ref, _abstract)
  mlir.register_lowering(_prim, mlir.lower_fun(_cpu, multiple_results=False), platform="cpu")
  mlir.register_lowering(_prim, mlir.lower_fun(_ref, multiple_results=False))
  _prim.def_impl(functools.partial(_eager, _cpu, _ref))


def _conv_jvp(primals, tangents, *, border):
  # Bilinear: d(x * k) = dx * k + x * dk (a tangent of x promises no zero border).
  (x, kernel), (dx, dk) = primals, tangents
  out = conv(x, kernel, border)
  terms = []
  if type(dx) is not ad.Zero:
    terms.append(conv(dx, kernel))
  if type(dk) is not ad.Zero:
    terms.append(conv(x, dk, border))
  return out, sum(terms[1:], terms[0]) if terms else ad.Zero.from_primal_value(out)


def _conv_kernel_jvp(primals, tangents, *, kernel_size, border):
  (x, g), (dx, dg) = primals, tangents
  out = conv_kernel_gradient(x, g, kernel_size, border)
  terms = []
  if type(dx) is not ad.Zero:
    terms.append(conv_kernel_gradient(dx, g, kernel_size))
  if type(dg) is not ad.Zero:
    terms.append(conv_kernel_gradient(x, dg, kernel_size, border))
  return out, sum(terms[1:], terms[0]) if terms else ad.Zero.from_primal_value(out)


def _conv_transpose(ct, x, kernel, *, border):
  if ad.is_undefined_primal(x) and ad.is_undefined_primal(kernel):
    raise NotImplementedError("stn_conv is linear in each operand separately, not jointly")
  if type(ct) is ad.Zero:
    return (ad.Zero(x.aval) if ad.is_undefined_primal(x) else None), (
      ad.Zero(kernel.aval) if ad.is_undefined_primal(kernel) else None
    )
  if ad.is_undefined_primal(x):
    return _conv_input_transpose(ct, kernel, x.aval.shape), None
  return None, conv_kernel_gradient(x, ct, kernel.aval.shape[1:3], border)


def _conv_kernel_transpose(ct, x, g, *, kernel_size, border):
  if ad.is_undefined_primal(x) and ad.is_undefined_primal(g):
    raise NotImplementedError("stn_conv_kernel is linear in each operand separately, not jointly")
  if type(ct) is ad.Zero:
    return (ad.Zero(x.aval) if ad.is_undefined_primal(x) else None), (
      ad.Zero(g.aval) if ad.is_undefined_primal(g) else None
    )
  if ad.is_undefined_primal(x):
    return _conv_input_transpose(g, ct, x.aval.shape), None
  return None, conv(x, ct, border)


ad.primitive_jvps[conv_p] = _conv_jvp
ad.primitive_jvps[conv_kernel_p] = _conv_kernel_jvp
ad.primitive_transposes[conv_p] = _conv_transpose
ad.primitive_transposes[conv_kernel_p] = _conv_kernel_transpose


def _conv_batch(prim, args, dims, **params):
  """vmap: x alone mapped folds the mapped axis into N (one kernel for all); otherwise into G (the unmapped operand
  broadcast along it)."""
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
  x, other = (a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims, strict=True))
  if prim is conv_p and dims[1] is None:
    g, n = x.shape[1:3]
    folded = jnp.swapaxes(x, 0, 1).reshape((g, size * n, *x.shape[3:]))
    out = prim.bind(folded, other, **params)
    return jnp.swapaxes(out.reshape((g, size, n, *out.shape[2:])), 0, 1), 0
  x, other = (
    a if d is not None else jnp.broadcast_to(a, (size, *a.shape)) for a, d in zip((x, other), dims, strict=True)
  )
  out = prim.bind(x.reshape((-1, *x.shape[2:])), other.reshape((-1, *other.shape[2:])), **params)
  return out.reshape((size, -1, *out.shape[1:])), 0


for _prim in (conv_p, conv_kernel_p):
  batching.primitive_batchers[_prim] = functools.partial(_conv_batch, _prim)

# ----------------------------------------------------------------------------------------------------------------------
# 2x2 max-pooling at stride 2 (csrc/layers.cc).
# ----------------------------------------------------------------------------------------------------------------------

max_pool_p = Primitive("stn_max_pool")
pool_select_p = Primitive("stn_max_pool_select")
pool_scatter_p = Primitive("stn_max_pool_scatter")


def max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pooling at stride 2 of x (N, H, W, C) float32 ('VALID': an odd last row or column is left out), what
  `nnx.max_pool(x, (2, 2), strides=(2, 2))` computes; a window with a NaN gives NaN. Differentiable (the derivative
  flows to the first maximum of each window in row-major order, as XLA's select-and-scatter sends it), to any order;
  batches under `jax.vmap`. In the kernel on CPU, else `reference_max_pool`."""
  return max_pool_p.bind(x)


def _windows(x):
  """x's 2x2 windows: (top-left, top-right, bottom-left, bottom-right), each (N, H // 2, W // 2, C)."""
  n, h, w, c = x.shape
  cropped = x[:, : h - h % 2, : w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c)
  return tuple(cropped[:, :, i, :, j] for i in (0, 1) for j in (0, 1))


def _winner(x):
  """(N, H // 2, W // 2, C) int32: the window pixel (0-3, row-major) that x's maximum is at; the first NaN wins."""
  values = _windows(x)
  best, k = values[0], jnp.zeros(best_shape := values[0].shape, jnp.int32)
  del best_shape
  for i, v in enumerate(values[1:], start=1):
    wins = (v > best) | (jnp.isnan(v) & ~jnp.isnan(best))
    best, k = jnp.where(wins, v, best), jnp.where(wins, i, k)
  return k


def _reference_pool_select(x, t):
  k = _winner(x)
  return sum(jnp.where(k == i, v, 0.0) for i, v in enumerate(_windows(t)))


def reference_max_pool(x):
  """`max_pool` in pure JAX."""
  return _reference_pool_select(x, x)


def _reference_pool_scatter(x, g):
  zeros = jnp.zeros(x.shape, g.dtype)
  return jax.linear_transpose(lambda t: _reference_pool_select(x, t), zeros)(g)[0]


def _pooled(x, *rest):
  n, h, w, c = x.shape
  return jax.core.ShapedArray((n, h // 2, w // 2, c), x.dtype)


def _unpooled(x, g):
  return jax.core.ShapedArray(x.shape, g.dtype)


def _pool_cpu(target, reference_fn, abstract, *args):
  if not all(a.dtype == jnp.float32 for a in args):
    return reference_fn(*args)
  return _kernel_or_reference(target, reference_fn, abstract, *args)


for _prim, _ref, _abstract in (
  (max_pool_p, reference_max_pool, _pooled),
  (pool_select_p, _reference_pool_select, _pooled),
  (pool_scatter_p, _reference_pool_scatter, _unpooled),
):
  _prim.def_abstract_eval(_abstract)
  _cpu = functools.partial(_pool_cpu, _prim.name, _ref, _abstract)
  mlir.register_lowering(_prim, mlir.lower_fun(_cpu, multiple_results=False), platform="cpu")
  mlir.register_lowering(_prim, mlir.lower_fun(_ref, multiple_results=False))
  _prim.def_impl(functools.partial(_eager, _cpu, _ref))
  batching.primitive_batchers[_prim] = functools.partial(_batch, _prim)


def _max_pool_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  out = max_pool_p.bind(x)
  if type(dx) is ad.Zero:
    return out, ad.Zero.from_primal_value(out)
  return out, pool_select_p.bind(x, dx)


def _pool_linear_jvp(prim, primals, tangents):
  # Linear in the second operand; the window's winner is locally constant in x (the derivative in x is zero).
  (x, t), (_, dt) = primals, tangents
  out = prim.bind(x, t)
  if type(dt) is ad.Zero:
    return out, ad.Zero.from_primal_value(out)
  return out, prim.bind(x, dt)


def _pool_linear_transpose(transpose, ct, x, t):
  if ad.is_undefined_primal(x):
    raise NotImplementedError("the max-pool's select and scatter are linear in their second operand only")
  if type(ct) is ad.Zero:
    return None, ad.Zero(t.aval)
  return None, transpose.bind(x, ct)


ad.primitive_jvps[max_pool_p] = _max_pool_jvp
for _prim, _transpose in ((pool_select_p, pool_scatter_p), (pool_scatter_p, pool_select_p)):
  ad.primitive_jvps[_prim] = functools.partial(_pool_linear_jvp, _prim)
  ad.primitive_transposes[_prim] = functools.partial(_pool_linear_transpose, _transpose)


def main() -> int:
  """Builds the kernel (`make install` runs this; `--force` rebuilds) and says where it is, or why it was not built."""
  try:
    path = build(force="--force" in sys.argv[1:])
  except RuntimeError as e:
    print(f"stn_jax: the CPU kernels were not built ({e}); grid_sample and the models' convolutions will use XLA.")
    return 0
  print(f"stn_jax: the CPU kernels are at {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
