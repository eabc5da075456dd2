"""The comparison command (ncalm/experiment.py) and its tables (ncalm/eval/comparison.py):
crossing steps and speed-ups on known curves; a tiny experiment killed mid-way, resumed,
and its tables and plots checked against the runs' own metrics."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

from absl.testing import absltest
import numpy as np
from PIL import Image

from ncalm import comparison
from ncalm import config_lib
from ncalm import errors
from ncalm import experiment
from ncalm import metrics

import helpers

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def arm(curve, **kw):
  return comparison.ArmResult(curve=curve, **kw)


class CompareTest(absltest.TestCase):

  def test_crossing_step_interpolates_between_evaluations(self):
    curve = [(10, 5.0), (20, 4.0), (30, 3.0)]
    self.assertEqual(comparison.crossing_step(curve, 4.0), 20.0)
    self.assertEqual(comparison.crossing_step(curve, 3.5), 25.0)
    self.assertEqual(comparison.crossing_step(curve, 6.0), 10.0)
    self.assertIsNone(comparison.crossing_step(curve, 2.9))

  def test_speedup_is_scratch_steps_over_arm_steps_per_seed(self):
    results = {
        'scratch': {0: arm([(10, 5.0), (20, 4.0), (40, 3.0)]),
                    1: arm([(10, 5.0), (20, 4.0), (40, 2.0)])},
        'fast': {0: arm([(10, 4.0), (20, 3.0), (40, 2.5)], stage1_tokens=100, flops=2e15),
                 1: arm([(10, 4.0), (20, 2.0), (40, 1.5)], stage1_tokens=100, flops=2e15)},
        'slow': {0: arm([(10, 6.0), (20, 5.0), (40, 4.0)]),
                 1: arm([(10, 6.0), (20, 5.0), (40, 1.0)])},
        'broken': {0: arm([], diverged=True)},
    }
    rows = {r.arm: r for r in comparison.summarise(results)}
    self.assertEqual(rows['scratch'].speedup, (1.0, 1.0, 1.0))
    self.assertEqual(rows['fast'].reached, 2)
    self.assertEqual(rows['fast'].speedup, (2.0, 2.0, 2.0))     # 40/20 on both seeds
    self.assertEqual(rows['slow'].reached, 1)                   # seed 1 only: 40 / 35
    self.assertAlmostEqual(rows['slow'].speedup[0], 40 / (20 + 20 * 3 / 4))
    np.testing.assert_allclose(rows['fast'].final_loss, (2.0, np.std([2.5, 1.5], ddof=1)))
    np.testing.assert_allclose(rows['fast'].final_ppl[0], (math.exp(2.5) + math.exp(1.5)) / 2)
    self.assertEqual(rows['broken'].diverged, 1)
    self.assertIsNone(rows['broken'].final_loss)
    table = comparison.markdown(list(rows.values()))
    self.assertIn('| fast | 2 | 2.000 ± 0.707 |', table)
    self.assertIn('2.00× [2.00, 2.00]', table)
    self.assertIn('(1/2 seeds reach it)', table)
    self.assertIn('| broken | 1 (1 diverged) |', table)


class ExperimentTest(absltest.TestCase):

  def test_config_errors(self):
    exp = config_lib.load_file(os.path.join(TESTS, 'tiny_experiment.py'))
    exp.arms = ('scratch', 'nca', 'dyck')
    with self.assertRaisesRegex(errors.UserError, r"'dyck', which has no stage1.dyck"):
      experiment.check(exp)
    exp.arms = ('nca',)
    with self.assertRaisesRegex(errors.UserError, r'list "scratch" in arms'):
      experiment.check(exp)
    exp.arms = ('scratch,nca',)  # --config.arms=scratch,nca on the command line
    self.assertEqual(experiment.arms_of(exp), ('scratch', 'nca'))
    for empty in ((), ('',)):    # () in a file; --config.arms= on the command line
      exp.arms = empty
      with self.assertRaisesRegex(errors.UserError, r'arms is empty .*--config.arms=scratch'):
        experiment.check(exp)

  def test_tiny_experiment_killed_then_resumed_writes_tables_and_plots(self):
    tmp = self.create_tempdir().full_path
    data = helpers.make_corpus(os.path.join(tmp, 'corpus'))
    workdir = os.path.join(tmp, 'exp')
    first = os.path.join(workdir, 'seed_0', 'scratch', 'stage2', experiment.DONE_FILE)
    # The run after it has started once its workdir holds its config.
    second = os.path.join(workdir, 'seed_1', 'scratch', 'stage2', 'run_config.json')
    command = [sys.executable, '-m', 'ncalm.experiment',
               f'--config={os.path.join(TESTS, "tiny_experiment.py")}',
               f'--config.stage2.data.text.path={data}', f'--workdir={workdir}']
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
      while not os.path.exists(second):  # killed inside the second run
        self.assertIsNone(proc.poll(), 'the experiment ended before its second run began')
        time.sleep(0.2)
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    finally:
      if proc.poll() is None:
        proc.kill()
    self.assertTrue(os.path.exists(first))
    self.assertFalse(os.path.exists(os.path.join(os.path.dirname(second), experiment.DONE_FILE)))
    finished = os.stat(first).st_mtime_ns
    exp = config_lib.load_file(os.path.join(TESTS, 'tiny_experiment.py'))
    exp.stage2.data.text.path = data
    experiment.run_experiment(exp, workdir)
    self.assertEqual(os.stat(first).st_mtime_ns, finished)   # finished runs are skipped

    # The runs' own final validation losses, read here from their metrics.
    def final_losses(name):
      out = []
      for seed in (0, 1):
        rows = metrics.read_jsonl(os.path.join(workdir, f'seed_{seed}', name, 'stage2',
                                               'metrics.jsonl'))
        evals = [r for r in rows if 'eval/loss' in r]
        self.assertEqual([r['step'] for r in evals], [2, 4, 6])
        out.append(evals[-1]['eval/loss'])
      return out

    for table, arms in (('comparison', ['scratch', 'nca']),
                        ('ablations', ['scratch', 'nca', 'nca_reinit_attention'])):
      with self.subTest(table):
        with open(os.path.join(workdir, f'{table}.csv')) as f:
          rows = list(csv.DictReader(f))
        self.assertEqual([r['arm'] for r in rows], arms)
        for row in rows:
          losses = final_losses(row['arm'])
          self.assertEqual(int(row['seeds']), 2)
          self.assertAlmostEqual(float(row['final_loss_mean']), np.mean(losses), places=6)
          self.assertAlmostEqual(float(row['final_loss_std']), np.std(losses, ddof=1), places=6)
          self.assertEqual(int(row['stage1_tokens']), 0 if row['arm'] == 'scratch' else 3 * 4 * 76)
          self.assertGreater(float(row['total_flops']), 0)
        self.assertEqual(rows[0]['speedup_mean'], '1.0')
        with open(os.path.join(workdir, f'{table}.md')) as f:
          markdown = f.read()
        for name in arms:
          self.assertIn(f'| {name} | 2 |', markdown)
        with Image.open(os.path.join(workdir, f'{table}.png')) as image:
          self.assertEqual(image.size, (900, 560))
    with open(os.path.join(workdir, 'seed_1', 'nca_reinit_attention', 'stage2',
                           'transfer.json')) as f:
      self.assertEqual(json.load(f)['reinit'], ['attention'])
    with open(os.path.join(workdir, experiment.CONFIG_FILE)) as f:
      self.assertEqual(json.load(f)['stage2']['data']['text']['path'], data)

    # A rerun whose config would change finished runs is refused before anything runs;
    # one that only adds runs (a seed) passes the check.
    def changed(**stage2):
      exp = config_lib.load_file(os.path.join(TESTS, 'tiny_experiment.py'))
      exp.stage2.data.text.path = data
      exp.stage2.update(stage2)
      return exp
    with self.assertRaisesRegex(errors.UserError,
                                r"seed_0/scratch/stage2' holds a finished run made with another "
                                r'config.*train_steps: 6 in the run, 12 now'):
      experiment.run_experiment(changed(train_steps=12), workdir)
    other = helpers.make_corpus(os.path.join(tmp, 'other'), tokenizer='bytes')
    other_data = changed()
    other_data.stage2.data.text.path = other
    with self.assertRaisesRegex(errors.UserError, r'data.text.path: ".*corpus" in the run'):
      experiment.run_experiment(other_data, workdir)
    self.assertEqual(os.stat(first).st_mtime_ns, finished)
    more_seeds = changed()
    more_seeds.seeds = (0, 1, 2)
    experiment.check_finished(experiment.jobs(more_seeds, workdir))


if __name__ == '__main__':
  absltest.main()
