"""The training step and loop end to end on one device: data in the step, accumulation,
checkpoints, exact resume after SIGTERM and SIGKILL, NaN stops, start-up errors."""
import os
import re
import signal
import tempfile
import time
from unittest import mock

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import checkpoint
from ncalm import errors
from ncalm import metrics
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm.data import device_sources
from ncalm.data import feeds

import helpers
import tiny_config


def final_params(workdir, cfg):
  setup = step_lib.create_setup(cfg, startup.model_config(cfg, 10002))
  state, step = checkpoint.load_latest(workdir, cfg, setup)
  return step, jax.device_get(state.params)


class StepTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cfg = tiny_config.get_config()
    self.workdir = self.create_tempdir().full_path
    self.run_data = feeds.load(self.cfg, self.workdir)
    self.setup = step_lib.create_setup(self.cfg, startup.check(self.cfg).model)

  def test_batch_made_in_step_equals_source_batch(self):
    source = self.run_data.train_source
    key = jax.random.PRNGKey(3)
    sharded, _ = device_sources.make_sharded_batch(source, key, 4, self.setup.mesh)
    plain = source.batch(key, 4)
    for a, b in zip(sharded, plain):
      np.testing.assert_array_equal(a, b)

  def test_params_born_sharded_and_logical(self):
    state = step_lib.create_state(self.setup, jax.random.PRNGKey(0))
    self.assertEqual(state.params['layers']['attn']['query'].shape, (2, 32, 4, 8))
    self.assertEqual(state.params['embedding'].dtype, jnp.float32)
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(self.setup.state_shardings)):
      self.assertEqual(leaf.sharding, sharding)

  def test_host_fed_batch_step_equals_in_step_data(self):
    key = jax.random.PRNGKey(0)
    source = self.run_data.train_source
    data_key, _ = step_lib.step_keys(key, 0)
    batch = source.batch(data_key, self.cfg.global_batch)
    results = []
    with jax.set_mesh(self.setup.mesh), nn.logical_axis_rules(self.setup.rules):
      for step_fn, data in ((step_lib.make_train_step(self.setup), source),
                            (step_lib.make_train_step_on_batch(self.setup), batch)):
        state, scalars = step_fn(step_lib.create_state(self.setup, key), data, key)
        results.append((jax.device_get(state.params), jax.device_get(scalars)))
    self.assertEqual(results[0][1], results[1][1])
    jax.tree.map(np.testing.assert_array_equal, results[0][0], results[1][0])

  def test_gradient_accumulation_equals_one_big_batch(self):
    state = step_lib.create_state(self.setup, jax.random.PRNGKey(0))
    batch = self.run_data.train_source.batch(jax.random.PRNGKey(1), 4)
    self.cfg.unlock()
    results = []
    for accum in (1, 2, 4):
      self.cfg.grad_accum = accum
      setup = step_lib.create_setup(self.cfg, startup.model_config(self.cfg, 10002))
      with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        new, scalars = jax.jit(lambda s, b: step_lib.update(setup, s, b, None))(state, batch)
      results.append((jax.device_get(new.params), float(scalars['train/loss'])))
    for params, loss in results[1:]:
      self.assertAlmostEqual(loss, results[0][1], places=5)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5),
                   params, results[0][0])


