"""What a training step can eat: batches of (inputs, targets, loss mask).

A *source* makes a batch from a PRNG key inside a jitted step, on the device:
`source.batch(key, batch_size)`. It does so in two parts so that each device can make
its own rows: `row_keys(key, batch_size)` (a few bytes per row, cheap to replicate) and
`rows(row_keys)` (the work, a pure function of each row's keys — `make_sharded_batch`
runs it under `shard_map`, each device on its shard). NCA and Dyck sources make their data from
the key alone, so a step's batch is a pure function of (seed, step). Sources are
pytrees: the NCA rule bank travels as a device array argument, not as a constant.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from ncalm import errors
from ncalm import sharding
from ncalm.data import batch as batch_lib
from ncalm.data import dyck
from ncalm.data import nca
from ncalm.data import nca_tokens


class _OnDevice:
  """What every on-device source shares: it describes itself to the trainer and the
  evaluators (`on_device`, `tokens_per_frame`, `evaluators`) and makes whole batches."""
  on_device = True              # batches made inside the jitted step
  tokens_per_frame = 0          # > 0: the held-out loss is also reported per frame
  evaluators = ('heldout',)     # names in ncalm.eval.registry.EVALUATORS that suit it
  selection_flops_per_row = 0.0  # FLOPs spent choosing a row's data, beyond making it

  def batch(self, key: jax.Array, batch_size: int) -> batch_lib.Batch:
    rows, stats = self.rows_and_stats(self.row_keys(key, batch_size))
    return to_batch(rows, self.loss_mask(), stats.get('kept'))

  def rows_and_stats(self, row_keys) -> tuple[jax.Array, dict]:
    """The rows and per-row statistics of how they were made ({} here). A bool [B] `kept`
    False marks a row that is not scored (its loss weights are 0)."""
    return self.rows(row_keys), {}

  def batch_metrics(self, stats: dict) -> dict:
    """Scalars of a training batch's making, from the statistics of `rows_and_stats`."""
    del stats
    return {}

  def unigram_log_probs(self, key: jax.Array, batch_size: int = 256) -> np.ndarray:
    """log p(token) of this source's token distribution (add-½ smoothing), from
    UNIGRAM_SEQUENCES sequences: the baseline that predicts each target from it alone."""
    @jax.jit
    def count(src, k):
      return batch_lib.token_counts(src.batch(k, batch_size), src.vocab_size)

    counts = sum(np.asarray(count(self, jax.random.fold_in(key, i)), np.float64)
                 for i in range(batch_lib.UNIGRAM_SEQUENCES // batch_size))
    counts += 0.5
    return np.log(counts / counts.sum())


SHUFFLES = ('', 'frames', 'patches')
SHUFFLE_KEY = 3   # fold_in of a sequence's simulation key for its shuffle


def shuffled(frames_THW: jax.Array, key: jax.Array, kind: str, patch: int) -> jax.Array:
  """The shuffled-NCA control of one trajectory: 'frames' puts its frames in a random
  order; 'patches' puts each frame's p×p patches at random places (a new permutation per
  frame). Every token of the sequence stays (so do its unigram statistics); the dynamics,
  or the space they act in, go."""
  t, g, _ = frames_THW.shape
  if kind == 'frames':
    return frames_THW[jax.random.permutation(key, t)]
  n = g // patch
  patches = frames_THW.reshape(t, n, patch, n, patch).swapaxes(2, 3).reshape(t, n * n, patch,
                                                                            patch)
  orders = jax.vmap(lambda k: jax.random.permutation(k, n * n))(jax.random.split(key, t))
  moved = jax.vmap(lambda frame, order: frame[order])(patches, orders)
  return moved.reshape(t, n, n, patch, patch).swapaxes(2, 3).reshape(t, g, g)


@dataclasses.dataclass(frozen=True)
class NCASource(_OnDevice):
  """NCA sequences: a rule drawn from the bank and a fresh initial state per sequence.

  With `rule_keys=None` every sequence gets a fresh, unfiltered rule from the key.
  """
  cfg: nca.NCAConfig                  # NCA family; `frames` is derived from seq_len
  seq_len: int = 1024                 # model context; seq_len + 1 tokens are simulated
  mode: str = 'fast'                  # 'fast' (training default) or 'reference'
  rule_keys: jax.Array | None = None  # uint32 [N, 2] rule bank, or None for fresh rules
  shuffle: str = ''                   # the shuffled-NCA control: '' | 'frames' | 'patches'

  def __post_init__(self):
    if self.mode not in nca.MODES:
      raise errors.UserError(f'mode={self.mode!r}: use one of {nca.MODES}.')
    if self.shuffle not in SHUFFLES:
      raise errors.UserError(f'data.shuffle={self.shuffle!r}: use one of {list(SHUFFLES)} '
                             "('' = the NCA as simulated).")
    if self.seq_len < nca_tokens.tokens_per_frame(self.cfg):
      raise errors.UserError(f'seq_len={self.seq_len} is shorter than one frame '
                             f'({nca_tokens.tokens_per_frame(self.cfg)} tokens): nothing to score.')

  evaluators = ('heldout', 'probe')

  @property
  def vocab_size(self) -> int:
    return nca_tokens.vocab_size(self.cfg)

  @property
  def tokens_per_frame(self) -> int:
    return nca_tokens.tokens_per_frame(self.cfg)

  @property
  def sim_cfg(self) -> nca.NCAConfig:
    return self.cfg.replace(frames=nca_tokens.frames_needed(self.seq_len, self.cfg))

  def sequences(self, rule_keys: jax.Array, sim_keys: jax.Array) -> jax.Array:
    """Token sequences B × frames·tokens_per_frame for explicit keys."""
    return self.tokens(nca.rollout(rule_keys, sim_keys, self.sim_cfg, self.mode), sim_keys)

  def tokens(self, frames: jax.Array, sim_keys: jax.Array) -> jax.Array:
    """Trajectories B × frames × H × W as token sequences (shuffled for the control)."""
    if self.shuffle:
      shuffle_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(sim_keys, SHUFFLE_KEY)
      frames = jax.vmap(shuffled, in_axes=(0, 0, None, None))(
          frames, shuffle_keys, self.shuffle, self.cfg.patch)
    return nca_tokens.frames_to_tokens(frames, self.cfg)

  def loss_mask(self) -> jax.Array:
    return nca_tokens.loss_mask(self.seq_len, self.cfg)

  def rows(self, row_keys) -> jax.Array:
    """Tokens B × (seq_len + 1) for the keys of `row_keys`."""
    return self.sequences(*row_keys)[:, :self.seq_len + 1]

  def row_keys(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """(rule keys, simulation keys) of a batch: bank rules drawn uniformly."""
    rule_key, sim_key = jax.random.split(key)
    if self.rule_keys is None:
      rule_keys = jax.random.split(rule_key, batch_size)
    else:
      index = jax.random.randint(rule_key, (batch_size,), 0, self.rule_keys.shape[0])
      rule_keys = jnp.asarray(self.rule_keys)[index]
    return rule_keys, jax.random.split(sim_key, batch_size)


@dataclasses.dataclass(frozen=True)
class DyckSource(_OnDevice):
  """k-Dyck or shuffle-Dyck: concatenated balanced words cut to seq_len + 1 nca_tokens."""
  cfg: dyck.DyckConfig
  seq_len: int = 1024

  @property
  def vocab_size(self) -> int:
    return dyck.vocab_size(self.cfg)

  def loss_mask(self) -> jax.Array:
    return jnp.ones((self.seq_len,), jnp.float32)

  def row_keys(self, key: jax.Array, batch_size: int) -> jax.Array:
    return jax.random.split(key, batch_size)

  def rows(self, row_keys: jax.Array) -> jax.Array:
    return jax.vmap(dyck.dyck_tokens, in_axes=(0, None, None))(
        row_keys, self.seq_len + 1, self.cfg)


def make_sharded_batch(source, key: jax.Array, batch_size: int,
                       mesh) -> tuple[batch_lib.Batch, dict]:
  """`source.batch(key, batch_size)` with each device making its own rows (no
  communication); the rows come out split over the mesh's data-parallel axes. Also
  returns the source's scalars about the batch (`batch_metrics`; {} for most sources)."""
  spec = P(sharding.BATCH_AXES)
  make_rows = jax.shard_map(lambda src, keys: src.rows_and_stats(keys), mesh=mesh,
                            in_specs=(P(), spec), out_specs=spec, check_vma=False)
  rows, stats = make_rows(source, source.row_keys(key, batch_size))
  return to_batch(rows, source.loss_mask(), stats.get('kept')), source.batch_metrics(stats)


def to_batch(rows: jax.Array, loss_mask: jax.Array,
             kept: jax.Array | None = None) -> batch_lib.Batch:
  """Rows of seq_len + 1 tokens → inputs, next-token targets, per-target weights (0 on
  every target of a row whose `kept` is False)."""
  seq_len = rows.shape[-1] - 1
  inputs, targets = nca_tokens.inputs_and_targets(rows, seq_len)
  weights = jnp.broadcast_to(loss_mask, inputs.shape)
  if kept is not None:
    weights = weights * kept[:, None].astype(weights.dtype)
  return batch_lib.Batch(inputs, targets, weights)


jax.tree_util.register_dataclass(
    NCASource, data_fields=['rule_keys'], meta_fields=['cfg', 'seq_len', 'mode', 'shuffle'])
jax.tree_util.register_dataclass(DyckSource, data_fields=[], meta_fields=['cfg', 'seq_len'])
