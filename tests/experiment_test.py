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
import ml_collections
import numpy as np
from PIL import Image
from scipy import stats

from ncalm import comparison
from ncalm import config_lib
from ncalm import errors
from ncalm import experiment
from ncalm import metrics
from ncalm.data import dataset
from ncalm.tools import footprint

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

  def test_paired_differences_with_t_intervals_and_induction_onset(self):
    scratch = {s: arm([(0, 6.0), (50, 5.0), (100, 4.0)],
                      induction=[(0, 1.0), (50, 0.8), (100, 0.6)]) for s in range(3)}
    shifts = (0.1, 0.3, 0.2)   # the arm's loss minus scratch's, per seed
    ahead = {s: arm([(0, 6.0 - d), (50, 5.0 - d), (100, 4.0 - d)],
                    induction=[(0, 1.0), (50, 0.5), (100, 0.2)]) for s, d in enumerate(shifts)}
    rows = {r.arm: r for r in comparison.paired({'scratch': scratch, 'ahead': ahead},
                                                 fractions=(0.25, 1.0))}
    mean, low, high = rows['ahead'].differences[1.0]
    want = -np.mean(shifts)
    half = stats.t.ppf(0.975, 2) * np.std(shifts, ddof=1) / np.sqrt(3)   # the textbook one
    np.testing.assert_allclose((mean, low, high), (want, want - half, want + half), rtol=1e-6)
    self.assertAlmostEqual(rows['ahead'].differences[0.25][0], want)   # at step 25, linear
    self.assertEqual(rows['ahead'].seeds, 3)
    self.assertEqual(rows['ahead'].onset, (50.0, 0.0))       # ratio 0.5 at step 50
    self.assertIsNone(rows['scratch'].onset)                 # never below 0.5
    self.assertIsNone(rows['scratch'].differences[1.0])      # the reference itself
    table = comparison.paired_markdown(list(rows.values()))
    self.assertIn(f'| ahead | 3 | {want:+.3f} [{want - half:+.3f}, {want + half:+.3f}]', table)
    self.assertIn('| scratch | 3 | reference | reference |', table)
    self.assertAlmostEqual(rows['ahead'].final_ratio, 0.2)
    self.assertTrue(table.rstrip().endswith('| 0.200 |'), table)
    one = comparison.paired({'scratch': {0: scratch[0]}, 'ahead': {0: ahead[0]}},
                            fractions=(1.0,))
    self.assertIn(f'{-shifts[0]:+.3f} (one seed)', comparison.paired_markdown(one))
    for df in (1, 2, 4, 9, 19, 29, 200):
      self.assertAlmostEqual(comparison.t975(df), stats.t.ppf(0.975, df), delta=0.02)
    for df in (1, 2, 4, 10, 20, 30, 60, 120):
      self.assertAlmostEqual(comparison.t975(df), stats.t.ppf(0.975, df), places=5)


class ControlsRecipeTest(absltest.TestCase):
  """configs/experiments/code_controls.py: the runs it makes are the recipes it names."""

  def test_the_runs_of_the_controls_experiment(self):
    exp = config_lib.load_file(os.path.join(ROOT, 'configs', 'experiments',
                                            'code_controls.py:cpu'))
    experiment.check(exp)
    runs = {os.path.relpath(path, '/w'): cfg for path, cfg in experiment.jobs(exp, '/w')}
    self.assertLen(runs, 5 * (5 + 6 + 4))   # per seed: 5 stage 1, 6 arms' stage 2, 4 ablations
    stage2 = runs['seed_0/scratch/stage2']
    self.assertEqual((stage2.init.from_run, stage2.init.embedding), ('', 'framework'))
    self.assertEqual(stage2.train_steps, 1000)
    stage2_tokens = stage2.train_steps * stage2.global_batch * stage2.seq_len
    for arm in ('nca', 'nca_annealed', 'nca_aperiodic', 'nca_shuffled', 'code'):
      stage1 = runs[f'seed_3/{arm}/stage1']
      tokens = stage1.train_steps * stage1.global_batch * stage1.seq_len
      self.assertLessEqual(tokens, 0.1 * stage2_tokens, arm)     # ≤ 10% of stage 2
      warm_only = (stage1.optim.schedule, stage1.optim.warmup_steps) == ('warmup', 100)
      self.assertEqual(warm_only, arm != 'nca_annealed', arm)     # handed over at peak lr
      after = runs[f'seed_3/{arm}/stage2']
      self.assertEqual(after.init.from_run, f'/w/seed_3/{arm}/stage1')
      self.assertEqual(after.init.embedding, 'framework')
      self.assertEqual(after.seed, 3)
    self.assertEqual(runs['seed_0/nca_shuffled/stage1'].data.shuffle, 'frames')
    aperiodic = runs['seed_0/nca_aperiodic/stage1'].data
    self.assertEqual((aperiodic.reject_periodic, aperiodic.nca.grid), (True, 16))
    self.assertEqual(runs['seed_0/code/stage1'].data.source, 'text')
    control = runs['seed_0/nca_statistics/stage2']
    self.assertEqual((control.init.from_run, control.init.kept),
                     ('/w/seed_0/nca/stage1', 'statistics'))
    self.assertEqual(runs['seed_0/nca/stage2'].init.kept, 'weights')
    practice = {name: runs[f'seed_0/{name}/stage2'].init for name in
                ('nca_warm_head', 'nca_slow_kept', 'nca_unit_norms')}
    self.assertEqual(practice['nca_warm_head'].warm_steps, 100)
    self.assertEqual(practice['nca_slow_kept'].transferred_lr_scale, 0.3)
    self.assertEqual(practice['nca_unit_norms'].norms, 'unit_rms')
    for init in practice.values():
      self.assertEqual(init.from_run, '/w/seed_0/nca/stage1')


