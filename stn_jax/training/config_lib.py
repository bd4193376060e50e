"""Configs: loading config files, validation, the budget in steps, versions, and what may change on resume.

A config is an ml_collections.ConfigDict from a file's `get_config([arg])` (configs/default.py and the variants that
import it). This module owns the rules every entry point applies to it:

* `load(spec)`: 'path/to/file.py[:arg]' from any working directory; `import_sibling` lets config files import each
  other without the repository on sys.path.
* `field_error(config, dotted)`: why a `--config.a.b=v` override names no field: where it was looked for, and the
  field meant (in that section or another) or that section's fields.
* `validate(config)`: one check per field, the allowed values imported from the module that defines them; a
  ValueError names the field, the value and what is allowed.
* `budget(config, steps_per_epoch)`: budgets are given in epochs (`num_epochs`, `eval_every_epochs`,
  `checkpoint_every_epochs`) and converted to steps once, so a config keeps its meaning when the batch size changes;
  the `*_steps` twins, when set, override them.
* `VERSION` and `migrate`: config.json files of older versions are converted on reading, so old workdirs stay usable.
* `resume_differences`: which differences between a workdir's config and a new one a resume may accept.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import json
import math
import os
import sys
from pathlib import Path

import jax
import ml_collections

from stn_jax import data as data_lib
from stn_jax import models
from stn_jax.data.mnist import SOURCES, SPLIT_SIZES
from stn_jax.training import distributed, feed, optim, steps
from stn_jax.training.errors import ConfigError

VERSION = 2
# The largest training step the trainer counts: steps reach the jitted step as int32 and the metric sums count them in
# int32 (dropout keys fold in the step as uint32).
MAX_STEPS = 2**31 - 1

# (steps field, epochs field): the steps field, when set, overrides the epochs field.
BUDGET_FIELDS = (
  ("num_train_steps", "num_epochs"),
  ("eval_every_steps", "eval_every_epochs"),
  ("checkpoint_every_steps", "checkpoint_every_epochs"),
)
# Fields that cannot change what a run computes; a resumed run may differ from its workdir's config in these.
FREE_FIELDS = (
  "distributed.initialize",  # how the processes of a run find each other (process_id differs on every process)
  "distributed.coordinator_address",
  "distributed.num_processes",
  "distributed.process_id",
  "input_pipeline",  # the same batches and the same updates (bitwise on CPU, tested), however they reach the device
  "steps_per_dispatch",
  "log_every_steps",
  "eval_batch_size",
  "eval_every_steps",
  "eval_every_epochs",
  "checkpoint_every_steps",
  "checkpoint_every_epochs",
  # the sampler's implementation: the same function to float32 rounding (a workdir keeps its recorded one under
  # 'auto'; naming the other, e.g. xla where the kernel cannot be built, continues the run with it)
  "model.sampler",
  "checkpoints_to_keep",
  "dataset.data_dir",
  "dataset.mnist_path",
  "dataset.source",
)

# The documentation of every field outside `model` (whose docs come from models.config_docs()).
DOCS = {
  "version": f"config layout version ({VERSION}); older workdirs' config.json files are migrated on reading",
  "seed": "parameter init, dropout and data order",
  "num_seeds": "K > 1: train a population of K models in one jitted step (seeds seed .. seed + K - 1, or "
  "population.seed)",
  "seed_mapping": "how that step maps over the K models: vmap, unroll (K copies), auto (vmap; unroll on CPU when the "
  "model has lax.conv convolutions, which vmap makes grouped)",
  "matmul_precision": "the model's float32 products: default (the backend's: TF32 on Ampere/Hopper GPUs), high, "
  "highest (full float32 everywhere); grids are always full precision",
  "compute_dtype": "what the model's convolutions and dense layers compute in: float32 or bfloat16 (parameters, "
  "optimiser state, loss, metrics, the transform's parameters, the grid and the sampler stay float32)",
  "batch_size": "global batch size",
  "input_pipeline": "auto (device when two epochs fit in a quarter of the device's memory), device (the epoch's uint8 "
  "images on the device in step order, each call slicing its rows), host (chunks gathered on the host, prefetched)",
  "steps_per_dispatch": "training steps per jitted call; must divide the log, evaluation and checkpoint intervals; "
  "0 = auto (1 on CPU, up to 10 elsewhere); results do not depend on it (bitwise on CPU)",
  "num_epochs": "training budget in epochs of the train split (converted to steps once)",
  "num_train_steps": "if set, the training budget in steps (overrides num_epochs; set it larger to continue a run)",
  "eval_every_epochs": "validation (and the metrics and figures) every this many epochs, and at the end",
  "eval_every_steps": "if set, validation every this many steps (overrides eval_every_epochs)",
  "checkpoint_every_epochs": "a checkpoint every this many epochs, and at the end",
  "checkpoint_every_steps": "if set, a checkpoint every this many steps (overrides checkpoint_every_epochs)",
  "checkpoints_to_keep": "how many of the newest checkpoints to keep",
  "log_every_steps": "train loss, learning rate (the base schedule's) and steps/s logged (and to TensorBoard) every "
  "this many steps",
  "eval_batch_size": "batch size of validation and test evaluation",
  "learning_rate": "peak learning rate",
  "num_devices": "data parallel over this many local devices; 0 = all",
  "distributed.initialize": "jax.distributed.initialize: auto (when a coordinator or cluster is found), always, never",
  "distributed.coordinator_address": "host:port of process 0 (multi-host runs without a detected cluster)",
  "distributed.num_processes": "number of processes (with coordinator_address)",
  "distributed.process_id": "this process's index (with coordinator_address)",
  "dataset.name": f"the distorted-MNIST variant: {', '.join(data_lib.NAMES)}",
  "dataset.seed": "the distortions (fixed across model seeds, so every run sees the same test set)",
  "dataset.fresh_each_epoch": "distort the train split anew every epoch",
  "dataset.data_dir": "MNIST cache directory; default $STN_JAX_DATA_DIR or ~/.cache/stn_jax",
  "dataset.mnist_path": "optional directory of MNIST IDX files or an .npz",
  "dataset.source": f"where MNIST comes from: {', '.join(SOURCES)}",
  "optimizer.name": f"{', '.join(optim.NAMES)}",
  "optimizer.momentum": "sgd only (0 = none)",
  "optimizer.schedule": f"{', '.join(optim.SCHEDULES)} (see stn_jax.training.optim.learning_rate_schedule)",
  "optimizer.warmup_steps": "cosine: linear warm-up steps",
  "optimizer.decay_steps": "step schedule: the steps at which the rate is multiplied by decay_factor",
  "optimizer.decay_factor": "step schedule: the factor",
  "optimizer.weight_decay": "decoupled weight decay (AdamW; added to the SGD gradient); 0 = off",
  "optimizer.grad_clip_norm": "clip the gradient's global norm; 0 = off",
  "optimizer.localization_lr_multiplier": "scales the localisation net's updates",
  "population.seed": "per member of a num_seeds population: its seed (empty: seed + k)",
  "population.learning_rate": "per member: its peak learning rate (empty: learning_rate for all)",
  "population.localization_lr_multiplier": "per member: its localisation multiplier (empty: the optimizer's for all)",
  "population.weight_decay": "per member: its decoupled weight decay (empty: the optimizer's for all)",
  "population.dataset": "per member: its dataset.name, a variant of dataset.name's image size (empty: dataset.name "
  "for all); member k trains and is evaluated on its own variant",
}


# ----------------------------------------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------------------------------------


def _import_file(path: Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def import_sibling(config_file: str, name: str):
  """Imports the config file `name`.py beside another config file.

  So config files build on each other when loaded from any working directory.

  Args:
    config_file: the importing config file's `__file__`.
    name: the sibling's module name, without '.py'.

  Returns:
    The imported module.
  """
  path = Path(config_file).resolve().with_name(f"{name}.py")
  key = f"_stn_config_{path.stem}_{abs(hash(str(path)))}"
  if key not in sys.modules:
    sys.modules[key] = _import_file(path, key)
  return sys.modules[key]


def load_module(spec: str | os.PathLike):
  """The module of a config file and the argument its `get_config` takes.

  Args:
    spec: 'path.py[:arg]'.

  Returns:
    (module, [arg]) with an argument after the colon, else (module, []).
  """
  path, *arg = str(spec).split(":", 1)
  if not Path(path).is_file():
    raise ConfigError(f"--config: no config file {path!r}.")
  return _import_file(Path(path), f"_stn_config_{Path(path).stem}"), arg


def sweep_overrides(config_spec: str | os.PathLike) -> list[dict]:
  """The runs of a config file's `sweep(add[, arg])`.

  Args:
    config_spec: 'path.py[:arg]'.

  Returns:
    One override dict per run (dotted fields, without the 'config.' prefix); [] for a file without a sweep.
  """
  module, arg = load_module(config_spec)
  runs: list[dict] = []
  if hasattr(module, "sweep"):
    add = lambda **overrides: runs.append({k.removeprefix("config."): v for k, v in overrides.items()})
    takes_arg = len(inspect.signature(module.sweep).parameters) > 1
    module.sweep(add, *arg) if takes_arg else module.sweep(add)
  return runs


def load(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a config file describes: its get_config([arg]).

  Args:
    spec: 'path.py[:arg]', from any working directory (the argument after the colon, as ml_collections takes it).

  Returns:
    The ConfigDict.
  """
  module, arg = load_module(spec)
  return module.get_config(*arg)


