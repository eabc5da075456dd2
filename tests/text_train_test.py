"""Training on a prepared text corpus through `python -m ncalm.main`: the host feed in the
loop, held-out loss / perplexity / bits per byte, start-up errors, and exact resume after
SIGKILL (the batch of a step is a pure function of (seed, step))."""
import json
import os
import signal
import tempfile
import time

from absl.testing import absltest
import flax.linen as nn
import jax
import numpy as np

from ncalm import checkpoint
from ncalm import errors
from ncalm import metrics
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm.data import dataset
from ncalm.data import prepare
from ncalm.data import text
from ncalm.tools import tokenizer as tokenizer_cli

import helpers


class TextTrainingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.data_dir = helpers.make_corpus(os.path.join(cls.tmp, 'corpus'))

  def test_resume_on_a_dataset_prepared_again_in_place_is_refused(self):
    data_dir = helpers.make_corpus(os.path.join(self.create_tempdir().full_path, 'corpus'))
    workdir = self.create_tempdir().full_path
    cfg = helpers.text_config(data_dir)
    cfg.train_steps = 3
    train.train_and_evaluate(cfg, workdir)
    # Another corpus prepared into the same path: same config, other data.
    prepare.prepare([os.path.join(helpers.STDLIB, 'email', '*.py')], 'bytes', data_dir,
                    validation_fraction=0.2, workers=1, overwrite=True)
    cfg.train_steps = 6
    with self.assertRaisesRegex(errors.UserError, r'dataset: \w+ in the workdir, \w+ now\): '
                                r'the dataset was prepared again in place'):
      train.train_and_evaluate(cfg, workdir)

  def test_run_reports_text_metrics_and_trains_on_the_feeds_rows(self):
    cfg = helpers.text_config(self.data_dir)
    workdir = self.create_tempdir().full_path
    result = train.train_and_evaluate(cfg, workdir)
    rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    evals = [r for r in rows if 'eval/loss' in r]
    self.assertEqual([r['step'] for r in evals], [3, 6])
    meta = dataset.read_meta(self.data_dir)
    for r in evals:
      self.assertAlmostEqual(r['eval/perplexity'], np.exp(r['eval/loss']), places=4)
      self.assertAlmostEqual(r['eval/bits_per_byte'],
                             r['eval/loss'] / np.log(2) / meta['bytes_per_token'], places=6)
    self.assertLess(evals[-1]['eval/loss'], np.log(257))  # below uniform over the bytes
    # The unigram baseline, by hand: training-row frequencies (add-½) on the eval windows.
    run = startup.check(cfg).feeds
    train_feed, val_feed = run.train_source, run.val_source
    counts = np.bincount(train_feed.read_rows(0, 2048)[:, 1:].ravel(), minlength=384) + 0.5
    targets = val_feed.read_rows(0, cfg.evals.heldout.batches * cfg.global_batch)[:, 1:]
    want = -np.log(counts / counts.sum())[targets].mean()
    self.assertAlmostEqual(evals[-1]['eval/unigram_loss'], want, places=5)
    waits = [r['perf/data_wait'] for r in rows if 'perf/data_wait' in r]
    self.assertLen(waits, cfg.train_steps)
    self.assertTrue(all(0 <= w <= 1 for w in waits), waits)
    self.assertEqual(result['eval/loss'], evals[-1]['eval/loss'])
    # The model's vocabulary: the tokeniser's 257 ids padded to a multiple of 128.
    run = startup.check(cfg).feeds
    self.assertEqual(run.train_source.vocab_size, 384)
    setup = step_lib.create_setup(cfg, startup.model_config(cfg, run.train_source.vocab_size))
    self.assertEqual(setup.model.cfg.vocab_size, 384)

  def test_loop_step_equals_a_step_on_the_feeds_rows(self):
    # What the loop trains on at step t is the feed's rows t·B .. t·B + B - 1.
    cfg = helpers.text_config(self.data_dir)
    cfg.train_steps = 1
    cfg.evals.heldout.every = 100
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(cfg, workdir)
    checked = startup.check(cfg)
    run, setup = checked.feeds, step_lib.create_setup(cfg, checked.model)
    state, _ = checkpoint.load_latest(workdir, cfg, setup)
    by_hand = step_lib.create_state(setup, jax.random.split(jax.random.PRNGKey(cfg.seed))[0])
    rows = run.train_source.read_rows(0, cfg.global_batch)
    batch = text.to_global_batch(rows, sharding.batch_sharding(setup.mesh),
                                       cfg.global_batch)
    step = step_lib.make_train_step_on_batch(setup)
    train_key = jax.random.split(jax.random.PRNGKey(cfg.seed))[1]
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
      by_hand, _ = step(by_hand, batch, train_key)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 jax.device_get(by_hand.params))

  def test_document_masking_switch_reaches_the_step(self):
    # Short documents (a JSONL line each), so that every window holds several.
    lines = os.path.join(self.tmp, 'short.jsonl')
    with open(lines, 'w') as f:
      for i in range(400):
        f.write(json.dumps({'text': f'document {i}: ' + 'ab' * (i % 13)}) + '\n')
    data_dir = os.path.join(self.tmp, 'short')
    prepare.prepare(lines, 'bytes', data_dir, validation_fraction=0.2, workers=1)
    losses = {}
    for masking in (False, True):
      cfg = helpers.text_config(data_dir)
      cfg.train_steps, cfg.evals.heldout.every = 2, 2
      cfg.data.text.document_masking = masking
      workdir = self.create_tempdir().full_path
      losses[masking] = train.train_and_evaluate(cfg, workdir)['eval/loss']
    self.assertTrue(np.isfinite(losses[True]))
    self.assertNotEqual(losses[True], losses[False])  # windows do cross documents here

  def test_startup_errors_name_the_field_and_the_fix(self):
    workdir = self.create_tempdir().full_path
    cases = {
        'no path': ('', r'data.text.path'),
        'missing dir': (os.path.join(self.tmp, 'nowhere'), r"'.*nowhere' does not exist.*"
                        r'ncalm.prepare'),
    }
    for name, (path, pattern) in cases.items():
      with self.subTest(name):
        with self.assertRaisesRegex(errors.UserError, pattern):
          train.train_and_evaluate(helpers.text_config(path), workdir)
    # A run that expects another tokeniser than the corpus was made with.
    bpe = os.path.join(self.tmp, 'other.json')
    tokenizer_cli.train_bpe(os.path.join(helpers.STDLIB, 'json', '*.py'), 300, bpe)
    cfg = helpers.text_config(self.data_dir)
    cfg.data.text.tokenizer = bpe
    with self.assertRaisesRegex(errors.UserError, r'data.text.tokenizer=.*other.json.*'
                                r"not the tokeniser .* \('bytes'"):
      train.train_and_evaluate(cfg, workdir)
    # A model vocabulary too small for the tokeniser's ids (257 bytes ids, padded to 384).
    cfg = helpers.text_config(self.data_dir)
    cfg.model.vocab_size = 256
    with self.assertRaisesRegex(errors.UserError, r'model.vocab_size=256 is too small.*'
                                r'model.vocab_size >= 384'):
      train.train_and_evaluate(cfg, workdir)
    # Windows longer than the validation split holds.
    cfg = helpers.text_config(self.data_dir)
    cfg.seq_len = 1 << 20
    with self.assertRaisesRegex(errors.UserError, 'fewer than one window'):
      train.train_and_evaluate(cfg, workdir)


