"""A complexity score that runs on the accelerator: an LZ77 parse of the patch ids.

gzip (`complexity.gzip_score`) scores a trajectory by how well deflate compresses it; deflate
is an LZ77 parse (each phrase a literal or a copy of earlier text) followed by Huffman
coding. `lz_score` keeps the first half in JAX: a greedy parse of the scoring trajectory's
patch ids (10 frames, delimiters dropped, as gzip sees them) where each phrase is the
longest earlier match at its position (overlapping allowed, at most MAX_MATCH ids, as
deflate's 258 bytes are 64 int32 ids), or one literal id when nothing earlier matches.
score = (phrases + literals) / ids: a literal costs about twice a copy. It is jittable and
vmappable (fixed shapes; an O(n²) match table per trajectory), so rules can be scored where
they are simulated. How closely it ranks rules as gzip does is measured, per NCA family, by
experiments/device_score.py (docs/transfer.md, "A complexity score on the device").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_MATCH = 64   # deflate copies at most 258 bytes: 64 ids written as int32


def longest_earlier_match(ids: jax.Array) -> jax.Array:
  """int32 [n]: for each position i, the length of the longest common prefix of ids[i:]
  and ids[j:] over j < i (0 when ids[i] never occurred before)."""
  n = ids.shape[0]
  equal = (ids[:, None] == ids[None, :]).astype(jnp.int32)

  def row(below, equal_row):          # lcp[i, j] = equal[i, j] · (1 + lcp[i + 1, j + 1])
    shifted = jnp.concatenate([below[1:], jnp.zeros(1, jnp.int32)])
    current = equal_row * (1 + shifted)
    return current, current

  _, rows = jax.lax.scan(row, jnp.zeros(n, jnp.int32), equal[::-1])
  earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
  return jnp.max(jnp.where(earlier, rows[::-1], 0), axis=1)


def lz_parse(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(phrases, literals) of the greedy parse of a 1-D id sequence."""
  n = ids.shape[0]
  match = jnp.minimum(longest_earlier_match(ids), MAX_MATCH)

  def step(state):
    position, phrases, literals = state
    return (position + jnp.maximum(match[position], 1), phrases + 1,
            literals + (match[position] == 0))

  _, phrases, literals = jax.lax.while_loop(lambda s: s[0] < n, step, (0, 0, 0))
  return phrases, literals


@jax.jit
def lz_score(ids_BN: jax.Array) -> jax.Array:
  """float32 [B]: (phrases + literals) / N of each row of patch ids; lower is simpler."""
  return jax.vmap(lz_ratio)(ids_BN)


def lz_ratio(ids: jax.Array) -> jax.Array:
  """`lz_score` of one 1-D id sequence (unjitted, for use inside other traced code)."""
  phrases, literals = lz_parse(ids)
  return (phrases + literals).astype(jnp.float32) / ids.shape[0]


def periodicity(frames_T: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(first, period) of a trajectory T×...: `first` is the first frame equal to an earlier
  one (T when no frame repeats: aperiodic over the window) and `period` the distance back
  to the latest such earlier frame (0 when none). A fixed point has period 1; on the torus
  a translation is periodic too."""
  t = frames_T.shape[0]
  flat = frames_T.reshape(t, -1)
  same = jnp.all(flat[:, None, :] == flat[None, :, :], axis=-1)
  same = same & jnp.tril(jnp.ones((t, t), bool), k=-1)            # earlier frames only
  repeats = jnp.any(same, axis=1)
  first = jnp.where(jnp.any(repeats), jnp.argmax(repeats), t)
  row = same[jnp.minimum(first, t - 1)]
  latest = jnp.max(jnp.where(row, jnp.arange(t), -1))
  return first, jnp.where(first < t, first - latest, 0)
