"""The functional training and evaluation steps, for one model or a population of K models in one program.

The NNX model is split once into a graph definition and its parameters; a step is a pure function of (parameters,
optimiser state, metric sums, batch, step), jitted once, with its state donated. Everything random is a function of
(seed, step), so the same inputs give bitwise the same outputs on one machine type.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

SEED_MAPPINGS = ("auto", "vmap", "unroll")
# Precision of the model's own float32 matrix products and convolutions (config.matmul_precision). 'default' is the
# backend's: exact float32 on CPU, TF32 (a 10-bit mantissa) for float32 products on Ampere/Hopper GPUs; 'high' is
# TF32 or bfloat16x3 where the backend has them; 'highest' is full float32 everywhere. Grid generation is always at
# full precision (stn_jax.spatial.grids), whatever this says.
MATMUL_PRECISIONS = ("default", "high", "highest")
# What the model's convolutions and dense layers compute in (config.compute_dtype). bfloat16 is mixed precision as
# in the Flax examples and big_vision: float32 parameters, optimiser state, loss and metric sums; the localisation
# net's final layer, the transform's parameters, the sampling grid and the sampler stay float32 (stn_jax.models).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype of a config.compute_dtype name.

  Args:
    name: one of COMPUTE_DTYPES.

  Returns:
    jnp.float32 or jnp.bfloat16.
  """
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"compute_dtype must be one of {', '.join(map(repr, COMPUTE_DTYPES))}; got {name!r}.")
  return COMPUTE_DTYPES[name]


def matmul_precision(name: str):
  """A context in which traced products of the model run at a precision.

  Args:
    name: one of MATMUL_PRECISIONS.

  Returns:
    A context manager (jax.default_matmul_precision).
  """
  if name not in MATMUL_PRECISIONS:
    raise ValueError(f"matmul_precision must be one of {', '.join(map(repr, MATMUL_PRECISIONS))}; got {name!r}.")
  return contextlib.nullcontext() if name == "default" else jax.default_matmul_precision(name)


