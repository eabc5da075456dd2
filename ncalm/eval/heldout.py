"""Evaluation on held-out data: loss, the unigram baseline, loss per frame index (NCA),
and, for NCA runs, the next-frame probe (`ncalm.eval.nca_probe`).

Held-out batches come from the validation data with fixed keys, so every evaluation of
a run (and of a resumed run) sees the same sequences.
"""
from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import losses
from ncalm import sharding
from ncalm.data import batch as batch_lib
from ncalm.data import device_sources
from ncalm.data import nca_tokens
from ncalm.data import text
from ncalm.eval import nca_probe

EVAL_SEED_OFFSET = 1_000_003  # held-out keys never coincide with training keys
UNIGRAM_SEQUENCES = 2048      # training sequences that estimate the token distribution


def unigram_log_probs(source, num_batches: int, batch_size: int, key) -> np.ndarray:
  """log p(token) of the training data's token distribution (add-½ smoothing): the
  baseline that predicts every target from the token distribution alone."""
  @jax.jit
  def count(src, k):
    return token_counts(src.batch(k, batch_size), src.vocab_size)

  counts = sum(np.asarray(count(source, jax.random.fold_in(key, i)), np.float64)
               for i in range(num_batches))
  counts += 0.5
  return np.log(counts / counts.sum())


def token_counts(batch: batch_lib.Batch, vocab_size: int) -> jax.Array:
  """How often each id is a scored target in the batch: float32 [vocab_size]."""
  return jnp.zeros(vocab_size).at[batch.targets].add(batch.loss_mask)


def position_loss_sums(model, params, batch: batch_lib.Batch):
  """Per-position Σ over the batch of mask·cross-entropy and of mask: [L] each."""
  logits = model.apply({'params': params}, batch.inputs, deterministic=True)
  return losses.position_sums(logits, batch)


class Evaluator:
  """Runs held-out loss (and, for NCA, the probe) for a training setup."""

  def __init__(self, setup, source, cfg, train_source):
    self.setup, self.source, self.cfg = setup, source, cfg
    self.is_nca = isinstance(source, device_sources.NCASource)
    mesh = setup.mesh
    rep = sharding.replicated(mesh)
    eval_key = jax.random.PRNGKey(cfg.seed + EVAL_SEED_OFFSET)
    self.keys = [jax.random.fold_in(eval_key, i) for i in range(cfg.eval_batches)]
    # Loss batches use fold_in(eval_key, i < eval_batches); the probe and the unigram
    # estimate take keys far from those.
    self.probe_key = jax.random.fold_in(eval_key, 2**31 - 1)
    self.unigram_logp = unigram_log_probs(train_source, UNIGRAM_SEQUENCES // 256, 256,
                                          jax.random.fold_in(eval_key, 2**30))
    param_shardings = setup.state_shardings.params

    def loss_fn(params, src, key):
      batch = device_sources.make_sharded_batch(src, key, cfg.global_batch, mesh)
      sums = position_loss_sums(setup.model, params, batch)
      return sums, token_counts(batch, setup.model.cfg.vocab_size)

    self._loss = jax.jit(loss_fn, in_shardings=(param_shardings, rep, rep), out_shardings=rep)
    self.probe = None  # probe_sequences=0 turns the NCA probe off
    if self.is_nca:
      self.tpf = nca_tokens.tokens_per_frame(source.cfg)
    if self.is_nca and cfg.probe_sequences:
      self.probe = nca_probe.Probe(setup, source, cfg, self.probe_key,
                                   (param_shardings, rep, rep), rep)

  def run(self, params, step: int, workdir: str, writer) -> dict[str, float]:
    """Evaluates, writes the scalars (and the probe picture), returns the scalars."""
    ce = count = unigram = 0.0
    for key in self.keys:
      (ce_L, count_L), counts = jax.device_get(self._loss(params, self.source, key))
      ce, count, unigram = ce + ce_L, count + count_L, unigram + counts
    scalars = {'eval/loss': float(np.sum(ce) / np.sum(count))}
    logp = self.unigram_logp[:len(unigram)]
    scalars['eval/unigram_loss'] = float(-np.sum(unigram * logp) / np.sum(unigram))
    if self.is_nca:
      frame_of_target = (np.arange(len(ce)) + 1) // self.tpf
      for f in range(1, frame_of_target.max() + 1):
        sel = frame_of_target == f
        if count[sel].sum():
          scalars[f'eval/loss_frame/{f:02d}'] = float(ce[sel].sum() / count[sel].sum())
    if self.probe is not None:
      scalars.update(self.probe.run(params, step, workdir, writer))
    writer.write(step, scalars)
    if jax.process_index() == 0:
      shown = ('eval/loss', 'eval/unigram_loss', 'probe/cell_accuracy',
               'probe/frame_accuracy', 'probe/copy_baseline')
      logging.info('eval at step %d | %s', step, ' | '.join(
          f'{k.split("/")[1]} {scalars[k]:.4f}' for k in shown if k in scalars))
    return scalars


