"""Training and evaluation: `train_and_evaluate(config, workdir)`.

Read it top to bottom: the data, the model and optimiser, one evaluation pass, then the loop itself. The pieces it
stands on live in their own modules: `steps` (the pure jitted train and eval steps), `checkpoints` (the workdir,
config.json and orbax checkpoints), `metrics` (metrics.jsonl and TensorBoard), `distributed` (the mesh and sharded
batches), `config_lib` (validation and the budget in steps) and `utils` (`itstime`, the training clock).

Everything random is a function of (the model's seed, step) and the data of (config.dataset.seed, the model's seed,
step), so the same config gives bitwise the same run on one machine type, and a run resumed from any checkpoint ends
exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from stn_jax import data as data_lib
from stn_jax import models
from stn_jax.training import checkpoints, config_lib, distributed, feed, figures, optim, steps, utils
from stn_jax.training.metrics import MetricWriter

log = logging.getLogger(__name__)
# Training calls the host may dispatch before the oldest of them has finished (utils.DispatchWindow).
MAX_DISPATCHES_IN_FLIGHT = 4

# ----------------------------------------------------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------------------------------------------------


def load_datasets(config) -> dict:
  """The config's distorted-MNIST variant, every split.

  Args:
    config: the ConfigDict (its `dataset` section).

  Returns:
    {'train', 'validation', 'test'}: DistortedMnist datasets (train distorted afresh each epoch if the config says so).
  """
  mnist = data_lib.load_mnist(
    data_dir=config.dataset.data_dir, source=config.dataset.source, path=config.dataset.mnist_path
  )
  make = functools.partial(data_lib.DistortedMnist.from_mnist, mnist, config.dataset.name, seed=config.dataset.seed)
  return {
    "train": make("train", fresh_each_epoch=config.dataset.fresh_each_epoch),
    "validation": make("validation"),
    "test": make("test"),
  }


def member_sets(config, datasets: dict) -> dict[str, list]:
  """Each member's dataset variant of the given splits.

  The same digits distorted as that variant's own run would see them; members of one variant share one dataset
  object.

  Args:
    config: the ConfigDict (config_lib.member_datasets gives each member's variant).
    datasets: {split: DistortedMnist} of dataset.name.

  Returns:
    {split: [member k's dataset]}.
  """
  names = config_lib.member_datasets(config)
  out = {}
  for split, base in datasets.items():
    by_name = {base.name: base}
    for name in names:
      if name not in by_name:
        by_name[name] = dataclasses.replace(base, name=name)
    out[split] = [by_name[name] for name in names]
  return out


def population_batch(config, train_set, step: int) -> dict:
  """This process's rows of a training step's batch, as floats on the host (what the training feed's batches equal).

  Member k's data order is that of a run with its seed (config_lib.member_seeds), its images those of its variant
  (the distortions are a function of config.dataset.seed).

  Args:
    config: the ConfigDict (`num_seeds` = K members).
    train_set: a DistortedMnist for every member, or a list of one per member.
    step: the training step.

  Returns:
    dict(image=float32 (rows, S, S, 1), label=int32 (rows,)); with K > 1 members (K, rows, ...).
  """
  seeds = config_lib.member_seeds(config)
  sets = train_set if isinstance(train_set, (list, tuple)) else [train_set] * len(seeds)

  def one(dataset, seed):
    return data_lib.train_batch(
      dataset,
      step,
      config.batch_size,
      shuffle_seed=seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

  if config.num_seeds == 1:
    return one(sets[0], seeds[0])
  batches = [one(d, seed) for d, seed in zip(sets, seeds, strict=True)]
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


# ----------------------------------------------------------------------------------------------------------------------
# Model and optimiser.
# ----------------------------------------------------------------------------------------------------------------------


def create_params(config):
  """The config's model, split into its graph definition and parameters.

  Args:
    config: the ConfigDict; with config.num_seeds = K > 1, K models initialised from the members' seeds
      (config_lib.member_seeds). Its dataset gives the input shape and the classes.

  Returns:
    (graphdef, params): params with a leading axis of K when K > 1.
  """
  stacked = []
  dtype = steps.compute_dtype(config.get("compute_dtype", "float32"))
  in_shape, classes = config_lib.input_shape(config), config_lib.num_classes(config)
  for seed in config_lib.member_seeds(config):
    model = models.create_model(config.model, in_shape, seed=seed, dtype=dtype, num_classes=classes)
    graphdef, params = nnx.split(model)
    stacked.append(params)
  params = stacked[0] if config.num_seeds == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *stacked)
  return graphdef, params


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------------------------------------------


def evaluate(eval_step, params, dataset, batch_size: int, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Mean loss and accuracy over a dataset.

  Args:
    eval_step: a step of `steps.make_eval_step`.
    params: the parameters (a leading axis of K for K members).
    dataset: a DistortedMnist, or a list of one per member (an eval step made with member_batches=True: each member
      evaluated on its own).
    batch_size: the global evaluation batch size.
    mesh: the data mesh batches are split over (None: one device).

  Returns:
    {'loss', 'accuracy'}: floats, or (K,) arrays for an eval step of K members.
  """
  totals = {"loss": 0.0, "correct": 0, "count": 0}
  sharding = {"process_index": jax.process_index(), "process_count": jax.process_count()} if mesh else {}
  per_member = isinstance(dataset, (list, tuple))
  if per_member:
    batches = (
      {key: np.stack([b[key] for b in members]) for key in members[0]}
      for members in zip(*(data_lib.eval_batches(d, batch_size, **sharding) for d in dataset), strict=True)
    )
  else:
    batches = data_lib.eval_batches(dataset, batch_size, **sharding)
  for batch in batches:
    if mesh is not None:
      batch = distributed.shard_batch(mesh, batch, member_axis=per_member)
    out = distributed.local_copy(eval_step(params, batch))
    for k in totals:
      totals[k] += out[k]
  n = np.maximum(np.asarray(totals["count"]), 1)
  loss, accuracy = np.asarray(totals["loss"], np.float64) / n, np.asarray(totals["correct"], np.float64) / n
  if loss.ndim == 0:
    return {"loss": float(loss), "accuracy": float(accuracy)}
  return {"loss": loss, "accuracy": accuracy}


def member_summary(name: str, values) -> dict:
  """A metric of one model, or its mean, spread and values over K members.

  Args:
    name: the metric's name (e.g. 'test_accuracy').
    values: a scalar, or (K,) values.

  Returns:
    {name: value}; for K members {name: mean, name_std: sample std (ddof 1), name_per_seed: [...]} (the keys
    results.json has always had).
  """
  values = np.asarray(values, np.float64)
  if values.ndim == 0:
    return {name: float(values)}
  return {
    name: float(values.mean()),
    f"{name}_std": float(values.std(ddof=1)),
    f"{name}_per_seed": [float(v) for v in values],
  }


def warn_diverged(losses, what: str) -> list[int]:
  """Logs a warning naming the members whose loss is not finite (a diverged model trains on, as NaN, in its
  population: its metrics mean nothing).

  Args:
    losses: a scalar, or (K,) losses of K members.
    what: which loss, for the message.

  Returns:
    The indices of those members ([] when every loss is finite).
  """
  bad = [int(k) for k in np.flatnonzero(~np.isfinite(np.atleast_1d(np.asarray(losses, np.float64))))]
  if bad:
    log.warning("member(s) %s diverged: their %s is not finite; their metrics and results mean nothing", bad, what)
  return bad


def transformer_outputs(graphdef, params, images):
  """What the model's spatial transformer makes of some images.

  Args:
    graphdef: the model's graph definition.
    params: one model's parameters.
    images: float32 (N, H, W, C).

  Returns:
    (outputs (N, Ho, Wo, T * C), grids (N, Ho, Wo, 2), or (N, T, Ho, Wo, 2) for T > 1 transformers in parallel), or
    (None, None) for a model without a transformer.
  """
  model = nnx.merge(graphdef, params)
  if model.transformer is None:
    return None, None
  _, grid = model.transformer.params_and_grid(jnp.asarray(images))
  return np.asarray(model.transformer(jnp.asarray(images))), np.asarray(grid)


# ----------------------------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------------------------


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, datasets=None, continue_run: bool = False
) -> dict:
  """Trains and evaluates the model `config` describes in `workdir`, resuming any run of the same config there.

  Writes workdir/config.json, checkpoints/, metrics.jsonl, tensorboard/, figures/ and at the end results.json. A
  finished run of the same config is left as it is (its results are returned); one of a smaller total is continued
  to the config's only with `continue_run`.

  Args:
    config: the run's ConfigDict (validated by the caller or here).
    workdir: the run's directory.
    datasets: {'train', 'validation', 'test'} DistortedMnist, instead of loading MNIST (tests use synthetic digits).
    continue_run: allow a larger total than the workdir's run to continue it.

  Returns:
    The results dict (also written to results.json).

  Raises:
    ConfigError: a bad config, or a workdir holding another run (WorkdirConflictError, saying how to proceed).
  """
  config_lib.validate(config)
  workdir = Path(workdir)
  # conv='auto' becomes this backend's choice, or the one the workdir's run made, before config.json is written
  stored = json.loads((workdir / "config.json").read_text()) if (workdir / "config.json").exists() else None
  config = config_lib.resolve_auto(config, stored)
  is_main = jax.process_index() == 0  # only process 0 writes logs, metrics, figures and results

  # --- Setup: mesh, data, budget, workdir (checked before anything is written). ---
  mesh = distributed.make_mesh(config.num_devices)
  distributed.check_divisible(mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
  datasets = datasets or load_datasets(config)
  sets = member_sets(config, datasets)  # one dataset per member (the same object for members of one variant)
  by_member = len({id(d) for d in sets["test"]}) > 1  # members of different variants: each evaluated on its own
  if not by_member:  # one variant for all (which may be population.dataset's, not dataset.name's)
    sets = {split: members[0] for split, members in sets.items()}
  train_set = datasets["train"]
  if len(train_set) < config.batch_size:
    raise config_lib.ConfigError(f"config.batch_size {config.batch_size} exceeds the {len(train_set)} train examples.")
  budget = config_lib.budget(config, len(train_set) // config.batch_size)
  intervals = {
    "config.log_every_steps": config.log_every_steps,
    "the evaluation interval": budget.eval_every_steps,
    "the checkpoint interval": budget.checkpoint_every_steps,
  }
  per_dispatch = feed.steps_per_dispatch(config.steps_per_dispatch, intervals)
  run_plan = checkpoints.open_run(workdir, config, budget.steps_per_epoch, write=is_main, allow_continue=continue_run)
  if run_plan.finished:
    results = json.loads((workdir / "results.json").read_text())
    log.info("%s holds this run, finished at step %d; its results: %s", workdir, results["num_train_steps"],
             {k: v for k, v in results.items() if not isinstance(v, (list, dict))})  # fmt: skip
    return results
  total, num_members = budget.num_train_steps, config.num_seeds
  log.info("config (all of it in %s):\n%s", workdir / "config.json", config_lib.summary(config))
  log.info(
    "budget: %d steps of %d = %.4g epochs of %d; evaluation every %d steps, checkpoints every %d",
    total,
    config.batch_size,
    total / budget.steps_per_epoch,
    len(train_set),
    budget.eval_every_steps,
    budget.checkpoint_every_steps,
  )
  log.info("process %d of %d; data parallel over %d device(s): %s", jax.process_index(), jax.process_count(),
           mesh.size, list(mesh.devices.flat))  # fmt: skip

  # --- State: model, optimiser, the newest checkpoint. ---
  graphdef, params = create_params(config)
  tx = optim.create_optimizer(config, steps.member_slice(params, 0, num_members), total)
  opt_state = optim.init_state(config, params, total)  # members with their own hyperparameters in the state
  schedule = optim.learning_rate_schedule(config, total)
  state = checkpoints.checkpoint_state(params, opt_state, num_members=num_members)
  state = distributed.replicate(mesh, state)
  num_params = models.count_params(nnx.merge(graphdef, steps.member_slice(params, 0, num_members)))
  log.info("model: %d parameters%s", num_params, f", {num_members} models in one program" if num_members > 1 else "")
  manager = checkpoints.manager(workdir, keep=config.checkpoints_to_keep)
  start_step = 0
  restored = checkpoints.restore_newest(manager, checkpoints.abstract(state, distributed.replicated(mesh)))
  if restored is not None:
    start_step, state = restored
    log.info("resumed from the checkpoint at step %d", start_step)
    if run_plan.previous_total is not None:
      log.info(
        "continuing the run from %d to %d steps (the schedule spans the new total)", run_plan.previous_total, total
      )
  params, opt_state, sums = state["params"], state["opt_state"], state["accum"]
  clock = utils.Chrono(float(distributed.local_copy(state["train_time"])))
  # a command that changes the workdir's config writes nothing there until its first checkpoint (commit below)
  writer = MetricWriter(workdir, start_step=start_step, enabled=is_main, deferred=run_plan.pending)

  def commit() -> None:
    """The first checkpoint of this command is written (or it has none to write): record its config, then the rest."""
    if writer.deferred and is_main:
      checkpoints.commit_run(workdir, run_plan, start_step)
    writer.commit()

  seed_mapping = steps.resolve_seed_mapping(
    config.seed_mapping, xla_convolutions=models.has_xla_convolutions(config.model)
  )
  if num_members > 1:
    log.info("%d members per step, mapped by %s", num_members, seed_mapping)
  seeds = config_lib.member_seeds(config)
  train_loop = steps.make_train_loop(
    graphdef, tx, seeds, num_members, seed_mapping, config.matmul_precision, channels=train_set.channels
  )
  eval_step = steps.make_eval_step(
    graphdef, num_members, seed_mapping, config.matmul_precision, member_batches=by_member
  )
  first = {split: sets[split][0] if by_member else sets[split] for split in sets}  # member 0's datasets
  sample = next(data_lib.eval_batches(first["test"], 64))["image"]

  def show_transformer(params, step: int, tag: str, *, tensorboard: bool = True) -> None:
    """The seed's Fig 4 / 5 (inputs beside the transformer's outputs) and the grids: files and TensorBoard."""
    if not is_main:
      return
    outputs, grids = transformer_outputs(
      graphdef, steps.member_slice(distributed.local_copy(params), 0, num_members), sample
    )
    if outputs is None:
      return
    count = models.num_transformers(config.model)
    family = f"{count}xST" if count > 1 else "ST"
    title = f"{first['test'].name}, {config.model.transform} {family}-{config.model.classifier.kind.upper()}, {tag}"
    out = workdir / "figures"
    writer.run(out.mkdir, exist_ok=True)
    transformers = models.num_transformers(config.model)
    pair = dict(title=title, transformers=transformers)
    writer.run(figures.save_input_output_pair, sample, outputs, out / f"transform_{tag}.png", **pair)
    writer.run(figures.save_grid_overlay, sample, grids, out / f"grids_{tag}.png")
    if tensorboard:
      mosaics = {"transformer/input": sample, "transformer/output": outputs}
      writer.write_images(
        step, {key: figures.mosaic(figures.channels_side_by_side(images)) for key, images in mosaics.items()}
      )

  # --- The loop. ---
  logged = distributed.local_copy(sums)  # the sums at the last log line (a checkpoint's, on resume)
  pipeline = feed.choose(config.input_pipeline, train_set, config.batch_size, num_members)
  train_feed = feed.TrainFeed(sets["train"], config.batch_size, seeds, mesh, pipeline=pipeline, total_steps=total)
  log.info("input pipeline: %s; %d step(s) per dispatch", pipeline, per_dispatch)
  dispatches = feed.chunks(start_step, total, per_dispatch, budget.steps_per_epoch)  # lazily: any budget starts at once
  window = utils.DispatchWindow(MAX_DISPATCHES_IN_FLIGHT)  # unbounded, multi-device XLA:CPU deadlocks (see there)
  try:  # the feed's background thread is stopped whatever happens
    for (step, num_steps), following in itertools.pairwise(itertools.chain(dispatches, [None])):
      data, start = train_feed.chunk(step, num_steps, next_chunk=following)
      params, opt_state, sums, token = train_loop(params, opt_state, sums, data, start, step, num_steps=num_steps)
      window.add(token)
      done = step + num_steps
      if not clock.running:  # the first call of this process compiles: start the clock once it is done
        clock.pause(wait_for=params)
        clock.resume(done)
      if utils.itstime(done, config.log_every_steps, total):
        rate = clock.lap(done, "log", wait_for=params)
        with clock.excluded():
          s = distributed.local_copy(sums)  # sums since the last evaluation: difference them for the log interval
          loss = np.mean((s["loss"] - logged["loss"]) / np.maximum(s["count"] - logged["count"], 1))
          logged = s
          writer.write_scalars(done, {"train_loss": float(loss), "learning_rate": float(schedule(done - 1))})
          eta = f"{(total - done) / rate:.0f} s" if rate else "-"
          log.info("step %d/%d  loss %.4f  steps/s %s  ETA %s", done, total, loss, f"{rate:.1f}" if rate else "-", eta)
      if utils.itstime(done, budget.eval_every_steps, total):
        interval_rate = clock.lap(done, "eval", wait_for=params)
        with clock.excluded():
          s = distributed.local_copy(sums)
          val = evaluate(eval_step, params, sets["validation"], config.eval_batch_size, mesh)
          row = {
            **member_summary("train_loss", s["loss"] / np.maximum(s["count"], 1)),
            **member_summary("train_accuracy", s["accuracy"] / np.maximum(s["count"], 1)),
            **member_summary("val_loss", val["loss"]),
            **member_summary("val_accuracy", val["accuracy"]),
            "steps_per_sec": interval_rate,  # since the previous evaluation; compilation and evaluation excluded
          }
          writer.write_scalars(done, row, jsonl=True, tensorboard_skip=("train_loss",))  # logged above, finer
          shown = {k: np.round(v, 4).tolist() for k, v in row.items() if v is not None and "_per_seed" not in k}
          log.info("eval at step %d: %s", done, shown)
          warn_diverged(s["loss"], f"train loss at step {done}")
          show_transformer(params, done, f"step{done:06d}")
          sums = jax.tree.map(jnp.zeros_like, sums)
          logged = distributed.local_copy(sums)
      if utils.itstime(done, budget.checkpoint_every_steps, total):
        with clock.excluded(wait_for=params):
          train_time = distributed.replicate(mesh, np.float32(distributed.process_0_value(clock.total)))
          manager.save(
            done, args=ocp.args.StandardSave(checkpoints.checkpoint_state(params, opt_state, sums, train_time))
          )
          manager.wait_until_finished()
          commit()
          logged = distributed.local_copy(sums)  # a log line's loss covers the steps since the last checkpoint too
  finally:
    train_feed.close()
  clock.pause(wait_for=params)
  manager.wait_until_finished()
  manager.close()

  # --- Test and results. ---
  test = evaluate(eval_step, params, sets["test"], config.eval_batch_size, mesh)
  results = {
    **member_summary("test_accuracy", test["accuracy"]),
    **member_summary("test_loss", test["loss"]),
    **member_summary("test_error", 1.0 - np.asarray(test["accuracy"])),
    "num_seeds": num_members,
    "num_train_steps": total,
    "num_epochs": total / budget.steps_per_epoch,
    "train_time_s": clock.total,  # training steps only: not compilation, evaluation, logging or checkpointing
    "steps_per_sec": total / max(clock.total, 1e-9),  # over train_time_s (each process's compiling step untimed)
    "num_params": num_params,
  }
  diverged = warn_diverged(test["loss"], "test loss")
  if diverged:
    results["diverged_members"] = diverged
  if num_members > 1:  # one row per member: its seed, hyperparameters and test metrics
    values = {name: optim.member_values(config, name) for name in optim.MEMBER_HYPERPARAMETERS}
    variants = config_lib.member_datasets(config)
    results["members"] = [
      {
        "seed": seed,
        "dataset": variants[k],
        **{name: values[name][k] for name in optim.MEMBER_HYPERPARAMETERS},
        **{key: results[f"{key}_per_seed"][k] for key in ("test_accuracy", "test_loss", "test_error")},
      }
      for k, seed in enumerate(seeds)
    ]
  commit()  # a run resumed at its last checkpoint, with changed free fields, has no checkpoint of its own to write
  show_transformer(params, total, "final", tensorboard=False)  # the last evaluation sent them
  if is_main:
    utils.atomic_write(workdir / "results.json", json.dumps(results, indent=2))
    if writer.history:
      (workdir / "figures").mkdir(exist_ok=True)
      figures.save_curves(writer.history, workdir / "figures" / "curves.png", steps_per_epoch=budget.steps_per_epoch)
    writer.write_scalars(total, {"test_accuracy": results["test_accuracy"]})
    writer.close()
  spread = f" +- {100 * results['test_error_std']:.2f}" if num_members > 1 else ""
  log.info(
    "test error %.2f%s %% (%d model(s)); results in %s", 100 * results["test_error"], spread, num_members, workdir
  )
  return results
