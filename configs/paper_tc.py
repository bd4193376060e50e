r"""The paper's translated-and-cluttered MNIST (TC, 60x60): FCN, CNN, ST-FCN and ST-CNN (affine).

  python experiments/sweep.py --config=configs/paper_tc.py:paper --workdir=runs/tc_paper  # the paper's recipe
  python experiments/sweep.py --config=configs/paper_tc.py --workdir=runs/tc              # full budget
  python experiments/sweep.py --config=configs/paper_tc.py:cpu --workdir=runs/tc_cpu      # paper_table1's cpu budget

`paper`: paper_table1's `paper` recipe on paper-TC (the digit anywhere in a black 60x60 canvas, 6 random 6x6 crops of
other digits added and clipped), the transformer sampling a 30x30 output (a 2x downsampling), the ST-CNN localisation
net's dense layer 50 units (docs/paper_recipe.md). `full` and `cpu`: our TC (8 crops, pixelwise maximum), the
transformer sampling a 40x40 output.
"""

from stn_jax.training.config_lib import import_sibling

paper_table1 = import_sibling(__file__, "paper_table1")

ROWS = ("FCN", "CNN", "ST-FCN-Aff", "ST-CNN-Aff")


def get_config(budget: str = "full"):
  config = paper_table1.get_config(budget)
  if budget == "paper":
    config.dataset.name = "paper-TC"
    config.model.stn_output_size = (30, 30)
    config.model.localization.cnn.hidden = (50,)
  else:
    config.dataset.name = "TC"
    config.model.stn_output_size = (40, 40)
  return config


def sweep(add, budget: str = "full"):
  models = paper_table1.models(budget)
  for name in ROWS:
    add(**{f"config.{k}": v for k, v in models[name].items()})