class TextEvaluator:
  """Held-out loss of a text run on fixed windows: the first eval_batches × global_batch
  windows of the validation split, in order (the same at every evaluation and resume).

  Reports eval/loss (nats per token), eval/perplexity, eval/bits_per_byte (the loss in
  bits per byte of the original text: what compares across tokenisers) and
  eval/unigram_loss (the same windows scored by the training data's token frequencies
  alone, add-½ smoothed: the baseline a model must beat)."""

  def __init__(self, setup, feed, cfg, train_feed):
    self.feed, self.cfg = feed, cfg
    batch_sharding = sharding.batch_sharding(setup.mesh)
    first, count = text.local_rows(batch_sharding, cfg.global_batch)
    masking = cfg.data.text.document_masking
    # The windows never change: read once, kept on the devices (this process's rows).
    self.batches = []
    for i in range(cfg.eval_batches):
      rows, segments = feed.read_rows_and_segments(i * cfg.global_batch + first, count)
      self.batches.append(text.to_global_batch(rows, batch_sharding, cfg.global_batch,
                                               segments if masking else None))
    # So is their unigram loss: the training rows' token frequencies (add-½) on them.
    sample = train_feed.read_rows(0, UNIGRAM_SEQUENCES)[:, 1:]
    counts = np.bincount(sample.ravel(), minlength=train_feed.vocab_size) + 0.5
    targets = feed.read_rows(0, cfg.eval_batches * cfg.global_batch)[:, 1:]
    self.unigram_loss = float(-np.log(counts / counts.sum())[targets].mean())
    rep = sharding.replicated(setup.mesh)

    def loss_fn(params, batch):
      logits = setup.model.apply({'params': params}, batch.inputs, deterministic=True,
                                 segment_ids_BL=batch.segment_ids)
      return losses.masked_sums(logits, batch)

    self._loss = jax.jit(loss_fn, in_shardings=(setup.state_shardings.params, batch_sharding),
                         out_shardings=rep)

  def run(self, params, step: int, workdir: str, writer) -> dict[str, float]:
    del workdir
    ce = count = 0.0
    for batch in self.batches:
      total, n = jax.device_get(self._loss(params, batch))
      ce, count = ce + float(total), count + float(n)
    loss = ce / count
    scalars = {'eval/loss': loss, 'eval/perplexity': float(np.exp(loss)),
               'eval/bits_per_byte': loss / np.log(2) / self.feed.bytes_per_token,
               'eval/unigram_loss': self.unigram_loss}
    writer.write(step, scalars)
    if jax.process_index() == 0:
      logging.info('eval at step %d | loss %.4f | unigram_loss %.4f | perplexity %.3f | '
                   'bits/byte %.4f', step, loss, scalars['eval/unigram_loss'],
                   scalars['eval/perplexity'], scalars['eval/bits_per_byte'])
    return scalars
