r"""Why a co-localisation run finds its digit or not: the triplet loss at fixed crops, the gradient at the
initialisation, and the basin of free per-image crops. Prints one markdown table, a row per digit.

  python experiments/coloc_diagnostics.py --config=configs/paper_coloc.py:tuned
  python experiments/coloc_diagnostics.py --config=configs/paper_coloc.py:tuned --config.embedding.normalise=none \
      --config.embedding.weights='()' --config.blur_sigma=0 --digits=8

Everything is measured with the run's own e() (config.encoder_workdir, config.embedding), images (config.dataset, the
first dataset.num_images of each digit, smoothed by config.blur_sigma) and margin; nothing is trained but the free
crops. Columns:

- loss at fixed crops, averaged over --draws draws of the random crops I_n^rand, with every image's crop at: `true`,
  the digit's true box; `init`, the centred crop of side initial_scale a run starts from; `whole`, the whole image;
  `empty`, a crop of 1/6 of the side in the image's corner farthest from the digit (background only).
- `away %`: the share of images whose descent direction at `init` (minus the loss's gradient with respect to that
  image's crop centre, averaged over the draws) points away from the digit's centre (a negative dot product).
- `free from D px`: per-image crop centres (no localisation net: each image's (tx, ty) a free parameter, the side
  held at the true box's) started D px from the digit's centre in a random direction (`init`: at the image's centre,
  where a run's crops start) and descended by Adam
  (--free_lr, --free_steps, fresh random crops each step): the IoU > 0.5 rate before -> after. A basin that holds
  them says the loss can keep a crop on the digit from there; crops that leave say it cannot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

import stn_jax
from stn_jax import data as data_lib
from stn_jax.training import coloc

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The script's flags (defined when it runs, so that tests can import it beside other experiments)."""
  config_flags.DEFINE_config_file("config", None, "A co-localisation config (configs/paper_coloc.py[:variant]).")
  flags.DEFINE_list("digits", [str(d) for d in range(10)], "The digit classes, one row each.")
  flags.DEFINE_integer("draws", 10, "Draws of the random crops the fixed-crop losses and gradients average.")
  flags.DEFINE_list(
    "offsets", ["5", "10", "init"], "Starts of the free crops, one column each: a distance (px) or 'init'."
  )
  flags.DEFINE_integer("free_steps", 300, "Adam steps of the free crops.")
  flags.DEFINE_float("free_lr", 0.01, "Adam's rate for the free crops (normalised coordinates).")
  flags.DEFINE_integer("seed", 0, "The random crops' and start directions' seed.")


def box_params(boxes: np.ndarray, size: int) -> np.ndarray:
  """The attention parameters (scale, tx, ty) whose crop is each pixel box (inverse of coloc.attention_boxes).

  Args:
    boxes: (N, 4) x0, y0, x1, y1 in pixels (square).
    size: S of the (S, S) image.

  Returns:
    float32 (N, 3).
  """
  boxes = np.asarray(boxes, np.float64)
  scale = (boxes[:, 2] - boxes[:, 0]) / size
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  return np.concatenate([scale[:, None], 2 * centre / size - 1], axis=1).astype(np.float32)


def empty_corner(boxes: np.ndarray, size: int, scale: float = 1 / 6) -> np.ndarray:
  """Crops of relative side `scale` in the corner of each image farthest from its box's centre."""
  corner = -np.sign(box_params(boxes, size)[:, 1:] + 1e-9) * (1 - scale)
  return np.concatenate([np.full((len(boxes), 1), scale), corner], axis=1).astype(np.float32)


