"""A run's workdir: its config.json, its orbax checkpoints, and the rules for resuming it.

  WORKDIR/config.json          the run's config (current layout; an older one is migrated on reading)
  WORKDIR/config_history.jsonl every accepted change of config on resume (step, the differences)
  WORKDIR/checkpoints/<step>/  orbax checkpoints of `checkpoint_state(...)`
  WORKDIR/metrics.jsonl        (training.metrics) and tensorboard/, figures/, results.json (training.train)

`open_run` decides, before anything is written, whether a config may run in a workdir: a new workdir (or one whose run
never reached its first checkpoint) is claimed, one of the same run (up to `config_lib.FREE_FIELDS` and the options of
unused model kinds) is resumed, or reported finished (and left untouched) when its results are in, anything else is
refused with the differing fields. A longer total continues the run only when asked (`allow_continue`, the entry
points' --continue); its earlier results.json is kept as results_at_step_<old total>.json. A workdir's config.json
describes its newest checkpoint: the changes a command brings to a run that has checkpoints (a continuation, a new log
interval) are written by `commit_run` when that command writes its first checkpoint, so a command killed before then
leaves the workdir as it found it. `restore_params` gives a run's parameters alone (what predict needs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from stn_jax.training import config_lib, utils
from stn_jax.training.steps import zero_metric_sums

log = logging.getLogger(__name__)


class WorkdirConflictError(config_lib.ConfigError):
  """The workdir holds a run of another config."""


def read_config(workdir: str | os.PathLike):
  """The config of the run in a workdir.

  Args:
    workdir: the run's directory.

  Returns:
    Its config.json as a current-layout ConfigDict (migrated), or None where there is no config.json.
  """
  path = Path(workdir) / "config.json"
  if not path.exists():
    return None
  return config_lib.from_dict(json.loads(path.read_text()))


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What `open_run` found: the changes to the workdir's config this command brings, and the totals before and after.

  The changes are written by `commit_run`, at the command's first checkpoint.

  Attributes:
    changes: the differences of this command's config from the workdir's.
    previous_total: the workdir's run's total steps where this command changes it (a continuation), else None.
    finished: the workdir holds this run, finished: nothing to do (nothing was written).
    config_text: config.json as this command would leave it, where it changes (else None).
    stored: config.json as the workdir holds it (kept as config.v<N>.json when it is migrated).
  """

  changes: tuple[str, ...] = ()
  previous_total: int | None = None
  finished: bool = False  # the workdir holds this run, finished: nothing to do (nothing was written)
  config_text: str | None = None  # config.json as this command would leave it, where it changes
  stored: dict | None = None  # config.json as the workdir holds it (kept as config.v<N>.json when it is migrated)

  @property
  def pending(self) -> bool:
    """Whether the workdir's record changes once this command checkpoints (`commit_run`)."""
    return self.config_text is not None


def open_run(
  workdir: Path, config, steps_per_epoch: int, *, write: bool = True, allow_continue: bool = False
) -> RunPlan:
  """Claims `workdir` for `config`, or checks that it may resume the run there (see the module docstring).

  A workdir without a checkpoint is claimed at once (config.json written where `write`); one that holds a checkpoint
  is not touched: the changes this config brings are returned for `commit_run`.

  Args:
    workdir: the run's directory.
    config: the command's ConfigDict.
    steps_per_epoch: steps in an epoch (budgets are compared in steps).
    write: write config.json into a workdir without a checkpoint (process 0 only).
    allow_continue: a larger total than the workdir's run continues it (--continue).

  Returns:
    The RunPlan.

  Raises:
    WorkdirConflictError: naming the differing fields, or a larger total without `allow_continue`, before anything in
      the workdir is touched.
  """
  path = workdir / "config.json"
  text = config_lib.to_json(config)
  if not path.exists() or not has_checkpoint(workdir):
    # a new workdir, or nothing trained yet (a run stopped before its first checkpoint): start afresh
    if write:
      workdir.mkdir(parents=True, exist_ok=True)
      utils.atomic_write(path, text)
    return RunPlan()
  stored = json.loads(path.read_text())
  problems, (old_total, new_total) = config_lib.resume_differences(stored, config, steps_per_epoch)
  if problems:
    shown = utils.first_few(problems, 8)
    raise WorkdirConflictError(
      f"{workdir} holds a run of another config (differs in {shown}); use another --workdir, or the same config to "
      "resume it (log, evaluation and checkpoint intervals, eval_batch_size, checkpoints_to_keep and the MNIST "
      "location may differ; num_train_steps may grow)."
    )
  newest = max(int(d.name) for d in (workdir / "checkpoints").glob("*") if d.is_dir() and d.name.isdigit())
  if newest > new_total:  # config.json is written just after a continuation's first checkpoint: killed in between
    raise WorkdirConflictError(
      f"{workdir} holds a checkpoint at step {newest:,}, past the {new_total:,} steps of its config.json: a "
      "continuation to a larger total was stopped as it saved its first checkpoint; run it again with --continue and "
      "that total, or use another --workdir."
    )
  if new_total == old_total and (workdir / "results.json").exists():
    return RunPlan(finished=True)
  if new_total > old_total and not allow_continue:
    raise WorkdirConflictError(
      f"{workdir} holds a run of {old_total:,} steps and this config asks for {new_total:,}: add --continue to "
      f"continue it from {old_total:,} to {new_total:,} steps, or give its own total "
      f"(--config.num_train_steps={old_total}), or use another --workdir."
    )
  changes = tuple(config_lib.diff(config_lib.migrate(stored), config_lib.to_dict(config)))
  previous = old_total if old_total != new_total else None
  if not changes and previous is None:
    return RunPlan()
  return RunPlan(changes, previous, config_text=text, stored=stored)


