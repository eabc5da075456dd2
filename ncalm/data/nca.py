"""Neural cellular automata: rules from keys, one step, rollouts (docs/method.md §1).

Everything here is a pure function of PRNG keys and parameter pytrees, usable under
`jax.jit` and `jax.vmap`. A *rule* is one randomly initialised network (686 float32
parameters for the published shapes); a *trajectory* is one rule rolled out from one
random initial state.

Two modes share the rules:
  * ``reference`` reproduces the published generator bit for bit: the same key usage,
    array shapes, Gumbel-max sampling and float32/HIGHEST convolutions.
  * ``fast`` (the default for training) draws from the same distribution much faster:
    the two linear layers are fused into one lookup table indexed by the neighbours'
    states, and each cell draws one uniform and inverts the softmax CDF instead of
    drawing ten Gumbels.

The published generator wraps *all three* axes of the unbatched H×W×S one-hot grid
before its 3×3 convolution, so the state axis is wrapped too ([s9, s0..s9, s0]) and
the first kernel is 3×3×12×4. ``padding='quirk'`` (the default) reproduces that;
``padding='clean'`` wraps only the two grid axes (kernel 3×3×S×4).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncalm import errors

Params = Any  # {'Conv_0': {'kernel', 'bias'}, 'Conv_1': ..., 'Conv_2': ...}
MODES = ('reference', 'fast')
INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class NCAConfig:
  """Shape and dynamics of an NCA family; defaults are the published values."""
  grid: int = 12                # cells per side of the (square, toroidal) grid
  num_states: int = 10          # discrete states per cell
  patch: int = 2                # side of the square patch that becomes one token
  perceive_channels: int = 4    # outputs of the 3×3 conv
  hidden_channels: int = 16     # outputs of the first 1×1 conv (ReLU after it)
  tau: float = 1e-4             # softmax temperature of the update
  identity_bias: float = 0.0    # added to the current state's logit before /tau
  burn_in: int = 10             # steps simulated and dropped before recording
  frames: int = 27              # recorded frames per trajectory
  padding: str = 'quirk'        # 'quirk' (published: state axis wrapped too) | 'clean'

  def __post_init__(self):
    if self.grid <= 0 or self.patch <= 0 or self.grid % self.patch:
      raise errors.UserError(
          f'nca.grid={self.grid} is not divisible by nca.patch={self.patch}: pick a '
          'grid that is a multiple of the patch (e.g. grid=12, patch=2).')
    if self.num_states < 2:
      raise errors.UserError(f'nca.num_states={self.num_states}: need at least 2 states.')
    if self.num_states ** (self.patch * self.patch) + 1 > INT32_MAX:
      raise errors.UserError(
          f'nca.num_states={self.num_states} with nca.patch={self.patch} gives '
          f'{self.num_states}^{self.patch ** 2} patch ids (+2 delimiters), which '
          'overflows int32: use fewer states or a smaller patch.')
    if not self.tau > 0:
      raise errors.UserError(f'nca.tau={self.tau} must be > 0 (1e-4 is the published value).')
    if self.burn_in < 0 or self.frames < 1:
      raise errors.UserError(f'nca.burn_in={self.burn_in} must be >= 0 and '
                             f'nca.frames={self.frames} >= 1.')
    if self.padding not in ('quirk', 'clean'):
      raise errors.UserError(f"nca.padding={self.padding!r}: use 'quirk' (published) or 'clean'.")

  @property
  def steps(self) -> int:
    """Steps simulated per trajectory (the state before each one is recorded)."""
    return self.burn_in + self.frames

  @property
  def input_channels(self) -> int:
    """Channels seen by the 3×3 kernel (the quirk wraps the state axis: S + 2)."""
    return self.num_states + 2 if self.padding == 'quirk' else self.num_states

  def replace(self, **changes) -> 'NCAConfig':
    return dataclasses.replace(self, **changes)


class RuleNetwork(nn.Module):
  """The published rule network; used only to initialise parameters from keys.

  Kept as a linen module so that its parameters are exactly linen's defaults
  (`lecun_normal` kernels, zero biases, submodules auto-named Conv_0..Conv_2).
  """
  cfg: NCAConfig

  @nn.compact
  def __call__(self, onehot_HWS):
    x = wrap_pad(onehot_HWS, self.cfg.padding)
    x = nn.Conv(self.cfg.perceive_channels, (3, 3), padding='VALID')(x)
    x = nn.Conv(self.cfg.hidden_channels, (1, 1))(x)
    x = nn.relu(x)
    return nn.Conv(self.cfg.num_states, (1, 1))(x)


def wrap_pad(onehot_HWS: jax.Array, padding: str) -> jax.Array:
  """Toroidal padding by one cell; the quirk also wraps the state axis."""
  if padding == 'quirk':
    return jnp.pad(onehot_HWS, 1, mode='wrap')
  return jnp.pad(onehot_HWS, ((1, 1), (1, 1), (0, 0)), mode='wrap')


def rule_params(rule_key: jax.Array, cfg: NCAConfig) -> Params:
  """Parameters of one rule, as the published generator makes them from its key."""
  _, init_key = jax.random.split(rule_key)
  dummy = jnp.zeros((cfg.grid, cfg.grid, cfg.num_states), jnp.float32)
  return RuleNetwork(cfg).init(init_key, dummy)['params']


def rule_logits(params: Params, state_HW: jax.Array, cfg: NCAConfig) -> jax.Array:
  """Reference logits H×W×S of one rule on one grid (float32, HIGHEST)."""
  onehot = jax.nn.one_hot(state_HW, cfg.num_states, dtype=jnp.float32)
  with jax.default_matmul_precision('highest'):
    return RuleNetwork(cfg).apply({'params': params}, onehot)


# ---------------------------------------------------------------- reference mode


def initial_state(sim_key: jax.Array, cfg: NCAConfig) -> jax.Array:
  """Published initial grid H×W×1: z ~ N(0, I) once, cells i.i.d. from softmax(z)."""
  z = jax.random.normal(sim_key, (1, cfg.num_states))
  logits = jnp.broadcast_to(z, (cfg.grid, cfg.grid, 1, cfg.num_states))
  return jax.random.categorical(sim_key, logits)


def reference_rollout(rule_key: jax.Array, sim_key: jax.Array,
                      cfg: NCAConfig) -> jax.Array:
  """One trajectory frames×H×W (int32), bit-exact with the published generator."""
  params = rule_params(rule_key, cfg)
  onehot_current = lambda s: jax.nn.one_hot(s[..., 0], cfg.num_states)

  def step(state_HW1, key):
    logits = rule_logits(params, state_HW1[..., 0], cfg)
    logits = logits + cfg.identity_bias * onehot_current(state_HW1)
    nxt = jax.random.categorical(key, logits[:, :, None, :] / cfg.tau, axis=-1)
    return nxt, state_HW1

  keys = jax.random.split(sim_key, cfg.steps)
  _, states = jax.lax.scan(step, initial_state(sim_key, cfg), keys)
  return states[cfg.burn_in:, :, :, 0]


# --------------------------------------------------------------------- fast mode


@dataclasses.dataclass(frozen=True)
class FusedRule:
  """A rule with its two linear layers fused into a per-neighbour lookup table."""
  table: jax.Array         # 3, 3, S, hidden: contribution of neighbour (dy, dx) in state s
  hidden_bias: jax.Array   # hidden
  out_kernel: jax.Array    # hidden, S
  out_bias: jax.Array      # S


jax.tree_util.register_dataclass(
    FusedRule, data_fields=['table', 'hidden_bias', 'out_kernel', 'out_bias'],
    meta_fields=[])


def fuse_rule(params: Params, cfg: NCAConfig) -> FusedRule:
  """Folds one-hot input, the wrapped state axis and Conv_0·Conv_1 into a table."""
  k0 = params['Conv_0']['kernel']                    # 3, 3, C_in, P
  if cfg.padding == 'quirk':                         # channel c sees state (c-1) mod S
    per_state = k0[:, :, 1:-1] .at[:, :, -1].add(k0[:, :, 0]).at[:, :, 0].add(k0[:, :, -1])
  else:
    per_state = k0
  k1, b1 = params['Conv_1']['kernel'][0, 0], params['Conv_1']['bias']
  hi = jax.lax.Precision.HIGHEST
  return FusedRule(
      table=jnp.einsum('yxsp,ph->yxsh', per_state, k1, precision=hi),
      hidden_bias=jnp.dot(params['Conv_0']['bias'], k1, precision=hi) + b1,
      out_kernel=params['Conv_2']['kernel'][0, 0],
      out_bias=params['Conv_2']['bias'])


def fast_logits(rule: FusedRule, state_HW: jax.Array, cfg: NCAConfig) -> jax.Array:
  """Logits H×W×S of one fused rule (before the identity bias and /tau)."""
  hidden = jax.lax.broadcast_to_rank(rule.hidden_bias, state_HW.ndim + 1)
  for dy in range(3):
    for dx in range(3):
      neighbour = jnp.roll(state_HW, (1 - dy, 1 - dx), axis=(0, 1))
      hidden = hidden + rule.table[dy, dx][neighbour]
  hidden = jax.nn.relu(hidden)
  return jnp.einsum('yxh,hs->yxs', hidden, rule.out_kernel,
                    precision=jax.lax.Precision.HIGHEST) + rule.out_bias[None, None, :]


def sample_inverse_cdf(logits: jax.Array, uniform: jax.Array) -> jax.Array:
  """Categorical(softmax(logits)) over the last axis from one uniform per draw."""
  weights = jnp.exp(logits - logits.max(axis=-1, keepdims=True))
  cdf = jnp.cumsum(weights, axis=-1)
  threshold = uniform[..., None] * cdf[..., -1:]
  draw = jnp.sum(cdf <= threshold, axis=-1)
  return jnp.minimum(draw, logits.shape[-1] - 1).astype(jnp.int32)


def fast_initial_state(sim_key: jax.Array, cfg: NCAConfig) -> jax.Array:
  """Initial grid H×W with the published distribution (z ~ N(0, I), cells ~ softmax(z))."""
  z_key, cell_key = jax.random.split(sim_key)
  z = jax.random.normal(z_key, (cfg.num_states,))
  logits = jnp.broadcast_to(z, (cfg.grid, cfg.grid, cfg.num_states))  # one z for every cell
  return sample_inverse_cdf(logits, jax.random.uniform(cell_key, (cfg.grid, cfg.grid)))


def fast_step(rule: FusedRule, state_HW: jax.Array, key: jax.Array,
              cfg: NCAConfig) -> jax.Array:
  logits = fast_logits(rule, state_HW, cfg)
  if cfg.identity_bias:
    logits = logits + cfg.identity_bias * jax.nn.one_hot(state_HW, cfg.num_states)
  return sample_inverse_cdf(logits / cfg.tau, jax.random.uniform(key, state_HW.shape))


def step_flops(cfg: NCAConfig) -> int:
  """Floating-point operations of one fast-mode step of one grid, per cell: the nine table
  rows added and the ReLU (10·hidden), the output layer (2·hidden·states) and the bias,
  identity bias, softmax and inverse-CDF draw (about 6·states)."""
  h, s = cfg.hidden_channels, cfg.num_states
  return cfg.grid * cfg.grid * (10 * h + 2 * h * s + 6 * s)


def fast_rollout(rule_key: jax.Array, sim_key: jax.Array, cfg: NCAConfig) -> jax.Array:
  """One trajectory frames×H×W (int32), same distribution as `reference_rollout`."""
  rule = fuse_rule(rule_params(rule_key, cfg), cfg)

  def step(state_HW, key):
    return fast_step(rule, state_HW, key, cfg), state_HW

  keys = jax.random.split(sim_key, cfg.steps)
  _, states = jax.lax.scan(step, fast_initial_state(sim_key, cfg), keys)
  return states[cfg.burn_in:]


def rollout(rule_keys: jax.Array, sim_keys: jax.Array, cfg: NCAConfig,
            mode: str = 'fast') -> jax.Array:
  """Batched trajectories B×frames×H×W: sequence i uses rule_keys[i], sim_keys[i]."""
  if mode not in MODES:
    raise errors.UserError(f'mode={mode!r}: use one of {MODES}.')
  one = reference_rollout if mode == 'reference' else fast_rollout
  return jax.vmap(one, in_axes=(0, 0, None))(rule_keys, sim_keys, cfg)
