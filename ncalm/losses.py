"""Masked cross-entropy, the one copy: sums that add exactly across micro-batches and shards.

Every loss in ncalm is a pair (Σ mask·cross-entropy, Σ mask) so that gradient accumulation,
data parallelism and evaluation over many batches divide once, at the end.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
  """float32 [B, L]: −log softmax(logits)[target] at every position."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)


def masked_sums(logits_BLV: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
  """(Σ mask·cross-entropy, Σ mask) over the whole batch: two scalars."""
  ce = token_cross_entropy(logits_BLV, batch.targets)
  return jnp.sum(ce * batch.loss_mask), jnp.sum(batch.loss_mask)


def position_sums(logits_BLV: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
  """(Σ mask·cross-entropy, Σ mask) per position, summed over the batch: [L] each."""
  ce = token_cross_entropy(logits_BLV, batch.targets)
  return jnp.sum(ce * batch.loss_mask, 0), jnp.sum(batch.loss_mask, 0)
