"""Complexity filter: gzip scores and rule banks sampled into a band (docs/method.md §3).

The score of a rule is how well one short trajectory compresses: simulate `burn_in`
steps, record 10 frames, tokenise, drop the frame delimiters, write the patch ids as
int32 little-endian bytes and gzip them at level 9. score = compressed ÷ raw bytes;
lower is simpler. Simulation runs jitted on the accelerator; gzip runs on the host.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from ncalm import errors
from ncalm.data import nca
from ncalm.data import nca_tokens

SCORE_FRAMES = 10            # frames recorded for the score (after the burn-in)
GZIP_OVERHEAD = 18           # gzip header (10 bytes, no file name) + CRC32 and size (8)
DEFAULT_CHUNK = 1024         # candidates simulated per compiled call
DEFAULT_MAX_ROUNDS = 64      # sampler rounds before an unreachable band is an error


def gzip_score(patch_ids: np.ndarray) -> float:
  """gzip(level 9) size ÷ raw size of the ids as int32 little-endian bytes.

  Equal to `len(gzip.compress(raw, 9)) / len(raw)` (Python's gzip writes a 10-byte
  header and an 8-byte trailer around a raw deflate stream), without the header work.
  """
  raw = np.ascontiguousarray(patch_ids, dtype='<i4').tobytes()
  return (len(zlib.compress(raw, 9, wbits=-15)) + GZIP_OVERHEAD) / len(raw)


def score_config(cfg: nca.NCAConfig) -> nca.NCAConfig:
  return cfg.replace(frames=SCORE_FRAMES)


@functools.partial(jax.jit, static_argnames=('cfg', 'mode'))
def score_ids(rule_keys: jax.Array, sim_keys: jax.Array, cfg: nca.NCAConfig,
              mode: str) -> jax.Array:
  """Patch ids (B × 10·patches) of each rule's scoring trajectory, delimiters dropped."""
  frames = nca.rollout(rule_keys, sim_keys, score_config(cfg), mode)
  return nca_tokens.encode_frames(frames, cfg).reshape(frames.shape[0], -1)


