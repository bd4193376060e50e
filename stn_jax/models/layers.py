"""Layers shared by the localisation nets and the classifiers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

CONV_IMPLS = ("xla", "patches")


class Conv(nnx.Conv):
  """`nnx.Conv` ('SAME' or 'VALID' padding, NHWC) that can also run as patch extraction plus one matrix product.

  impl='xla' is `lax.conv`. impl='patches' gathers each output pixel's receptive field (`extract_patches`, an exact
  copy) and multiplies by the kernel: the same function with another summation order. Under `jax.vmap` over a
  population of models with their own kernels, a convolution becomes a grouped convolution (feature_group_count =
  K), a slow path of GPU convolution libraries for a few channels per group, while the product becomes one batched
  matrix product, which GPUs batch well. The parameters are the same (kernel (kh, kw, C_in, C_out), bias), so
  checkpoints do not depend on the impl.
  """

  def __init__(self, *args, impl: str = "xla", **kwargs):
    if impl not in CONV_IMPLS:
      raise ValueError(f"conv must be one of {', '.join(map(repr, CONV_IMPLS))}; got {impl!r}.")
    super().__init__(*args, **kwargs)
    self.impl = impl

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.impl == "xla":
      return super().__call__(x)
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
    kernel = self.kernel[...].reshape(kh * kw * c_in, c_out)
    y = jnp.einsum("nhwp,pf->nhwf", patches, kernel, precision=self.precision)
    return y + self.bias[...] if self.bias is not None else y


def extract_patches(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: str) -> jax.Array:
  """(N, H, W, C) -> (N, H', W', kh * kw * C): each output pixel's receptive field, features ordered (kh, kw, C), by
  strided slices of the padded input (an exact copy: no convolution, so nothing to round and nothing grouped).
  `padding` is 'SAME' (XLA's: the odd pixel of padding at the end) or 'VALID'."""
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
