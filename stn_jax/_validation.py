"""Argument checks shared by the public functions.

Every check raises at trace time (shapes, dtypes and options are static under `jax.jit`), and every message names
the function, the argument, what it got and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax.numpy as jnp
import numpy as np


def check_choice(func: str, name: str, value, allowed: Iterable) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ValueError(f"{func}: {name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")


def check_bool(func: str, name: str, value) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{func}: {name} must be a bool; got {value!r} of type {type(value).__name__}.")
  return bool(value)


def check_size(func: str, name: str, size) -> tuple[int, int]:
  """Returns `size` as a (height, width) tuple of positive Python ints."""
  message = f"{func}: {name} must be a pair of positive ints (height, width); got {size!r}."
  try:
    items = tuple(size)
  except TypeError:
    raise TypeError(message) from None
  if len(items) != 2 or not all(
    isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) for s in items
  ):
    raise TypeError(message)
  if min(items) < 1:
    raise ValueError(message)
  return int(items[0]), int(items[1])


def check_floating(func: str, name: str, x) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{func}: {name} must have a floating dtype (float16, bfloat16, float32 or float64); got {dtype}.")


def check_trailing_shape(func: str, name: str, x, trailing: Sequence[int | None], *, what: str) -> None:
  """Checks that `x` has at least len(trailing) axes ending in `trailing` (None matches any size)."""
  shape = jnp.shape(x)
  ok = len(shape) >= len(trailing) and all(
    t is None or s == t for s, t in zip(shape[len(shape) - len(trailing) :], trailing, strict=True)
  )
  if not ok:
    raise ValueError(f"{func}: {name} must have shape {what}; got shape {tuple(shape)}.")