def to_dict(config) -> dict:
  """The config as plain JSON data, as config.json stores it.

  Args:
    config: a ConfigDict (or a dict).

  Returns:
    Nested dicts of JSON values (tuples become lists).
  """
  if isinstance(config, dict):
    return json.loads(json.dumps(config))
  return json.loads(config.to_json_best_effort())


def to_json(config) -> str:
  """The config as config.json's text.

  Args:
    config: a ConfigDict.

  Returns:
    Indented JSON, keys sorted.
  """
  return json.dumps(to_dict(config), indent=2, sort_keys=True)


def get(tree, dotted: str):
  """A field of a nested dict by its dotted name.

  Args:
    tree: nested dicts (a config's `to_dict`).
    dotted: 'a.b.c'.

  Returns:
    tree['a']['b']['c'].
  """
  for part in dotted.split("."):
    tree = tree[part]
  return tree


def flatten(tree: dict, prefix: str = "") -> dict:
  """Nested dicts as one dict of dotted keys: {'a': {'b': 1}} -> {'a.b': 1}.

  Args:
    tree: nested dicts.
    prefix: prepended to every key.

  Returns:
    {dotted name: leaf value}.
  """
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _paths(node, prefix: str = "config") -> list[str]:
  """Every dotted name in a config, its sections included: ['config.batch_size', 'config.model', 'config.model.x']."""
  out = []
  for key, value in node.items():
    out.append(f"{prefix}.{key}")
    if isinstance(value, ml_collections.ConfigDict):
      out += _paths(value, f"{prefix}.{key}")
  return out


