"""The training loop (`python -m ncalm.main`): start-up checks, the state restored or made
(`ncalm.step`), steps, evaluations, checkpoints, logs, and a clean stop.

The loop dispatches step t before it fetches step t-1's metrics, so the devices never wait
on Python. Every evaluator the config enables runs at its own cadence; the loop writes what
they return (JSONL, TensorBoard, pictures under the workdir). A stop request (SIGTERM,
SIGINT) saves a checkpoint at the step boundary; a non-finite loss or a dead gradient stops
the run with the last good checkpoint kept.
"""
from __future__ import annotations

import os
import signal
import time

from absl import logging
import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from ncalm import checkpoint
from ncalm import errors
from ncalm import metrics as metrics_lib
from ncalm import perf
from ncalm import run_files
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm import transfer
from ncalm import viz
from ncalm import workdir as workdir_lib
from ncalm.data import feeds as feeds_lib
from ncalm.data import text
from ncalm.eval import registry
from ncalm.eval import reports

# -------------------------------------------------------------------------- loop


class StopRequested:
  """Turns SIGTERM (what a preempted VM gets) into a flag the loop checks each step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM: saving a checkpoint, then stopping.')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


# A NaN this many steps after a resume may come from the checkpoint rather than the config.
SUSPECT_STEPS_AFTER_RESTORE = 10


def _check_finite(step: int, scalars: dict, resumed_from: int | None = None,
                  checkpoint_path: str = '') -> None:
  """Loss and gradient norm of a finished step must be finite (then so is its update)."""
  loss, grad_norm = scalars['train/loss'], scalars['train/grad_norm']
  if np.isfinite(loss) and np.isfinite(grad_norm):
    return
  head = f'loss {loss}, gradient norm {grad_norm} at step {step}: stopping.'
  if resumed_from is not None and step - resumed_from <= SUSPECT_STEPS_AFTER_RESTORE:
    raise errors.NonFiniteLoss(
        f'{head} This run resumed {step - resumed_from} step(s) earlier from the checkpoint '
        f'of step {resumed_from} ({checkpoint_path}), which may be at fault: it matches its '
        'checksum, so it holds what was saved, but that state may already have been '
        'diverging. Move that checkpoint directory away to resume from the one before it, '
        'and check optim.lr and optim.clip_norm.')
  raise errors.NonFiniteLoss(
      f'{head} The last good checkpoint is kept in the workdir; lower optim.lr, set '
      'optim.clip_norm or check the data, then rerun the same command to resume.')


# A gradient norm of exactly 0 on this many steps in a row from a run's start: nothing can
# learn (e.g. an imported checkpoint whose weights are zero or damaged), so the run stops
# instead of training a dead model to the end.
DEAD_GRADIENT_STEPS = 3


def _check_gradient_alive(start: int, done: int, grad_norms: list[float],
                          init_from: str = '') -> None:
  """Raises DeadGradient when the first DEAD_GRADIENT_STEPS steps after `start` all had a
  gradient norm of exactly 0; `grad_norms` holds those steps' norms in order."""
  if done - start != DEAD_GRADIENT_STEPS or any(g != 0.0 for g in grad_norms):
    return
  source = (f'the parameters it starts from (init.from_run={init_from!r}: check that '
            'checkpoint; an export\'s checksums are verified on import)' if init_from else
            'its parameters, frozen groups (init.freeze) or loss mask')
  raise errors.DeadGradient(
      f'gradient norm exactly 0 on steps {start + 1}-{done}: this model cannot learn, so the '
      f'run stops instead of training it. Look at {source}.')


def _on_process_0(fn):
  """Runs fn on process 0; every process learns whether it succeeded (no one hangs)."""
  if jax.process_count() == 1:
    return fn()
  failure = None
  if jax.process_index() == 0:
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      failure = e
  ok = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
  if failure is not None:
    raise failure
  if not ok:
    raise errors.UserError('process 0 refused to start the run: its log says why.')


