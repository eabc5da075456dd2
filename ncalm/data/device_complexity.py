"""A complexity score that runs on the accelerator: an LZ77 parse of the patch ids.

gzip (`complexity.gzip_score`) scores a trajectory by how well deflate compresses it; deflate
is an LZ77 parse (each phrase a literal or a copy of earlier text) followed by Huffman
coding. `lz_score` keeps the first half in JAX: a greedy parse of the scoring trajectory's
patch ids (10 frames, delimiters dropped, as gzip sees them) where each phrase is the
longest earlier match at its position (overlapping allowed, at most MAX_MATCH ids, as
deflate's 258 bytes are 64 int32 ids), or one literal id when nothing earlier matches.
score = (phrases + literals) / ids: a literal costs about twice a copy. It is jittable and
vmappable (fixed shapes; an O(n²) int8 match table per trajectory, and the parse counted by
pointer doubling), so rules can be scored where they are simulated. How closely it ranks
rules as gzip does is measured per NCA family by experiments/device_score.py, and
`python -m ncalm.calibrate` stores each family's rank-matched band edges (docs/transfer.md,
"A complexity score on the device").
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MAX_MATCH = 64   # deflate copies at most 258 bytes: 64 ids written as int32


def longest_earlier_match(ids: jax.Array) -> jax.Array:
  """int32 [n]: for each position i, the length (capped at MAX_MATCH) of the longest common
  prefix of ids[i:] and ids[j:] over j < i (0 when ids[i] never occurred before)."""
  n = ids.shape[0]
  earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)
  equal = (earlier & (ids[:, None] == ids[None, :])).astype(jnp.int8)

  def row(below, equal_row):  # lcp[i, j] = equal[i, j] · (1 + lcp[i + 1, j + 1]), capped
    shifted = jnp.concatenate([below[1:], jnp.zeros(1, jnp.int8)])
    current = equal_row * (1 + jnp.minimum(shifted, MAX_MATCH - 1))
    return current, jnp.max(current)

  _, longest = jax.lax.scan(row, jnp.zeros(n, jnp.int8), equal[::-1])  # int8: 4× the lanes
  return longest[::-1].astype(jnp.int32)


def lz_parse(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(phrases, literals) of the greedy parse of a 1-D id sequence: the phrase at position i
  ends at next[i] = i + max(match[i], 1), and the chain from 0 is counted by pointer
  doubling (log₂ n gathers, no sequential loop)."""
  n = ids.shape[0]
  match = jnp.append(longest_earlier_match(ids), 0)          # position n: the end
  index = jnp.arange(n + 1)
  following = jnp.where(index < n, jnp.minimum(index + jnp.maximum(match, 1), n), n)
  phrases = (index < n).astype(jnp.int32)                    # over 2^k phrases from i
  literals = ((index < n) & (match == 0)).astype(jnp.int32)
  for _ in range(max(1, math.ceil(math.log2(n)))):
    phrases = phrases + phrases[following]
    literals = literals + literals[following]
    following = following[following]
  return phrases[0], literals[0]


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
