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
  """
  o, lr = config.optimizer, config.learning_rate
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, min(o.warmup_steps, num_train_steps - 1), num_train_steps)
  if o.schedule == "step":
    return optax.piecewise_constant_schedule(lr, {int(s): o.decay_factor for s in o.decay_steps})
  return optax.constant_schedule(lr)


def create_optimizer(config: ml_collections.ConfigDict, params, num_train_steps: int) -> optax.GradientTransformation:
  """Adam(W) or SGD (momentum, decoupled weight decay) on the schedule above, optional global-norm clipping, and the
  localisation net's updates scaled by `optimizer.localization_lr_multiplier`."""
  o = config.optimizer
  schedule = learning_rate_schedule(config, num_train_steps)
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
# Populations whose members differ in optimiser hyperparameters.
# ----------------------------------------------------------------------------------------------------------------------

# The hyperparameters a population's members may differ in (config.population.<name>), beside their seeds.
MEMBER_HYPERPARAMETERS = ("learning_rate", "localization_lr_multiplier", "weight_decay")


def varies(config) -> bool:
  """Whether the config's population members differ in any optimiser hyperparameter."""
  population = config.get("population")
  return bool(population) and any(population.get(name) for name in MEMBER_HYPERPARAMETERS)


def member_values(config, name: str) -> list[float]:
  """Each member's value of hyperparameter `name`: config.population.<name>, or the config's one for all."""
  given = config.population.get(name) if config.get("population") else None
  default = config.learning_rate if name == "learning_rate" else config.optimizer[name]
  return [float(v) for v in given] if given else [float(default)] * config.num_seeds


def create_population_optimizer(config, params, num_train_steps: int) -> optax.GradientTransformation:
  """The optimiser of `create_optimizer` with the member hyperparameters in its state (optax.inject_hyperparams):
  decoupled weight decay (AdamW, or added to the SGD gradient), the update scaled by learning_rate / the config's
  learning rate (so member k follows the schedule with its own peak), and the localisation net's updates by its
  multiplier. `init_population` sets each member's values."""
  o = config.optimizer
  schedule = learning_rate_schedule(config, num_train_steps)
  parts = [optax.clip_by_global_norm(o.grad_clip_norm)] if o.grad_clip_norm > 0 else []
  if o.name == "adam":
    parts.append(optax.inject_hyperparams(optax.adamw)(learning_rate=schedule, weight_decay=0.0))
  else:
    parts.append(optax.inject_hyperparams(optax.add_decayed_weights)(weight_decay=0.0))
    parts.append(optax.sgd(schedule, momentum=o.momentum or None))
  parts.append(optax.inject_hyperparams(optax.scale)(step_size=1.0))
  is_localization = jax.tree_util.tree_map_with_path(
    lambda path, _: any("localization" in str(k) for k in path), params
  )
  parts.append(optax.masked(optax.inject_hyperparams(optax.scale)(step_size=1.0), is_localization))
  return optax.chain(*parts)


def init_population(tx: optax.GradientTransformation, params, config):
  """The optimiser state of K stacked members (leading axis K), each with its hyperparameters."""
  values = {name: jnp.asarray(member_values(config, name), jnp.float32) for name in MEMBER_HYPERPARAMETERS}
  factor = values["learning_rate"] / config.learning_rate
  state, found = [], set()
  for part in jax.vmap(tx.init)(params):  # the chain of create_population_optimizer, recognised by its states
    if isinstance(part, optax.MaskedState):  # the localisation net's scale
      inner = part.inner_state._replace(hyperparams={"step_size": values["localization_lr_multiplier"]})
      part = part._replace(inner_state=inner)
      found.add("localization_lr_multiplier")
    elif hasattr(part, "hyperparams") and "weight_decay" in part.hyperparams:
      part = part._replace(hyperparams={**part.hyperparams, "weight_decay": values["weight_decay"]})
      found.add("weight_decay")
    elif hasattr(part, "hyperparams") and set(part.hyperparams) == {"step_size"}:  # the learning-rate factor
      part = part._replace(hyperparams={"step_size": factor})
      found.add("learning_rate")
    state.append(part)
  if found != set(MEMBER_HYPERPARAMETERS):
    raise ValueError(f"init_population: not the optimiser of create_population_optimizer (found {sorted(found)}).")
  return tuple(state)