def _start(cfg: ml_collections.ConfigDict, workdir: str, store: checkpoint.Checkpoints):
  """Refusals that need the workdir: too few train_steps for its checkpoint, disk space."""
  latest = store.latest_step()
  if latest is not None and latest > cfg.train_steps:
    raise errors.UserError(
        f'train_steps={cfg.train_steps} is below the step of the workdir\'s latest '
        f'checkpoint ({latest}, in {store.directory}): set train_steps >= {latest} to '
        'continue this run, or use a new --workdir.')
  if jax.process_index() == 0:
    workdir_lib.warn_if_short_of_space(workdir, store.bytes, cfg.keep_checkpoints)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Runs (or resumes) a training run in workdir; returns the last metrics.

  Every config check runs first, then the workdir is checked (writable, not in use,
  made for this config), and only then is anything sampled, written or restored.
  `devices` (default: all) is the mesh's devices, for tests that mix device counts.
  Raises errors.Interrupted after a SIGTERM stop (checkpoint saved), NonFiniteLoss on a
  NaN/Inf step and CheckpointError when a save fails or no checkpoint is intact.
  """
  checked = startup.check(cfg)
  setup = step_lib.create_setup(cfg, checked.model, devices)  # mesh, sharding checks
  startup.check_mesh(cfg, checked, setup.mesh)
  if cfg.init.from_run and not checkpoint.has_checkpoints(workdir):  # else it resumes itself
    transfer.check_stage1(setup.init_spec, setup.abstract_state.params, workdir)
  is_host0 = jax.process_index() == 0
  workdir_lib.check_writable(workdir)
  workdir_lib.check_shared(workdir)
  lock = workdir_lib.Lock(workdir, enabled=is_host0)
  _on_process_0(lock.acquire)
  try:
    _on_process_0(lambda: workdir_lib.check_identity(
        workdir, cfg, content=feeds_lib.content_fingerprints(cfg)))
    store = checkpoint.Checkpoints(workdir, cfg, setup.abstract_state, setup.mesh)
    try:
      _start(cfg, workdir, store)
      last = _train(cfg, workdir, setup, store)
    except BaseException:
      try:
        store.close()
      except errors.CheckpointError as e:  # already failing: report, don't mask
        logging.error('%s', e)
      raise
    store.close()
  finally:
    lock.release()
  if is_host0:
    viz.plot_curves(os.path.join(workdir, run_files.METRICS),
                    os.path.join(workdir, run_files.LOSS_CURVES),
                            keys=('train/loss', 'eval/loss', 'eval/unigram_loss'))
  if last.get('stopped_at') is not None:
    raise errors.Interrupted(
        f'SIGTERM at step {last["stopped_at"]} of {cfg.train_steps}: its checkpoint is saved '
        f'in {store.directory}. Rerun the same command to resume.')
  return last['metrics']


def _train(cfg, workdir: str, setup: step_lib.Setup, store: checkpoint.Checkpoints) -> dict:
  """The loop: {'metrics': last metrics, 'stopped_at': step or None}."""
  run = feeds_lib.load(cfg, workdir)
  seed_key = jax.random.PRNGKey(cfg.seed)
  init_key, train_key = jax.random.split(seed_key)
  is_host0 = jax.process_index() == 0

  restored = store.restore_latest()  # the workdir's own checkpoint first, then init.from_run
  if restored is None and setup.init_spec.changes_fresh_init:
    state = transfer.initial_state(setup, lambda: step_lib.create_state(setup, init_key), init_key,
                                   workdir)
    resumed_from = None
  elif restored is None:
    state, resumed_from = step_lib.create_state(setup, init_key), None
  else:
    state, resumed_from = restored
  start = int(state.step)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_host0)
  writer.truncate_after(start)
  if start:
    logging.info('Resumed from step %d.', start)
  if start >= cfg.train_steps:
    writer.close()
    return dict(metrics={}, stopped_at=None)

  do_step, evaluators, prefetcher = _feed_parts(cfg, setup, run, train_key)
  flops = perf.flops_per_token(setup.model.cfg, cfg.seq_len)
  peak = perf.peak_flops(jax.devices()[0].device_kind, cfg.peak_flops or None)
  if peak is None and jax.default_backend() == 'cpu':
    peak = perf.measured_matmul_flops()  # no datasheet peak: this CPU's f32 GEMM rate
  tokens_per_step = cfg.global_batch * cfg.seq_len
  progress = metrics_lib.Progress(cfg.train_steps, start, tokens_per_step)
  stop = StopRequested()
  wait = _WaitShare()
  last: dict = {}
  pending = None  # (step number after the update, device scalars)
  stopped_at = None
  first_norms: list[float] = []  # gradient norms of the first steps, for the dead-model check

  def settle(pending):
    """Fetches a finished step's scalars, checks them and logs them."""
    done, device_scalars = pending
    scalars = {k: float(v) for k, v in jax.device_get(device_scalars).items()}
    _check_finite(done, scalars, resumed_from,
                  store.path(resumed_from) if resumed_from is not None else '')
    if done - start <= DEAD_GRADIENT_STEPS:
      first_norms.append(scalars['train/grad_norm'])
      _check_gradient_alive(start, done, first_norms,
                            cfg.init.from_run if resumed_from is None else '')
    progress.update(done)
    if done % cfg.log_every == 0 or done == cfg.train_steps:
      rate = progress.tokens_per_second()
      if prefetcher is not None:
        scalars['perf/data_wait'] = wait.fraction(prefetcher.wait_seconds)
      if rate:
        scalars['perf/tokens_per_s'] = rate
        scalars['perf/step_s'] = tokens_per_step / rate
        util = perf.mfu(flops, rate, setup.mesh.size, peak)
        if util is not None:
          scalars['perf/mfu'] = util
      writer.write(done, scalars)
      if is_host0:
        logging.info(progress.line(done, scalars))
    return scalars

  try:
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
      for step in range(start, cfg.train_steps):
        state, device_scalars = do_step(state, step)
        store.check()  # a failed background save stops the run here, not 500 steps later
        if pending is not None:
          last = settle(pending)
        pending = (step + 1, device_scalars)
        done = step + 1
        save_now = (done % cfg.checkpoint_every == 0 or done == cfg.train_steps
                    or stop.requested)
        due = [n for n in evaluators if registry.due(cfg, n, done)]
        eval_now = bool(due)
        if save_now or eval_now:
          last = settle(pending)  # never save or evaluate a state with a bad loss
          pending = None
        if eval_now:
          final = cfg if done == cfg.train_steps else None   # kept for ncalm.evaluate
          last.update(_evaluate({n: evaluators[n] for n in due}, state.params, done, workdir,
                                writer, final))
        if save_now:
          store.save(done, state)
        if save_now or eval_now:
          progress.restart(done)
        if stop.requested:
          if done < cfg.train_steps:
            stopped_at = done
          break
      if pending is not None:
        last = settle(pending)
  finally:
    writer.close()
    stop.restore()
    if prefetcher is not None:
      prefetcher.close()
  return dict(metrics=last, stopped_at=stopped_at)


