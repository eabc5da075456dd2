"""The training state and the jitted training step.

The step is pure: `train_step(state, source, seed_key)` folds the step number into the
seed, makes its own batch on the devices (each device its own rows, under `shard_map`),
and returns the new state and a few scalars; `update` accumulates gradients over
micro-batches with exact sums, and leaves frozen parameters (init.freeze) bit for bit.
A text run's step takes a host-fed batch instead (`make_train_step_on_batch`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ncalm import init_section
from ncalm import losses
from ncalm import model as model_lib
from ncalm import optim
from ncalm import sharding
from ncalm.data import batch as batch_lib
from ncalm.data import device_sources


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything the loop needs that is fixed for a run."""
  cfg: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  rules: tuple
  model: model_lib.Transformer
  tx: optax.GradientTransformation
  lr: optax.Schedule
  state_shardings: Any
  abstract_state: Any    # ShapeDtypeStructs with shardings: what a restore fills in
  init_spec: init_section.InitSpec  # the init section: where parameters start, what is frozen
  trainable: Any = None  # bools like params: False where frozen (init.freeze); None = all


# ------------------------------------------------------------------------- data


def step_keys(seed_key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(data key, dropout key) of a step: a pure function of (seed, step)."""
  data_key, dropout_key = jax.random.split(jax.random.fold_in(seed_key, step))
  return data_key, dropout_key


# ------------------------------------------------------------------------- state


def init_state(setup_model, tx, cfg, rng):
  """A boxed TrainState (params carry logical axis names)."""
  dummy = jnp.zeros((1, cfg.seq_len), jnp.int32)
  params = setup_model.init({'params': rng}, dummy)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_setup(cfg: ml_collections.ConfigDict, model_cfg: model_lib.ModelConfig,
                 devices=None) -> Setup:
  """The mesh, the model of `model_cfg` (`startup.check(cfg).model`), the optimizer and
  the state's shardings; refuses parameters that do not split over the mesh."""
  mesh = sharding.make_mesh(cfg.mesh.to_dict(), devices)
  rules = sharding.rules_from_config(cfg.logical_axis_rules)
  model = model_lib.Transformer(model_cfg)
  params = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)},
                                             jnp.zeros((1, cfg.seq_len), jnp.int32)))['params']
  init_spec = init_section.parse(cfg)
  trainable = init_section.trainable_mask(init_spec, nn.meta.unbox(params))
  lr_factors = init_section.lr_factors(init_spec)   # None unless the kept parameters are slowed
  tx, lr = optim.make_optimizer(cfg.optim, cfg.train_steps, lr_factors,
                                init_section.lr_groups(init_spec, nn.meta.unbox(params))
                                if lr_factors else None)
  tx = init_section.freeze_optimizer(tx, trainable)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(functools.partial(init_state, model, tx, cfg),
                              jax.ShapeDtypeStruct((2,), jnp.uint32))  # abstract key
    shardings = sharding.logical_shardings(abstract, mesh, rules)
  sharding.check_divisible(abstract, mesh, rules)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.meta.unbox(abstract), shardings)
  return Setup(cfg, mesh, rules, model, tx, lr, shardings, abstract_state, init_spec,
               None if all(jax.tree.leaves(trainable)) else trainable)


def create_state(setup: Setup, rng: jax.Array) -> TrainState:
  """Parameters born sharded: init is jitted straight into the target shardings."""
  init = functools.partial(init_state, setup.model, setup.tx, setup.cfg)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    return jax.jit(lambda r: nn.meta.unbox(init(r)),
                   out_shardings=setup.state_shardings)(rng)


# -------------------------------------------------------------------------- step


def masked_loss_sums(model, params, batch: batch_lib.Batch, dropout_key=None):
  """(Σ mask·cross-entropy, Σ mask) of a batch; dropout on iff a key is given."""
  rngs = None if dropout_key is None else {'dropout': dropout_key}
  logits = model.apply({'params': params}, batch.inputs, segment_ids_BL=batch.segment_ids,
                       deterministic=dropout_key is None,
                       rngs=rngs)
  return losses.masked_sums(logits, batch)


def update(setup: Setup, state: TrainState, batch: batch_lib.Batch, dropout_key):
  """One optimizer step on a batch, accumulating gradients over micro-batches.

  dropout_key=None turns dropout off (deterministic forward passes).
  """
  accum = setup.cfg.grad_accum
  micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

  # (Σ mask·CE, Σ mask) per micro-batch: the sums add exactly across micro-batches.
  def loss_sums(params, mb, key):
    if setup.trainable is not None:  # frozen parameters: no gradient is computed for them
      params = jax.tree.map(lambda t, p: p if t else jax.lax.stop_gradient(p),
                            setup.trainable, params)
    return masked_loss_sums(setup.model, params, mb, key)
  grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

  def body(carry, xs):
    grads, total, count = carry
    index, mb = xs
    key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
    (t, c), g = grad_fn(state.params, mb, key)
    return (jax.tree.map(jnp.add, grads, g), total + t, count + c), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, total, count), _ = jax.lax.scan(
      body, (zeros, 0.0, 0.0), (jnp.arange(accum), micro))
  count = jnp.where(count > 0, count, 1.0)   # no scored target at all: a zero gradient
  grads = jax.tree.map(lambda g: g / count, grads)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if setup.trainable is not None:  # frozen: the very same bits (x + 0 would turn -0 into +0)
    params = jax.tree.map(lambda t, new, old: new if t else old,
                          setup.trainable, params, state.params)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
  scalars = {'train/loss': total / count, 'train/grad_norm': optax.tree.norm(grads),
             'train/lr': setup.lr(state.step)}
  return new_state, scalars


def make_train_step(setup: Setup):
  """jit(state, source, seed_key) → (state, scalars); the batch is made inside."""
  batch_size = setup.cfg.global_batch

  def step(state, source, seed_key):
    data_key, dropout_key = step_keys(seed_key, state.step)
    batch, data_scalars = device_sources.make_sharded_batch(source, data_key, batch_size,
                                                             setup.mesh)
    state, scalars = update(setup, state, batch, dropout_key)
    return state, {**scalars, **data_scalars}

  rep = sharding.replicated(setup.mesh)
  return jax.jit(step, in_shardings=(setup.state_shardings, rep, rep),
                 out_shardings=(setup.state_shardings, rep), donate_argnums=0)


def make_train_step_on_batch(setup: Setup):
  """jit(state, batch, seed_key) → (state, scalars) for a host-fed batch (e.g. text)."""
  batch_sharding = sharding.batch_sharding(setup.mesh)
  rep = sharding.replicated(setup.mesh)

  def step(state, batch, seed_key):
    _, dropout_key = step_keys(seed_key, state.step)
    return update(setup, state, batch, dropout_key)

  return jax.jit(step, in_shardings=(setup.state_shardings, batch_sharding, rep),
                 out_shardings=(setup.state_shardings, rep), donate_argnums=0)
