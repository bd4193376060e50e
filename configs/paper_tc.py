r"""The paper's translated-and-cluttered MNIST (TC, 60x60): FCN, CNN, ST-FCN and ST-CNN (affine), the transformer
sampling a 40x40 output from the 60x60 input.

  python experiments/sweep.py --config=configs/paper_tc.py --workdir=runs/tc            # full budget
  python experiments/sweep.py --config=configs/paper_tc.py:cpu --workdir=runs/tc_cpu    # paper_table1's cpu budget
"""

from stn_jax.config_lib import import_sibling

paper_table1 = import_sibling(__file__, "paper_table1")


def get_config(budget: str = "full"):
  config = paper_table1.get_config(budget)
  config.dataset.name = "TC"
  config.model.stn_output_size = (40, 40)
  return config


def sweep(add):
  for name in ("FCN", "CNN", "ST-FCN-Aff", "ST-CNN-Aff"):
    add(**{f"config.{k}": v for k, v in paper_table1.MODELS[name].items()})
