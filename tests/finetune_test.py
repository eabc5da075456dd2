"""Fine-tuning on solved examples and GSM8K: the prepared evaluation folder (format,
checksums, refusals), the rows of the fine-tuning feed (prompt tokens unscored, a pure
function of (seed, row), every item once an epoch, shots dropped to fit, items too long
skipped and counted), epochs turned into steps, a fine-tuning run from a text run, and the
GSM8K evaluator's prompts, answer extraction, number comparison and pass@k."""
import functools
import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import flax.linen as nn
import jax
import numpy as np

from ncalm import checkpoint
from ncalm import errors
from ncalm import sampler as sampler_lib
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm.data import feeds as feeds_lib
from ncalm.data import finetune
from ncalm.data import text
from ncalm.data import tokenizers
from ncalm.eval import eval_data
from ncalm.eval import gsm8k
from ncalm.tools import prepare_evals

import helpers
import tiny_config


@functools.cache
def eval_dir() -> str:
  """One prepared folder (GSM8K-format items, HumanEval) the test classes share."""
  return helpers.make_eval_data(os.path.join(tempfile.mkdtemp(), 'evals'))


def finetune_config(folder: str, **finetune_fields):
  cfg = tiny_config.get_config('finetune')
  cfg.data.finetune.update({'path': folder, **finetune_fields})
  cfg.evals.data = folder
  return cfg


class EvalDataTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = eval_dir()

  def test_gsm8k_items_in_the_published_layout(self):
    item = eval_data.read(self.dir, 'gsm8k', 'train')[0]
    self.assertEqual(item, {'id': 'train/0', 'prompt': 'Question:\n1 plus 2?\n',
                            'answer': 'Answer:\n1+2 = <<1+2=3>>3\n#### 3\nFinal Answer: 3',
                            'final': '3'})
    manifest = eval_data.read_manifest(self.dir)
    self.assertEqual(manifest['benchmarks']['gsm8k']['splits']['test']['items'], 4)
    self.assertEqual(manifest['benchmarks']['humaneval']['splits']['test']['items'], 164)
    self.assertEqual(eval_data.gsm8k_final('so 1,234 in all\n#### 1,234'), '1234')

  def test_a_changed_file_or_missing_folder_is_refused(self):
    copy = os.path.join(tempfile.mkdtemp(), 'copy')
    os.system(f'cp -r {self.dir} {copy}')
    with open(os.path.join(copy, 'gsm8k', 'test.jsonl'), 'a') as f:
      f.write('{"id": "x", "prompt": "p", "answer": "a"}\n')
    with self.assertRaisesRegex(errors.UserError, 'differs from what the manifest recorded'):
      eval_data.read(copy, 'gsm8k', 'test')
    with self.assertRaisesRegex(errors.UserError, "evals.data='/nowhere' is not a prepared "
                                'evaluation folder.*prepare_evals'):
      eval_data.read('/nowhere', 'gsm8k', 'test')
    with self.assertRaisesRegex(errors.UserError, 'holds no bigbench_lite validation split'):
      eval_data.read(self.dir, 'bigbench_lite', 'validation')

  def test_malformed_sources_are_one_paragraph(self):
    source = tempfile.mkdtemp()
    for split, line in (('train', '{"question": "q", "answer": "no final line"}'),
                        ('test', 'not json')):
      with open(os.path.join(source, f'{split}.jsonl'), 'w') as f:
        f.write(line + '\n')
    with self.assertRaisesRegex(errors.UserError, 'line 1: the answer has no "#### N"'):
      eval_data.read_gsm8k(source)
    with self.assertRaisesRegex(errors.UserError, 'has no train.jsonl'):
      eval_data.read_gsm8k(tempfile.mkdtemp())
    bad = self.create_tempfile(content='{"task_id": "x"}\n').full_path
    with self.assertRaisesRegex(errors.UserError, r"line 1 lacks \['prompt', "
                                r"'canonical_solution', 'test', 'entry_point'\]"):
      eval_data.read_humaneval(bad)
    with self.assertRaisesRegex(errors.UserError, 'exists'):
      prepare_evals.prepare(self.dir, {'gsm8k': source})
    out = os.path.join(tempfile.mkdtemp(), 'new')
    with self.assertRaisesRegex(errors.UserError, 'the answer has no'):
      prepare_evals.prepare(out, {'gsm8k': source})
    self.assertEqual(os.listdir(os.path.dirname(out)), [])   # nothing half-written


class FinetuneFeedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = eval_dir()
    cls.cfg = finetune_config(cls.dir)
    feeds = feeds_lib.build(cls.cfg)
    cls.train, cls.held = feeds.train_source, feeds.val_source
    cls.items = eval_data.read(cls.dir, 'gsm8k', 'train')

  def test_a_row_is_shots_then_target_with_only_answers_scored(self):
    tok = tokenizers.load('bytes')
    cfg = finetune_config(self.dir)
    cfg.seq_len = 256                      # room for the target and its 0-2 shots
    feed = feeds_lib.build(cfg).train_source
    shots = set()
    for g in range(12):
      rows, weights, _ = feed.read_batch(g, 1)
      target = feed.target_of(g)
      examples = feed.shots_of(g, target) + [target]
      shots.add(len(examples) - 1)
      self.assertNotIn(target, examples[:-1])
      want_tokens, want_scored = [], []
      for i in examples:
        prompt = tok.encode(self.items[i]['prompt'])
        answer = tok.encode(self.items[i]['answer'])
        want_tokens += [*prompt, *answer, tok.eot_id]
        want_scored += [0] * len(prompt) + [1] * (len(answer) + 1)
      pad = cfg.seq_len + 1 - len(want_tokens)
      self.assertGreaterEqual(pad, 0)
      np.testing.assert_array_equal(rows[0], want_tokens + [tok.eot_id] * pad)
      np.testing.assert_array_equal(weights[0], (want_scored + [0] * pad)[1:])
    self.assertEqual(shots, {0, 1, 2})

  def test_rows_are_a_function_of_seed_and_index_and_each_epoch_shows_every_item(self):
    again = feeds_lib.build(self.cfg).train_source
    np.testing.assert_array_equal(self.train.read_rows(5, 7), again.read_rows(5, 7))
    other = self.cfg.copy_and_resolve_references()
    other.seed = 1
    self.assertFalse(np.array_equal(self.train.read_rows(0, 12),
                                    feeds_lib.build(other).train_source.read_rows(0, 12)))
    for epoch in range(2):
      self.assertCountEqual([self.train.target_of(epoch * 12 + p) for p in range(12)],
                            range(12))
    self.assertEqual([self.held.target_of(g) for g in range(5)], [0, 1, 2, 3, 0])

  def test_shots_are_dropped_to_fit_and_long_items_skipped(self):
    cfg = finetune_config(self.dir, min_shots=5, max_shots=5)
    feed = feeds_lib.build(cfg).train_source
    rows, weights, _ = feed.read_batch(0, 4)
    eot = feed.meta['eot_id']
    for row, w in zip(rows, weights):
      text = bytes(int(t) for t in row if t != eot).decode()
      self.assertEqual(text.count('Question:'), 1)   # 70-byte examples: only the target fits
      self.assertEqual(row[-1], eot)
    cfg.seq_len = 60
    with self.assertRaisesRegex(errors.UserError, 'No gsm8k train item fits seq_len=60: '
                                'the shortest needs 6[0-9] tokens'):
      feeds_lib.build(cfg)

  def test_epochs_become_steps_and_bad_values_are_refused(self):
    self.assertEqual(finetune.steps_for_epochs(10, 7473, 512), 146)
    cfg = finetune_config(self.dir, epochs=2.0)
    with self.assertRaisesRegex(errors.UserError, r'epochs=2.0 over 12 gsm8k items at '
                                r'global_batch=4 is 6 steps: set train_steps=6'):
      cfg.train_steps = 5
      feeds_lib.build(cfg)
    cfg.train_steps = 6
    feeds_lib.build(cfg)
    for fields, message in (({'task': 'mmlu'}, "task='mmlu'"),
                            ({'min_shots': 3, 'max_shots': 1}, 'min_shots <= max_shots'),
                            ({'path': ''}, 'needs data.finetune.path'),
                            ({'tokenizer': ''}, 'needs a tokeniser')):
      with self.assertRaisesRegex(errors.UserError, message):
        feeds_lib.build(finetune_config(self.dir, **fields))

  def test_the_loop_trains_on_the_rows_with_their_weights_and_resumes_exactly(self):
    cfg = finetune_config(self.dir)
    cfg.evals.heldout.every = 100
    workdir = os.path.join(tempfile.mkdtemp(), 'run')
    train.train_and_evaluate(cfg, workdir)
    checked = startup.check(cfg)
    setup = step_lib.create_setup(cfg, checked.model)
    # Step 1 by hand: the feed's rows 0..B-1 with their loss weights.
    one = cfg.copy_and_resolve_references()
    one.train_steps = 1
    one_dir = os.path.join(tempfile.mkdtemp(), 'one')
    train.train_and_evaluate(one, one_dir)
    by_hand = step_lib.create_state(setup, jax.random.split(jax.random.PRNGKey(cfg.seed))[0])
    rows, weights, _ = checked.feeds.train_source.read_batch(0, cfg.global_batch)
    batch = text.to_global_batch(rows, sharding.batch_sharding(setup.mesh), cfg.global_batch,
                                 weights=weights)
    step = step_lib.make_train_step_on_batch(setup)
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
      by_hand, _ = step(by_hand, batch, jax.random.split(jax.random.PRNGKey(cfg.seed))[1])
    state, _ = checkpoint.load_latest(one_dir, one, setup)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 jax.device_get(by_hand.params))
    # Resumed from its step-3 checkpoint, the run ends where the uninterrupted one did.
    helpers.assert_resumes_exactly(self, cfg, workdir, setup)

  def test_fine_tunes_a_text_run_with_its_tokeniser_and_reports_gsm8k(self):
    tmp = tempfile.mkdtemp()
    text_cfg = helpers.text_config(helpers.make_corpus(os.path.join(tmp, 'data')))
    text_cfg.train_steps = 3
    train.train_and_evaluate(text_cfg, os.path.join(tmp, 'text'))
    cfg = finetune_config(self.dir, tokenizer='')
    cfg.init.update(from_run=os.path.join(tmp, 'text'), embedding='keep')
    self.assertEqual(finetune.tokenizer_spec(cfg), 'bytes')   # the text run's dataset's
    cfg.evals.gsm8k.update(problems=2, samples=2, shots=1, max_new_tokens=8, every=3)
    metrics = train.train_and_evaluate(cfg, os.path.join(tmp, 'gsm8k'))
    self.assertEqual((metrics['gsm8k/problems'], metrics['gsm8k/skipped']), (2, 0))
    self.assertIn('gsm8k/pass@1', metrics)
    with open(os.path.join(tmp, 'gsm8k', 'metrics.jsonl')) as f:
      losses = [json.loads(line)['train/loss'] for line in f if 'train/loss' in line]
    self.assertLen(losses, cfg.train_steps)