def diagnose(config, images, boxes, embed, crop_hw, key, *, draws: int, offsets, free_steps: int, free_lr: float):
  """The row of one digit: {column: value} (the module docstring's columns, the flags' meanings).

  Args:
    config: the co-localisation config.
    images: float32 (N, S, S, 1), smoothed as the run smooths them.
    boxes: (N, 4) the digits' true boxes.
    embed: coloc.load_encoder's embed.
    crop_hw: the (H, W) of the encoder's input.
    key: the randomness.
    draws, offsets, free_steps, free_lr: as the flags.

  Returns:
    {'true', 'init', 'whole', 'empty': mean losses, 'away': a fraction, 'free D': (IoU rate before, after) per D}.
  """
  n, size = images.shape[0], images.shape[1]
  e = config.embedding
  encode = lambda crops: coloc.combine(embed(crops), e.normalise, tuple(e.weights))
  warp = lambda params: stn_jax.warp(images, params, kind="attention", size=crop_hw)

  @jax.jit
  def loss(params, key):
    return coloc.crops_loss(config, encode, images, warp(params), key)

  keys = jax.random.split(key, draws + 1)
  draws, key = keys[:-1], keys[-1]
  mean_loss = lambda params: float(np.mean([loss(jnp.asarray(params), k) for k in draws]))
  true = box_params(boxes, size)
  init = np.tile(np.asarray([[config.initial_scale, 0.0, 0.0]], np.float32), (n, 1))
  row = {
    "true": mean_loss(true),
    "init": mean_loss(init),
    "whole": mean_loss(np.tile(np.asarray([[1.0, 0.0, 0.0]], np.float32), (n, 1))),
    "empty": mean_loss(empty_corner(boxes, size)),
  }
  grad = jax.jit(jax.grad(loss))
  g = np.mean([np.asarray(grad(jnp.asarray(init), k))[:, 1:] for k in draws], axis=0)
  to_digit = true[:, 1:] - init[:, 1:]
  row["away"] = float(np.mean(np.sum(-g * to_digit, axis=1) < 0))
  tx = optax.adam(free_lr)

  @jax.jit
  def free_step(centres, opt_state, key):
    g = jax.grad(lambda c: loss(jnp.concatenate([true[:, :1], c], axis=1), key))(centres)
    updates, opt_state = tx.update(g, opt_state, centres)
    return optax.apply_updates(centres, updates), opt_state

  def rate(centres):
    located = coloc.attention_boxes(np.concatenate([true[:, :1], np.asarray(centres)], 1), size)
    return float(np.mean(coloc.iou(located, boxes) > 0.5))

  for offset in offsets:
    key, angle_key, *step_keys = jax.random.split(key, free_steps + 2)
    if offset == "init":
      centres = jnp.asarray(init[:, 1:])
    else:
      angle = np.asarray(jax.random.uniform(angle_key, (n,), maxval=2 * np.pi))
      shift = 2 * float(offset) / size * np.stack([np.cos(angle), np.sin(angle)], axis=1)
      centres = jnp.asarray(true[:, 1:] + shift, jnp.float32)
    before = rate(centres)
    opt_state = tx.init(centres)
    for k in step_keys:
      centres, opt_state = free_step(centres, opt_state, k)
    row[f"free {offset}"] = (before, rate(centres))
  return row


def main(argv):
  del argv
  config = FLAGS.config
  coloc.validate(config)
  embed, shape, step = coloc.load_encoder(config.encoder_workdir)
  mnist = data_lib.load_mnist()
  e = config.embedding
  print(
    f"{config.dataset.name}, {config.dataset.num_images} images per digit, encoder {config.encoder_workdir} (step "
    f"{step}), e(): {e.normalise} {tuple(e.weights) or ''}, blur {config.blur_sigma} px, margin "
    f"{config.margin}, {FLAGS.draws} draws of the random crops; free crops: Adam {FLAGS.free_lr}, "
    f"{FLAGS.free_steps} steps; {jax.devices()[0].device_kind}\n"
  )
  offsets = [f"free {o}" for o in FLAGS.offsets]
  starts = [f"free from {o}{'' if o == 'init' else ' px'}: IoU>0.5 % before -> after" for o in FLAGS.offsets]
  head = ["digit", "true", "init", "whole", "empty", "away %", *starts]
  print("| " + " | ".join(head) + " |\n|" + "---:|" * len(head))
  for digit in map(int, FLAGS.digits):
    config.dataset.digit = digit
    images, boxes = coloc.digit_set(config, mnist, config.dataset.split, config.dataset.num_images)
    images = jnp.asarray(coloc.smooth(images, config.blur_sigma))
    key = jax.random.fold_in(jax.random.key(FLAGS.seed), digit)
    row = diagnose(config, images, boxes, embed, shape[:2], key, draws=FLAGS.draws, offsets=FLAGS.offsets,
                   free_steps=FLAGS.free_steps, free_lr=FLAGS.free_lr)  # fmt: skip
    free = [f"{100 * row[o][0]:.0f} -> {100 * row[o][1]:.0f}" for o in offsets]
    fixed = [f"{row[c]:.3g}" for c in ("true", "init", "whole", "empty")]
    print(f"| {digit} | " + " | ".join([*fixed, f"{100 * row['away']:.0f}", *free]) + " |", flush=True)


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("config")
  app.run(main)
