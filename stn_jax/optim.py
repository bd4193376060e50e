"""The optimiser a config's `optimizer` section and learning rate describe (optax)."""

from __future__ import annotations

import jax
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
