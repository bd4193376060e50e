"""Layers shared by the localisation nets and the classifiers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from stn_jax.spatial import cpu_kernels

CONV_IMPLS = ("xla", "patches", "cpu_kernel")
CONV_CHOICES = ("auto", *CONV_IMPLS)  # what a config's `conv` option may say
PADDINGS = ("SAME", "VALID")


def resolve_conv(impl: str, backend: str | None = None, num_devices: int = 1) -> str:
  """The way a convolution option 'auto' runs on a backend.

  On CPU 'cpu_kernel' (stn_jax.spatial.cpu_kernels' direct convolution) when it is built and the run uses one
  device, else 'patches' (XLA:CPU's own convolutions are slower for every shape the seed's and the paper's networks
  have; XLA does not partition the kernel's custom calls, so a data-parallel run over several devices would gather the
  whole batch onto each); 'xla' elsewhere (cuDNN and TPU convolutions). docs/benchmarks.md has the figures
  (experiments/benchmark_train.py).

  Args:
    impl: 'auto', or a concrete choice (returned as it is).
    backend: JAX's backend to choose for (default: the default backend).
    num_devices: the devices the run is data parallel over.

  Returns:
    'xla', 'patches' or 'cpu_kernel'.

  Raises:
    ValueError: an `impl` not in CONV_CHOICES.
  """
  if impl not in CONV_CHOICES:
    raise ValueError(f"conv must be one of {', '.join(map(repr, CONV_CHOICES))}; got {impl!r}.")
  if impl != "auto":
    return impl
  if (backend or jax.default_backend()) != "cpu":
    return "xla"
  return "cpu_kernel" if num_devices == 1 and cpu_kernels.available() else "patches"


class Conv(nnx.Conv):
  """`nnx.Conv` ('SAME' or 'VALID', NHWC) that can also run as patches and one matrix product, or in a CPU kernel.

  impl='xla' is `lax.conv`. impl='patches' gathers each output pixel's receptive field (`extract_patches`, an exact
  copy) and multiplies by the kernel: the same function with another summation order. impl='cpu_kernel' runs
  stride-1 float32 layers whose output channels the kernel takes (`cpu_kernels.kernel_supports`: 16k, or up to a
  quarter fewer) in `cpu_kernels.conv` (a direct convolution, no patch matrix; its pure-JAX reference off CPU or where
  it is not built; matmul precision settings do not apply: it sums in float32) and the others as 'patches', and 2x2
  max-pooling in `cpu_kernels.max_pool`. Under `jax.vmap` over a population of models with their own kernels, a
  convolution becomes a grouped convolution (feature_group_count = K), a slow path of GPU convolution libraries for a
  few channels per group, while the product becomes one batched matrix product, which GPUs batch well. The
  parameters are the same (kernel (kh, kw, C_in, C_out), bias), so checkpoints do not depend on the impl. Both
  compute in `dtype` (nnx.Conv's: inputs, kernel and bias cast to it; None = their promoted type) with parameters
  stored in `param_dtype`.

  Args:
    *args: nnx.Conv's (in_features, out_features, kernel_size).
    impl: 'xla', 'patches' or 'cpu_kernel' ('auto': `resolve_conv`'s choice for the default backend and one device).
    **kwargs: nnx.Conv's (strides, padding, dtype, param_dtype, rngs, ...).

  Raises:
    ValueError: an `impl` not in CONV_CHOICES; on a call, impl='patches' (or a layer the CPU kernel does not take)
      with an input other than (N, H, W, C), or with dilation or feature groups.
  """

  def __init__(self, *args, impl: str = "xla", **kwargs):
    impl = resolve_conv(impl)  # 'auto': the backend's (a trainer records its choice in the run's config first)
    super().__init__(*args, **kwargs)
    self.impl = impl

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl == "xla":
      return super().__call__(x)
    if self.impl == "cpu_kernel" and self._in_kernel(x):
      return self._kernel_conv(x)
    dilations = [d for d in (self.input_dilation, self.kernel_dilation) if d not in (None, 1, (1, 1))]
    if x.ndim != 4 or dilations or self.feature_group_count != 1:
      raise ValueError(
        f"Conv(impl='patches') takes (N, H, W, C) inputs without dilation or feature groups; got input shape "
        f"{x.shape}, input_dilation {self.input_dilation}, kernel_dilation {self.kernel_dilation}, "
        f"feature_group_count {self.feature_group_count}."
      )
    kh, kw, c_in, c_out = self.kernel.shape
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    patches = extract_patches(x, (kh, kw), strides, self.padding)  # (N, H', W', kh * kw * C_in)
    bias = self.bias[...] if self.bias is not None else None
    patches, kernel, bias = promote_dtype((patches, self.kernel[...], bias), dtype=self.dtype)
    y = jnp.einsum("nhwp,pf->nhwf", patches, kernel.reshape(kh * kw * c_in, c_out), precision=self.precision)
    return y + bias if bias is not None else y

  def _in_kernel(self, x: jax.Array) -> bool:
    """Whether the CPU kernel computes this layer on `x`: stride 1, no dilation or groups, float32, C_out % 16 == 0."""
    plain = (
      x.ndim == 4
      and self.feature_group_count == 1
      and all(d in (None, 1, (1, 1)) for d in (self.input_dilation, self.kernel_dilation, self.strides))
    )
    dtype = jnp.result_type(x, self.kernel[...]) if self.dtype is None else self.dtype
    return plain and self.padding in PADDINGS and cpu_kernels.kernel_supports(self.kernel.shape[-1], dtype)

  def _kernel_conv(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel.shape[:2]
    border = cpu_kernels.NO_BORDER
    if self.padding == "SAME":  # XLA's: the odd pixel of padding at the end
      border = ((kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2)
      x = jnp.pad(x, ((0, 0), border[:2], border[2:], (0, 0)))
    x, kernel = x.astype(jnp.float32), self.kernel[...].astype(jnp.float32)
    y = cpu_kernels.conv(x[None], kernel[None], border)[0]
    return y + self.bias[...].astype(jnp.float32) if self.bias is not None else y


def extract_patches(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: str) -> jax.Array:
  """Each output pixel's receptive field, by strided slices of the padded input.

  An exact copy: no convolution, so nothing to round and nothing grouped.

  Args:
    x: (N, H, W, C).
    window: (kh, kw).
    strides: (sh, sw).
    padding: 'SAME' (XLA's: the odd pixel of padding at the end) or 'VALID'.

  Returns:
    (N, H', W', kh * kw * C), features ordered (kh, kw, C).

  Raises:
    ValueError: a padding other than 'SAME' or 'VALID'.
  """
  (kh, kw), (sh, sw) = window, strides
  _, h, w, _ = x.shape
  if padding == "SAME":
    out_h, out_w = -(-h // sh), -(-w // sw)
    pad_h, pad_w = max((out_h - 1) * sh + kh - h, 0), max((out_w - 1) * sw + kw - w, 0)
    x = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  elif padding == "VALID":
    out_h, out_w = (h - kh) // sh + 1, (w - kw) // sw + 1
  else:
    raise ValueError(f"Conv(impl='patches'): padding must be 'SAME' or 'VALID'; got {padding!r}.")
  rows = [
    x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :] for i in range(kh) for j in range(kw)
  ]
  return jnp.concatenate(rows, axis=-1)


# ----------------------------------------------------------------------------------------------------------------------
# A stack of convolutions (ReLU, optional 2x2 max-pooling), configured per layer: what the CNN classifier and the CNN
# localisation net share.
# ----------------------------------------------------------------------------------------------------------------------


def per_layer(owner: str, name: str, value, count: int) -> tuple:
  """An option's value for each of `count` layers.

  Args:
    owner: what the error names.
    name: the option's name.
    value: one value (or a 1-sequence) for all the layers, or one per layer.
    count: the layers.

  Returns:
    A `count`-tuple.

  Raises:
    ValueError: a sequence of another length.
  """
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if len(values) == 1:
    return values * count
  if len(values) != count:
    raise ValueError(f"{owner}: {name} must hold one value or one per convolution ({count}); got {value!r}.")
  return values


def conv_stack(
  owner: str,
  in_shape: Sequence[int],
  *,
  features: Sequence[int],
  kernel_size,
  strides,
  padding,
  pool,
  impl: str,
  dtype=None,
  rngs: nnx.Rngs,
) -> tuple[nnx.List, tuple[bool, ...], tuple[int, int, int]]:
  """The convolutions of a CNN: `features` channels, each option one value for all layers or one per layer.

  Args:
    owner: what the errors name.
    in_shape: the input's (H, W, C).
    features: output channels of each convolution.
    kernel_size: the square kernels' sides.
    strides: the strides.
    padding: 'SAME' or 'VALID'.
    pool: whether a 2x2 max-pooling follows the layer (after its ReLU).
    impl: how the convolutions run (`Conv`).
    dtype: what they compute in (float32 parameters).
    rngs: the initialisation's randomness.

  Returns:
    (the convolutions, which layers pool, the (H, W, C) they end at).

  Raises:
    ValueError: naming `owner`, when an option is bad or the input shrinks to nothing.
  """
  n = len(features)
  kernels, steps = per_layer(owner, "kernel_size", kernel_size, n), per_layer(owner, "strides", strides, n)
  paddings, pools = per_layer(owner, "padding", padding, n), per_layer(owner, "pool", pool, n)
  for name, values, given in (
    ("features", features, features),
    ("kernel_size", kernels, kernel_size),
    ("strides", steps, strides),
  ):
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
      raise ValueError(f"{owner}: {name} must be positive ints; got {given!r}.")
  if not all(p in PADDINGS for p in paddings):
    raise ValueError(f"{owner}: padding must be {' or '.join(map(repr, PADDINGS))} (per layer); got {padding!r}.")
  if not all(isinstance(p, bool) for p in pools):
    raise ValueError(f"{owner}: pool must be True or False (per layer); got {pool!r}.")
  h, w, c = in_shape
  convs = []
  for i, (f, k, s, p, pooled) in enumerate(zip(features, kernels, steps, paddings, pools, strict=True)):
    convs.append(Conv(c, f, (k, k), strides=s, padding=p, impl=impl, dtype=dtype, rngs=rngs))
    if p == "SAME":
      h, w = -(-h // s), -(-w // s)
    else:
      h, w = (h - k) // s + 1, (w - k) // s + 1
    h, w, c = (h // 2, w // 2, f) if pooled else (h, w, f)
    if min(h, w) < 1:
      raise ValueError(
        f"{owner}: a {in_shape[0]}x{in_shape[1]} input shrinks to nothing at convolution {i + 1} (kernel {k}, "
        f"stride {s}, padding {p!r}{', 2x2 max-pool' if pooled else ''}); use smaller kernels, 'SAME' padding or "
        "fewer layers."
      )
  return nnx.List(convs), pools, (h, w, c)


def max_pool(x: jax.Array, size: int, impl: str) -> jax.Array:
  """`size` x `size` max-pooling at stride `size` ('VALID').

  A conv impl 'cpu_kernel' runs 2x2 float32 pooling in `cpu_kernels.max_pool` (XLA:CPU's select-and-scatter backward
  pass is the slowest part of the paper's CNN step), which propagates a window's NaN (as torch does).

  Args:
    x: (N, H, W, C).
    size: the window and stride.
    impl: the layer's conv impl.

  Returns:
    (N, H // size, W // size, C).
  """
  if impl == "cpu_kernel" and size == 2 and x.ndim == 4 and x.dtype == jnp.float32:
    return cpu_kernels.max_pool(x)
  return nnx.max_pool(x, (size, size), strides=(size, size))


def apply_conv_stack(convs: nnx.List, pools: tuple[bool, ...], x: jax.Array) -> jax.Array:
  """conv -> ReLU (-> 2x2 max-pool) for each layer of a `conv_stack`.

  With conv impl 'cpu_kernel' a pooled layer runs conv -> max-pool -> ReLU: the same values (the ReLU is monotone, so
  it commutes with the maximum, bitwise) and the same gradients (a window whose maximum is not positive passes none
  either way), with the ReLU and its backward pass on a quarter of the values.

  Args:
    convs: the stack's convolutions.
    pools: which layers pool.
    x: (N, H, W, C).

  Returns:
    The last layer's (N, H', W', C').
  """
  for conv, pooled in zip(convs, pools, strict=True):
    x = apply_conv_layer(conv, pooled, x)
  return x


def apply_conv_layer(conv, pooled: bool, x: jax.Array) -> jax.Array:
  """One layer of `apply_conv_stack`: conv -> ReLU (-> 2x2 max-pool).

  Args:
    conv: the layer's convolution.
    pooled: whether it pools.
    x: (N, H, W, C).

  Returns:
    (N, H', W', C').
  """
  if pooled and conv.impl == "cpu_kernel":
    return jax.nn.relu(max_pool(conv(x), 2, conv.impl))
  x = jax.nn.relu(conv(x))
  return max_pool(x, 2, conv.impl) if pooled else x
