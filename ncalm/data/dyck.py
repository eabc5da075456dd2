"""Dyck sequences from PRNG keys, made on device (docs/method.md §5, the Dyck baseline).

A sequence is a stream of balanced words cut to length, read left to right: at depth
0 the stream must open, at depth `max_depth` it must close, otherwise it opens with
probability `p_open`. An opened bracket's type is uniform over `num_types`. A word
ends whenever the depth returns to 0 and the next one starts at once (no delimiters).

Token ids: opening bracket of type i is i, closing bracket of type i is num_types + i.

  * k-Dyck (``shuffle=False``): a close always closes the most recently opened bracket.
  * shuffle-Dyck (``shuffle=True``): each type is balanced on its own; a close picks
    one of the open bracket instances uniformly, so type j is closed with probability
    (open brackets of type j) / depth.

Everything is a pure function of a key, usable under `jax.jit` and `jax.vmap`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ncalm import errors


@dataclasses.dataclass(frozen=True)
class DyckConfig:
  """Shape of a Dyck language; defaults are the published baseline."""
  num_types: int = 64      # bracket types (vocabulary = 2 · num_types)
  max_depth: int = 16      # most brackets open at once
  p_open: float = 0.5      # P(open) when both opening and closing are allowed
  shuffle: bool = False    # shuffle-Dyck (close any open bracket) instead of k-Dyck

  def __post_init__(self):
    if self.num_types < 1:
      raise errors.UserError(f'dyck.num_types={self.num_types}: need at least 1 bracket type '
                             '(64 is the published value).')
    if self.max_depth < 1:
      raise errors.UserError(f'dyck.max_depth={self.max_depth}: need a depth of at least 1 '
                             '(16 is the published value).')
    if not 0 < self.p_open < 1:
      raise errors.UserError(f'dyck.p_open={self.p_open} must lie strictly between 0 and 1 '
                             '(0.5 is the published value).')

  def replace(self, **changes) -> 'DyckConfig':
    return dataclasses.replace(self, **changes)


def vocab_size(cfg: DyckConfig) -> int:
  """Number of distinct token ids: an opening and a closing bracket per type."""
  return 2 * cfg.num_types


def _uniform_index(u: jax.Array, n: jax.Array | int) -> jax.Array:
  """floor(u · n) as int32, clipped to n - 1 (u in [0, 1); guards float rounding)."""
  return jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)


def _kdyck_step(cfg: DyckConfig, carry, u_2):
  stack, depth = carry                                  # int32[max_depth], int32[]
  opens = (depth == 0) | ((depth < cfg.max_depth) & (u_2[0] < cfg.p_open))
  new_type = _uniform_index(u_2[1], cfg.num_types)
  top = stack[jnp.maximum(depth - 1, 0)]
  pushed = stack.at[jnp.minimum(depth, cfg.max_depth - 1)].set(new_type)
  stack = jnp.where(opens, pushed, stack)
  token = jnp.where(opens, new_type, cfg.num_types + top)
  depth = jnp.where(opens, depth + 1, depth - 1)
  return (stack, depth), token


def _shuffle_step(cfg: DyckConfig, carry, u_2):
  counts, depth = carry                                 # int32[num_types], int32[]
  opens = (depth == 0) | ((depth < cfg.max_depth) & (u_2[0] < cfg.p_open))
  new_type = _uniform_index(u_2[1], cfg.num_types)
  # Close the r-th open instance (types in order): the type whose cumulative count
  # first exceeds r.
  instance = _uniform_index(u_2[1], jnp.maximum(depth, 1))
  closed_type = jnp.sum(jnp.cumsum(counts) <= instance).astype(jnp.int32)
  closed_type = jnp.minimum(closed_type, cfg.num_types - 1)
  bracket = jnp.where(opens, new_type, closed_type)
  counts = counts.at[bracket].add(jnp.where(opens, 1, -1))
  token = jnp.where(opens, new_type, cfg.num_types + closed_type)
  depth = jnp.where(opens, depth + 1, depth - 1)
  return (counts, depth), token


def dyck_tokens(key: jax.Array, length: int, cfg: DyckConfig) -> jax.Array:
  """One sequence int32[length]: concatenated balanced words cut to `length`."""
  uniforms_L2 = jax.random.uniform(key, (length, 2))   # (open?, type or instance)
  if cfg.shuffle:
    carry = (jnp.zeros(cfg.num_types, jnp.int32), jnp.int32(0))
    step = _shuffle_step
  else:
    carry = (jnp.zeros(cfg.max_depth, jnp.int32), jnp.int32(0))
    step = _kdyck_step
  _, tokens_L = jax.lax.scan(lambda c, u: step(cfg, c, u), carry, uniforms_L2)
  return tokens_L.astype(jnp.int32)


def dyck_batch(key: jax.Array, batch: int, length: int, cfg: DyckConfig) -> jax.Array:
  """A batch int32[batch, length]; row i is `dyck_tokens(split(key, batch)[i], ...)`."""
  keys = jax.random.split(key, batch)
  return jax.vmap(dyck_tokens, in_axes=(0, None, None))(keys, length, cfg)
