"""The evaluators, called directly: what they measure equals the same thing computed by
hand, they write nothing, and the registry picks and schedules them from the source."""
import os
import sysconfig
import tempfile
import types

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import errors
from ncalm import startup
from ncalm import viz
from ncalm.data import batch as batch_lib
from ncalm.data import device_sources
from ncalm.data import feeds as feeds_lib
from ncalm.data import nca_tokens
from ncalm.data import prepare
from ncalm.data import text
from ncalm.eval import heldout
from ncalm.eval import induction
from ncalm.eval import nca_probe
from ncalm.eval import registry

import helpers
import tiny_config


def cross_entropy_sums(setup, params, batch: batch_lib.Batch):
  """(Σ mask·CE, Σ mask) per position, by hand from the logits."""
  logits = setup.model.apply({'params': params}, batch.inputs, deterministic=True,
                             segment_ids_BL=batch.segment_ids)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  ce = -jnp.take_along_axis(logp, batch.targets[..., None], axis=-1)[..., 0]
  return np.asarray((ce * batch.loss_mask).sum(0)), np.asarray(batch.loss_mask.sum(0))


class WritesNothing:
  """Runs the evaluator in an empty current directory and checks it stays empty."""

  def run_in_empty_dir(self, evaluator, params):
    cwd, empty = os.getcwd(), tempfile.mkdtemp()
    os.chdir(empty)
    try:
      out = evaluator.run(params)
    finally:
      os.chdir(cwd)
    self.assertEqual(os.listdir(empty), [])
    return out