class LoopTest(absltest.TestCase):

  def test_end_to_end_outputs_and_learning(self):
    workdir = self.create_tempdir().full_path
    cfg = tiny_config.get_config()
    cfg.train_steps = 30
    cfg.evals.heldout.every = cfg.evals.probe.every = 15
    cfg.checkpoint_every = 15
    last = train.train_and_evaluate(cfg, workdir)
    rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    losses = [r['train/loss'] for r in rows if 'train/loss' in r]
    self.assertLen(losses, 30)
    self.assertLess(np.mean(losses[-5:]), np.mean(losses[:5]) - 1.0)
    evals = [r for r in rows if 'eval/loss' in r]
    self.assertEqual([r['step'] for r in evals], [15, 30])
    self.assertLess(evals[-1]['eval/loss'], evals[0]['eval/loss'])
    self.assertIn('probe/cell_accuracy', last)
    self.assertIn('eval/loss_frame/01', evals[0])
    self.assertGreater(evals[0]['eval/unigram_loss'], 0.0)
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, 'checkpoints'))), ['15', '30'])
    for name in ('loss_curves.png', 'rule_bank.npz', 'probe/step_0000030.png'):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    self.assertNotEmpty(os.listdir(os.path.join(workdir, 'tensorboard')))
    # Running again in the same workdir resumes at the end: nothing to do, same result.
    again = train.train_and_evaluate(cfg, workdir)
    self.assertEqual(again, {})

  def test_dyck_source(self):
    workdir = self.create_tempdir().full_path
    last = train.train_and_evaluate(tiny_config.get_config('dyck'), workdir)
    self.assertLess(last['eval/loss'], np.log(8))
    self.assertNotIn('probe/cell_accuracy', last)

  def test_nan_stops_and_keeps_last_good_checkpoint(self):
    workdir = self.create_tempdir().full_path
    cfg = tiny_config.get_config()
    cfg.optim.update(lr=1e6, schedule='warmup', warmup_steps=3)
    cfg.checkpoint_every = 1
    cfg.train_steps = 20
    with self.assertRaisesRegex(errors.NonFiniteLoss, r'at step \d+') as caught:
      train.train_and_evaluate(cfg, workdir)
    bad_step = int(re.search(r'at step (\d+)', str(caught.exception)).group(1))
    self.assertGreater(bad_step, 1)  # some good steps were saved before it
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                   if s.isdigit())
    self.assertEqual(saved[-1], bad_step - 1)  # the last good step, and nothing after it
    step, params = final_params(workdir, cfg)
    self.assertEqual(step, bad_step - 1)
    self.assertTrue(all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params)))
    rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    self.assertEqual(max(r['step'] for r in rows), bad_step - 1)

  def test_a_model_that_cannot_learn_stops(self):
    # All-zero weights (as a damaged import can give): every gradient is exactly 0.
    def zero_init(*args, **kwargs):
      state = real_init(*args, **kwargs)
      return state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
    real_init = step_lib.init_state
    cfg = tiny_config.get_config()
    cfg.train_steps = 10
    with mock.patch.object(step_lib, 'init_state', zero_init):
      with self.assertRaisesRegex(errors.DeadGradient, r'exactly 0 on steps 1-3') as caught:
        train.train_and_evaluate(cfg, self.create_tempdir().full_path)
    self.assertEqual(caught.exception.exit_code, errors.EXIT_NON_FINITE)

  def test_gradient_alive_check(self):
    train._check_gradient_alive(0, 3, [0.0, 0.0, 1e-9])    # one live step is enough
    train._check_gradient_alive(5, 7, [0.0, 0.0])          # not yet three steps
    with self.assertRaisesRegex(errors.DeadGradient, 'steps 6-8.*init.from_run=.hf:x.'):
      train._check_gradient_alive(5, 8, [0.0, 0.0, 0.0], 'hf:x')

  def test_startup_errors(self):
    workdir = self.create_tempdir().full_path
    cases = [
        (lambda c: c.model.update(vocab_size=100), 'model.vocab_size'),
        (lambda c: c.data.nca.update(frames=1), 'data.nca.frames'),
        (lambda c: c.mesh.update(data=2), 'mesh'),
        (lambda c: c.update(grad_accum=3), 'grad_accum'),
        (lambda c: c.data.nca.update(grid=13), 'nca.grid'),
        (lambda c: c.data.update(band=(0.7, 0.2)), 'band'),
        (lambda c: c.data.update(source='c4'), 'data.source'),
        (lambda c: c.optim.update(schedule='linear'), 'optim.schedule'),
    ]
    for change, field in cases:
      cfg = tiny_config.get_config()
      change(cfg)
      with self.assertRaisesRegex(errors.UserError, field):
        train.train_and_evaluate(cfg, workdir)
    cfg = tiny_config.get_config()
    cfg.unlock()
    cfg.model.n_layers = 3
    with self.assertRaisesRegex(errors.UserError, 'model.n_layers'):
      train.train_and_evaluate(cfg, workdir)


class ResumeTest(absltest.TestCase):
  """A run killed mid-way and resumed ends bitwise equal to an uninterrupted run."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.cache = os.path.join(cls.tmp, 'jax_cache')
    cls.reference = os.path.join(cls.tmp, 'uninterrupted')
    code, out = helpers.run_main(cls.reference, 'long', cache_dir=cls.cache)
    assert code == 0, out
    cls.cfg = tiny_config.get_config('long')

  def _kill_and_resume(self, sig):
    workdir = os.path.join(self.tmp, f'killed_{sig}')
    proc = helpers.run_main(workdir, 'long', wait=False, cache_dir=self.cache)
    first = os.path.join(workdir, 'checkpoints', '5')
    deadline = time.time() + 300
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
      time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    self.assertIsNotNone(proc.returncode, out)
    rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    killed_at = max(r['step'] for r in rows)
    self.assertLess(killed_at, self.cfg.train_steps, 'the run finished before the kill')
    # A SIGKILL mid-save leaves orbax's '<step>.orbax-checkpoint-tmp': never restored.
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
                   if s.isdigit())
    code, out = helpers.run_main(workdir, 'long', cache_dir=self.cache)
    self.assertEqual(code, 0, out)
    return workdir, proc.returncode, killed_at, saved, out

  def _assert_same_as_reference(self, workdir):
    want = metrics.read_jsonl(os.path.join(self.reference, 'metrics.jsonl'))
    got = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    self.assertEqual(helpers.comparable(got), helpers.comparable(want))
    step_a, params_a = final_params(self.reference, self.cfg)
    step_b, params_b = final_params(workdir, self.cfg)
    self.assertEqual(step_a, step_b)
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)

  def test_sigterm_saves_then_resumes_exactly(self):
    workdir, code, killed_at, saved, _ = self._kill_and_resume(signal.SIGTERM)
    self.assertEqual(code, errors.EXIT_INTERRUPTED)  # stopped early: not a finished run
    self.assertEqual(saved[-1], killed_at)  # the step it stopped at was saved
    self._assert_same_as_reference(workdir)

  def test_sigkill_resumes_exactly(self):
    workdir, code, _, _, resumed = self._kill_and_resume(signal.SIGKILL)
    self.assertEqual(code, -signal.SIGKILL)
    self.assertIn('Took over the lock', resumed)  # the killed run's lock is recognised as stale
    self._assert_same_as_reference(workdir)


if __name__ == '__main__':
  absltest.main()
