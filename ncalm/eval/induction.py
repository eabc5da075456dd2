"""The induction probe: the loss on the second copy of a random token sequence shown twice.

A row is n random token ids (uniform over the text vocabulary), the same n again, then
random filler up to seq_len + 1 tokens (not scored). Nothing in the first copy can be
predicted; every token of the second copy but its first can be, by finding the earlier
occurrence of the token before it and copying what followed (an induction head). The
probe reports the mean loss on the first copy (≈ ln V: the no-copying baseline) and on
the second, and the second copy's greedy accuracy; the step at which the second-copy loss
falls is the onset of in-context copying, compared between arms of an experiment.
The rows are drawn once from a fixed key, so every evaluation sees the same sequences.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ncalm import errors
from ncalm import losses
from ncalm import sharding
from ncalm.eval import heldout

INDUCTION_KEY = 2**31 - 3   # fold_in of the eval key: far from the other evaluators' keys


def induction_rows(key: jax.Array, sequences: int, length: int, seq_len: int,
                   vocab: int) -> jax.Array:
  """int32 [sequences, seq_len + 1]: r, r, filler with r of `length` ids < vocab."""
  first_key, filler_key = jax.random.split(key)
  r = jax.random.randint(first_key, (sequences, length), 0, vocab, jnp.int32)
  filler = jax.random.randint(filler_key, (sequences, seq_len + 1 - 2 * length), 0, vocab,
                              jnp.int32)
  return jnp.concatenate([r, r, filler], axis=1)


def copy_masks(length: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """float32 [seq_len] weights of the targets scored: (first copy: its tokens 1..n-1,
  second copy: its tokens 1..n-1). Target t is token t + 1."""
  token = np.arange(seq_len) + 1
  first = (token >= 1) & (token < length)
  second = (token >= length + 1) & (token < 2 * length)
  return first.astype(np.float32), second.astype(np.float32)


class InductionProbe:
  """induction/first_copy_loss, induction/second_copy_loss, induction/second_copy_accuracy
  on `evals.induction.sequences` rows with copies of `evals.induction.length` tokens."""

  ITEMS = 'sequences'   # the field of its evals section that --limit caps

  @staticmethod
  def enabled(cfg) -> bool:
    return cfg.evals.induction.sequences > 0   # 0 turns the probe off

  @staticmethod
  def check(cfg, source) -> None:
    del source
    length = cfg.evals.induction.length
    if cfg.evals.induction.sequences and not 2 <= length <= (cfg.seq_len + 1) // 2:
      raise errors.UserError(
          f'evals.induction.length={length}: two copies must fit in seq_len + 1 = '
          f'{cfg.seq_len + 1} tokens, and a copy needs 2 tokens; use 2 to '
          f'{(cfg.seq_len + 1) // 2}.')

  @staticmethod
  def check_mesh(cfg, source, data_parallel: int) -> None:
    del source
    if cfg.evals.induction.sequences % data_parallel:
      raise errors.UserError(
          f'evals.induction.sequences={cfg.evals.induction.sequences} is not divisible by the '
          f'{data_parallel} data-parallel devices (mesh data×fsdp): use a multiple of '
          f'{data_parallel}, or 0 to turn the probe off.')

  def __init__(self, setup, cfg, feeds):
    vocab = int(feeds.val_source.meta['vocab_size'])   # real ids, not the padding
    ind = cfg.evals.induction
    rows = induction_rows(jax.random.fold_in(heldout.eval_key(cfg), INDUCTION_KEY),
                          ind.sequences, ind.length, cfg.seq_len, vocab)
    self.rows = jax.device_put(rows, sharding.batch_sharding(setup.mesh))
    first, second = (jnp.asarray(m) for m in copy_masks(ind.length, cfg.seq_len))

    def probe_fn(params, rows):
      inputs, targets = rows[:, :-1], rows[:, 1:]
      logits = setup.model.apply({'params': params}, inputs, deterministic=True)
      ce = losses.token_cross_entropy(logits, targets)
      right = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
      mean = lambda x, m: jnp.sum(x * m[None, :]) / (jnp.sum(m) * x.shape[0])
      return mean(ce, first), mean(ce, second), mean(right, second)

    self._probe = jax.jit(probe_fn, in_shardings=(setup.state_shardings.params,
                                                  sharding.batch_sharding(setup.mesh)),
                          out_shardings=sharding.replicated(setup.mesh))

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(losses and accuracy, no images)."""
    first, second, accuracy = jax.device_get(self._probe(params, self.rows))
    return {'induction/first_copy_loss': float(first),
            'induction/second_copy_loss': float(second),
            'induction/second_copy_accuracy': float(accuracy)}, {}