class DeviceHeldoutTest(WritesNothing, absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cfg = tiny_config.get_config()
    cls.cfg.evals.heldout.batches = 2
    cls.setup, cls.params, cls.feeds = helpers.setup_and_params(cls.cfg)
    cls.evaluator = heldout.HeldoutLoss(cls.setup, cls.cfg, cls.feeds)
    cls.scalars, cls.images = cls.evaluator.run(cls.params)

  def test_loss_per_frame_and_unigram_equal_the_sums_by_hand(self):
    ce = count = counts = 0.0
    root = heldout.eval_key(self.cfg)
    for i in range(self.cfg.evals.heldout.batches):
      batch = self.feeds.val_source.batch(jax.random.fold_in(root, i), self.cfg.global_batch)
      ce_i, count_i = cross_entropy_sums(self.setup, self.params, batch)
      ce, count = ce + ce_i, count + count_i
      counts = counts + np.asarray(batch_lib.token_counts(batch, self.setup.model.cfg.vocab_size))
    np.testing.assert_allclose(self.scalars['eval/loss'], ce.sum() / count.sum(), rtol=1e-5)
    tpf = self.feeds.val_source.tokens_per_frame
    frame_of_target = (np.arange(len(ce)) + 1) // tpf
    frames = [f for f in range(1, frame_of_target.max() + 1)
              if count[frame_of_target == f].sum()]
    self.assertEqual(sorted(k for k in self.scalars if k.startswith('eval/loss_frame/')),
                     [f'eval/loss_frame/{f:02d}' for f in frames])
    for f in frames:
      sel = frame_of_target == f
      np.testing.assert_allclose(self.scalars[f'eval/loss_frame/{f:02d}'],
                                 ce[sel].sum() / count[sel].sum(), rtol=1e-5)
    logp = self.feeds.train_source.unigram_log_probs(jax.random.fold_in(root,
                                                                        heldout.UNIGRAM_KEY))
    np.testing.assert_allclose(self.scalars['eval/unigram_loss'],
                               -(counts * logp).sum() / counts.sum(), rtol=1e-6)
    self.assertEqual(self.images, {})

  def test_same_numbers_every_time_and_no_files(self):
    scalars, images = self.run_in_empty_dir(self.evaluator, self.params)
    self.assertEqual((scalars, images), (self.scalars, self.images))


class UnigramTest(absltest.TestCase):

  def test_device_source_unigram_is_the_smoothed_token_frequency(self):
    cfg = tiny_config.get_config('dyck')
    source = feeds_lib.build(cfg).train_source
    key = jax.random.PRNGKey(3)
    logp = source.unigram_log_probs(key, batch_size=256)
    counts = sum(np.bincount(np.asarray(source.batch(jax.random.fold_in(key, i), 256).targets)
                             .ravel(), minlength=source.vocab_size)
                 for i in range(batch_lib.UNIGRAM_SEQUENCES // 256)) + 0.5
    np.testing.assert_allclose(logp, np.log(counts / counts.sum()), rtol=1e-12)


def greedy_frame(model, params, inputs_BL, start: int, length: int, num_ids: int):
  """The probe's decoding before the KV cache, kept as the reference: tokens start ..
  start+length-1 each by a full forward pass over the window, argmax among ids < num_ids."""
  batch = inputs_BL.shape[0]

  def body(i, buffer):
    logits = model.apply({'params': params}, buffer, deterministic=True,
                         logits_at=jnp.full((batch,), start + i - 1))
    return buffer.at[:, start + i].set(jnp.argmax(logits[:, :num_ids], axis=-1))

  buffer = jax.lax.fori_loop(0, length, body, inputs_BL)
  return buffer[:, start:start + length]


class ProbeTest(WritesNothing, absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.cfg = tiny_config.get_config()
    cls.setup, cls.params, cls.feeds = helpers.setup_and_params(cls.cfg)
    cls.probe = nca_probe.NextFrameProbe(cls.setup, cls.cfg, cls.feeds)

  def test_accuracies_and_picture_match_the_probed_sequences(self):
    scalars, images = self.run_in_empty_dir(self.probe, self.params)
    self.assertEqual(sorted(scalars), ['probe/cell_accuracy', 'probe/copy_baseline',
                                       'probe/frame_accuracy'])
    # The copy baseline by hand: the sequences the probe decodes, last whole frame vs the one
    # before it, in cells.
    source, tpf = self.feeds.val_source, self.feeds.val_source.tokens_per_frame
    key = jax.random.fold_in(heldout.eval_key(self.cfg), nca_probe.PROBE_KEY)
    inputs = np.asarray(source.batch(key, self.cfg.evals.probe.sequences).inputs)
    start = (self.cfg.seq_len // tpf - 1) * tpf + 1
    patches = nca_tokens.patches_per_frame(source.cfg)
    cells = lambda ids: np.asarray(nca_tokens.decode_frames(jnp.asarray(ids), source.cfg))
    truth, previous = (cells(inputs[:, s:s + patches]) for s in (start, start - tpf))
    self.assertEqual(scalars['probe/copy_baseline'], float(np.mean(previous == truth)))
    picture = images[nca_probe.IMAGE]
    self.assertEqual((picture.dtype, picture.ndim, picture.shape[-1]), (np.uint8, 3, 3))
    for k in ('probe/cell_accuracy', 'probe/frame_accuracy'):
      self.assertBetween(scalars[k], 0.0, 1.0)

  def test_cached_decoding_gives_the_frames_of_full_forward_passes(self):
    # Weights far from init, so that the decoded frames are neither constant nor ties.
    params = jax.tree.map(lambda x: x * 30 if x.ndim > 1 else x, self.params)
    _, images = self.probe.run(params)
    source, tpf = self.feeds.val_source, self.feeds.val_source.tokens_per_frame
    key = jax.random.fold_in(heldout.eval_key(self.cfg), nca_probe.PROBE_KEY)
    inputs = source.batch(key, self.cfg.evals.probe.sequences).inputs
    start = (self.cfg.seq_len // tpf - 1) * tpf + 1
    patches = nca_tokens.patches_per_frame(source.cfg)
    want = greedy_frame(self.setup.model, params, inputs, start, patches,
                        nca_tokens.start_of_frame(source.cfg))
    cells = lambda ids: np.asarray(nca_tokens.decode_frames(jnp.asarray(ids), source.cfg))
    truth, previous = (cells(inputs[:, s:s + patches]) for s in (start, start - tpf))
    self.assertGreater(len(np.unique(np.asarray(want))), 1)
    np.testing.assert_array_equal(
        images[nca_probe.IMAGE],
        viz.probe_picture(previous, truth, cells(want), source.cfg.num_states))


class TextHeldoutTest(WritesNothing, absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    data_dir = os.path.join(tempfile.mkdtemp(), 'corpus')
    prepare.prepare([os.path.join(sysconfig.get_path('stdlib'), 'json', '*.py')], 'bytes',
                    data_dir, validation_fraction=0.3, workers=1)
    cls.cfg = tiny_config.get_config('text')
    cls.cfg.data.text.path = data_dir
    cls.setup, cls.params, cls.feeds = helpers.setup_and_params(cls.cfg)

  def test_loss_perplexity_bits_per_byte_and_unigram_by_hand(self):
    evaluator = heldout.HeldoutLoss(self.setup, self.cfg, self.feeds)
    scalars, images = self.run_in_empty_dir(evaluator, self.params)
    batches, b = self.cfg.evals.heldout.batches, self.cfg.global_batch
    rows = self.feeds.val_source.read_rows(0, batches * b)
    batch = device_sources.to_batch(jnp.asarray(rows), jnp.ones(self.cfg.seq_len))
    ce, count = cross_entropy_sums(self.setup, self.params, batch)
    loss = ce.sum() / count.sum()
    np.testing.assert_allclose(scalars['eval/loss'], loss, rtol=1e-5)
    self.assertEqual(scalars['eval/perplexity'], float(np.exp(scalars['eval/loss'])))
    self.assertEqual(scalars['eval/bits_per_byte'], scalars['eval/loss'] / np.log(2)
                     / self.feeds.val_source.bytes_per_token)
    sample = self.feeds.train_source.read_rows(0, batch_lib.UNIGRAM_SEQUENCES)[:, 1:]
    counts = np.bincount(sample.ravel(), minlength=self.feeds.train_source.vocab_size) + 0.5
    self.assertEqual(scalars['eval/unigram_loss'],
                     float(-np.log(counts / counts.sum())[rows[:, 1:]].mean()))
    self.assertEqual(images, {})

  def test_induction_probe_equals_the_losses_by_hand(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.evals.induction.update(sequences=4, length=12)
    probe = induction.InductionProbe(self.setup, cfg, self.feeds)
    scalars, images = self.run_in_empty_dir(probe, self.params)
    self.assertEqual(images, {})
    n, vocab = 12, self.feeds.val_source.meta['vocab_size']
    rows = np.asarray(induction.induction_rows(
        jax.random.fold_in(heldout.eval_key(cfg), induction.INDUCTION_KEY), 4, n,
        cfg.seq_len, vocab))
    self.assertEqual(rows.shape, (4, cfg.seq_len + 1))
    np.testing.assert_array_equal(rows[:, :n], rows[:, n:2 * n])   # the same n, twice
    self.assertLess(rows.max(), vocab)
    np.testing.assert_array_equal(np.asarray(probe.rows), rows)
    batch = device_sources.to_batch(jnp.asarray(rows), jnp.ones(cfg.seq_len))
    logits = np.asarray(self.setup.model.apply({'params': self.params}, batch.inputs,
                                               deterministic=True))
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
    ce = -np.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0]
    # Target t is token t + 1: the first copy's tokens 1..n-1, the second's n+1..2n-1.
    np.testing.assert_allclose(scalars['induction/first_copy_loss'], ce[:, 0:n - 1].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(scalars['induction/second_copy_loss'],
                               ce[:, n:2 * n - 1].mean(), rtol=1e-5)
    right = logits.argmax(-1) == rows[:, 1:]
    self.assertAlmostEqual(scalars['induction/second_copy_accuracy'],
                           right[:, n:2 * n - 1].mean(), places=6)


class RegistryTest(absltest.TestCase):

  def test_every_evaluator_has_a_config_section(self):
    cfg = tiny_config.get_config()
    sections = [k for k in cfg.evals if k != 'data']   # evals.data: the benchmarks' folder
    self.assertEqual(sorted(sections), sorted(registry.EVALUATORS))
    for name in registry.EVALUATORS:
      self.assertIn('every', cfg.evals[name])

  def test_the_source_says_which_evaluators_suit_it(self):
    nca_cfg, dyck_cfg = tiny_config.get_config(), tiny_config.get_config('dyck')
    nca_source = feeds_lib.build(nca_cfg).val_source
    self.assertEqual(registry.names(nca_cfg, nca_source), ('heldout', 'probe'))
    self.assertEqual(registry.names(dyck_cfg, feeds_lib.build(dyck_cfg).val_source),
                     ('heldout',))
    nca_cfg.evals.probe.sequences = 0   # turns the probe off
    self.assertEqual(registry.names(nca_cfg, nca_source), ('heldout',))
    text_source = types.SimpleNamespace(evaluators=text.TextFeed.evaluators)  # as a feed says
    text_cfg = tiny_config.get_config('text')
    self.assertEqual(registry.names(text_cfg, text_source), ('heldout',))   # induction off
    text_cfg.evals.induction.sequences = 8
    self.assertEqual(registry.names(text_cfg, text_source), ('heldout', 'induction'))
    nca_cfg.evals.induction.sequences = 8
    self.assertEqual(registry.names(nca_cfg, nca_source), ('heldout',))   # not for NCA

  def test_each_evaluator_has_its_own_cadence(self):
    cfg = tiny_config.get_config()
    cfg.train_steps = 10
    cfg.evals.heldout.every, cfg.evals.probe.every = 2, 5
    cfg.evals.induction.every = 3
    due = {n: [s for s in range(1, 11) if registry.due(cfg, n, s)] for n in registry.EVALUATORS}
    self.assertEqual(due, {'heldout': [2, 4, 6, 8, 10], 'probe': [5, 10],
                           'induction': [3, 6, 9, 10], 'humaneval': [10], 'gsm8k': [10],
                           'bigbench': [10]})

  def test_probe_refusals_name_their_field(self):
    cfg = tiny_config.get_config()
    source = feeds_lib.build(cfg).val_source
    cfg.evals.probe.sequences = 3
    with self.assertRaisesRegex(errors.UserError, r'evals.probe.sequences=3 is not divisible '
                                r'by the 2 data-parallel'):
      registry.check_mesh(cfg, source, 2)
    cfg.seq_len = 40   # one whole frame of 38 tokens: no context to decode from
    with self.assertRaisesRegex(errors.UserError, 'the next-frame probe needs two'):
      startup.check(cfg)

  def test_induction_refusals_name_their_field(self):
    cfg = tiny_config.get_config('text')
    cfg.evals.induction.update(sequences=3, length=8)
    with self.assertRaisesRegex(errors.UserError, r'evals.induction.sequences=3 is not '
                                r'divisible by the 2 data-parallel'):
      induction.InductionProbe.check_mesh(cfg, None, 2)
    cfg.evals.induction.length = cfg.seq_len
    with self.assertRaisesRegex(errors.UserError, r'evals.induction.length=\d+: two copies'):
      induction.InductionProbe.check(cfg, None)


if __name__ == '__main__':
  absltest.main()