def commit_run(workdir: Path, plan: RunPlan, step: int) -> None:
  """Records the changes of a plan once the command has written its first checkpoint.

  The shorter run's results.json kept as results_at_step_<old total>.json, the original of a migrated config as
  config.v<N>.json, the new config.json, and a line of config_history.jsonl.

  Args:
    workdir: the run's directory.
    plan: `open_run`'s plan.
    step: the step the command resumed at.
  """
  if not plan.pending:
    return
  if plan.previous_total is not None and (workdir / "results.json").exists():
    # the results of the shorter run stay, by name, but no longer read as this run's
    os.replace(workdir / "results.json", workdir / f"results_at_step_{plan.previous_total}.json")
  version = plan.stored.get("version", 1)
  if version != config_lib.VERSION and not (workdir / f"config.v{version}.json").exists():
    utils.atomic_write(workdir / f"config.v{version}.json", json.dumps(plan.stored, indent=2, sort_keys=True))
  utils.atomic_write(workdir / "config.json", plan.config_text)
  if plan.changes:
    with open(workdir / "config_history.jsonl", "a") as f:
      f.write(json.dumps({"resumed_at_step": step, "changes": list(plan.changes)}) + "\n")


def has_checkpoint(workdir: Path) -> bool:
  """Whether the workdir holds any finished checkpoint.

  (orbax renames a step's directory to the bare step number when it is complete.)

  Args:
    workdir: the run's directory.

  Returns:
    True when there is one.
  """
  return any(d.is_dir() and d.name.isdigit() for d in (workdir / "checkpoints").glob("*"))


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------------------------------


def checkpoint_state(params, opt_state, sums=None, train_time=None, *, num_members: int = 1) -> dict:
  """What a checkpoint holds.

  Args:
    params: the parameters (a leading axis of K for K members).
    opt_state: the optimiser state.
    sums: the metric sums since the last evaluation (default: zeros).
    train_time: the training seconds so far (default: 0).
    num_members: K, the members.

  Returns:
    {'params', 'opt_state', 'accum' (the sums, under the key checkpoints have always had), 'train_time'}.
  """
  sums = zero_metric_sums(num_members) if sums is None else sums
  train_time = jnp.zeros(()) if train_time is None else train_time
  # "accum" is the key the sums have always had in checkpoints; keeping it keeps old checkpoints readable.
  return {"params": params, "opt_state": opt_state, "accum": sums, "train_time": train_time}


def abstract(tree, sharding=None):
  """The restore target of orbax: a tree's shapes and dtypes.

  Args:
    tree: arrays, or leaves already abstract (e.g. from nnx.eval_shape).
    sharding: the sharding to restore onto (None: orbax's default).

  Returns:
    The tree of jax.ShapeDtypeStruct.
  """

  def leaf(x):
    dtype = x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=sharding)

  return jax.tree.map(leaf, tree)


def manager(workdir: Path, *, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The orbax CheckpointManager of a workdir's checkpoints/.

  Args:
    workdir: the run's directory.
    keep: how many of the newest checkpoints to keep.
    read_only: open without creating or deleting anything (predict).

  Returns:
    The manager.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def restore_newest(checkpoints: ocp.CheckpointManager, target, *, partial: bool = False) -> tuple[int, dict] | None:
  """The newest intact checkpoint; a corrupt one is reported and the previous one tried.

  Args:
    checkpoints: the manager.
    target: the restore target (`abstract`); with `partial`, a subset of the checkpoint (e.g. {'params': ...}), the
      only part read.
    partial: read only what `target` names.

  Returns:
    (step, state), or None where no checkpoint is readable.
  """
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      if partial:  # restore_args carry the target's shardings (without them orbax reads those saved in the file)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        args = ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)
      else:
        args = ocp.args.StandardRestore(target)
      return step, checkpoints.restore(step, args=args)
    except Exception as e:
      log.warning("checkpoint at step %d is unreadable (%s: %s); falling back to the previous one", step, type(e), e)
  return None


def restore_params(workdir: str | os.PathLike, params_target, *, device=None) -> tuple[int, dict] | None:
  """The parameters alone of the newest intact checkpoint in a workdir.

  Args:
    workdir: the run's directory.
    params_target: the structure, shapes and dtypes: arrays or abstract leaves (jax.ShapeDtypeStruct, e.g. from
      nnx.eval_shape).
    device: where to read them (default: the first local device).

  Returns:
    (step, params), or None where no checkpoint is readable.
  """
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  target = abstract(params_target, sharding)
  with manager(Path(workdir), read_only=True) as checkpoints:
    restored = restore_newest(checkpoints, {"params": target}, partial=True)
  if restored is None:
    return None
  step, state = restored
  return step, state["params"]