class CorporaTest(absltest.TestCase):

  def test_missing_corpora_are_made_once_with_their_tokeniser(self):
    tmp = self.create_tempdir().full_path
    exp = ml_collections.ConfigDict(dict(corpora=dict(
        code=dict(input=helpers.CORPUS_GLOBS[0], tokenizer=f'{tmp}/new/bpe.json',
                  vocab_size=300, out=f'{tmp}/code', validation_fraction=0.4),
        same_bpe=dict(input=helpers.CORPUS_GLOBS[1], tokenizer=f'{tmp}/new/bpe.json',
                      vocab_size=0, out=f'{tmp}/other', validation_fraction=0.2))))
    experiment.prepare_corpora(exp)
    for out in ('code', 'other'):
      meta = dataset.read_meta(f'{tmp}/{out}')
      self.assertEqual(meta['tokenizer'], f'{tmp}/new/bpe.json')
      self.assertEqual(meta['vocab_size'], 300)
    made = {p: os.stat(p).st_mtime_ns for p in (f'{tmp}/new/bpe.json',
                                                f'{tmp}/code/{dataset.META_FILE}')}
    experiment.prepare_corpora(exp)   # there already: left as they are
    self.assertEqual(made, {p: os.stat(p).st_mtime_ns for p in made})
    exp.corpora.code.vocab = 3
    with self.assertRaisesRegex(errors.UserError, r"corpora.code: unknown field\(s\) \['vocab'\]"):
      experiment.prepare_corpora(exp)

  def test_every_run_of_the_h200_variant_fits_one_h200(self):
    """The dry run's memory estimate for every run of the variant; its step time is
    benchmarks/experiment_budget.py's (docs/benchmarks.md)."""
    exp = config_lib.load_file(os.path.join(ROOT, 'configs', 'experiments',
                                            'code_controls.py:h200'))
    data = helpers.make_corpus(os.path.join(self.create_tempdir().full_path, 'corpus'))
    tokens = {}
    for path, cfg in experiment.jobs(exp, '/w'):
      if cfg.data.source == 'text':   # a stand-in dataset of the model's vocabulary size
        cfg.data.text.update(path=data, tokenizer='')
        cfg.model.vocab_size = 4096
      self.assertEqual(footprint.estimate(cfg, 'h200x1', mfu=0.4).fits, 'yes', path)
      tokens[os.path.basename(path)] = cfg.train_steps * cfg.global_batch * cfg.seq_len
    self.assertLessEqual(tokens['stage1'], 0.1 * tokens['stage2'])
    self.assertLen(exp.seeds, 5)


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
    exp = config_lib.load_file(os.path.join(TESTS, 'tiny_experiment.py'))
    exp.contrasts = (('nca', 'dyck'),)
    with self.assertRaisesRegex(errors.UserError, r"contrasts has \('nca', 'dyck'\): each is"):
      experiment.check(exp)
    exp.contrasts = (('nca', 'nca_reinit_attention'),)
    exp.arms = ('scratch',)   # a subset (the learning-rate screen): the pair is just left out
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
        for picture in (f'{table}.png', f'{table}_paired.png'):
          with Image.open(os.path.join(workdir, picture)) as image:
            self.assertEqual(image.size, (900, 560))
    # The contrast: nca minus its attention-reinitialised twin, per seed, at the end.
    difference = np.subtract(final_losses('nca'), final_losses('nca_reinit_attention'))
    with open(os.path.join(workdir, 'contrasts.md')) as f:
      contrasts = f.read()
    half = stats.t.ppf(0.975, 1) * np.std(difference, ddof=1) / np.sqrt(2)
    mean = np.mean(difference)
    self.assertIn('| nca − nca_reinit_attention | 2 |', contrasts)
    self.assertIn(f'{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] |', contrasts)
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

    # Evaluators added later: the finished runs are evaluated, not retrained, and their
    # numbers become columns (the held-out loss of the final checkpoint = the final loss).
    with_evals = changed()
    with_evals.evals = ('heldout',)
    experiment.run_experiment(with_evals, workdir)
    self.assertEqual(os.stat(first).st_mtime_ns, finished)
    self.assertTrue(os.path.exists(os.path.join(os.path.dirname(first), 'eval', '6',
                                                'report.json')))
    for table, arms in (('comparison', ['scratch', 'nca']),
                        ('ablations', ['scratch', 'nca', 'nca_reinit_attention'])):
      with open(os.path.join(workdir, f'{table}.csv')) as f:
        rows = list(csv.DictReader(f))
      for row in rows:
        self.assertAlmostEqual(float(row['eval/loss_mean']), np.mean(final_losses(row['arm'])),
                               places=6)
        self.assertEqual(row['eval/loss_seeds'], '2')
      with open(os.path.join(workdir, f'{table}.md')) as f:
        self.assertIn('| arm | eval/bits_per_byte | eval/loss | eval/perplexity |', f.read())
      self.assertTrue(os.path.exists(os.path.join(workdir, f'{table}_evals.png')))
    with_evals.evals = ('probe',)
    with self.assertRaisesRegex(errors.UserError, "evals: 'probe' does not suit"):
      experiment.run_experiment(with_evals, workdir)

  def test_a_fine_tuning_stage_is_run_evaluated_and_counted(self):
    tmp = self.create_tempdir().full_path
    exp = config_lib.load_file(os.path.join(TESTS, 'tiny_experiment.py:finetune'))
    exp.stage2.data.text.path = helpers.make_corpus(os.path.join(tmp, 'corpus'))
    exp.stage3.evals.data = exp.stage3.data.finetune.path = helpers.make_eval_data(
        os.path.join(tmp, 'evals'))
    workdir = os.path.join(tmp, 'exp')
    experiment.run_experiment(exp, workdir)
    with open(os.path.join(workdir, 'comparison.csv')) as f:
      rows = {r['arm']: r for r in csv.DictReader(f)}
    self.assertEqual(list(rows), ['scratch'])
    for name, row in rows.items():
      base = os.path.join(workdir, 'seed_0', name)
      with open(os.path.join(base, 'stage3', 'run_config.json')) as f:
        saved = json.load(f)['config']
      self.assertEqual(saved['init.from_run'], os.path.join(base, 'stage2'))
      self.assertEqual(saved['data.finetune.tokenizer'], 'bytes')   # stage 2's
      with open(os.path.join(base, 'stage3', 'eval', '6', 'report.json')) as f:
        report = json.load(f)['scalars']
      self.assertEqual(float(row['gsm8k/pass@1_mean']), report['gsm8k/pass@1'])
      self.assertEqual(report['gsm8k/problems'], 2)
      flops = 0.0
      for stage in ('stage2', 'stage3'):
        with open(os.path.join(base, stage, experiment.DONE_FILE)) as f:
          flops += json.load(f)['flops']
      self.assertAlmostEqual(float(row['total_flops']) / flops, 1.0, places=5)
    other = config_lib.load_file(os.path.join(TESTS, 'tiny_experiment.py:finetune'))
    other.stage2 = exp.stage2
    other.stage3 = exp.stage3
    other.stage3.model.d_model = 64
    with self.assertRaisesRegex(errors.UserError, r"stage3.model differs from stage2.model "
                                r"in \['d_model'\]"):
      experiment.run_experiment(other, workdir)


if __name__ == '__main__':
  absltest.main()