def cross_entropy(logits, labels):
  """The mean softmax cross-entropy of integer labels.

  Args:
    logits: float (B, classes) (cast to float32).
    labels: int32 (B,).

  Returns:
    A float32 scalar.
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def over_members(fn, in_axes, how: str):
  """A function mapped over the leading member axis of some of its arguments.

  Args:
    fn: the function of one member.
    in_axes: per argument, 0 (it has a leading member axis) or None (shared).
    how: 'vmap' (jax.vmap) or 'unroll' (K copies of `fn` in the one program, their outputs stacked).

  Returns:
    The mapped function.
  """
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


def resolve_seed_mapping(how: str, *, xla_convolutions: bool = True) -> str:
  """What `seed_mapping='auto'` means for a model.

  'vmap' on accelerators; on CPU 'unroll' where the model has lax.conv convolutions (XLA:CPU runs a vmapped
  convolution with per-member weights as a grouped convolution, slower than K plain ones) and 'vmap' where it has none
  (patch convolutions and dense layers batch well there too).

  Args:
    how: 'auto', 'vmap' or 'unroll'.
    xla_convolutions: whether the model has lax.conv convolutions.

  Returns:
    'vmap' or 'unroll'.
  """
  if how != "auto":
    return how
  return "unroll" if jax.default_backend() == "cpu" and xla_convolutions else "vmap"


def zero_metric_sums(num_members: int = 1) -> dict:
  """The running sums the train step accumulates between evaluations.

  Args:
    num_members: K, the members (one set of sums per member when K > 1).

  Returns:
    {'loss', 'accuracy', 'count'}: zeros, scalars or (K,) arrays.
  """
  shape = () if num_members == 1 else (num_members,)
  return {"loss": jnp.zeros(shape), "accuracy": jnp.zeros(shape), "count": jnp.zeros(shape, jnp.int32)}


def member_slice(tree, index: int, num_members: int):
  """Member `index` of a K-member state.

  Args:
    tree: a pytree with a leading member axis of K (none when K = 1).
    index: the member.
    num_members: K.

  Returns:
    The member's pytree (the tree itself when K = 1).
  """
  if num_members == 1:
    return tree
  return jax.tree.map(lambda a: a[index], tree)


def make_update(graphdef, tx, seed: int, num_members: int = 1, seed_mapping: str = "vmap", precision: str = "default"):
  """The pure update of one training step on a float batch, not yet jitted.

  `(params, opt_state, sums, batch, step) -> (params, opt_state, sums)`; `make_train_step` jits it and
  `make_train_loop` unrolls it N times in one program. With K > 1 members, params, opt_state, sums and the batch
  carry a leading axis of K independent models (model k's dropout is that of a run with seed + k, or with seed[k]
  when `seed` is a list), updated together, vmapped over the member axis or as K copies of the step side by side in
  the program ('unroll': on XLA:CPU a vmapped convolution with per-member weights becomes a grouped convolution, much
  slower than K plain ones; docs/benchmarks.md, populations).

  Args:
    graphdef: the model's graph definition (nnx.split).
    tx: the optax optimiser (optim.create_optimizer).
    seed: the run's seed, or a list of the members' seeds (dropout keys fold in the step).
    num_members: K, the members.
    seed_mapping: 'vmap' or 'unroll' (resolve_seed_mapping).
    precision: the model's products' precision (MATMUL_PRECISIONS).

  Returns:
    The update function.
  """

  def one_step(params, opt_state, sums, batch, step, seed):
    dropout_key = jax.random.fold_in(jax.random.key(seed), step)

    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(batch["image"], train=True, rngs=dropout_key)
      return cross_entropy(logits, batch["label"]).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    correct = (logits.argmax(-1) == batch["label"]).mean()
    sums = {"loss": sums["loss"] + loss, "accuracy": sums["accuracy"] + correct, "count": sums["count"] + 1}
    return params, opt_state, sums

  if isinstance(seed, int):  # the population's seeds: seed, seed + 1, ...; or given one per member
    seed = [seed + k for k in range(num_members)]
  seeds = jnp.asarray(seed, jnp.uint32)

  def update(params, opt_state, sums, batch, step):
    with matmul_precision(precision):
      if num_members == 1:
        return one_step(params, opt_state, sums, batch, step, seed[0])
      mapped = over_members(one_step, (0, 0, 0, 0, None, 0), seed_mapping)
      return mapped(params, opt_state, sums, batch, step, seeds)

  return update


def make_train_step(graphdef, tx, seed: int, num_members: int = 1, seed_mapping: str = "vmap", precision="default"):
  """`make_update`'s update, jitted once, its state (params, opt_state, sums) donated.

  Args:
    graphdef: the model's graph definition.
    tx: the optax optimiser.
    seed: the run's seed, or the members' seeds.
    num_members: K, the members.
    seed_mapping: 'vmap' or 'unroll'.
    precision: one of MATMUL_PRECISIONS.

  Returns:
    step(params, opt_state, sums, batch, step) -> (params, opt_state, sums).
  """
  return jax.jit(make_update(graphdef, tx, seed, num_members, seed_mapping, precision), donate_argnums=(0, 1, 2))


# uint8 -> float32 in [0, 1] by table: bitwise stn_jax.data.uint8_to_unit_float's host division (XLA may rewrite a
# division by a constant into a multiplication by its reciprocal, which is not exact).
_UINT8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def uint8_to_unit_float_by_table(images: jax.Array, channels: int = 1) -> jax.Array:
  """Device images as the model's input: bitwise what stn_jax.data.uint8_to_unit_float gives on the host.

  Args:
    images: uint8 (..., H, W) on the device; (..., H, W, C) for `channels` = C > 1.
    channels: C of the images.

  Returns:
    float32 (..., H, W, C) in [0, 1].
  """
  out = jnp.asarray(_UINT8_TO_FLOAT)[images.astype(jnp.int32)]
  return out[..., None] if channels == 1 else out


def make_train_loop(
  graphdef,
  tx,
  seed: int,
  num_members: int = 1,
  seed_mapping: str = "vmap",
  precision="default",
  *,
  channels: int = 1,
):
  """`num_steps` updates in one jitted call, on batches that are already on the device.

    ``run(params, opt_state, sums, data, start, step, *, num_steps) -> (params, opt_state, sums, done)``

  `data` holds uint8 images (steps, B, S, S) (or (steps, B, S, S, C) for `channels` C > 1) and int32 labels
  (steps, B) (with K members (K, steps, B, ...)), and
  update i uses row `start + i` of it, converted to float inside the program, as training step `step + i`. The state
  is donated; `num_steps` is static (one compilation per distinct chunk length). `done` is a copy of the sums' step
  count, not donated: a token the caller can wait on to bound how far it dispatches ahead (utils.DispatchWindow).

  The updates are unrolled in the program rather than a `lax.scan`: XLA:CPU compiles a loop body differently (its
  results differ in the last bits), while N unrolled updates give bitwise the results of N calls of
  `make_train_step`, so how many steps one call runs never changes a run. Compile time grows with `num_steps`.

  Args:
    graphdef: the model's graph definition.
    tx: the optax optimiser.
    seed: the run's seed, or the members' seeds.
    num_members: K, the members.
    seed_mapping: 'vmap' or 'unroll'.
    precision: one of MATMUL_PRECISIONS.
    channels: C of the images (the dataset's `channels`).

  Returns:
    The jitted `run`.
  """
  update = make_update(graphdef, tx, seed, num_members, seed_mapping, precision)
  axis = 0 if num_members == 1 else 1

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2), static_argnames=("num_steps",))
  def run(params, opt_state, sums, data, start, step, *, num_steps: int):
    state = (params, opt_state, sums)
    for i in range(num_steps):
      row = {k: jax.lax.dynamic_index_in_dim(v, start + i, axis, keepdims=False) for k, v in data.items()}
      image = uint8_to_unit_float_by_table(row["image"], channels)
      state = update(*state, {"image": image, "label": row["label"]}, step + i)
    return (*state, state[2]["count"] + 0)

  return run


def make_eval_step(
  graphdef,
  num_members: int = 1,
  seed_mapping: str = "vmap",
  precision: str = "default",
  *,
  member_batches: bool = False,
):
  """Jitted sums of loss, correct and count over a masked batch.

  Args:
    graphdef: the model's graph definition.
    num_members: K, the members: (K,) sums from one shared batch.
    seed_mapping: 'vmap' or 'unroll'.
    precision: one of MATMUL_PRECISIONS.
    member_batches: take a (K, B, ...) batch, member k's own rows (a population whose members differ in data).

  Returns:
    step(params, batch) -> {'loss', 'correct', 'count'} sums.
  """

  def one_eval(params, batch):
    logits = nnx.merge(graphdef, params)(batch["image"])
    mask = batch["mask"]
    loss = jnp.where(mask, cross_entropy(logits, batch["label"]), 0.0).sum()
    correct = jnp.where(mask, logits.argmax(-1) == batch["label"], False).sum()
    return {"loss": loss, "correct": correct, "count": mask.sum()}

  evaluate = one_eval if num_members == 1 else over_members(one_eval, (0, 0 if member_batches else None), seed_mapping)

  @jax.jit
  def eval_step(params, batch):
    with matmul_precision(precision):
      return evaluate(params, batch)

  return eval_step