def field_error(config, dotted: str) -> str | None:
  """Why an override `--config.<dotted>=v` names no field of `config`, as one line; None when it names one.

  ml_collections refuses such a flag with a close match in the same section ("Did you mean") or, with none, with a bare
  KeyError('b'); this says where the key was looked for in both cases, and points to a field of that name (or a close
  one) in another section.

  Args:
    config: a ConfigDict (a config file's, before overrides).
    dotted: 'a.b.c', without the 'config.' prefix.

  Returns:
    E.g. "config.model has no field 'tranform' (did you mean 'transform'?)", "config.model has no field
    'compute_dtype' (did you mean 'config.compute_dtype'?)" or "config.model has no field 'foo' (its fields: ...)";
    None for a field.
  """
  node, where = config, "config"
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      kind = "None" if node is None else f"a {type(node).__name__} ({node!r})"
      return f"{where} is {kind}, not a section: it has no field {part!r}"
    if part not in node:
      fields = list(node.keys())
      if close := difflib.get_close_matches(part, fields, 1, 0.75):  # ml_collections' own rule
        return f"{where} has no field {part!r} (did you mean {close[0]!r}?)"
      elsewhere = [p for p in _paths(config) if p.rsplit(".", 1)[0] != where]
      names = {p: p.rsplit(".", 1)[1] for p in elsewhere}
      same = sorted((p for p in elsewhere if names[p] == part), key=lambda p: p.count("."))  # the shallowest first
      near = difflib.get_close_matches(part, sorted(set(names.values())), 3, 0.75)
      candidates = same or [p for name in near for p in elsewhere if names[p] == name]
      if candidates:
        quoted = [repr(p) for p in candidates[:3]]
        options = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
        return f"{where} has no field {part!r} (did you mean {options}?)"
      if len(fields) <= 10:
        return f"{where} has no field {part!r} (its fields: {', '.join(fields)})"
      return (
        f"{where} has no field {part!r} (its {len(fields)} fields: {', '.join(fields[:6])}, ...; "
        "python -m stn_jax.main --config=... --list prints them all)"
      )
    node, where = node[part], f"{where}.{part}"
  return None


