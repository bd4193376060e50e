r"""Classifies images with a trained run's newest checkpoint.

  python -m stn_jax.predict --workdir=DIR --input=FILE.npz|IMAGE|DIR_OF_IMAGES [--output=FILE.npz [--overwrite]]
                            [--seed_index=K] [--pad | --resize] [--grey] [--verbose]

Input: an .npz with `images` (N, H, W) or (N, H, W, C), uint8 or float in [0, 1] (and optionally `labels` (N,)); an
image file (.png, .jpg, .jpeg, any case); or a directory of them, read in natural order (2.png before 10.png; hidden
files and other files are skipped). The models take one channel: an alpha channel is dropped, grey stored as RGB
(three equal channels) is taken as it is, and colour images are refused unless --grey converts them to luminance
(ITU-R 601: 0.299 R + 0.587 G + 0.114 B), the same way for both kinds of input. A model of C > 1 channels (the
addition variant's 2) takes an .npz of (N, H, W, C) images only, each channel as it is; an .npz of 2-channel images
is refused by a 1-channel model, naming both channel counts. An image of another size than the
model's input is refused unless --pad (zero padding, centred as the datasets pad the 28x28 digits; larger images are
refused) or --resize (bilinear) fits it.

Without --output, prints one line per image (its file name, or its index in an .npz; the predicted class and its
probability; the label where there are labels) and the accuracy when the input has labels. With --output, writes
exactly that file (never over an existing one without --overwrite), an .npz of `predictions` (N,), `probabilities`
(N, classes), `rectified` (the spatial transformer's outputs, N x H_out x W_out x C, T x C channels for T transformers
in parallel), `theta` (the predicted transform parameters, N x param shape, N x T x param shape for T > 1; empty
without a transformer), and `names` (image inputs) and `labels` (where given).

Every error (bad input or flags, a workdir without a config or checkpoints, a bad --seed_index) ends with one line
`error: ...` on stderr and exit status 2. orbax's log lines are hidden unless --verbose. Console script: stn-predict.

The library part works without flags: `load_run`, `read_images` (or `prepare_images` for arrays) and `predict`.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from stn_jax.training import checkpoints, config_lib, steps, train, utils
from stn_jax.training.cli import USAGE_ERROR, one_line, quiet_orbax

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FITS = ("pad", "resize")
LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601


class PredictError(ValueError):
  """Bad input or workdir, with a message that says what is wrong."""


class Inputs(NamedTuple):
  """What `read_images` read.

  Attributes:
    images: float32 (N, H, W, 1) images in [0, 1].
    labels: int labels (N,), or None.
    names: the file names (image inputs), or None (an .npz).
  """

  images: np.ndarray
  labels: np.ndarray | None
  names: tuple[str, ...] | None


# ----------------------------------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------------------------------


def load_run(workdir: str | Path, seed_index: int = 0):
  """The run's config and the parameters alone (no optimiser state) of the newest intact checkpoint in a workdir.

  Args:
    workdir: the run's directory.
    seed_index: which model of a run of config.num_seeds > 1.

  Returns:
    (config, graphdef, params, step): the config migrated to the current layout.

  Raises:
    PredictError: no such workdir, no or an unreadable config.json, no readable checkpoint, a bad seed_index.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise PredictError(f"{workdir}: no such workdir.")
  try:
    config = checkpoints.read_config(workdir)
  except Exception as e:
    raise PredictError(f"{workdir / 'config.json'}: cannot read it: {one_line(e)}") from None
  if config is None:
    raise PredictError(f"{workdir} has no config.json: not a training workdir.")
  try:
    input_size(config)  # the dataset is one this stn_jax knows
    num_members = int(config.get("num_seeds", 1))
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise PredictError(f"{workdir / 'config.json'}: not a config of this stn_jax ({one_line(e)}).") from None
  if isinstance(seed_index, bool) or not isinstance(seed_index, int | np.integer) or not 0 <= seed_index < num_members:
    raise PredictError(
      f"seed_index must be in [0, {num_members}) for this run of {num_members} model(s); got {seed_index}."
    )
  if not (workdir / "checkpoints").is_dir() or not any((workdir / "checkpoints").iterdir()):
    raise PredictError(f"{workdir} has no checkpoints yet: train first (python -m stn_jax.main ...).")
  try:
    graphdef, abstract_params = nnx.eval_shape(lambda: train.create_params(config))
  except Exception as e:
    raise PredictError(f"{workdir / 'config.json'}: cannot build its model: {one_line(e)}") from None
  restored = checkpoints.restore_params(workdir, abstract_params)
  if restored is None:
    raise PredictError(f"{workdir / 'checkpoints'} holds no readable checkpoint of this run's model.")
  step, params = restored
  return config, graphdef, steps.member_slice(params, seed_index, num_members), step


