"""What the benchmarks share: the sampler benchmarks' --cases syntax, and the machine they ran on."""

from __future__ import annotations


def parse_case(case: str) -> tuple[int, tuple[int, ...], int, tuple[int, ...]]:
  """'NxHxWxC:HOxWO' (an image) or 'NxDxHxWxC:DOxHOxWO' (a volume) -> (n, spatial in, c, spatial out)."""
  left, right = case.split(":")
  n, *spatial, c = (int(s) for s in left.split("x"))
  out = tuple(int(s) for s in right.split("x"))
  if len(spatial) not in (2, 3) or len(out) != len(spatial):
    raise ValueError(f"--cases: {case!r} is neither NxHxWxC:HOxWO nor NxDxHxWxC:DOxHOxWO.")
  return n, tuple(spatial), c, out


VECTOR_EXTENSIONS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16", "amx_tile", "amx_int8")


def machine() -> str:
  """The CPU's model name, family and model numbers, core count and vector extensions (from /proc/cpuinfo), for
  every benchmark's header: the project's VMs are not all one CPU type, and the ratios differ between them. The
  numbers tell apart CPUs that a VM names only "AMD EPYC"."""
  import os

  model, numbers, found = "unknown CPU", {}, []
  try:
    with open("/proc/cpuinfo") as f:
      text = f.read()
    for line in text.splitlines():
      key = line.split(":", 1)[0].strip()
      if key == "model name" and model == "unknown CPU":
        model = line.split(":", 1)[1].strip()
      if key in ("cpu family", "model") and key not in numbers:
        numbers[key] = line.split(":", 1)[1].strip()
      if line.startswith("flags"):
        present = set(line.split(":", 1)[1].split())
        found = [ext for ext in VECTOR_EXTENSIONS if ext in present]
        break
  except OSError:
    import platform

    model = platform.processor() or platform.machine()
  if numbers:
    model += f" (family {numbers.get('cpu family', '?')}, model {numbers.get('model', '?')})"
  return f"{model}, {os.cpu_count()} cores, {' '.join(found) or 'no AVX2'}"