class TextResumeTest(absltest.TestCase):
  """A text run killed with SIGKILL and resumed ends bitwise equal to an uninterrupted one."""

  def test_sigkill_resumes_exactly(self):
    tmp = self.create_tempdir().full_path
    data_dir = helpers.make_corpus(os.path.join(tmp, 'corpus'))
    cache = os.path.join(tmp, 'jax_cache')
    extra = [f'--config.data.text.path={data_dir}']
    reference = os.path.join(tmp, 'uninterrupted')
    code, out = helpers.run_main(reference, 'text_long', extra, cache_dir=cache)
    self.assertEqual(code, 0, out)

    workdir = os.path.join(tmp, 'killed')
    proc = helpers.run_main(workdir, 'text_long', extra, wait=False, cache_dir=cache)
    deadline = time.time() + 300
    while (not os.path.exists(os.path.join(workdir, 'checkpoints', '10'))
           and time.time() < deadline and proc.poll() is None):
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    self.assertEqual(proc.returncode, -signal.SIGKILL)
    killed_at = max(r['step'] for r in metrics.read_jsonl(
        os.path.join(workdir, 'metrics.jsonl')))
    self.assertLess(killed_at, 40, 'the run finished before the kill')
    code, out = helpers.run_main(workdir, 'text_long', extra, cache_dir=cache)
    self.assertEqual(code, 0, out)

    want = metrics.read_jsonl(os.path.join(reference, 'metrics.jsonl'))
    got = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    self.assertEqual(helpers.comparable(got), helpers.comparable(want))
    cfg = helpers.text_config(data_dir, 'text_long')
    setup = step_lib.create_setup(cfg, startup.check(cfg).model)
    (a, step_a), (b, step_b) = (checkpoint.load_latest(w, cfg, setup)
                                for w in (reference, workdir))
    self.assertEqual((step_a, step_b), (40, 40))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params),
                 jax.device_get(b.params))


if __name__ == '__main__':
  absltest.main()
