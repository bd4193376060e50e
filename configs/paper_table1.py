r"""The paper's Table 1: FCN, CNN, ST-FCN and ST-CNN (affine, projective, 16-point TPS) on distorted MNIST R, RTS, P, E.

  python experiments/sweep.py --config=configs/paper_table1.py --workdir=runs/table1          # 20 epochs x 3 seeds
  python experiments/sweep.py --config=configs/paper_table1.py:cpu --workdir=runs/table1_cpu  # 6 epochs x 2 seeds

32 runs, each training config.num_seeds models at once (mean and spread in results.json). As in the paper, the
baselines are widened to the parameter count of their affine ST versions (model.match_params_of) and the classifiers
have three weight layers. Our choices where the paper is silent or differs: the seed's CNN (conv 16 3x3 stride 2 ->
conv 16 3x3 stride 2 -> dense -> 10; the paper's CNNs max-pool instead, `model.classifier.cnn.pool=True
model.classifier.cnn.strides=1`, which costs about 8x the step time on CPU); FCN dense 256 -> 256 -> 10; the seed's
localisation net (dense 32 tanh, dropout 0.2) for ST-FCN and ST-CNN alike (a CNN one, `model.localization.kind=cnn`,
costs 5x the step time on CPU); Adam with cosine decay (the paper: SGD with a scheduled decrease); the train split
distorted afresh each epoch.

The `cpu` budget (6 epochs of 390 steps of 128, 2 seeds) fits the 32 Table 1 and 4 TC runs into about 1.5 hours of a
2-core CPU; the full budget (20 epochs, 3 seeds) is for an accelerator.
"""

from stn_jax.config_lib import import_sibling

default = import_sibling(__file__, "default")

DATASETS = ("R", "RTS", "P", "E")
MODELS = {
  "FCN": {"model.transform": "none", "model.classifier.kind": "fcn", "model.match_params_of": "affine"},
  "CNN": {"model.transform": "none", "model.classifier.kind": "cnn", "model.match_params_of": "affine"},
  **{
    f"ST-FCN-{short}": {"model.transform": t, "model.classifier.kind": "fcn", "model.localization.kind": "fcn"}
    for short, t in (("Aff", "affine"), ("Proj", "projective"), ("TPS", "tps"))
  },
  **{
    f"ST-CNN-{short}": {"model.transform": t, "model.classifier.kind": "cnn", "model.localization.kind": "fcn"}
    for short, t in (("Aff", "affine"), ("Proj", "projective"), ("TPS", "tps"))
  },
}


BUDGETS = {
  # name: (epochs, eval/checkpoint interval in epochs, seeds); an epoch is 390 steps of 128
  "full": (20, 5, 3),
  "cpu": (6, 2, 2),
}


def get_config(budget: str = "full"):
  if budget not in BUDGETS:
    raise ValueError(f"budget must be one of {', '.join(map(repr, BUDGETS))}; got {budget!r}.")
  config = default.get_config()  # batch 128 and the seed's CNN convolutions come from here
  config.num_epochs, interval, config.num_seeds = BUDGETS[budget]
  config.eval_every_epochs = config.checkpoint_every_epochs = interval
  config.model.classifier.cnn.hidden = (256,)
  config.model.classifier.fcn.hidden = (256, 256)
  config.model.localization.fcn.hidden = (32,)
  return config


def sweep(add):
  for dataset in DATASETS:
    for overrides in MODELS.values():
      add(**{"config.dataset.name": dataset, **{f"config.{k}": v for k, v in overrides.items()}})
