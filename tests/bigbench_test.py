"""BIG-bench Lite on hand-written task files: the prepared split (published prompt layout,
subtasks, the 100-training-example filter, refusals), fine-tuning rows with 0-3 shots, and
the evaluator: exact-match pass@k chance-normalised per task and macro-averaged, every
sample scored, long prompts skipped and counted, and the log-likelihood multiple choice
against the model's own log-probabilities."""
import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np

from ncalm import errors
from ncalm import sampler as sampler_lib
from ncalm.eval import bigbench
from ncalm.eval import eval_data
from ncalm.eval import pass_at_k
from ncalm.tools import prepare_evals

import helpers
import tiny_config

TASKS = ('sums', 'parity', 'tiny')


def write_task(folder: str, examples: list[dict], **extra) -> None:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'task.json'), 'w') as f:
    json.dump({'name': os.path.basename(folder), 'examples': examples, **extra}, f)


def make_bigbench(root: str) -> str:
  """A BIG-bench checkout in miniature: a generative task (130 examples), a multiple-choice
  task in two subtasks (70 each) and a task too small to keep (10)."""
  tasks = os.path.join(root, 'bigbench', 'benchmark_tasks')
  write_task(os.path.join(tasks, 'sums'),
             [{'input': f'{i % 9}+{i % 7}', 'target': [str(i % 9 + i % 7), 'x']}
              for i in range(130)])
  for sub, offset in (('odd', 0), ('even', 1)):
    write_task(os.path.join(tasks, 'parity', sub),
               [{'input': f'is {2 * i + 1 - offset} odd?',
                 'target_scores': {'yes': int(offset == 0), 'no': int(offset == 1)}}
                for i in range(70)])
  write_task(os.path.join(tasks, 'tiny'), [{'input': 'a', 'target': 'b'}] * 10)
  return root


class PreparedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.source = make_bigbench(tempfile.mkdtemp())
    cls.dir = os.path.join(tempfile.mkdtemp(), 'evals')
    prepare_evals.prepare(cls.dir, {'bigbench_lite': cls.source}, TASKS)

  def test_split_layout_and_filter(self):
    train = eval_data.read(self.dir, 'bigbench_lite', 'train')
    held = eval_data.read(self.dir, 'bigbench_lite', 'validation')
    count = lambda items, task: sum(i['task'] == task for i in items)
    self.assertEqual((count(held, 'sums'), count(train, 'sums')), (26, 104))   # ⌈20%⌉ held
    self.assertEqual((count(held, 'parity'), count(train, 'parity')), (28, 112))
    self.assertEqual(count(train + held, 'tiny'), 0)   # < 100 training examples: dropped
    parity = next(i for i in train if i['task'] == 'parity')
    number = parity['prompt'].split()[2]
    self.assertEqual(parity['prompt'], f'Question:\nis {number} odd?\n\nchoice: yes\n'
                     'choice: no\n\nAnswer:\n')
    self.assertEqual(parity['targets'], ['yes' if int(number) % 2 else 'no'])
    self.assertEqual(parity['choices'], ['yes', 'no'])
    self.assertRegex(parity['id'], r'^parity/(odd|even)/\d+$')
    sums = next(i for i in held if i['task'] == 'sums')
    self.assertEqual(sums['prompt'], f'Question:\n{sums["prompt"].split()[1]}\n\nAnswer:\n')
    self.assertEqual((sums['answer'], sums['targets'][1], sums['choices']),
                     (sums['targets'][0], 'x', []))
    again = os.path.join(tempfile.mkdtemp(), 'evals')   # the split is fixed
    prepare_evals.prepare(again, {'bigbench_lite': self.source}, TASKS)
    self.assertEqual(eval_data.read(again, 'bigbench_lite', 'validation'), held)

  def test_bad_task_files_are_refused(self):
    with self.assertRaisesRegex(errors.UserError, "no nothing/task.json under"):
      eval_data.read_bigbench(self.source, ('nothing',))
    bad = tempfile.mkdtemp()
    write_task(os.path.join(bad, 'broken'), [{'input': 'q'}])
    with self.assertRaisesRegex(errors.UserError, 'example 0 has neither "target" nor '
                                '"target_scores"'):
      eval_data.read_bigbench(bad, ('broken',))
    with open(os.path.join(bad, 'broken', 'task.json'), 'w') as f:
      f.write('{"examples": 3}')
    with self.assertRaisesRegex(errors.UserError, 'needs a list "examples"'):
      eval_data.read_bigbench(bad, ('broken',))


class BigBenchEvaluatorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = os.path.join(tempfile.mkdtemp(), 'evals')
    prepare_evals.prepare(cls.dir, {'bigbench_lite': make_bigbench(tempfile.mkdtemp())},
                          TASKS)
    cls.cfg = tiny_config.get_config('finetune')
    cls.cfg.data.finetune.update(path=cls.dir, task='bigbench_lite', min_shots=0, max_shots=3)
    cls.cfg.evals.data = cls.dir
    cls.cfg.evals.bigbench.update(examples=4, samples=4, shots=1, batch_size=8)
    cls.setup, cls.params, cls.feeds = helpers.setup_and_params(cls.cfg)

  def test_fine_tuning_rows_hold_zero_to_three_shots(self):
    feed = self.feeds.train_source
    self.assertEqual(feed.evaluators, ('heldout', 'bigbench'))
    counts = {len(feed.shots_of(g, feed.target_of(g))) for g in range(40)}
    self.assertEqual(counts, {0, 1, 2, 3})

  def test_pass_at_k_normalised_per_task_then_averaged(self):
    evaluator = bigbench.BigBench(self.setup, self.cfg, self.feeds)
    tasks = evaluator.tasks
    self.assertEqual({t: len(e) for t, e in tasks.items()}, {'sums': 4, 'parity': 4})

    def generate(params, prompts, request):
      del params
      rows = []
      for p, prompt in enumerate(prompts):
        text = evaluator.tokenizer.decode(prompt)
        task = 'parity' if 'choice:' in text.rsplit('Question:', 1)[1] else 'sums'
        i = [evaluator.prompt(task, e) for e in tasks[task]].index(list(prompt))
        target = tasks[task][i]['targets'][0]
        right = {'sums': i, 'parity': 4 - i}[task]   # right samples of this example
        texts = [f'  {target.upper()} '] * right + ['wrong'] * (request.num_samples - right)
        rows.append([sampler_lib.Completion(p, s, (), t, 'stop_id', False)
                     for s, t in enumerate(texts)])
      return rows

    with mock.patch.object(evaluator.sampler, 'generate', generate):
      scalars, _ = evaluator.run(self.params)
    want = {}
    for task, correct, chance in (('sums', [0, 1, 2, 3], 0.0), ('parity', [4, 3, 2, 1], 0.5)):
      for k in (1, 2, 4):
        p = np.mean([pass_at_k.pass_at_k(4, c, k) for c in correct])
        want.setdefault(k, []).append(p if not chance else max(0, (p - chance) / (1 - chance)))
        self.assertAlmostEqual(scalars[f'bigbench/{task}/pass@{k}'], want[k][-1])
    for k in (1, 2, 4):
      self.assertAlmostEqual(scalars[f'bigbench/pass@{k}'], np.mean(want[k]))
    self.assertEqual((scalars['bigbench/examples'], scalars['bigbench/skipped'],
                      scalars['bigbench/tasks']), (8, 0, 2))

  def test_loglik_scores_are_the_models_and_pick_the_likeliest_choice(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.evals.bigbench.mode = 'loglik'
    evaluator = bigbench.BigBench(self.setup, cfg, self.feeds)
    prompt, continuation = [5, 6, 7], [8, 9]
    score = evaluator._score(self.params, [(prompt, continuation)])[0]
    tokens = np.array([prompt + continuation])
    logits = self.setup.model.apply({'params': self.params}, tokens[:, :-1], deterministic=True)
    logp = jax.nn.log_softmax(logits[0])
    self.assertAlmostEqual(score, float(logp[2, 8] + logp[3, 9]), places=4)

    def fake_score(params, rows):   # 'no' is likelier than 'yes' everywhere
      del params
      return np.array([-1.0 if ids == list(evaluator.tokenizer.encode('no')) else -2.0
                       for _, ids in rows])
    with mock.patch.object(evaluator, '_score', fake_score):
      scalars, _ = evaluator.run(self.params)
    right = np.mean([e['targets'] == ['no'] for e in evaluator.tasks['parity']])
    self.assertAlmostEqual(scalars['bigbench/parity/mc_accuracy'],
                           max(0.0, (right - 0.5) / 0.5))
    self.assertNotIn('bigbench/sums/mc_accuracy', scalars)   # no choices
    self.assertNotIn('bigbench/pass@1', scalars)             # loglik only

  def test_long_prompts_are_skipped_and_counted_and_refusals(self):
    cfg = self.cfg.copy_and_resolve_references()
    cfg.evals.bigbench.shots = 3      # parity's 3 shots: more than the 128-token context
    evaluator = bigbench.BigBench(self.setup, cfg, self.feeds)
    scalars, _ = evaluator.run(self.params)
    self.assertEqual((scalars['bigbench/examples'], scalars['bigbench/skipped'],
                      scalars['bigbench/tasks']), (4, 4, 1))
    self.assertNotIn('bigbench/parity/pass@2', scalars)   # no example scored: no number
    self.assertEqual(scalars['bigbench/pass@2'], scalars['bigbench/sums/pass@2'])
    cfg.evals.bigbench.mode = 'vote'
    with self.assertRaisesRegex(errors.UserError, "evals.bigbench.mode='vote'"):
      bigbench.BigBench.check(cfg, None)
    cfg.evals.bigbench.update(mode='both', batch_size=3)
    with self.assertRaisesRegex(errors.UserError, 'batch_size=3 is not divisible by the 2'):
      bigbench.BigBench.check_mesh(cfg, None, 2)

  def test_matching_and_chance(self):
    self.assertTrue(bigbench.matches('  Paris\n', ['paris']))
    self.assertFalse(bigbench.matches('Paris.', ['paris']))
    self.assertFalse(bigbench.matches('Paris, France', ['paris']))
    self.assertEqual(bigbench.normalised(0.25, 0.5), 0.0)
    self.assertEqual(bigbench.normalised(0.75, 0.5), 0.5)
    self.assertEqual(bigbench.normalised(0.3, 0.0), 0.3)
    self.assertEqual(bigbench.chance_of([{'choices': ['a', 'b']}, {'choices': ['a', 'b',
                                                                              'c', 'd']}]),
                     1 / 3)


if __name__ == '__main__':
  absltest.main()
