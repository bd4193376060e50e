"""What the sampler benchmarks share: their --cases syntax."""

from __future__ import annotations


def parse_case(case: str) -> tuple[int, tuple[int, ...], int, tuple[int, ...]]:
  """'NxHxWxC:HOxWO' (an image) or 'NxDxHxWxC:DOxHOxWO' (a volume) -> (n, spatial in, c, spatial out)."""
  left, right = case.split(":")
  n, *spatial, c = (int(s) for s in left.split("x"))
  out = tuple(int(s) for s in right.split("x"))
  if len(spatial) not in (2, 3) or len(out) != len(spatial):
    raise ValueError(f"--cases: {case!r} is neither NxHxWxC:HOxWO nor NxDxHxWxC:DOxHOxWO.")
  return n, tuple(spatial), c, out
