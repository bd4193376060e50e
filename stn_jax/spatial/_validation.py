"""Argument checks shared by the public functions.

Every check looks only at static information (shapes, dtypes, options), so it works on tracers too; the public
wrappers run them before calling their jitted core, so a message is one line (no JAX traceback note), and every message
names the function, the argument, what it got and what is allowed.

The public functions are thin Python wrappers: `keyword_only` turns an option given positionally into a clear error,
the wrapper converts array-likes with `as_array` and normalises its static options (`check_size` turns any sequence of
two ints into a hashable tuple), and then it calls a jitted core built once at import.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def describe(value) -> str:
  """A short one-line description of `value` for an error message."""
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
  text = " ".join(repr(value).split())
  return text if len(text) <= 80 else text[:77] + "..."


def check_choice(func: str, name: str, value, allowed: Iterable) -> str:
  """Returns `value` (one of the strings `allowed`)."""
  allowed = tuple(allowed)
  if not (isinstance(value, str) and value in allowed):
    raise ValueError(f"{func}: {name} must be one of {', '.join(map(repr, allowed))}; got {describe(value)}.")
  return str(value)


def check_bool(func: str, name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{func}: {name} must be a bool; got {describe(value)} of type {type(value).__name__}.")
  return bool(value)


def check_size(func: str, name: str, size) -> tuple[int, int]:
  """Returns `size` (any sequence of two positive ints, numpy ints included) as a (height, width) tuple of ints."""
  message = f"{func}: {name} must be a pair of positive ints (height, width); got {describe(size)}."
  if isinstance(size, (str, bytes)):
    raise TypeError(message)
  try:
    items = tuple(size)
  except TypeError:
    raise TypeError(message) from None
  ints = all(isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in items)
  if len(items) == 4 and ints:  # torch's affine_grid takes the output's (N, C, H, W)
    raise TypeError(f"{message[:-1]}: torch's (N, C, H, W) size is (H, W) here, size[-2:] = {tuple(items[-2:])}.")
  if len(items) != 2 or not ints:
    raise TypeError(message)
  if min(items) < 1:
    raise ValueError(message)
  return int(items[0]), int(items[1])


def as_array(func: str, name: str, x):
  """`x` as an array: jax and numpy arrays pass through, other array-likes (nested lists) go through `jnp.asarray`.

  Done before a jitted core, which would otherwise trace every element of a list as a separate scalar.
  """
  if isinstance(x, (jax.Array, np.ndarray)):
    return x
  try:
    return jnp.asarray(x)
  except (TypeError, ValueError):
    raise TypeError(
      f"{func}: {name} must be an array (jax or numpy, or a nested list of numbers); "
      f"got {describe(x)} of type {type(x).__name__}."
    ) from None


def check_floating(func: str, name: str, x) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    hint = " (Python ints or an integer array: write floats, e.g. 1.0, or cast with .astype(jnp.float32))"
    raise TypeError(
      f"{func}: {name} must have a floating dtype (float16, bfloat16, float32 or float64); got {dtype}"
      f"{hint if jnp.issubdtype(dtype, jnp.integer) else ''}."
    )


def check_trailing_shape(func: str, name: str, x, trailing: Sequence[int | None], *, what: str) -> None:
  """Checks that `x` has at least len(trailing) axes ending in `trailing` (None matches any size)."""
  shape = jnp.shape(x)
  ok = len(shape) >= len(trailing) and all(
    t is None or s == t for s, t in zip(shape[len(shape) - len(trailing) :], trailing, strict=True)
  )
  if not ok:
    raise ValueError(f"{func}: {name} must have shape {what}; got shape {tuple(shape)}.")


def warn_if_channels_first(func: str, image, *, stacklevel: int) -> None:
  """Warns when an (N, H, W, C) or (H, W, C) image looks channels-first (NCHW, as torch's).

  The heuristic: H <= 4 while W and C are both >= 4 H and >= 8, as (N, 1, 28, 28) or (N, 3, 64, 64) read as NHWC.
  Small feature maps such as 4x4x256 or 2x100x3 do not warn.
  """
  shape = tuple(jnp.shape(image))
  if len(shape) not in (3, 4):
    return
  h, w, c = shape[-3:]
  if h <= 4 and min(w, c) >= max(4 * h, 8):
    layout = "NCHW" if len(shape) == 4 else "CHW"
    fix = "jnp.moveaxis(image, -3, -1)"
    warnings.warn(
      f"{func}: image of shape {shape} looks channels-first ({layout}, as torch's), but stn_jax is channels-last "
      f"NHWC and reads it as H={h}, W={w}, C={c}; convert it with {fix}.",
      UserWarning,
      stacklevel=stacklevel + 1,
    )


def keyword_only(**choices: Sequence[str]) -> Callable:
  """Decorator for a public function: an option given positionally raises a TypeError naming the option.

  Python's own "takes 2 positional arguments but 3 were given" names neither; this names the option the extra value
  was most likely meant for: the one whose `choices` contain it (`mode='nearest'`), `align_corners` for a bool, a
  `size` for a pair, else the next keyword-only option in order. The signature and docstring are kept.
  """

  def decorate(fn: Callable) -> Callable:
    parameters = inspect.signature(fn).parameters.values()
    positional = tuple(p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)
    options = tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      if len(args) > len(positional):
        _raise_positional_option(fn.__name__, positional, options, choices, args[len(positional) :])
      return fn(*args, **kwargs)

    return wrapper

  return decorate


def _raise_positional_option(func, positional, options, choices, extra):
  value = extra[0]
  index = len(positional) + 1
  name = next((o for o, allowed in choices.items() if isinstance(value, str) and value in allowed), None)
  if name is None and isinstance(value, (bool, np.bool_)) and "align_corners" in options:
    name = "align_corners"
  if name is None and isinstance(value, (tuple, list)) and len(value) == 2:
    name = next((o for o in options if o.endswith("size")), None)
  if name is None and options:
    name = options[0]
  head = ", ".join(positional)
  if name is None:
    raise TypeError(f"{func}: takes only {head} positionally; got {describe(value)} as positional argument {index}.")
  shown = describe(value)
  example = shown if shown == " ".join(repr(value).split()) and len(shown) <= 40 else "..."
  raise TypeError(
    f"{func}: {name} is keyword-only; got {shown} as positional argument {index}. "
    f"Write {func}({head}{', ' if head else ''}{name}={example}); "
    + (f"only {head} may be positional " if head else "every argument is keyword-only ")
    + f"(keyword-only: {', '.join(options)})."
  )