SHOWN = ('eval/loss', 'eval/unigram_loss', 'eval/perplexity', 'eval/bits_per_byte',
         'probe/cell_accuracy', 'probe/frame_accuracy', 'probe/copy_baseline',
         'induction/second_copy_loss')


def _evaluate(evaluators: dict, params, step: int, workdir: str, writer,
              final_cfg=None) -> dict[str, float]:
  """Runs the evaluators; writes their scalars (one JSONL line), their pictures
  (TensorBoard, and workdir/TAG_DIR/step_NNNNNNN.png) and one log line. At the last step
  (`final_cfg`: the run's config) each evaluator's result is also kept where
  `ncalm.evaluate` reuses it (`ncalm.eval.reports`)."""
  scalars, images = {}, {}
  for name, evaluator in evaluators.items():
    more_scalars, more_images = evaluator.run(params)
    scalars.update(more_scalars)
    images.update(more_images)
    if final_cfg is not None and jax.process_index() == 0:
      reports.write_item(reports.out_dir(workdir, step), name,
                         reports.settings(final_cfg, name), more_scalars, more_images)
  if jax.process_index() == 0:
    for tag, picture in images.items():
      path = os.path.join(workdir, run_files.picture(tag, step))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      viz.save_png(path, picture)
      writer.write_image(step, tag, picture)
  writer.write(step, scalars)
  if jax.process_index() == 0:
    logging.info('eval at step %d | %s', step, ' | '.join(
        f'{k.split("/")[1]} {scalars[k]:.4f}' for k in SHOWN if k in scalars))
  return scalars


class _WaitShare:
  """The share of wall time spent waiting for the host's data since the last call."""

  def __init__(self):
    self.time, self.waited = time.perf_counter(), 0.0

  def fraction(self, waited_total: float) -> float:
    now = time.perf_counter()
    share = (waited_total - self.waited) / max(now - self.time, 1e-9)
    self.time, self.waited = now, waited_total
    return share


def _feed_parts(cfg, setup: step_lib.Setup, run: feeds_lib.Feeds, train_key):
  """What depends on where the data is made: (do_step(state, step) → (state, scalars),
  {name: evaluator}, the text prefetcher or None).

  On-device sources go to the devices once (each step reads them there) and the step
  makes its batch inside; a text feed's rows are read by the host, ahead of time."""
  if run.on_device:
    run = feeds_lib.Feeds(*jax.device_put((run.train_source, run.val_source),
                                          sharding.replicated(setup.mesh)))
    train_step = step_lib.make_train_step(setup)
    return ((lambda state, step: train_step(state, run.train_source, train_key)),
            registry.build(setup, cfg, run), None)
  logging.info('%s: %s, vocabulary %d ids (model: %d).', cfg.data.source,
               cfg.data[cfg.data.source].path, run.train_source.meta['vocab_size'],
               setup.model.cfg.vocab_size)
  prefetcher = text.Prefetcher(run.train_source, sharding.batch_sharding(setup.mesh),
                               cfg.global_batch, cfg.data.text.prefetch,
                               cfg.data.text.document_masking)
  train_step = step_lib.make_train_step_on_batch(setup)
  return ((lambda state, step: train_step(state, prefetcher.batch(step), train_key)),
          registry.build(setup, cfg, run), prefetcher)
