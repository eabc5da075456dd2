"""A plain, per-sample Flax-linen implementation of docs/method.md §1-3: the second reference.

Written from that description, one sequence at a time, with no batching or speed tricks, so
that the engine in `ncalm/` can be checked against something obviously faithful.
"""
import functools
import gzip

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class PublishedRule(nn.Module):
  """The published rule network, padding quirk included (all three axes wrapped)."""
  num_states: int = 10
  wrap_states: bool = True  # the published quirk; False is the 'clean' variant

  @nn.compact
  def __call__(self, onehot_HWS):
    if self.wrap_states:
      x = jnp.pad(onehot_HWS, 1, mode='wrap')  # also wraps the channel axis: 10 -> 12
    else:
      x = jnp.pad(onehot_HWS, ((1, 1), (1, 1), (0, 0)), mode='wrap')
    x = nn.Conv(4, (3, 3), padding='VALID')(x)
    x = nn.Conv(16, (1, 1))(x)
    x = nn.relu(x)
    return nn.Conv(self.num_states, (1, 1))(x)


def rule_params(rule_key, grid=12, num_states=10, wrap_states=True):
  _, init_key = jax.random.split(rule_key)
  module = PublishedRule(num_states, wrap_states)
  return module.init(init_key, jnp.zeros((grid, grid, num_states)))


@functools.partial(jax.jit, static_argnames=(
    'grid', 'num_states', 'burn_in', 'frames', 'tau', 'identity_bias', 'wrap_states'))
def _simulate(rule_key, sim_key, *, grid, num_states, burn_in, frames, tau,
              identity_bias, wrap_states):
  module = PublishedRule(num_states, wrap_states)
  params = rule_params(rule_key, grid, num_states, wrap_states)
  z = jax.random.normal(sim_key, (1, num_states))
  state = jax.random.categorical(sim_key, jnp.broadcast_to(z, (grid, grid, 1, num_states)))

  def step(state, key):
    onehot = jax.nn.one_hot(state[..., 0], num_states)
    with jax.default_matmul_precision('highest'):
      logits = module.apply(params, onehot)
    logits = logits + identity_bias * onehot
    nxt = jax.random.categorical(key, logits[:, :, None, :] / tau, axis=-1)
    return nxt, state

  _, states = jax.lax.scan(step, state, jax.random.split(sim_key, burn_in + frames))
  return states[burn_in:, :, :, 0]


def simulate(rule_key, sim_key, *, grid=12, num_states=10, burn_in=10, frames=27,
             tau=1e-4, identity_bias=0.0, wrap_states=True):
  """One trajectory, frames x grid x grid int32, exactly as the published generator."""
  return np.asarray(_simulate(
      jnp.asarray(rule_key), jnp.asarray(sim_key), grid=grid, num_states=num_states,
      burn_in=burn_in, frames=frames, tau=tau, identity_bias=identity_bias,
      wrap_states=wrap_states))


def tokenize(frames_THW, patch=2, num_states=10):
  out = []
  sof, eof = num_states ** (patch * patch), num_states ** (patch * patch) + 1
  for frame in np.asarray(frames_THW):
    out.append(sof)
    for pr in range(0, frame.shape[0], patch):
      for pc in range(0, frame.shape[1], patch):
        cells = frame[pr:pr + patch, pc:pc + patch].reshape(-1)
        out.append(int(sum(int(c) * num_states ** j for j, c in enumerate(cells))))
    out.append(eof)
  return np.array(out, np.int32)


def gzip_score(rule_key, sim_key):
  tokens = tokenize(simulate(rule_key, sim_key, frames=10))
  raw = tokens[(tokens < 10000)].astype('<i4').tobytes()
  return len(gzip.compress(raw, compresslevel=9)) / len(raw)


def sample_rules(key, num_rules, low, high):
  """The published rejection sampler."""
  accepted = []
  while len(accepted) < num_rules:
    candidates = jax.random.split(key, num_rules)
    sim_keys = jax.random.split(candidates[0], num_rules)
    for cand, sk in zip(candidates, sim_keys):
      score = np.float32(gzip_score(cand, sk))
      if np.float32(low) < score < np.float32(high):
        accepted.append(np.asarray(cand))
    key = jax.random.split(key, 1)[0]
  return np.stack(accepted[:num_rules])