def input_size(config) -> int:
  """The side of the square images the config's model takes.

  Args:
    config: the run's ConfigDict.

  Returns:
    S of its (S, S, C) inputs.
  """
  return config_lib.input_shape(config)[0]


# ----------------------------------------------------------------------------------------------------------------------
# Images.
# ----------------------------------------------------------------------------------------------------------------------


def natural_key(name: str):
  """The sort key that puts '2.png' before '10.png' (runs of digits compare as numbers, the rest case-insensitively).

  Args:
    name: a file name.

  Returns:
    The key.
  """
  parts = re.split(r"(\d+)", name)
  return [int(p) if i % 2 else p.lower() for i, p in enumerate(parts)], name


def image_files(directory: str | Path) -> list[Path]:
  """The image files of a directory, in natural order.

  Args:
    directory: the directory.

  Returns:
    Its .png / .jpg / .jpeg files (any case); hidden files are skipped.
  """
  directory = Path(directory)
  files = [
    f for f in directory.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
  ]
  return sorted(files, key=lambda f: natural_key(f.name))


def read_image_file(path: str | Path) -> np.ndarray:
  """One image file as an array, its channels as stored.

  Args:
    path: a .png / .jpg / .jpeg file.

  Returns:
    (H, W, C): uint8 (8-bit images) or uint16 (16-bit ones), C in 1 to 4 (grey, grey + alpha, RGB, RGBA; palette
    and other modes become RGB or RGBA).

  Raises:
    PredictError: 32-bit integer pixels beyond 16 bits.
  """
  from PIL import Image

  with Image.open(path) as image:
    image.load()
    if image.mode in ("L", "LA", "RGB", "RGBA"):
      array = np.asarray(image)
    elif image.mode.startswith("I;16"):
      array = np.asarray(image).astype(np.uint16)
    elif image.mode == "I":  # PIL's 16-bit greyscale PNGs
      array = np.asarray(image)
      if array.min() < 0 or array.max() > 65535:
        raise PredictError(f"{path}: 32-bit integer pixels beyond 16 bits; save it as 8 or 16 bits.")
      array = array.astype(np.uint16)
    else:  # 1-bit, palette, CMYK, ...
      has_alpha = "transparency" in image.info or image.mode.endswith("A")
      array = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
  return array if array.ndim == 3 else array[..., None]


def prepare_images(
  images: np.ndarray,
  *,
  size: int | None = None,
  fit: str | None = None,
  grey: bool = False,
  source: str = "images",
  channels: int = 1,
) -> np.ndarray:
  """Images as the models take them: float32 (N, size, size, channels) in [0, 1].

  Args:
    images: for a 1-channel model, (N, H, W) or (N, H, W, C) with C in 1 to 4 (grey, grey + alpha, RGB, RGBA); for a
      model of `channels` C > 1 (addition), (N, H, W, C), each channel taken as it is. uint8, uint16 or float in
      [0, 1]. An alpha channel is dropped; RGB with three equal channels is taken as grey.
    size: the model's input side (`input_size(config)`); None keeps (H, W).
    fit: None (images of another size are refused), 'pad' (zero padding, centred as the datasets pad 28x28 digits;
      larger images are refused) or 'resize' (bilinear).
    grey: convert colour RGB to luminance, 0.299 R + 0.587 G + 0.114 B (otherwise it is refused).
    source: what the images are (a file name), for the error messages.
    channels: C of the model's inputs (`input_shape(config)[2]`).

  Returns:
    float32 (N, size, size, channels) in [0, 1] ((N, H, W, channels) where `size` is None).

  Raises:
    PredictError: naming `source`.
  """
  if fit not in (None, *FITS):
    raise PredictError(f"fit must be None, 'pad' or 'resize'; got {fit!r}.")
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if channels > 1 and (images.ndim != 4 or images.shape[-1] != channels):
    got = f"{images.shape[-1]} channel(s)" if images.ndim == 4 else f"shape {images.shape}"
    raise PredictError(f"{source}: the model takes images of {channels} channels (N, H, W, {channels}); got {got}.")
  if images.ndim != 4 or not 1 <= images.shape[-1] <= 4:
    raise PredictError(f"{source}: images must be (N, H, W) or (N, H, W, C) with C in 1-4; got shape {images.shape}.")
  if images.dtype == np.uint8 or images.dtype == np.uint16:
    images = images.astype(np.float32) / np.iinfo(images.dtype).max
  elif np.issubdtype(images.dtype, np.floating):
    if images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
      raise PredictError(f"{source}: float images must lie in [0, 1]; got [{np.min(images)}, {np.max(images)}].")
    images = images.astype(np.float32)
  else:
    raise PredictError(f"{source}: images must be uint8 or float in [0, 1]; got dtype {images.dtype}.")
  if channels > 1:
    return images if size is None else fit_size(images, size, fit, source)
  if images.shape[-1] in (2, 4):  # grey + alpha, RGBA: drop the alpha channel
    images = images[..., :-1]
  if images.shape[-1] == 3:
    if np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2]):
      images = images[..., :1]  # grey stored as RGB
    elif grey:
      images = np.clip(images @ LUMINANCE, 0.0, 1.0)[..., None]
    else:
      raise PredictError(
        f"{source}: colour image(s), and the model takes greyscale; pass --grey to convert them to luminance "
        "(0.299 R + 0.587 G + 0.114 B)."
      )
  return images if size is None else fit_size(images, size, fit, source)