def score_rules(rule_keys: jax.Array, sim_keys: jax.Array, cfg: nca.NCAConfig,
                mode: str = 'fast', chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """Exact gzip scores (float64, B) of rules, each with its own simulation key.

  Runs in fixed-size chunks (one compile), dispatching chunk i+1 to the device
  before gzipping chunk i on the host.
  """
  rule_keys, sim_keys = np.asarray(rule_keys), np.asarray(sim_keys)
  n = len(rule_keys)
  scores = np.empty(n, np.float64)
  pending = None
  for start in range(0, n + chunk, chunk):
    if start < n:
      rk = pad_rows(rule_keys[start:start + chunk], chunk)
      sk = pad_rows(sim_keys[start:start + chunk], chunk)
      current = (start, score_ids(rk, sk, cfg, mode))
    else:
      current = None
    if pending is not None:
      begin, ids = pending
      ids = np.asarray(ids)[:min(chunk, n - begin)]
      scores[begin:begin + len(ids)] = [gzip_score(row) for row in ids]
    pending = current
  return scores


@functools.partial(jax.jit, static_argnames=('cfg', 'mode', 'frames'))
def repeats_a_frame(rule_keys: jax.Array, sim_keys: jax.Array, cfg: nca.NCAConfig,
                    mode: str, frames: int) -> jax.Array:
  """bool [B]: whether each rule's trajectory of `frames` frames (after the burn-in, from
  its scoring simulation key) shows some frame twice — a fixed point or a cycle, which a
  model learns to copy from one period back. Translations on the torus are cycles too."""
  traj = nca.rollout(rule_keys, sim_keys, cfg.replace(frames=frames), mode)
  flat = traj.reshape(traj.shape[0], frames, -1)
  same = jnp.all(flat[:, :, None, :] == flat[:, None, :, :], axis=-1)   # [B, T, T]
  earlier = jnp.tril(jnp.ones((frames, frames), bool), k=-1)[None]
  return jnp.any(same & earlier, axis=(1, 2))


def periodic_rules(rule_keys: np.ndarray, sim_keys: np.ndarray, cfg: nca.NCAConfig,
                   mode: str, frames: int, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """`repeats_a_frame` over any number of rules, in fixed-size chunks (one compile)."""
  n = len(rule_keys)
  out = np.empty(n, bool)
  for start in range(0, n, chunk):
    rk = pad_rows(np.asarray(rule_keys[start:start + chunk]), chunk)
    sk = pad_rows(np.asarray(sim_keys[start:start + chunk]), chunk)
    out[start:start + chunk] = np.asarray(repeats_a_frame(rk, sk, cfg, mode, frames))[
        :min(chunk, n - start)]
  return out


def _chunk_for(n: int, chunk: int) -> int:
  """The smallest power of two >= n, capped at chunk: few distinct compiled shapes."""
  return min(chunk, 1 << max(0, (n - 1).bit_length()))


def pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """rows padded to `size` by repeating the last one (keeps compiled shapes fixed)."""
  if len(rows) == size:
    return rows
  return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


def in_band(scores: np.ndarray, band: tuple[float, float]) -> np.ndarray:
  """low < score < high, compared in float32 as the published sampler does."""
  s = np.asarray(scores).astype(np.float32)
  return (np.float32(band[0]) < s) & (s < np.float32(band[1]))


def check_band(band) -> tuple[float, float]:
  """A (low, high) band inside [0, 1] with low < high, or a clear error."""
  if band is None or len(band) != 2:
    raise errors.UserError(f'band={band!r}: give two numbers low,high such as 0.5,1.0.')
  low, high = float(band[0]), float(band[1])
  if not (0.0 <= low < high <= 1.0):
    raise errors.UserError(
        f'band=({low}, {high}) must satisfy 0 <= low < high <= 1 (scores are gzip '
        'ratios; the published bands are 0.2-0.3, 0.3-0.4, 0.4-0.5 and 0.5-1.0).')
  return low, high


UNFILTERED = ('none', 'all')  # how a command line says "no band" (unfiltered rules)


def parse_band(text: str | None) -> tuple[float, float] | None:
  """'0.5,1.0' → (0.5, 1.0); 'none' / 'all' (or None) → None, unfiltered; else a
  UserError (the caller adds the flag's name)."""
  if text is None or text.strip().lower() in UNFILTERED:
    return None
  try:
    low, high = (float(x) for x in text.split(','))
  except ValueError:
    raise errors.UserError(f'band {text!r} is not two numbers low,high (e.g. 0.5,1.0) '
                           'or none/all (unfiltered).') from None
  return check_band((low, high))


def candidate_rounds(key: jax.Array,
                     num_candidates: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The published sampler's rounds: (candidate rule keys, their simulation keys).

  Round keys advance by `split(key, 1)[0]`; a round's candidates are
  `split(round_key, n)` and their simulation keys `split(candidates[0], n)`.
  """
  key = jnp.asarray(key)
  while True:
    candidates = jax.random.split(key, num_candidates)
    yield np.asarray(candidates), np.asarray(jax.random.split(candidates[0], num_candidates))
    key = jax.random.split(key, 1)[0]


@dataclasses.dataclass(frozen=True)
class RuleBank:
  """Rule keys accepted into a complexity band, with their scores."""
  keys: np.ndarray        # uint32 [N, 2] raw PRNG keys
  scores: np.ndarray      # float64 [N] exact gzip scores
  band: tuple[float, float] | None

  def __len__(self) -> int:
    return len(self.keys)

  def split(self, num_validation: int) -> tuple['RuleBank', 'RuleBank']:
    """(train, validation): the last num_validation rules are held out."""
    if not 0 <= num_validation < len(self):
      raise errors.UserError(f'num_validation={num_validation} must be in [0, {len(self)}).')
    cut = len(self) - num_validation
    return (RuleBank(self.keys[:cut], self.scores[:cut], self.band),
            RuleBank(self.keys[cut:], self.scores[cut:], self.band))

  def save(self, path: str) -> None:
    band = np.asarray(self.band if self.band else (np.nan, np.nan), np.float64)
    with open(path, 'wb') as f:
      np.savez(f, keys=self.keys, scores=self.scores, band=band)

  @classmethod
  def load(cls, path: str) -> 'RuleBank':
    with np.load(path) as data:
      band = tuple(float(b) for b in data['band'])
      return cls(data['keys'], data['scores'], None if np.isnan(band[0]) else band)


def sample_rule_bank(key: jax.Array, num_rules: int, band, cfg: nca.NCAConfig,
                     mode: str = 'fast', max_rounds: int = DEFAULT_MAX_ROUNDS,
                     chunk: int = DEFAULT_CHUNK, aperiodic_frames: int = 0) -> RuleBank:
  """Rejection-samples num_rules rules with low < score < high (or any, if band is None).

  Follows the published sampler round by round, so in reference mode the same key
  gives the same accepted rules. With `aperiodic_frames` > 0, a rule is also rejected
  when its trajectory of that many frames repeats a frame (`repeats_a_frame`; the gzip
  score over 10 frames does not see a longer period). Raises `errors.UserError` after
  max_rounds rounds if the band is still short of rules, instead of searching forever.
  """
  if band is not None:
    band = check_band(band)
  keys, scores = [], []
  have = 0
  rounds = candidate_rounds(key, num_rules)
  for round_index in range(max_rounds):
    candidates, sim_keys = next(rounds)
    round_scores = score_rules(candidates, sim_keys, cfg, mode, _chunk_for(num_rules, chunk))
    keep = in_band(round_scores, band) if band else np.ones(num_rules, bool)
    if aperiodic_frames and keep.any():
      keep[keep] = ~periodic_rules(candidates[keep], sim_keys[keep], cfg, mode,
                                   aperiodic_frames, _chunk_for(num_rules, chunk))
    keys.append(candidates[keep])
    scores.append(round_scores[keep])
    have += int(keep.sum())
    if have >= num_rules:
      return RuleBank(np.concatenate(keys)[:num_rules], np.concatenate(scores)[:num_rules], band)
  tried = max_rounds * num_rules
  aperiodic = (f' and without a repeated frame in {aperiodic_frames} frames'
               if aperiodic_frames else '')
  raise errors.UserError(
      f'band={band}: only {have} of {num_rules} rules scored inside the band{aperiodic} out of '
      f'{tried:,} candidates ({have / tried:.2%} accepted). Widen the band (data.band in a config, '
      '--band or --bands on the command line) or ask for fewer rules (data.num_train_rules '
      'and data.num_val_rules, --count or --rules_per_band).')
