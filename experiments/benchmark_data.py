r"""Times generating distorted-MNIST splits from cached MNIST arrays (one jitted, vmapped warp per chunk).

  python experiments/benchmark_data.py [--variants=seed40,R,RTS,P,E,TC] [--split=train]

For each variant it prints the wall time of the whole split: the first call (including XLA compilation) and a second
call (compiled). Target: the 50,000-image seed40 train split in under 10 s on a 2-core CPU.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from stn_jax.data import distortions, mnist
from stn_jax.training.config_lib import import_sibling

benchmark_cases = import_sibling(__file__, "benchmark_cases")

_VARIANTS = flags.DEFINE_list("variants", list(distortions.NAMES), "Variants to time.")
_SPLIT = flags.DEFINE_enum("split", "train", list(mnist.SPLITS), "Split to generate.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "MNIST cache directory.")


def main(argv):
  del argv
  print(f"machine: {benchmark_cases.machine()}")
  data = mnist.load_mnist(data_dir=_DATA_DIR.value)
  digits, _ = data.split(_SPLIT.value)
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; MNIST from {data.source}; split {_SPLIT.value}")
  print("| variant | images | size | first call s (with compile) | compiled s |")
  print("|---|---:|---:|---:|---:|")
  for name in _VARIANTS.value:
    times = []
    for _ in range(2):
      start = time.perf_counter()
      images = distortions.distort(name, digits, seed=0, split=_SPLIT.value)
      times.append(time.perf_counter() - start)
    size = images.shape[1]
    print(f"| {name} | {len(images)} | {size}x{size} | {times[0]:.2f} | {times[1]:.2f} |")


if __name__ == "__main__":
  app.run(main)
