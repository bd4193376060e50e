r"""The co-localisation encoder: the seed's CNN (no transformer) trained on paper-RTS digits (a 28x28 digit, rotated,
scaled and placed anywhere in 42x42), so that e() sees crops of 42x42 and recognises a digit wherever it sits in them.

  python -m stn_jax.main --config=configs/coloc_encoder.py --workdir=runs/coloc_encoder      # 3 minutes on 2 cores

The paper's encoder is "the CNN trained on distorted MNIST" (its A.2, docs/paper_recipe.md); the network and the
variant are our choice: the seed's small CNN keeps it to `make train`'s cost, and RTS is the distortion whose digits
are placed anywhere, as a crop that is not yet centred places them.
"""

from stn_jax.training.config_lib import import_sibling

default = import_sibling(__file__, "default")


def get_config():
  config = default.get_config()
  config.model.transform = "none"
  config.dataset.name = "paper-RTS"
  return config
