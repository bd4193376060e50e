"""stn_jax.predict: workdirs of both config versions, image directories and files, channels, sizes, the command line."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image

from stn_jax import data as data_lib
from stn_jax import predict
from stn_jax.training import checkpoints, config_lib, optim, steps, train
from tests.helpers import synthetic_datasets, synthetic_digits, tiny_config

ROOT = Path(__file__).resolve().parent.parent
V1_WORKDIRS = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def datasets():
  return synthetic_datasets()


@pytest.fixture(scope="module")
def test_npz(datasets, tmp_path_factory):
  """The test split as an .npz of uint8 (40, 32, 32) images and labels."""
  path = tmp_path_factory.mktemp("inputs") / "test.npz"
  np.savez(path, images=datasets["test"].images(), labels=datasets["test"].labels)
  return path


def _tiny_config(**overrides):
  """tests.helpers.tiny_config trained for 4 steps."""
  return tiny_config(num_train_steps=4, log_every_steps=4, **overrides)


@pytest.fixture(scope="module")
def current_run(tmp_path_factory, datasets):
  """A workdir of the current trainer (4 steps)."""
  workdir = tmp_path_factory.mktemp("run")
  results = train.train_and_evaluate(_tiny_config(), workdir, datasets=datasets)
  return workdir, results


@pytest.fixture
def cli(monkeypatch, capsys):
  """predict.main in this process (its logging setup left out): (status, stdout, stderr)."""
  monkeypatch.setattr(predict, "_setup_logging", lambda verbose: None)

  def call(*args):
    status = predict.main(["stn-predict", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err

  return call


# ----------------------------------------------------------------------------------------------------------------------
# Workdirs.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v1_cnn", "v1_fcn"])
def test_version_1_workdirs_give_their_recorded_predictions(name, test_npz):
  workdir = V1_WORKDIRS / name
  config, graphdef, params, step = predict.load_run(workdir)
  assert step == 4 and config.version == config_lib.VERSION
  inputs = predict.read_images(test_npz, size=predict.input_size(config))
  assert inputs.names is None and inputs.labels is not None and inputs.images.shape == (40, 32, 32, 1)
  out = predict.predict(config, graphdef, params, inputs.images)
  with np.load(workdir / "expected_predictions.npz") as expected:
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["theta"], expected["theta"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["predictions"], expected["probabilities"].argmax(-1))
  assert out["rectified"].shape == (40, 32, 32, 1)


def test_a_current_run_predicts_its_test_accuracy(current_run, datasets, test_npz):
  workdir, results = current_run
  config, graphdef, params, step = predict.load_run(workdir)
  assert step == 4
  inputs = predict.read_images(test_npz)
  out = predict.predict(config, graphdef, params, inputs.images, batch_size=16)  # 3 batches, the last one padded
  assert out["predictions"].shape == (40,) and out["probabilities"].shape == (40, 10)
  np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
  assert out["theta"].shape == (40, 2, 3)
  assert np.mean(out["predictions"] == inputs.labels) == pytest.approx(results["test_accuracy"])
  whole = predict.predict(config, graphdef, params, inputs.images)
  np.testing.assert_allclose(whole["probabilities"], out["probabilities"], rtol=1e-5, atol=1e-7)
  # float input in [0, 1] with a channel axis gives the same
  floats = predict.prepare_images(datasets["test"].images().astype(np.float32)[..., None] / 255)
  np.testing.assert_array_equal(predict.predict(config, graphdef, params, floats)["predictions"], out["predictions"])
  with pytest.raises(predict.PredictError, match=r"takes 32x32x1 images.*got 28x28x1"):
    predict.predict(config, graphdef, params, np.zeros((2, 28, 28, 1), np.float32))


def test_seed_index_picks_a_model_of_a_multi_seed_run(tmp_path, test_npz, cli):
  config = _tiny_config(num_seeds=2)
  graphdef, params = train.create_params(config)
  state = checkpoints.checkpoint_state(params, optim.init_state(config, params, 4), num_members=2)
  checkpoints.open_run(tmp_path, config, steps_per_epoch=6)
  with checkpoints.manager(tmp_path) as manager:
    manager.save(3, args=ocp.args.StandardSave(state))
    manager.wait_until_finished()
  images = predict.read_images(test_npz).images
  outputs = []
  for k in range(2):
    _, _, restored, step = predict.load_run(tmp_path, seed_index=k)
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, restored, steps.member_slice(params, k, 2))
    outputs.append(predict.predict(config, graphdef, restored, images)["probabilities"])
  assert not np.allclose(outputs[0], outputs[1])
  with pytest.raises(predict.PredictError, match=r"seed_index must be in \[0, 2\).*got 2"):
    predict.load_run(tmp_path, seed_index=2)
  status, _, err = cli(f"--workdir={tmp_path}", f"--input={test_npz}", "--seed_index=-1")
  assert status == 2 and err == "error: seed_index must be in [0, 2) for this run of 2 model(s); got -1.\n"


def test_workdir_errors(tmp_path, current_run):
  workdir, _ = current_run
  with pytest.raises(predict.PredictError, match="no such workdir"):
    predict.load_run(tmp_path / "nowhere")
  with pytest.raises(predict.PredictError, match=re.escape("no config.json")):
    predict.load_run(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(predict.PredictError, match=re.escape("config.json: cannot read it")):
    predict.load_run(tmp_path)
  (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
  with pytest.raises(predict.PredictError, match="no checkpoints yet"):
    predict.load_run(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------------------------------


def _save(path, array):
  Image.fromarray(array).save(path)
  return array


def test_a_directory_is_read_in_natural_order_with_the_file_names(tmp_path):
  rng = np.random.default_rng(1)
  directory = tmp_path / "digits"
  directory.mkdir()
  arrays = {name: rng.integers(0, 256, (32, 32), dtype=np.uint8) for name in ("10.png", "2.png", "1.PNG", "x9.png")}
  for name, array in arrays.items():
    _save(directory / name, array)
  _save(directory / "3.jpeg", arrays["2.png"])  # lossy: only its place is checked
  (directory / "notes.txt").write_text("not an image")
  (directory / "20.png").mkdir()  # a directory, skipped
  _save(directory / ".hidden.png", arrays["2.png"])
  inputs = predict.read_images(directory, size=32)
  assert inputs.names == ("1.PNG", "2.png", "3.jpeg", "10.png", "x9.png")
  assert inputs.labels is None and inputs.images.shape == (5, 32, 32, 1) and inputs.images.dtype == np.float32
  for i, name in enumerate(inputs.names):
    if name in arrays:
      np.testing.assert_array_equal(inputs.images[i, ..., 0], arrays[name] / np.float32(255))
  single = predict.read_images(directory / "10.png")
  assert single.names == ("10.png",)
  np.testing.assert_array_equal(single.images, inputs.images[3:4])
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(predict.PredictError, match=re.escape("holds no .png, .jpg, .jpeg files")):
    predict.read_images(empty)
  with pytest.raises(predict.PredictError, match="no such file or directory"):
    predict.read_images(tmp_path / "missing.png")


def test_channels_are_handled_alike_for_npz_and_image_files(tmp_path):
  rng = np.random.default_rng(2)
  grey = rng.integers(0, 256, (2, 32, 32), dtype=np.uint8)
  alpha = rng.integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
  colour = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  rgb_grey = np.repeat(grey[..., None], 3, -1)
  expected_grey = grey[..., None] / np.float32(255)
  luminance = (0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2])[..., None] / 255
  cases = {
    "grey": (grey, expected_grey),
    "rgb_grey": (rgb_grey, expected_grey),
    "rgba_grey": (np.concatenate([rgb_grey, alpha], -1), expected_grey),
    "rgba_colour_grey": (np.concatenate([colour, alpha], -1), luminance),
  }
  for name, (images, expected) in cases.items():
    grey_flag = name == "rgba_colour_grey"
    npz = tmp_path / f"{name}.npz"
    np.savez(npz, images=images)
    directory = tmp_path / name
    directory.mkdir()
    for i, image in enumerate(images):
      _save(directory / f"{i}.png", image)
    from_npz = predict.read_images(npz, grey=grey_flag).images
    from_files = predict.read_images(directory, grey=grey_flag).images
    np.testing.assert_allclose(from_npz, expected, rtol=1e-6, err_msg=name)
    np.testing.assert_array_equal(from_files, from_npz, err_msg=name)
    assert from_npz.shape == (2, 32, 32, 1)
  # Grey + alpha: dropped from image files; an .npz of two channels is the addition variant's, refused by name.
  grey_alpha = np.concatenate([grey[..., None], alpha], -1)
  (tmp_path / "grey_alpha").mkdir()
  for i, image in enumerate(grey_alpha):
    _save(tmp_path / "grey_alpha" / f"{i}.png", image)
  np.testing.assert_allclose(predict.read_images(tmp_path / "grey_alpha").images, expected_grey, rtol=1e-6)
  np.savez(tmp_path / "grey_alpha.npz", images=grey_alpha)
  with pytest.raises(predict.PredictError, match=r"grey_alpha.npz: images of 2 channels and the model takes 1"):
    predict.read_images(tmp_path / "grey_alpha.npz")
  np.savez(tmp_path / "colour.npz", images=colour)
  with pytest.raises(predict.PredictError, match=r"colour.npz: colour image.*pass --grey"):
    predict.read_images(tmp_path / "colour.npz")
  _save(tmp_path / "colour.png", colour[0])
  with pytest.raises(predict.PredictError, match=r"colour.png: colour image.*pass --grey"):
    predict.read_images(tmp_path / "colour.png")
  via_file = predict.read_images(tmp_path / "colour.png", grey=True).images
  np.testing.assert_allclose(via_file, luminance[:1], rtol=1e-6)
  np.testing.assert_array_equal(via_file, predict.read_images(tmp_path / "colour.npz", grey=True).images[:1])
  # a float .npz in [0, 1] converts the same way
  floats = predict.prepare_images(colour / np.float32(255), grey=True)
  np.testing.assert_allclose(floats, luminance, rtol=1e-6)
  with pytest.raises(predict.PredictError, match=r"images: float images must lie in \[0, 1\]"):
    predict.prepare_images(np.full((1, 4, 4), 2.0))


def test_sizes_are_checked_padded_or_resized_and_bad_files_named(tmp_path):
  rng = np.random.default_rng(3)
  directory = tmp_path / "digits"
  directory.mkdir()
  digit = _save(directory / "7.png", rng.integers(0, 256, (28, 28), dtype=np.uint8))
  message = f"{directory / '7.png'}: 28x28, the model takes 32x32x1; pass --pad or --resize."
  with pytest.raises(predict.PredictError, match=re.escape(message)):
    predict.read_images(directory, size=32)
  padded = predict.read_images(directory, size=32, fit="pad").images
  expected = np.zeros((32, 32), np.float32)
  expected[2:30, 2:30] = digit / np.float32(255)  # before = (32 - 28) // 2, as the datasets pad
  np.testing.assert_array_equal(padded[0, ..., 0], expected)
  odd = predict.prepare_images(np.ones((1, 27, 29), np.uint8) * 255, size=32, fit="pad")
  assert odd[0, :, :, 0].sum() == 27 * 29 and odd[0, 2, 1] == 1 and odd[0, 1, 1] == 0 and odd[0, 2, 0] == 0
  with pytest.raises(predict.PredictError, match=re.escape("7.png: 28x28 is larger than the model's 20x20 input")):
    predict.read_images(directory, size=20, fit="pad")
  resized = predict.read_images(directory, size=32, fit="resize").images
  assert resized.shape == (1, 32, 32, 1)
  np.testing.assert_allclose(
    resized, jax.image.resize(digit[None, ..., None] / np.float32(255), (1, 32, 32, 1), "bilinear"), atol=1e-6
  )
  np.savez(tmp_path / "small.npz", images=np.zeros((3, 28, 28), np.uint8))
  with pytest.raises(predict.PredictError, match=re.escape("small.npz: 28x28, the model takes 32x32x1")):
    predict.read_images(tmp_path / "small.npz", size=32)
  assert predict.read_images(tmp_path / "small.npz", size=32, fit="pad").images.shape == (3, 32, 32, 1)
  _save(directory / "8.png", np.zeros((30, 30), np.uint8))
  with pytest.raises(predict.PredictError, match=re.escape("8.png: 30x30, unlike")):
    predict.read_images(directory)  # no size to fit to: they must agree
  (directory / "9.png").write_bytes(b"not a png")
  with pytest.raises(predict.PredictError, match=re.escape(f"{directory / '9.png'}: cannot read it as an image")):
    predict.read_images(directory, size=32, fit="pad")
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(predict.PredictError, match=re.escape("bad.npz: cannot read it as an .npz")):
    predict.read_images(tmp_path / "bad.npz")
  np.savez(tmp_path / "labels.npz", images=np.zeros((3, 32, 32), np.uint8), labels=np.zeros(2, np.int32))
  with pytest.raises(predict.PredictError, match=r"labels must be integers of shape \(3,\)"):
    predict.read_images(tmp_path / "labels.npz")


# ----------------------------------------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_prints_or_writes_exactly_the_given_file(current_run, test_npz, tmp_path, cli):
  workdir, results = current_run
  status, out, err = cli(f"--workdir={workdir}", f"--input={test_npz}")
  assert status == 0 and err == ""
  lines = out.splitlines()
  assert lines[0].split() == ["name", "class", "probability", "label"] and len(lines) == 1 + 40 + 1
  assert lines[-1] == f"accuracy {results['test_accuracy']:.4f} on 40 labelled images"
  index, predicted, probability, _label = lines[1].split()
  assert index == "0" and 0 <= int(predicted) < 10 and 0.1 <= float(probability) <= 1

  directory = tmp_path / "pngs"
  directory.mkdir()
  for name in ("b10.png", "b2.png"):
    _save(directory / name, np.zeros((28, 28), np.uint8))
  status, out, err = cli(f"--workdir={workdir}", f"--input={directory}")
  # every wrong-sized file is counted, the first few named (in natural order)
  expected = (
    f"error: 2 of 2 images do not fit the model's input: {directory / 'b2.png'}: 28x28, the model takes 32x32x1; "
    f"pass --pad or --resize; {directory / 'b10.png'}: 28x28, the model takes 32x32x1; pass --pad or --resize.\n"
  )
  assert status == 2 and err == expected
  status, out, _ = cli(f"--workdir={workdir}", f"--input={directory}", "--pad")
  assert status == 0 and [line.split()[0] for line in out.splitlines()] == ["name", "b2.png", "b10.png"]

  output = tmp_path / "noext"
  status, out, _ = cli(f"--workdir={workdir}", f"--input={directory}", "--resize", f"--output={output}")
  assert status == 0 and out == f"wrote {output}: 2 predictions from the checkpoint at step 4\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["noext", "pngs"]
  with np.load(output) as z:
    assert list(z["names"]) == ["b2.png", "b10.png"] and z["rectified"].shape == (2, 32, 32, 1)
    assert set(z.files) == {"predictions", "probabilities", "rectified", "theta", "names"}
  status, _, err = cli(f"--workdir={workdir}", f"--input={directory}", "--resize", f"--output={output}")
  assert status == 2 and err == f"error: {output} exists; pass --overwrite to replace it\n"
  status, _, _ = cli(f"--workdir={workdir}", f"--input={test_npz}", f"--output={output}", "--overwrite")
  with np.load(output) as z:
    assert status == 0 and "names" not in z.files and z["labels"].shape == (40,)


@pytest.mark.parametrize(
  ("args", "message"),
  [
    ([], "--workdir is required"),
    (["--workdir=W"], "--input is required"),
    (["--workdir=W", "--input=I", "--nope"], "Unknown command line flag 'nope'"),
    (["--workdir=W", "--input=I", "--seed_index=x"], "seed_index"),
    (["--workdir=W", "--input=I", "extra"], "unexpected arguments: extra"),
    (["--workdir=W", "--input=I", "--overwrite"], "--overwrite applies to --output only"),
    (["--workdir=W", "--input=I", "--pad", "--resize"], "--pad and --resize are mutually exclusive"),
    (["--workdir=nowhere", "--input=I"], "nowhere: no such workdir"),
  ],
)
def test_cli_errors_are_one_line_with_status_2(args, message, cli):
  status, out, err = cli(*args)
  assert status == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def _predict_subprocess(*args):
  command = [sys.executable, "-m", "stn_jax.predict", *map(str, args)]
  return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_cli_in_a_subprocess_is_quiet_and_fails_cleanly(tmp_path, test_npz):
  workdir = V1_WORKDIRS / "v1_cnn"
  output = tmp_path / "out"
  result = _predict_subprocess(f"--workdir={workdir}", f"--input={test_npz}", f"--output={output}")
  assert result.returncode == 0, result.stderr
  assert result.stderr == "", result.stderr  # no orbax INFO lines nor read-only notices
  assert result.stdout.splitlines()[0] == f"wrote {output}: 40 predictions from the checkpoint at step 4"
  with np.load(output) as z, np.load(workdir / "expected_predictions.npz") as expected:
    np.testing.assert_allclose(z["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-7)
  for args, message in [
    ((f"--workdir={workdir}", f"--input={test_npz}", "--seed_index=3"), "seed_index must be in [0, 1)"),
    ((f"--workdir={tmp_path}", f"--input={test_npz}"), "has no config.json: not a training workdir"),
  ]:
    result = _predict_subprocess(*args)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and message in result.stderr


def test_data_cli_writes_exactly_the_given_name(tmp_path, monkeypatch):
  """python -m stn_jax.data --out=NAME wrote NAME.npz when NAME had no .npz suffix."""
  from absl import flags

  from stn_jax.data import __main__ as data_cli
  from stn_jax.data import mnist

  rng = np.random.default_rng(5)
  digits = {s: (rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.arange(4, dtype=np.int32)) for s in mnist.SPLITS}
  monkeypatch.setattr(data_cli.mnist, "load_mnist", lambda **kwargs: mnist.Mnist(digits, "fake"))
  out = tmp_path / "samples"
  flags.FLAGS(["prog", "--dataset=R", "--split=test", "--num=2", f"--out={out}"])
  try:
    data_cli.main([])
  finally:
    flags.FLAGS.unparse_flags()
  assert [p.name for p in tmp_path.iterdir()] == ["samples"]
  with np.load(out) as z:
    assert z["images"].shape == (2, 32, 32) and list(z["labels"]) == [0, 1]


def test_a_two_channel_run_predicts_npz_inputs_and_refuses_one_channel_ones(tmp_path, cli):
  """An addition-shaped run (2 channels, 19 classes, two transformers) on synthetic data: predict gives the model's
  own outputs, and inputs of the wrong channel count are one-line errors naming both counts."""
  rng = np.random.default_rng(5)
  sets = {}
  for split, n in (("train", 64), ("validation", 16), ("test", 16)):
    digits, labels = synthetic_digits(rng, n)
    sets[split] = data_lib.DistortedMnist("addition", split, digits, labels, seed=0)
  config = tiny_config(**{"dataset.name": "addition", "model.num_transformers": 2, "model.classifier.kind": "fcn"})
  config.num_epochs, config.num_train_steps = 0, 4
  config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 4
  train.train_and_evaluate(config, tmp_path / "run", datasets=sets)
  images, labels = sets["test"].images(), sets["test"].epoch_labels()
  np.savez(tmp_path / "pairs.npz", images=images, labels=labels)
  loaded, graphdef, params, _ = predict.load_run(tmp_path / "run")
  inputs = predict.read_images(tmp_path / "pairs.npz", size=42, channels=2)
  result = predict.predict(loaded, graphdef, params, inputs.images)
  model = nnx.merge(graphdef, params)
  x = data_lib.uint8_to_unit_float(images, 2)
  np.testing.assert_allclose(result["probabilities"], np.asarray(jax.nn.softmax(model(x))), rtol=1e-5, atol=1e-6)
  assert result["probabilities"].shape == (16, 19)
  assert result["rectified"].shape == (16, 42, 42, 4) and result["theta"].shape == (16, 2, 2, 3)
  status, out, err = cli("--workdir", tmp_path / "run", "--input", tmp_path / "pairs.npz")
  assert status == 0 and f"on {len(labels)} labelled images" in out
  np.savez(tmp_path / "single.npz", images=images[..., 0])
  status, _, err = cli("--workdir", tmp_path / "run", "--input", tmp_path / "single.npz")
  assert status == 2 and "takes images of 2 channels (N, H, W, 2); got 1 channel(s)" in err and err.count("\n") == 1
  _save(tmp_path / "one.png", images[0, ..., 0])
  status, _, err = cli("--workdir", tmp_path / "run", "--input", tmp_path / "one.png")
  assert status == 2 and "give an .npz of images (N, H, W, 2)" in err
  with pytest.raises(predict.PredictError, match=r"the model takes 42x42x2 images \(addition\); got 42x42x1"):
    predict.predict(loaded, graphdef, params, x[..., :1])
