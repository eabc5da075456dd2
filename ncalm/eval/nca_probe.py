"""The NCA next-frame probe: greedy decoding of one whole frame from the frames before it.

On held-out sequences the model decodes the patch tokens of the last whole frame in the
window, each from everything before it, choosing among patch ids only; the probe reports
whole-frame and per-cell accuracy beside the copy baseline (predicting the previous frame),
and a PNG shows previous | true | decoded frames (docs/method.md §6).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ncalm import files
from ncalm import viz
from ncalm.data import device_sources
from ncalm.data import nca_tokens


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


class Probe:
  """The probe of one run: a jitted decode of `probe_sequences` held-out sequences."""

  def __init__(self, setup, source, cfg, key, in_shardings, out_sharding):
    self.source, self.key = source, key
    ncfg = source.cfg
    self.tokens_per_frame = nca_tokens.tokens_per_frame(ncfg)
    frame = cfg.seq_len // self.tokens_per_frame - 1
    if frame < 1:
      raise ValueError(f'seq_len={cfg.seq_len} holds fewer than two whole frames: the '
                       'probe needs at least one frame of context.')
    start = frame * self.tokens_per_frame + 1
    patches = nca_tokens.patches_per_frame(ncfg)

    def probe_fn(params, src, k):
      batch = device_sources.make_sharded_batch(src, k, cfg.probe_sequences, setup.mesh)
      predicted = greedy_frame(setup.model, params, batch.inputs, start, patches,
                               nca_tokens.start_of_frame(ncfg))
      truth = batch.inputs[:, start:start + patches]
      previous = batch.inputs[:, start - self.tokens_per_frame:
                              start - self.tokens_per_frame + patches]
      return predicted, truth, previous

    self._probe = jax.jit(probe_fn, in_shardings=in_shardings, out_shardings=out_sharding)

  def run(self, params, step: int, workdir: str, writer) -> dict[str, float]:
    """Accuracies (and, on process 0, the picture in workdir/probe and TensorBoard)."""
    predicted, truth, previous = jax.device_get(self._probe(params, self.source, self.key))
    ncfg = self.source.cfg
    cells = lambda ids: np.asarray(nca_tokens.decode_frames(jnp.asarray(ids), ncfg))
    pred_cells, true_cells, prev_cells = cells(predicted), cells(truth), cells(previous)
    out = {'probe/frame_accuracy': float(np.mean(np.all(predicted == truth, axis=1))),
           'probe/cell_accuracy': float(np.mean(pred_cells == true_cells)),
           'probe/copy_baseline': float(np.mean(prev_cells == true_cells))}
    if jax.process_index() == 0:
      picture = viz.probe_picture(prev_cells, true_cells, pred_cells, ncfg.num_states)
      os.makedirs(os.path.join(workdir, 'probe'), exist_ok=True)
      path = os.path.join(workdir, 'probe', f'step_{step:07d}.png')
      with files.atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp)
      writer.write_image(step, 'probe/previous_truth_predicted', picture)
    return out
