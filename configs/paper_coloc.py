r"""The paper's co-localisation (its Appendix A.2): an attention transformer learns, from 100 images of one digit and
nothing else, to crop that digit; 10 digits x clean and cluttered images, 3 seeds each.

  python -m stn_jax.main --config=configs/default.py --workdir=runs/default                 # the encoder (make train)
  python experiments/sweep.py --config=configs/paper_coloc.py --workdir=runs/coloc          # the 20 runs
  python -m stn_jax.main --config=configs/coloc_encoder.py --workdir=runs/coloc_encoder     # the tuned one's encoder
  python experiments/sweep.py --config=configs/paper_coloc.py:tuned --workdir=runs/coloc_tuned

From the paper (A.2, docs/paper_recipe.md): a 28x28 digit at a random position in an 84x84 black image, 16 random 6x6
crops of other digits in the cluttered version; 100 images of one class per run; an attention transformer (scale and
translation) crops each; e() is the distorted-MNIST classification CNN (its hidden layers and its pre-softmax layer,
concatenated); the hinge triplet loss with margin 1 against a random crop of each image; correct when IoU > 0.5.
Its localisation CNN as we read it: eight 9x9 filters at stride 4, 2x2 max-pooling at stride 2, two 8-unit dense
layers, a 3-unit output. On an 84x84 input these layers come to 5,947 parameters, not the "about 100k" the text gives;
we build the layers as read.
Our choices: the encoder is the classifier of `make train`'s run (runs/default: the seed's CNN on seed40 digits, 40x40,
so the crops are 40x40); the set is the first 100 train-split examples of the digit; the random crop is a square of a
third of the image's side (the digit's 28 of 84 px) placed uniformly where it fits; Adam at 1e-3 for 300 full-batch
steps (the paper's digit-8 example converges by step 180); the final rate is also measured on 1,000 test images of
the digit.

`paper` (the default) is that reading; it does not localise (docs/paper.md). `tuned` is what localised in our trials
(docs/paper.md, "Co-localisation"), each change our choice: the encoder of configs/coloc_encoder.py (a CNN trained on
paper-RTS, crops of 42x42), the images smoothed by a Gaussian of 4 px, the crop's side held at a third (translation
only) and kept inside the image, e() with each layer L2-normalised and weighted 1, 1, 2, 4 (convolutions, dense,
logits), Adam at 3e-3 decayed to 0 by a cosine over 400 steps. `widening` is `tuned` with a smoothing that starts
wide (sigma 10 px at step 0, narrowed linearly to tuned's 4 px by step 200; our choice, from the basin widths that
experiments/coloc_diagnostics.py measured):

  python experiments/sweep.py --config=configs/paper_coloc.py:widening --workdir=runs/coloc_widening
"""

from stn_jax.training import coloc

DIGITS = tuple(range(10))
DATASETS = ("coloc", "coloc-clutter")
# The paper's IoU > 0.5 rates: 100 % on clean images for every digit; 75-93 % with clutter, depending on the digit
# (per-digit numbers not in what we could read: docs/paper_recipe.md).
PAPER = {"coloc": (100.0, 100.0), "coloc-clutter": (75.0, 93.0)}


VARIANTS = ("paper", "tuned", "widening")


def get_config(variant: str = "paper"):
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}; got {variant!r}.")
  config = coloc.default_config()
  config.encoder_workdir = "runs/default"
  if variant in ("tuned", "widening"):
    config.encoder_workdir = "runs/coloc_encoder"
    config.blur_sigma = 4.0
    config.model.learn_scale = False
    config.model.keep_inside = True
    config.embedding.normalise = "per_layer"
    config.embedding.weights = (1.0, 1.0, 2.0, 4.0)
    config.learning_rate = 3e-3
    config.schedule = "cosine"
    config.num_train_steps = 400
  if variant == "widening":
    config.blur_start = 10.0
    config.blur_steps = 200
  return config


def sweep(add, variant: str = "paper"):
  for dataset in DATASETS:
    for digit in DIGITS:
      add(**{"config.dataset.name": dataset, "config.dataset.digit": digit})
