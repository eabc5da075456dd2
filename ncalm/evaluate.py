"""Evaluation on held-out data: loss, loss per frame index, and the next-frame probe.

Held-out batches come from the validation rules with fixed keys, so every evaluation of
a run (and of a resumed run) sees the same sequences. The probe (SPEC §6) greedily
decodes one whole frame of patch tokens from the frames before it and reports
whole-frame and per-cell accuracy; a PNG shows the decoded frames next to the truth.
"""
from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from ncalm import files
from ncalm import render
from ncalm import sharding
from ncalm import sources
from ncalm import tokens

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


def token_counts(batch: sources.Batch, vocab_size: int) -> jax.Array:
  """How often each id is a scored target in the batch: float32 [vocab_size]."""
  return jnp.zeros(vocab_size).at[batch.targets].add(batch.loss_mask)


def position_loss_sums(model, params, batch: sources.Batch):
  """Per-position Σ over the batch of mask·cross-entropy and of mask: [L] each."""
  logits = model.apply({'params': params}, batch.inputs, deterministic=True)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
  return jnp.sum(ce * batch.loss_mask, 0), jnp.sum(batch.loss_mask, 0)


def greedy_frame(model, params, inputs_BL: jax.Array, start: int, length: int,
                 num_ids: int) -> jax.Array:
  """Greedily decodes tokens start .. start+length-1 (each from everything before it),
  choosing among ids < num_ids (patch ids); returns int32 [B, length]."""
  batch = inputs_BL.shape[0]

  def body(i, buffer):
    position = start + i
    logits = model.apply({'params': params}, buffer, deterministic=True,
                         logits_at=jnp.full((batch,), position - 1))
    choice = jnp.argmax(logits[:, :num_ids], axis=-1).astype(jnp.int32)
    return buffer.at[:, position].set(choice)

  buffer = jax.lax.fori_loop(0, length, body, inputs_BL)
  return jax.lax.dynamic_slice_in_dim(buffer, start, length, axis=1)


class Evaluator:
  """Runs held-out loss (and, for NCA, the probe) for a training setup."""

  def __init__(self, setup, source, cfg, train_source):
    self.setup, self.source, self.cfg = setup, source, cfg
    self.is_nca = isinstance(source, sources.NCASource)
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
      batch = sources.make_sharded_batch(src, key, cfg.global_batch, mesh)
      sums = position_loss_sums(setup.model, params, batch)
      return sums, token_counts(batch, setup.model.cfg.vocab_size)

    self._loss = jax.jit(loss_fn, in_shardings=(param_shardings, rep, rep), out_shardings=rep)
    if self.is_nca:
      ncfg = source.cfg
      self.tpf = tokens.tokens_per_frame(ncfg)
      self.probe_frame = cfg.seq_len // self.tpf - 1
      if self.probe_frame < 1:
        raise ValueError(f'seq_len={cfg.seq_len} holds fewer than two whole frames: the '
                         'probe needs at least one frame of context.')

      def probe_fn(params, src, key):
        batch = sources.make_sharded_batch(src, key, cfg.probe_sequences, mesh)
        start = self.probe_frame * self.tpf + 1
        n = tokens.patches_per_frame(ncfg)
        predicted = greedy_frame(setup.model, params, batch.inputs, start, n,
                                 tokens.start_of_frame(ncfg))
        truth = batch.inputs[:, start:start + n]
        previous = batch.inputs[:, start - self.tpf:start - self.tpf + n]
        return predicted, truth, previous

      self._probe = jax.jit(probe_fn, in_shardings=(param_shardings, rep, rep),
                            out_shardings=rep)

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
      scalars.update(self._run_probe(params, step, workdir, writer))
    writer.write(step, scalars)
    if jax.process_index() == 0:
      shown = ('eval/loss', 'eval/unigram_loss', 'probe/cell_accuracy',
               'probe/frame_accuracy', 'probe/copy_baseline')
      logging.info('eval at step %d | %s', step, ' | '.join(
          f'{k.split("/")[1]} {scalars[k]:.4f}' for k in shown if k in scalars))
    return scalars

  def _run_probe(self, params, step, workdir, writer) -> dict[str, float]:
    predicted, truth, previous = jax.device_get(self._probe(params, self.source, self.probe_key))
    ncfg = self.source.cfg
    cells = lambda ids: np.asarray(tokens.decode_frames(jnp.asarray(ids), ncfg))
    pred_cells, true_cells, prev_cells = cells(predicted), cells(truth), cells(previous)
    out = {'probe/frame_accuracy': float(np.mean(np.all(predicted == truth, axis=1))),
           'probe/cell_accuracy': float(np.mean(pred_cells == true_cells)),
           'probe/copy_baseline': float(np.mean(prev_cells == true_cells))}
    if jax.process_index() == 0:
      picture = probe_picture(prev_cells, true_cells, pred_cells, ncfg.num_states)
      os.makedirs(os.path.join(workdir, 'probe'), exist_ok=True)
      path = os.path.join(workdir, 'probe', f'step_{step:07d}.png')
      with files.atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp)
      writer.write_image(step, 'probe/previous_truth_predicted', picture)
    return out


def probe_picture(previous, truth, predicted, num_states: int, rows: int = 4,
                  scale: int = 8) -> np.ndarray:
  """Rows of [previous frame | true next frame | decoded next frame], uint8 HWC."""
  gap = np.full((previous.shape[1] * scale, scale, 3), 255, np.uint8)
  lines = []
  for i in range(min(rows, len(previous))):
    tiles = [render.frames_to_rgb(f[i], num_states, scale) for f in (previous, truth, predicted)]
    lines.append(np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1))
    lines.append(np.full((scale, lines[-1].shape[1], 3), 255, np.uint8))
  return np.concatenate(lines[:-1], axis=0)
