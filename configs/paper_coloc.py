r"""The paper's co-localisation (its Appendix A.2): an attention transformer learns, from 100 images of one digit and
nothing else, to crop that digit; 10 digits x clean and cluttered images, 3 seeds each.

  python -m stn_jax.main --config=configs/default.py --workdir=runs/default                 # the encoder (make train)
  python experiments/sweep.py --config=configs/paper_coloc.py --workdir=runs/coloc          # the 20 runs

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
"""

from stn_jax.training import coloc

DIGITS = tuple(range(10))
DATASETS = ("coloc", "coloc-clutter")
# The paper's IoU > 0.5 rates: 100 % on clean images for every digit; 75-93 % with clutter, depending on the digit
# (per-digit numbers not in what we could read: docs/paper_recipe.md).
PAPER = {"coloc": (100.0, 100.0), "coloc-clutter": (75.0, 93.0)}


def get_config():
  config = coloc.default_config()
  config.encoder_workdir = "runs/default"
  return config


def sweep(add):
  for dataset in DATASETS:
    for digit in DIGITS:
      add(**{"config.dataset.name": dataset, "config.dataset.digit": digit})
