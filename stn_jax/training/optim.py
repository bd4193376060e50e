"""The optimiser a config's `optimizer` section and learning rate describe (optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

NAMES = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """The learning rate as a function of the step, over a run of `num_train_steps` steps.

  cosine: linear warm-up from 0 over `optimizer.warmup_steps`, then a cosine decay to 0 at `num_train_steps`; so
  continuing a run with more steps stretches the decay over the new total (the rate at the resume step jumps up to
  the longer schedule's value there). step: `learning_rate` multiplied by `decay_factor` at each of `decay_steps`.
  constant: `learning_rate`.

  Args:
    config: the run's ConfigDict (`learning_rate`, `optimizer`).
    num_train_steps: the run's total.

  Returns:
    The optax schedule.
  """
  o, lr = config.optimizer, config.learning_rate
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, min(o.warmup_steps, num_train_steps - 1), num_train_steps)
  if o.schedule == "step":
    return optax.piecewise_constant_schedule(lr, {int(s): o.decay_factor for s in o.decay_steps})
  return optax.constant_schedule(lr)


# The hyperparameters a population's members may differ in (config.population.<name>), beside their seeds.
MEMBER_HYPERPARAMETERS = ("learning_rate", "localization_lr_multiplier", "weight_decay")


def create_optimizer(
  config: ml_collections.ConfigDict, params, num_train_steps: int, *, member: dict | None = None
) -> optax.GradientTransformation:
  """The optimiser of a run: Adam(W) or SGD on `learning_rate_schedule`, optional clipping, the localisation net's
  updates scaled.

  Adam, AdamW (decoupled weight decay) or SGD with momentum (weight decay added to the gradient), optional
  global-norm clipping, and the localisation net's updates scaled by `optimizer.localization_lr_multiplier`. When the
  members of a population differ in a hyperparameter (`varies(config)`), every one of MEMBER_HYPERPARAMETERS lives in
  the optimiser's state instead (optax.inject_hyperparams): the weight decay, the update scaled by the member's
  learning rate over the config's (so member k follows the schedule with its own peak) and the localisation
  multiplier. One update then serves every member; `init_state` gives each member its own values.

  Args:
    config: the run's config (its `optimizer` section, `learning_rate`, `population`).
    params: one model's parameters (a pytree; the localisation net's leaves have 'localization' in their path).
    num_train_steps: the run's total, which the schedule decays over.
    member: {name: value} of MEMBER_HYPERPARAMETERS for one member (default: the config's values); used only when
      `varies(config)`.

  Returns:
    The optax transformation.
  """
  o = config.optimizer
  schedule = learning_rate_schedule(config, num_train_steps)
  parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
  is_localization = jax.tree_util.tree_map_with_path(
    lambda path, _: any("localization" in str(k) for k in path), params
  )
  if varies(config):
    m = member or {name: member_values(config, name)[0] for name in MEMBER_HYPERPARAMETERS}
    if o.name == "adam":
      parts.append(optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, weight_decay=m["weight_decay"]))
    else:
      parts.append(optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=m["weight_decay"]))
      parts.append(optax.sgd(schedule, momentum=o.momentum or None))
    parts.append(optax.inject_hyperparams(optax.scale)(step_size=m["learning_rate"] / config.learning_rate))
    scale = optax.inject_hyperparams(optax.scale)(step_size=m["localization_lr_multiplier"])
    parts.append(optax.masked(scale, is_localization))
    return optax.chain(*parts)
  if o.name == "adam":
    parts.append(optax.adamw(schedule, weight_decay=o.weight_decay) if o.weight_decay else optax.adam(schedule))
  else:
    if o.weight_decay:
      parts.append(optax.add_decayed_weights(o.weight_decay))
    parts.append(optax.sgd(schedule, momentum=o.momentum or None))
  if o.localization_lr_multiplier != 1.0:
    parts.append(optax.masked(optax.scale(o.localization_lr_multiplier), is_localization))
  return optax.chain(*parts)


def init_state(config: ml_collections.ConfigDict, params, num_train_steps: int):
  """The optimiser state of a run's models, each member with its own hyperparameters.

  Args:
    config: the run's config; `num_seeds` members.
    params: the parameters, with a leading member axis K when `config.num_seeds` > 1.
    num_train_steps: the run's total.

  Returns:
    The state of `create_optimizer(config, ...)`, stacked over the K members when K > 1.
  """
  if config.num_seeds == 1:
    return create_optimizer(config, params, num_train_steps).init(params)
  if not varies(config):
    return jax.vmap(create_optimizer(config, jax.tree.map(lambda x: x[0], params), num_train_steps).init)(params)
  values = {name: jnp.asarray(member_values(config, name), jnp.float32) for name in MEMBER_HYPERPARAMETERS}
  return jax.vmap(lambda p, m: create_optimizer(config, p, num_train_steps, member=m).init(p))(params, values)


def varies(config) -> bool:
  """Whether the config's population members differ in any optimiser hyperparameter.

  Args:
    config: the ConfigDict.

  Returns:
    True when any of config.population's MEMBER_HYPERPARAMETERS is given.
  """
  population = config.get("population")
  return bool(population) and any(population.get(name) for name in MEMBER_HYPERPARAMETERS)


def member_values(config, name: str) -> list[float]:
  """Each member's value of a hyperparameter.

  Args:
    config: the ConfigDict (`num_seeds` members).
    name: one of MEMBER_HYPERPARAMETERS.

  Returns:
    config.population.<name>, or the config's value for every member.
  """
  given = config.population.get(name) if config.get("population") else None
  default = config.learning_rate if name == "learning_rate" else config.optimizer[name]
  return [float(v) for v in given] if given else [float(default)] * config.num_seeds
