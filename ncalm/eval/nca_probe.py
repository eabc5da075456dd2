"""The NCA next-frame probe: greedy decoding of one whole frame from the frames before it.

On held-out sequences the model decodes the patch tokens of the last whole frame in the
window, each from everything before it, choosing among patch ids only (`decode.greedy`:
the window up to the frame is prefilled once, then one token per step from the KV cache).
The probe reports whole-frame and per-cell accuracy beside the copy baseline (predicting
the previous frame), and a picture shows previous | true | decoded frames
(docs/method.md §6).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ncalm import decode
from ncalm import errors
from ncalm import model as model_lib
from ncalm import sharding
from ncalm import viz
from ncalm.data import device_sources
from ncalm.data import nca_tokens
from ncalm.eval import heldout

PROBE_KEY = 2**31 - 1   # fold_in of the eval key: far from the held-out batches' keys
IMAGE = 'probe/previous_truth_predicted'


class NextFrameProbe:
  """probe/frame_accuracy, probe/cell_accuracy and probe/copy_baseline on
  `evals.probe.sequences` held-out sequences, and the picture of them."""

  ITEMS = 'sequences'   # the field of its evals section that --limit caps

  @staticmethod
  def enabled(cfg) -> bool:
    return cfg.evals.probe.sequences > 0   # 0 turns the probe off

  @staticmethod
  def check(cfg, source) -> None:
    frames = cfg.seq_len // source.tokens_per_frame
    if cfg.evals.probe.sequences and frames < 2:
      raise errors.UserError(
          f'seq_len={cfg.seq_len} holds {frames} whole frame(s) of '
          f'{source.tokens_per_frame} tokens: the next-frame probe needs two (one of '
          'context); raise seq_len or set evals.probe.sequences=0.')

  @staticmethod
  def check_mesh(cfg, source, data_parallel: int) -> None:
    del source
    if cfg.evals.probe.sequences % data_parallel:
      raise errors.UserError(
          f'evals.probe.sequences={cfg.evals.probe.sequences} is not divisible by the '
          f'{data_parallel} data-parallel devices (mesh data×fsdp) that decode them: use a '
          f'multiple of {data_parallel}, or 0 to turn the probe off.')

  def __init__(self, setup, cfg, feeds):
    self.source = feeds.val_source
    self.key = jax.random.fold_in(heldout.eval_key(cfg), PROBE_KEY)
    ncfg = self.source.cfg
    self.tokens_per_frame = nca_tokens.tokens_per_frame(ncfg)
    frame = cfg.seq_len // self.tokens_per_frame - 1
    start = frame * self.tokens_per_frame + 1
    patches = nca_tokens.patches_per_frame(ncfg)
    sequences = cfg.evals.probe.sequences
    model = model_lib.Transformer(decode.decoding_config(setup.model.cfg))

    def probe_fn(params, src, k):
      batch, _ = device_sources.make_sharded_batch(src, k, sequences, setup.mesh)
      predicted = decode.greedy(model, params, batch.inputs[:, :start], patches,
                                nca_tokens.start_of_frame(ncfg))
      truth = batch.inputs[:, start:start + patches]
      previous = batch.inputs[:, start - self.tokens_per_frame:
                              start - self.tokens_per_frame + patches]
      return predicted, truth, previous

    rep = sharding.replicated(setup.mesh)
    self._probe = jax.jit(probe_fn, in_shardings=(setup.state_shardings.params, rep, rep),
                          out_shardings=rep)

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(accuracies, {IMAGE: previous | true | decoded frames, uint8 H×W×3})."""
    predicted, truth, previous = jax.device_get(self._probe(params, self.source, self.key))
    ncfg = self.source.cfg
    cells = lambda ids: np.asarray(nca_tokens.decode_frames(jnp.asarray(ids), ncfg))
    pred_cells, true_cells, prev_cells = cells(predicted), cells(truth), cells(previous)
    scalars = {'probe/frame_accuracy': float(np.mean(np.all(predicted == truth, axis=1))),
               'probe/cell_accuracy': float(np.mean(pred_cells == true_cells)),
               'probe/copy_baseline': float(np.mean(prev_cells == true_cells))}
    picture = viz.probe_picture(prev_cells, true_cells, pred_cells, ncfg.num_states)
    return scalars, {IMAGE: picture}