def diff(old: dict, new: dict, *, ignore=()) -> list[str]:
  """The fields that differ between two configs.

  Args:
    old: a config as a dict.
    new: another.
    ignore: dotted fields to leave out.

  Returns:
    'field: old -> new' for every differing field (a field present in one only included).
  """
  a, b = flatten(to_dict(old)), flatten(to_dict(new))
  return [
    f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)
  ]


# ----------------------------------------------------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------------------------------------------------


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate(config) -> None:
  """Checks every field of a config before any work starts.

  Args:
    config: the ConfigDict.

  Raises:
    ConfigError: naming the field, its value and what is allowed.
  """
  config = ml_collections.ConfigDict(to_dict(config)) if isinstance(config, dict) else config
  if config.get("task", "classify") != "classify":
    from stn_jax.training import coloc  # a trainer of its own, with its own fields (it imports this module)

    if config.task != coloc.TASK:
      raise ConfigError(f"config.task must be 'classify' or {coloc.TASK!r}; got {config.task!r}.")
    coloc.validate(config)
    return
  version = config.get("version")
  if version != VERSION:
    raise ConfigError(f"config.version must be {VERSION}; got {version!r} (a config written for another version).")
  choices = {
    "dataset.name": data_lib.NAMES,
    "dataset.source": SOURCES,
    "optimizer.name": optim.NAMES,
    "optimizer.schedule": optim.SCHEDULES,
    "distributed.initialize": distributed.MODES,
    "seed_mapping": steps.SEED_MAPPINGS,
    "matmul_precision": steps.MATMUL_PRECISIONS,
    "compute_dtype": tuple(steps.COMPUTE_DTYPES),
    "input_pipeline": feed.PIPELINES,
  }
  for field, allowed in choices.items():
    if (value := get(config, field)) not in allowed:
      raise ConfigError(f"config.{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
  for field in ("batch_size", "num_seeds", "log_every_steps", "eval_batch_size", "checkpoints_to_keep"):
    if not _is_int(value := get(config, field)) or value < 1:
      raise ConfigError(f"config.{field} must be a positive integer; got {value!r}.")
  for field in ("seed", "dataset.seed", "num_devices", "steps_per_dispatch"):
    if not _is_int(value := get(config, field)) or value < 0:
      raise ConfigError(f"config.{field} must be a non-negative integer; got {value!r}.")
  for steps_field, epochs_field in BUDGET_FIELDS:
    if (value := config[steps_field]) is not None:
      if not _is_int(value) or value < 1:
        raise ConfigError(f"config.{steps_field} must be a positive integer or None; got {value!r}.")
      if value > MAX_STEPS:
        raise ConfigError(f"config.{steps_field} must be at most {MAX_STEPS:,} (int32 step counters); got {value:,}.")
    elif not isinstance(value := config[epochs_field], (int, float)) or isinstance(value, bool) or not value > 0:
      raise ConfigError(f"config.{epochs_field} must be > 0 (or set config.{steps_field}); got {value!r}.")
  budget(config, max(1, SPLIT_SIZES["train"] // config.batch_size))  # refuses budgets past MAX_STEPS at once
  population = config.get("population") or {}
  for name, values in population.items():
    if values and len(values) != config.num_seeds:
      raise ConfigError(
        f"config.population.{name} must be empty or have config.num_seeds ({config.num_seeds}) values; got {values!r}."
      )
    if name == "dataset":
      _check_member_datasets(config, values)
      continue
    low, what = (0, "non-negative") if name != "learning_rate" else (1e-300, "positive")
    kinds = (int,) if name == "seed" else (int, float)
    if values and not all(isinstance(v, kinds) and not isinstance(v, bool) and v >= low for v in values):
      raise ConfigError(f"config.population.{name} must hold {what} {kinds[-1].__name__}s; got {values!r}.")
  if any(population.get(name) for name in optim.MEMBER_HYPERPARAMETERS) and config.num_seeds < 2:
    raise ConfigError("config.population's hyperparameters need config.num_seeds >= 2 members; got 1.")
  if not (isinstance(config.learning_rate, (int, float)) and config.learning_rate > 0):
    raise ConfigError(f"config.learning_rate must be > 0; got {config.learning_rate!r}.")
  try:
    models.check_config(config.model, input_shape(config), num_classes(config))
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_member_datasets(config, names) -> None:
  base = data_lib.VARIANTS[config.dataset.name]
  for name in names:
    if name not in data_lib.VARIANTS:
      allowed = ", ".join(map(repr, data_lib.NAMES))
      raise ConfigError(f"config.population.dataset holds {name!r}; each must be one of {allowed}.")
    v = data_lib.VARIANTS[name]
    if (v.size, v.channels, v.num_classes) != (base.size, base.channels, base.num_classes):
      raise ConfigError(
        f"config.population.dataset: {name!r} is {v.size}x{v.size}x{v.channels} with {v.num_classes} classes but "
        f"dataset.name {config.dataset.name!r} is {base.size}x{base.size}x{base.channels} with {base.num_classes}; "
        "a population's variants share one image shape and label set."
      )


def member_datasets(config) -> list[str]:
  """The dataset variant of each member of the config's population.

  Args:
    config: the ConfigDict (`num_seeds` members).

  Returns:
    config.population.dataset, or dataset.name for every member.
  """
  given = (config.get("population") or {}).get("dataset")
  return [str(name) for name in given] if given else [config.dataset.name] * config.num_seeds


def input_shape(config) -> tuple[int, int, int]:
  """The image shape of the config's dataset.

  Args:
    config: the ConfigDict.

  Returns:
    (H, W, C).
  """
  variant = data_lib.VARIANTS[config.dataset.name]
  return (variant.size, variant.size, variant.channels)


def num_classes(config) -> int:
  """The classes of the config's dataset (the model's logits).

  Args:
    config: the ConfigDict.

  Returns:
    10, or 19 for addition.
  """
  return data_lib.VARIANTS[config.dataset.name].num_classes


# ----------------------------------------------------------------------------------------------------------------------
# Budgets.
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
  """A config's budgets in steps."""

  steps_per_epoch: int
  num_train_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int


def budget(config, steps_per_epoch: int) -> Budget:
  """The config's budgets in steps.

  Epoch budgets are converted to steps (rounded, at least 1); a `*_steps` field that is set wins over its twin.

  Args:
    config: the ConfigDict.
    steps_per_epoch: steps in one epoch of the train split at the config's batch size.

  Returns:
    A Budget (num_train_steps, eval_every_steps, checkpoint_every_steps, steps_per_epoch).

  Raises:
    ConfigError: a budget past MAX_STEPS steps (the int32 step counters).
  """
  resolved = {}
  for steps_field, epochs_field in BUDGET_FIELDS:
    value = get(config, steps_field)
    if value is None:
      epochs = get(config, epochs_field)
      value = max(1, math.floor(epochs * steps_per_epoch + 0.5)) if math.isfinite(epochs) else MAX_STEPS + 1
      if value > MAX_STEPS:
        raise ConfigError(
          f"config.{epochs_field} ({epochs!r} epochs of {steps_per_epoch} steps) must come to at most {MAX_STEPS:,} "
          "steps (int32 step counters)."
        )
    resolved[steps_field] = int(value)
  return Budget(steps_per_epoch, **resolved)


# ----------------------------------------------------------------------------------------------------------------------
# Versions.
# ----------------------------------------------------------------------------------------------------------------------


def migrate(old: dict) -> dict:
  """A config.json of any version in the current layout, describing the same run.

  Version 1 (no `version` field) gave budgets in steps and the model options as flat fields (`loc_hidden`,
  `cnn_features`, ...); version 2 gives budgets in epochs (with `*_steps` overrides, which carry the old values) and
  the localisation net and classifier as sub-configs per kind, passed straight to their constructors.

  Args:
    old: a config.json's content.

  Returns:
    The current-version dict.
  """
  old = to_dict(old)
  version = old.get("version", 1)
  if version == VERSION:
    return with_defaults(old)
  if version != 1:
    raise ConfigError(f"config.version {version!r} is newer than this stn_jax understands ({VERSION}); upgrade it.")
  new = dict(old)
  new["version"] = VERSION
  for _, epochs_field in BUDGET_FIELDS:  # the steps fields carry the budgets
    new[epochs_field] = None
  new.setdefault("checkpoints_to_keep", 3)
  new.setdefault("num_seeds", 1)
  new.setdefault("seed_mapping", "auto")
  m = old["model"]
  model = to_dict(models.default_config())
  for key in ("transform", "num_control_points", "stn_output_size"):
    model[key] = m[key]
  model["match_params_of"] = m.get("match_params_of", "")
  loc = model["localization"]
  loc["kind"] = m["localization"]  # the kind in use gets the old values; the other keeps today's defaults
  if m["localization"] == "fcn":
    loc["fcn"].update(hidden=m["loc_hidden"], dropout=m["loc_dropout"], activation="tanh")
  else:
    loc["cnn"].update(hidden=m["loc_hidden"], dropout=m["loc_dropout"], features=m["loc_features"], kernel_size=5)
  cls = model["classifier"]
  cls["kind"] = m["classifier"]
  cls["cnn"].update(
    features=m["cnn_features"],
    kernel_size=m["cnn_kernel_size"],
    strides=m["cnn_strides"],
    pool=m["cnn_pool"],
    hidden=m["cnn_hidden"],
  )
  cls["fcn"].update(hidden=m["fcn_hidden"])
  new["model"] = model
  return with_defaults(new)


# Fields added to version 2 after its first workdirs were written, with the values that keep those runs' meaning.
ADDED_DEFAULTS = {
  "matmul_precision": "default",  # the backend's, as every earlier run
  "compute_dtype": "float32",  # every earlier run computed in float32
  "input_pipeline": "auto",  # neither changes what a run computes
  "steps_per_dispatch": 0,
  "population": {name: [] for name in ("seed", *optim.MEMBER_HYPERPARAMETERS, "dataset")},
}


# CNN options that took one value for every convolution and now take one per convolution (a 1-sequence: for all).
PER_LAYER_OPTIONS = ("kernel_size", "strides", "pool")
# Model options whose constructor default changed after configs without them were written: {name: what those ran}.
# (conv's default is now 'auto'; a config.json that predates the option ran lax.conv.)
EARLIER_OPTION_DEFAULTS = {"conv": "xla"}
CONV_FIELDS = ("model.localization.cnn.conv", "model.classifier.cnn.conv")
# model.sampler's default is 'auto'; a config.json that predates it sampled with XLA.
EARLIER_SAMPLER = "xla"


def with_defaults(config: dict) -> dict:
  """A current-version config with the fields added since it was written filled in.

  ADDED_DEFAULTS, and model options a constructor gained later, at their defaults (a new option's default keeps the
  old behaviour); CNN options written as one value for every layer become the 1-sequences that mean the same
  (PER_LAYER_OPTIONS).

  Args:
    config: a current-version config as a dict.

  Returns:
    The completed dict.
  """
  config = dict(config)
  for key, value in ADDED_DEFAULTS.items():
    config.setdefault(key, value)
    if isinstance(value, dict) and isinstance(config[key], dict):  # a section that gained fields later
      config[key] = {**value, **config[key]}
  defaults = to_dict(models.default_config())
  model = config.get("model", {})
  if isinstance(model, dict):
    model.setdefault("sampler", EARLIER_SAMPLER)
    model.setdefault("num_transformers", 1)  # one transformer (or none) in every run before the option
    model.setdefault("match_transformers", 0)
    model.setdefault("projective_params", 9)  # every projective run before the option predicted all 9 entries
  for section in ("localization", "classifier"):
    for kind, options in defaults[section].items():
      if isinstance(options, dict) and isinstance(model.get(section, {}).get(kind), dict):
        earlier = {k: v for k, v in EARLIER_OPTION_DEFAULTS.items() if k in options}
        model[section][kind] = {**options, **earlier, **model[section][kind]}
        for name in PER_LAYER_OPTIONS:  # once one value for every layer, now a 1-sequence meaning the same
          value = model[section][kind].get(name)
          if name in options and not isinstance(value, (list, tuple)):
            model[section][kind][name] = [value]
  return config


def from_dict(d: dict) -> ml_collections.ConfigDict:
  """A config.json's content as a current-layout ConfigDict.

  Args:
    d: the content, any version (migrated).

  Returns:
    The ConfigDict, its lists as tuples (as config files write sequences).
  """

  def tuples(tree):
    if isinstance(tree, dict):
      return {k: tuples(v) for k, v in tree.items()}
    return tuple(tuples(v) for v in tree) if isinstance(tree, list) else tree

  return ml_collections.ConfigDict(tuples(migrate(d)))


# ----------------------------------------------------------------------------------------------------------------------
# Resuming.
# ----------------------------------------------------------------------------------------------------------------------


def member_seeds(config) -> list[int]:
  """The seed of each member of the config's population.

  Args:
    config: the ConfigDict (`num_seeds` members).

  Returns:
    config.population.seed, or seed, seed + 1, ...
  """
  given = (config.get("population") or {}).get("seed")
  return [int(s) for s in given] if given else [config.seed + k for k in range(config.num_seeds)]


def in_use(config: dict) -> dict:
  """The config without the options of the model kinds it does not use (they cannot change what it computes).

  Args:
    config: a config as a dict.

  Returns:
    The dict without the unused localisation-net and classifier kinds' sub-configs, and without
    model.projective_params unless a projective model is built (the transform, or the one a baseline is sized to).
  """
  config = to_dict(config)
  for section in ("localization", "classifier"):
    part = config["model"][section]
    config["model"][section] = {"kind": part["kind"], part["kind"]: part.get(part["kind"])}
  if "projective" not in (config["model"].get("transform"), config["model"].get("match_params_of")):
    config["model"].pop("projective_params", None)
  return config


def summary(config) -> str:
  """The config as the trainer logs it.

  Args:
    config: the ConfigDict.

  Returns:
    One 'field: value' line per field in use (JSON values; the options of model kinds it does not use are left out:
    config.json has everything).
  """
  fields = flatten(in_use(config))
  return "\n".join(f"  {field}: {json.dumps(value)}" for field, value in fields.items())


def resolve_auto(config, stored=None, backend: str | None = None):
  """The config with every 'auto' replaced by a concrete choice, so that config.json records what the run computes.

  Every conv option and the sampler: the stored run's value where `stored` has one (existing workdirs keep theirs),
  else the backend's (models.resolve_conv, models.resolve_sampler).

  Args:
    config: the ConfigDict.
    stored: a workdir's config.json content (any version), or None.
    backend: JAX's backend to choose for (default: the default backend).

  Returns:
    A new ConfigDict.
  """
  data = to_dict(config)
  previous = flatten(migrate(to_dict(stored))) if stored is not None else {}

  def devices():  # 0: all (of every process); asked only when a choice depends on it
    return data.get("num_devices") or jax.device_count()

  for field in CONV_FIELDS:
    section, name = field.rsplit(".", 1)
    options = get(data, section)
    if options.get(name) == "auto":
      recorded = previous.get(field)
      options[name] = recorded if recorded in models.CONV_IMPLS else models.resolve_conv("auto", backend, devices())
  if data.get("model", {}).get("sampler") == "auto":
    recorded = previous.get("model.sampler")
    if recorded in models.SAMPLERS and recorded != "auto":
      data["model"]["sampler"] = recorded
    else:
      data["model"]["sampler"] = models.resolve_sampler("auto", backend, devices())
  return from_dict(data)


def resume_differences(old, new, steps_per_epoch: int) -> tuple[list[str], tuple[int, int]]:
  """What forbids resuming a run of one config with another, and the two totals.

  Fields in FREE_FIELDS and the options of unused model kinds may differ; the budgets are compared in steps, so a
  total given in epochs or in steps is the same total. A longer total continues the run (see
  optim.learning_rate_schedule); a shorter one is refused.

  Args:
    old: the workdir's config (a dict or ConfigDict).
    new: the command's config.
    steps_per_epoch: steps in one epoch of the train split.

  Returns:
    (the differing fields as 'field: old -> new', (old total steps, new total steps)).
  """
  old = to_dict(resolve_auto(from_dict(to_dict(old))))  # 'auto' is what the run chose (the backend's if unrecorded)
  new = to_dict(resolve_auto(from_dict(to_dict(new)), old))
  totals = tuple(budget(ml_collections.ConfigDict(c), steps_per_epoch).num_train_steps for c in (old, new))
  ignore = {*FREE_FIELDS, "num_train_steps", "num_epochs"}
  problems = diff(in_use(old), in_use(new), ignore=ignore)
  if totals[1] < totals[0]:
    problems.append(f"the total steps: {totals[0]} -> {totals[1]} (a run can be continued, not shortened)")
  return problems, totals


# ----------------------------------------------------------------------------------------------------------------------
# Documentation.
# ----------------------------------------------------------------------------------------------------------------------


def field_docs() -> dict[str, str]:
  """The documentation of every field: DOCS, and the model's from its constructors' docstrings.

  Returns:
    {dotted field: one-line description}.
  """
  return {**DOCS, **{f"model.{k}": v for k, v in models.config_docs().items()}}


def describe(config, *, markdown: bool = False, sweep: list[dict] | None = None) -> str:
  """Every field of a config with its value and documentation.

  Args:
    config: the ConfigDict.
    markdown: a markdown table (docs/training.md's is made so) instead of aligned text.
    sweep: the override dicts of the file's sweep (`sweep_overrides`): a field a run sets shows the values the runs
      give it.

  Returns:
    The text.
  """

  def show(value):
    value = list(value) if isinstance(value, tuple) else value
    return "None" if value is None else json.dumps(value) if isinstance(value, (str, list)) else str(value)

  docs = field_docs()
  if config.get("task", "classify") != "classify":
    from stn_jax.training import coloc  # its own fields (it imports this module)

    docs = {f: coloc.DOCS.get(f, coloc.DOCS.get(f.rsplit(".", 1)[0], "")) for f in flatten(to_dict(config))}
  swept: dict[str, list[str]] = {}
  for run in sweep or []:
    for field, value in run.items():
      swept.setdefault(field, [])
      if show(value) not in swept[field]:
        swept[field].append(show(value))
  rows = []
  for field, value in flatten(to_dict(config)).items():
    shown = show(value)
    rows.append((field, "sweep: " + " | ".join(swept[field]) if field in swept else shown, docs.get(field, "")))
  head = []
  if swept:
    head = [
      f"This file's sweep(add) defines {len(sweep)} runs: a field shown as 'sweep: a | b' takes one of those values "
      "in each run (python experiments/sweep.py --config=... --dry_run lists them); the others are as shown."
    ]
  if markdown:
    lines = ["| field | value | meaning |", "|---|---|---|"]
    return "\n".join([*head, *lines, *(f"| `{f}` | `{v}` | {d} |" for f, v, d in rows)])
  width = max(len(f) for f, _, _ in rows)
  value_width = min(24, max(len(v) for _, v, _ in rows))
  return "\n".join([*head, *(f"{f:<{width}}  {v:<{value_width}}  {d}" for f, v, d in rows)])
