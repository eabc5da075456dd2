"""HumanEval: pass@k against a brute-force count over subsets, the scoring of samples in the
sandbox, prompts too long for the context skipped and counted, and the refusals."""
import itertools
import os
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from ncalm import errors
from ncalm import sampler as sampler_lib
from ncalm.eval import humaneval
from ncalm.eval import pass_at_k

import helpers


class PassAtKTest(absltest.TestCase):

  def test_equals_the_count_over_all_subsets(self):
    n = 7
    for c in range(n + 1):
      samples = [True] * c + [False] * (n - c)
      for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        self.assertAlmostEqual(pass_at_k.pass_at_k(n, c, k), brute, places=12)

  def test_means_and_refusals(self):
    self.assertEqual(pass_at_k.mean_pass_at_k([2, 0], 2, (1, 2, 10)), {1: 0.5, 2: 0.5})
    self.assertEqual(pass_at_k.mean_pass_at_k([], 4, (1,)), {})   # nothing scored: no number
    with self.assertRaisesRegex(ValueError, 'pass@5 of 1 correct among 4'):
      pass_at_k.pass_at_k(4, 1, 5)


class HumanEvalTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    data = helpers.make_corpus(tempfile.mkdtemp())
    cls.cfg = helpers.text_config(data)
    cls.cfg.evals.data = helpers.make_eval_data(os.path.join(tempfile.mkdtemp(), 'evals'))
    cls.cfg.evals.humaneval.update(problems=3, samples=4, timeout_seconds=5.0)
    cls.setup, cls.params, cls.feeds = helpers.setup_and_params(cls.cfg)
    cls.problems = humaneval.read_problems(cls.cfg.evals.data)[:3]

  def fake_generate(self, completions):
    """A sampler that writes the given completion for every sample of each prompt."""
    def generate(params, prompts, request):
      del params
      return [[sampler_lib.Completion(p, s, (), completions[p], 'stop_string', False)
               for s in range(request.num_samples)] for p in range(len(prompts))]
    return generate

  def test_scores_samples_in_the_sandbox(self):
    evaluator = humaneval.HumanEval(self.setup, self.cfg, self.feeds)
    completions = [self.problems[0]['answer'], '    return None\n', self.problems[2]['answer']]
    with mock.patch.object(evaluator.sampler, 'fits', return_value=True), \
         mock.patch.object(evaluator.sampler, 'generate', self.fake_generate(completions)):
      scalars, images = evaluator.run(self.params)
    self.assertEqual(images, {})
    self.assertAlmostEqual(scalars['humaneval/pass@1'], 2 / 3)
    self.assertEqual((scalars['humaneval/problems'], scalars['humaneval/skipped']), (3, 0))
    self.assertNotIn('humaneval/pass@10', scalars)   # k > samples is not reported
    self.assertAlmostEqual(scalars['humaneval/pass@4'], 2 / 3)   # k = the number of samples

  def test_samples_that_never_ran_give_no_score(self):
    evaluator = humaneval.HumanEval(self.setup, self.cfg, self.feeds)
    not_run = humaneval.sandbox.Result(False, 'not_run', 1, 'bwrap: busy')
    with mock.patch.object(evaluator.sampler, 'fits', return_value=True), \
         mock.patch.object(evaluator.sampler, 'generate', self.fake_generate(['x'] * 3)), \
         mock.patch.object(humaneval.sandbox, 'run_many', return_value=[not_run] * 12):
      with self.assertRaisesRegex(errors.UserError, '12 of 12 samples could not be started'):
        evaluator.run(self.params)

  def test_prompts_longer_than_the_context_are_skipped_and_counted(self):
    evaluator = humaneval.HumanEval(self.setup, self.cfg, self.feeds)
    scalars, _ = evaluator.run(self.params)   # the tiny text model's context is 64 tokens
    self.assertEqual((scalars['humaneval/problems'], scalars['humaneval/skipped']), (0, 3))
    self.assertNotIn('humaneval/pass@1', scalars)

  def test_program_and_stop_strings(self):
    p = self.problems[0]
    self.assertTrue(humaneval.program(p, 'X').startswith(p['prompt'] + 'X\n\n'))
    self.assertTrue(humaneval.program(p, 'X').endswith(f'check({p["entry_point"]})\n'))
    self.assertEqual(humaneval.STOP_STRINGS, ('\nclass ', '\ndef ', '\nif __name__', '\nprint('))

  def test_refusals(self):
    cfg = helpers.text_config('/nowhere')
    cfg.evals.data = self.cfg.evals.data
    cfg.evals.humaneval.update(problems=1, samples=0)
    with self.assertRaisesRegex(errors.UserError, 'evals.humaneval.samples=0 must be at least'):
      humaneval.HumanEval.check(cfg, None)
    cfg.evals.humaneval.update(samples=2, top_p=1.5)
    with self.assertRaisesRegex(errors.UserError, r'top_p=1.5 is outside'):
      humaneval.HumanEval.check(cfg, None)
    cfg.evals.humaneval.update(top_p=0.95)
    with self.assertRaisesRegex(errors.UserError, "evals.data='' is not a prepared"):
      humaneval.HumanEval.check(helpers.text_config('/nowhere'), None)
    with mock.patch.object(humaneval.sandbox, 'available', return_value=False), \
         mock.patch.object(humaneval.sandbox, '_problem', return_value='no bwrap executable'):
      with self.assertRaisesRegex(errors.UserError, 'no bwrap executable.*'
                                  'evals.humaneval.unsandboxed=true'):
        humaneval.HumanEval.check(cfg, None)
    np.testing.assert_array_equal(humaneval.KS, (1, 10, 64))


if __name__ == '__main__':
  absltest.main()