def fit_size(images: np.ndarray, size: int, fit: str | None, source: str = "images") -> np.ndarray:
  """Images brought to the model's input size.

  Args:
    images: float32 (N, H, W, C).
    size: the model's S.
    fit: None (they must be S x S already), 'pad' (zero-padded, centred) or 'resize' (bilinear).
    source: what the error names.

  Returns:
    float32 (N, S, S, C).

  Raises:
    PredictError: a wrong size without `fit`, or images larger than S with 'pad'.
  """
  _, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  if fit is None:
    raise PredictError(f"{source}: {h}x{w}, the model takes {size}x{size}x{c}; pass --pad or --resize.")
  if fit == "pad":
    if h > size or w > size:
      raise PredictError(f"{source}: {h}x{w} is larger than the model's {size}x{size} input; use --resize instead.")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))
  resized = jax.image.resize(jnp.asarray(images), (len(images), size, size, c), method="bilinear")
  return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def read_images(
  path: str | Path, *, size: int | None = None, fit: str | None = None, grey: bool = False, channels: int = 1
) -> Inputs:
  """Reads images to classify: an .npz (`images`, optionally `labels`), an image file or a directory of them.

  The images are prepared with `prepare_images(size=size, fit=fit, grey=grey, channels=channels)` (see the module
  docstring). A model of several channels (addition) reads .npz files only; an .npz of 2-channel images for a
  1-channel model is refused (an array carries no mode: grey + alpha and two digits look alike).

  Args:
    path: the .npz, image file or directory.
    size: the model's S (None: leave the size).
    fit: None, 'pad' or 'resize' (`fit_size`).
    grey: convert colour images to luminance (else they are refused).
    channels: C of the model's inputs.

  Returns:
    Inputs: float32 (N, H, W, channels) images in [0, 1], int labels (N,) or None, the file names or None.

  Raises:
    PredictError: naming the file that cannot be read or used.
  """
  path = Path(path)
  if path.is_file() and path.suffix.lower() == ".npz":
    return _read_npz(path, size=size, fit=fit, grey=grey, channels=channels)
  if channels > 1 and path.exists():
    raise PredictError(
      f"{path}: the model takes images of {channels} channels; give an .npz of images (N, H, W, {channels})."
    )
  if path.is_dir():
    files = image_files(path)
    if not files:
      raise PredictError(f"{path} holds no {', '.join(IMAGE_SUFFIXES)} files.")
  elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
    files = [path]
  elif path.exists():
    raise PredictError(f"{path}: not an .npz, an image ({', '.join(IMAGE_SUFFIXES)}) or a directory of images.")
  else:
    raise PredictError(f"{path}: no such file or directory.")
  images, problems = [], []
  for f in files:
    try:
      array = read_image_file(f)
    except PredictError:
      raise
    except Exception as e:
      raise PredictError(f"{f}: cannot read it as an image ({type(e).__name__}: {one_line(e)}).") from None
    try:
      images.append(prepare_images(array[None], size=size, fit=fit, grey=grey, source=str(f)))
    except PredictError as e:  # a wrong size: every such file is counted, the first few named
      problems.append(str(e))
  if len(problems) == 1:
    raise PredictError(problems[0])
  if problems:
    shown = utils.first_few([p.rstrip(".") for p in problems], 3)
    raise PredictError(f"{len(problems)} of {len(files)} images do not fit the model's input: {shown}.")
  for f, image in zip(files, images, strict=True):
    if image.shape != images[0].shape:
      raise PredictError(
        f"{f}: {image.shape[1]}x{image.shape[2]}, unlike {files[0]} ({images[0].shape[1]}x{images[0].shape[2]})."
      )
  return Inputs(np.concatenate(images), None, tuple(f.name for f in files))