class GSM8KTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = eval_dir()
    cls.cfg = finetune_config(cls.dir)
    cls.cfg.evals.gsm8k.update(problems=4, samples=4, shots=1)
    cls.setup, cls.params, cls.feeds = helpers.setup_and_params(cls.cfg)

  def test_answer_extraction_and_comparison(self):
    cases = {'x\n#### 18\nFinal Answer: 18': '18', '#### 7 apples': 'apples',
             '#### 1\n#### 2': '2', 'no marker 5': None, '####   ': None}
    for sample, answer in cases.items():
      self.assertEqual(gsm8k.extract_answer(sample), answer, sample)
    for answer, ref, same in (('1,000', '1000', True), ('$18.', '18', True),
                              ('18.0', '18', True), ('19', '18', False),
                              ('1/2', '0.5', True), ('apples', '3', False), (None, '3', False)):
      self.assertEqual(gsm8k.same_number(answer, ref), same, (answer, ref))

  def fake_generate(self, texts):
    def generate(params, prompts, request):
      del params
      return [[sampler_lib.Completion(p, s, (), texts[p][s], 'stop_id', False)
               for s in range(request.num_samples)] for p in range(len(prompts))]
    return generate

  def test_scores_samples_and_counts_what_has_no_answer(self):
    evaluator = gsm8k.GSM8K(self.setup, self.cfg, self.feeds)
    finals = [p['final'] for p in evaluator.problems]
    right = lambda i: f'Answer:\nso\n#### {finals[i]}\nFinal Answer: {finals[i]}'
    texts = [[right(0)] * 4, [right(1), 'Answer:\n#### 0', 'nothing', 'nothing'],
             ['nothing'] * 4, [right(3), right(3), '#### 0', '#### 0']]
    with mock.patch.object(evaluator.sampler, 'generate', self.fake_generate(texts)):
      scalars, images = evaluator.run(self.params)
    self.assertEqual(images, {})
    self.assertAlmostEqual(scalars['gsm8k/pass@1'], (1 + 0.25 + 0 + 0.5) / 4)
    self.assertAlmostEqual(scalars['gsm8k/pass@4'], 3 / 4)
    self.assertNotIn('gsm8k/pass@8', scalars)       # k > samples is not reported
    self.assertAlmostEqual(scalars['gsm8k/no_answer'], 6 / 16)
    self.assertEqual((scalars['gsm8k/problems'], scalars['gsm8k/skipped']), (4, 0))

  def test_prompts_hold_the_shots_then_the_question(self):
    evaluator = gsm8k.GSM8K(self.setup, self.cfg, self.feeds)
    tok, train_items = evaluator.tokenizer, eval_data.read(self.dir, 'gsm8k', 'train')
    shot = train_items[gsm8k.shot_indices(0, 2, 12, 1, None)[0]]
    want = [*tok.encode(shot['prompt']), *tok.encode(shot['answer']), tok.eot_id,
            *tok.encode(evaluator.problems[2]['prompt'])]
    self.assertEqual(evaluator.prompt(2), want)
    for problem in range(4):   # from the test split, never the problem itself
      self.assertNotIn(problem, gsm8k.shot_indices(0, problem, 4, 3, problem))
    self.assertCountEqual(gsm8k.shot_indices(0, 1, 4, 3, 1), [0, 2, 3])

  def test_prompts_too_long_are_skipped_and_counted(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.evals.gsm8k.shots = 3          # 3 × ~70 bytes: more than the 128-token context
    evaluator = gsm8k.GSM8K(self.setup, cfg, self.feeds)
    scalars, _ = evaluator.run(self.params)
    self.assertEqual((scalars['gsm8k/problems'], scalars['gsm8k/skipped']), (0, 4))
    self.assertNotIn('gsm8k/pass@1', scalars)

  def test_refusals(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.evals.gsm8k.shots_from = 'validation'
    with self.assertRaisesRegex(errors.UserError, "shots_from='validation'"):
      gsm8k.GSM8K.check(cfg, None)
    cfg.evals.gsm8k.shots_from = 'train'
    cfg.evals.data = ''
    with self.assertRaisesRegex(errors.UserError, "evals.data='' is not a prepared"):
      gsm8k.GSM8K.check(cfg, None)


if __name__ == '__main__':
  absltest.main()
