"""The one contract between every data source and the step: a Batch of token arrays."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

UNIGRAM_SEQUENCES = 2048  # training sequences that estimate a source's token distribution


class Batch(NamedTuple):
  inputs: jax.Array     # int32 [B, L] token ids
  targets: jax.Array    # int32 [B, L] the next token of each input
  loss_mask: jax.Array  # float32 [B, L] weight of each target (0 = not scored)
  segment_ids: jax.Array | None = None  # int32 [B, L]: attention stays in a segment (document)


def token_counts(batch: Batch, vocab_size: int) -> jax.Array:
  """How often each id is a scored target in the batch: float32 [vocab_size]."""
  return jnp.zeros(vocab_size).at[batch.targets].add(batch.loss_mask)
