r"""The paper's Table 1: FCN, CNN, ST-FCN and ST-CNN (affine, projective, 16-point TPS) on distorted MNIST R, RTS, P, E.

  python experiments/sweep.py --config=configs/paper_table1.py --workdir=runs/table1 --parallel=1

32 runs. As in the paper, the baselines are widened to the parameter count of their affine ST versions
(model.match_params_of), CNNs use two max-pooling layers, and the classifiers have three weight layers (FCN: two
hidden dense + output; CNN: two conv + output, plus a dense layer that carries the parameter budget). Our choices where
the paper differs or is silent: Adam with cosine decay (the paper: SGD with a scheduled decrease), 20 epochs, the
localisation nets of the default config (fcn for ST-FCN, cnn for ST-CNN), train split distorted afresh each epoch.
"""

from configs import default

DATASETS = ("R", "RTS", "P", "E")
MODELS = {
  "FCN": {"model.transform": "none", "model.classifier": "fcn", "model.match_params_of": "affine"},
  "CNN": {"model.transform": "none", "model.classifier": "cnn", "model.match_params_of": "affine"},
  **{
    f"ST-FCN-{short}": {"model.transform": t, "model.classifier": "fcn", "model.localization": "fcn"}
    for short, t in (("Aff", "affine"), ("Proj", "projective"), ("TPS", "tps"))
  },
  **{
    f"ST-CNN-{short}": {"model.transform": t, "model.classifier": "cnn", "model.localization": "cnn"}
    for short, t in (("Aff", "affine"), ("Proj", "projective"), ("TPS", "tps"))
  },
}


def get_config():
  config = default.get_config()
  config.batch_size = 128
  config.num_train_steps = 7_800  # 20 epochs
  config.eval_every_steps = 1_950
  config.checkpoint_every_steps = 1_950
  config.model.cnn_features = (32, 32)
  config.model.cnn_kernel_size = 5
  config.model.cnn_strides = 1
  config.model.cnn_pool = True
  config.model.cnn_hidden = (256,)
  config.model.fcn_hidden = (256, 256)
  config.model.loc_hidden = (32,)
  return config


def sweep(add):
  for dataset in DATASETS:
    for overrides in MODELS.values():
      add(**{"config.dataset.name": dataset, **{f"config.{k}": v for k, v in overrides.items()}})