def _read_npz(path: Path, *, size, fit, grey, channels) -> Inputs:
  try:
    with np.load(path, allow_pickle=False) as z:
      if "images" not in z.files:
        raise PredictError(f"{path} has no 'images' array (it has {', '.join(z.files) or 'nothing'}).")
      images = z["images"]
      labels = z["labels"] if "labels" in z.files else None
  except PredictError:
    raise
  except Exception as e:
    raise PredictError(f"{path}: cannot read it as an .npz ({type(e).__name__}: {one_line(e)}).") from None
  if channels == 1 and images.ndim == 4 and images.shape[-1] == 2:
    raise PredictError(
      f"{path}: images of 2 channels and the model takes 1 (2-channel arrays are the addition variant's images; "
      "for grey + alpha, keep images[..., 0])."
    )
  images = prepare_images(images, size=size, fit=fit, grey=grey, source=str(path), channels=channels)
  if labels is not None:
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
      raise PredictError(
        f"{path}: labels must be integers of shape ({len(images)},); got {labels.dtype} {labels.shape}."
      )
    labels = labels.astype(np.int64)
  return Inputs(images, labels, None)


# ----------------------------------------------------------------------------------------------------------------------
# Prediction.
# ----------------------------------------------------------------------------------------------------------------------


def predict(config, graphdef, params, images: np.ndarray, *, batch_size: int = 500) -> dict:
  """The model's outputs on images, in batches.

  Args:
    config: the run's ConfigDict.
    graphdef: the model's graph definition.
    params: one model's parameters.
    images: float32 (N, S, S, 1) in [0, 1] (`prepare_images`).
    batch_size: images per jitted call.

  Returns:
    {'predictions' (N,) int32, 'probabilities' (N, 10), 'rectified' (the transformer's outputs; the images without
    one), 'theta' `(N, *param shape)` ((N, 0) without a transformer)}.

  Raises:
    PredictError: the images are not of the model's input shape, or there are none.
  """
  size, _, channels = config_lib.input_shape(config)
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:] != (size, size, channels):
    got = "x".join(map(str, images.shape[1:])) if images.ndim == 4 else f"shape {images.shape}"
    raise PredictError(f"the model takes {size}x{size}x{channels} images ({config.dataset.name}); got {got}.")
  if len(images) == 0:
    raise PredictError("no images to classify.")

  @jax.jit
  def forward(params, x):
    with steps.matmul_precision(config.get("matmul_precision", "default")):  # as the run trained
      model = nnx.merge(graphdef, params)
      probabilities = jax.nn.softmax(model(x))
      if model.transformer is None:
        return probabilities, x, jnp.zeros((x.shape[0], 0), x.dtype)
      theta, _ = model.transformer.params_and_grid(x)
      return probabilities, model.transformer(x), theta

  n, batch = len(images), max(1, min(batch_size, len(images)))
  outputs = []
  for start in range(0, n, batch):
    chunk = images[start : start + batch]
    padded = np.pad(chunk, ((0, batch - len(chunk)), (0, 0), (0, 0), (0, 0)))  # one shape: one compilation
    outputs.append([np.asarray(a)[: len(chunk)] for a in forward(params, jnp.asarray(padded))])
  probabilities, rectified, theta = (np.concatenate(parts) for parts in zip(*outputs, strict=True))
  return {
    "predictions": probabilities.argmax(-1).astype(np.int32),
    "probabilities": probabilities,
    "rectified": rectified,
    "theta": theta,
  }


def prediction_lines(result: dict, names=None, labels=None) -> list[str]:
  """What predict prints: one line per image.

  Args:
    result: `predict`'s output.
    names: the images' names (default: their indices).
    labels: their labels, if known.

  Returns:
    Per image its name (or index), the predicted class and its probability (and the label, if any).
  """
  names = [str(i) for i in range(len(result["predictions"]))] if names is None else list(names)
  width = max(4, *map(len, names))
  header = f"{'name':<{width}}  class  probability" + ("  label" if labels is not None else "")
  lines = [header]
  for i, (name, k) in enumerate(zip(names, result["predictions"], strict=True)):
    line = f"{name:<{width}}  {int(k):>5}  {result['probabilities'][i, k]:>11.4f}"
    lines.append(line + (f"  {int(labels[i]):>5}" if labels is not None else ""))
  return lines


