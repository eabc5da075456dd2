"""Held-out loss: the loss on fixed held-out batches, beside the unigram baseline.

On-device sources (NCA, Dyck) make their held-out batches inside the jitted evaluation
from fixed keys of the held-out rules; a text run reads fixed windows of its validation
split once and keeps them on the devices. Either way every evaluation of a run (and of a
resumed run) sees the same sequences. What is reported follows from what the source says
of itself: the loss per frame index when it has frames (NCA), perplexity and bits per byte
when it is text.
"""
from __future__ import annotations

import jax
import numpy as np

from ncalm import losses
from ncalm import sharding
from ncalm.data import batch as batch_lib
from ncalm.data import device_sources
from ncalm.data import text

EVAL_SEED_OFFSET = 1_000_003  # held-out keys never coincide with training keys
UNIGRAM_KEY = 2**30           # fold_in of the eval key for the unigram estimate


def eval_key(cfg) -> jax.Array:
  """The root of a run's held-out keys: batch i uses fold_in(eval_key, i < batches); the
  unigram estimate and the probe fold in numbers far from those."""
  return jax.random.PRNGKey(cfg.seed + EVAL_SEED_OFFSET)


def position_loss_sums(model, params, batch: batch_lib.Batch):
  """Per-position Σ over the batch of mask·cross-entropy and of mask: [L] each."""
  logits = model.apply({'params': params}, batch.inputs, deterministic=True)
  return losses.position_sums(logits, batch)


class HeldoutLoss:
  """eval/loss and eval/unigram_loss on `evals.heldout.batches` held-out batches of
  global_batch sequences; eval/loss_frame/NN per frame (NCA); eval/perplexity and
  eval/bits_per_byte (bits per byte of the original text: what compares across
  tokenisers) for text."""

  ITEMS = 'batches'   # the field of its evals section that --limit caps

  @staticmethod
  def enabled(cfg) -> bool:
    del cfg
    return True

  @staticmethod
  def check(cfg, source) -> None:
    del cfg, source  # batches >= 1 is a plain value check (config_lib)

  @staticmethod
  def check_mesh(cfg, source, data_parallel: int) -> None:
    del cfg, source, data_parallel  # held-out batches have the training batch's size

  def __init__(self, setup, cfg, feeds):
    self.source = feeds.val_source
    self.tokens_per_frame = self.source.tokens_per_frame
    batches = cfg.evals.heldout.batches
    if self.source.on_device:
      self._init_on_device(setup, cfg, feeds, batches)
    else:
      self._init_text(setup, cfg, feeds, batches)

  def _init_on_device(self, setup, cfg, feeds, batches: int) -> None:
    mesh, rep = setup.mesh, sharding.replicated(setup.mesh)
    root = eval_key(cfg)
    self.keys = [jax.random.fold_in(root, i) for i in range(batches)]
    self.unigram_logp = feeds.train_source.unigram_log_probs(jax.random.fold_in(root,
                                                                              UNIGRAM_KEY))

    def loss_fn(params, src, key):
      batch, _ = device_sources.make_sharded_batch(src, key, cfg.global_batch, mesh)
      sums = position_loss_sums(setup.model, params, batch)
      return sums, batch_lib.token_counts(batch, setup.model.cfg.vocab_size)

    self._loss = jax.jit(loss_fn, in_shardings=(setup.state_shardings.params, rep, rep),
                         out_shardings=rep)

  def _init_text(self, setup, cfg, feeds, batches: int) -> None:
    feed, batch_sharding = self.source, sharding.batch_sharding(setup.mesh)
    first, count = text.local_rows(batch_sharding, cfg.global_batch)
    masking = cfg.data.text.document_masking
    # The windows never change: read once, kept on the devices (this process's rows).
    self.batches = []
    for i in range(batches):
      rows, weights, segments = feed.read_batch(i * cfg.global_batch + first, count)
      self.batches.append(text.to_global_batch(rows, batch_sharding, cfg.global_batch,
                                               segments if masking else None, weights))
    # So is their unigram loss: the training rows' token frequencies (add-½) on them.
    rows, weights, _ = feed.read_batch(0, batches * cfg.global_batch)
    weights = np.ones(rows[:, 1:].shape) if weights is None else weights
    logp = feeds.train_source.unigram_log_probs()[rows[:, 1:]]
    self.unigram_loss = float(-np.sum(logp * weights) / np.sum(weights))

    def loss_fn(params, batch):
      logits = setup.model.apply({'params': params}, batch.inputs, deterministic=True,
                                 segment_ids_BL=batch.segment_ids)
      return losses.masked_sums(logits, batch)

    self._loss = jax.jit(loss_fn, in_shardings=(setup.state_shardings.params, batch_sharding),
                         out_shardings=sharding.replicated(setup.mesh))

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(scalars, no images)."""
    if self.source.on_device:
      return self._run_on_device(params), {}
    return self._run_text(params), {}

  def _run_on_device(self, params) -> dict[str, float]:
    ce = count = unigram = 0.0
    for key in self.keys:
      (ce_L, count_L), counts = jax.device_get(self._loss(params, self.source, key))
      ce, count, unigram = ce + ce_L, count + count_L, unigram + counts
    scalars = {'eval/loss': float(np.sum(ce) / np.sum(count))}
    logp = self.unigram_logp[:len(unigram)]
    scalars['eval/unigram_loss'] = float(-np.sum(unigram * logp) / np.sum(unigram))
    if self.tokens_per_frame:
      frame_of_target = (np.arange(len(ce)) + 1) // self.tokens_per_frame
      for f in range(1, frame_of_target.max() + 1):
        sel = frame_of_target == f
        if count[sel].sum():
          scalars[f'eval/loss_frame/{f:02d}'] = float(ce[sel].sum() / count[sel].sum())
    return scalars

  def _run_text(self, params) -> dict[str, float]:
    ce = count = 0.0
    for batch in self.batches:
      total, n = jax.device_get(self._loss(params, batch))
      ce, count = ce + float(total), count + float(n)
    loss = ce / count
    return {'eval/loss': loss, 'eval/perplexity': float(np.exp(loss)),
            'eval/bits_per_byte': loss / np.log(2) / self.source.bytes_per_token,
            'eval/unigram_loss': self.unigram_loss}