# ----------------------------------------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues) -> flags.FlagValues:
  """Defines predict's flags in their own FlagValues, not absl's global one.

  So `main` may run more than once in a process, beside other entry points' flags (stn_jax.main's --workdir among
  them).

  Args:
    flag_values: the FlagValues to define them in.

  Returns:
    `flag_values`.
  """
  flags.DEFINE_string("workdir", None, "Training workdir (its newest checkpoint is used).", flag_values=flag_values)
  flags.DEFINE_string(
    "input", None, "An .npz with `images` (and optionally `labels`), an image, or a directory of images (.png, .jpg).",
    flag_values=flag_values,
  )  # fmt: skip
  flags.DEFINE_string("output", None, "Output .npz (exactly this name); without it, print.", flag_values=flag_values)
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.", flag_values=flag_values)
  flags.DEFINE_integer("seed_index", 0, "Which model of a run with config.num_seeds > 1.", flag_values=flag_values)
  flags.DEFINE_bool("pad", False, "Zero-pad smaller images, centred, to the model's input.", flag_values=flag_values)
  flags.DEFINE_bool("resize", False, "Resize images bilinearly to the model's input.", flag_values=flag_values)
  flags.DEFINE_bool("grey", False, "Convert colour images to luminance (else refused).", flag_values=flag_values)
  flags.DEFINE_bool("verbose", False, "Show INFO logs, orbax's included, and tracebacks.", flag_values=flag_values)
  return flag_values


def _setup_logging(verbose: bool) -> None:
  """WARNING and above on stderr, without orbax's INFO lines and read-only notices; everything with --verbose."""
  logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
  logging.getLogger("absl").setLevel(logging.INFO if verbose else logging.WARNING)
  if not verbose:
    quiet_orbax()
    read_only_notice = re.compile(r"read.only", re.I)
    for handler in logging.getLogger().handlers:
      handler.addFilter(lambda r: "orbax" not in r.pathname or not read_only_notice.search(r.getMessage()))


def _usage_error(message: str) -> int:
  sys.stderr.write(f"error: {message}\n")
  return USAGE_ERROR


def main(argv: list[str]) -> int:
  """The command line (see the module docstring).

  Args:
    argv: the command line, program name first.

  Returns:
    The exit status (2 for bad input).
  """
  options = define_flags(flags.FlagValues())
  if any(a in ("-h", "-help", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    print(__doc__.strip() + "\n\nflags:\n" + options.get_help(include_special_flags=False))
    return 0
  try:
    rest = options(argv)
  except flags.Error as e:
    return _usage_error(one_line(e))
  if len(rest) > 1:
    return _usage_error(f"unexpected arguments: {' '.join(rest[1:])} (flags are --name=value)")
  for name in ("workdir", "input"):
    if not options[name].value:
      return _usage_error(f"--{name} is required (python -m stn_jax.predict --help)")
  if options.pad and options.resize:
    return _usage_error("--pad and --resize are mutually exclusive: pick one")
  if options.overwrite and not options.output:
    return _usage_error("--overwrite applies to --output only")
  output = Path(options.output) if options.output else None
  if output is not None and output.is_dir():
    return _usage_error(f"--output={output} is a directory")
  if output is not None and output.exists() and not options.overwrite:
    return _usage_error(f"{output} exists; pass --overwrite to replace it")
  _setup_logging(options.verbose)
  fit = "pad" if options.pad else "resize" if options.resize else None
  try:
    config, graphdef, params, step = load_run(options.workdir, options.seed_index)
    channels = config_lib.input_shape(config)[2]
    inputs = read_images(options.input, size=input_size(config), fit=fit, grey=options.grey, channels=channels)
    result = predict(config, graphdef, params, inputs.images)
    if output is None:
      print("\n".join(prediction_lines(result, inputs.names, inputs.labels)))
    else:
      extra = {"names": np.asarray(inputs.names)} if inputs.names is not None else {}
      if inputs.labels is not None:
        extra["labels"] = inputs.labels
      output.parent.mkdir(parents=True, exist_ok=True)
      with open(output, "wb") as f:  # a file handle: numpy would append .npz to a name without it
        np.savez(f, **result, **extra)
      print(f"wrote {output}: {len(inputs.images)} predictions from the checkpoint at step {step}")
  except Exception as e:
    if options.verbose and not isinstance(e, PredictError):
      raise
    return _usage_error(one_line(e))
  if inputs.labels is not None:
    accuracy = np.mean(result["predictions"] == inputs.labels)
    print(f"accuracy {accuracy:.4f} on {len(inputs.labels)} labelled images")
  return 0


def run():
  """Console-script entry point (stn-predict): exits with `main`'s status."""
  sys.exit(main(sys.argv))


if __name__ == "__main__":
  run()
