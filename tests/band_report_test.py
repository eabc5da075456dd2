"""The band-by-domain report (ncalm/tools/band_report.py) over experiment workdirs made here."""
import csv
import json
import os
import tempfile

from absl.testing import absltest
import ml_collections
import numpy as np
from PIL import Image
from scipy import stats

from ncalm import errors
from ncalm import experiment
from ncalm.tools import band_report

SEEDS = (0, 1, 2)
BANDS = ('nca_low', 'nca_high')


def write_run(run_dir: str, curve=None) -> None:
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, experiment.DONE_FILE), 'w') as f:
    json.dump(dict(tokens=100, flops=1e9, diverged=False), f)
  if curve is not None:
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
      for step, loss in curve:
        f.write(json.dumps({'step': step, 'eval/loss': loss}) + '\n')


def make_experiment(workdir: str, deltas: dict[str, list[float]], seeds=SEEDS) -> None:
  """A finished band experiment: scratch ends at 4 + seed/10, each band `deltas[band][i]`
  above scratch on seed i (its whole curve shifted)."""
  exp = ml_collections.ConfigDict(dict(seeds=seeds, arms=('scratch', *deltas), stage1={},
                                       stage2={}, ablations={}))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, experiment.CONFIG_FILE), 'w') as f:
    f.write(exp.to_json())
  for i, seed in enumerate(seeds):
    base = os.path.join(workdir, f'seed_{seed}')
    scratch = [(0, 8.0), (50, 5.0), (100, 4.0 + seed / 10)]
    write_run(os.path.join(base, 'scratch', 'stage2'), scratch)
    for band, delta in deltas.items():
      write_run(os.path.join(base, band, 'stage1'))
      write_run(os.path.join(base, band, 'stage2'), [(s, v + delta[i]) for s, v in scratch])


def t_interval(values):
  a = np.asarray(values, np.float64)
  half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))
  return a.mean(), a.mean() - half, a.mean() + half


class BandReportTest(absltest.TestCase):

  def test_bands_against_scratch_and_the_best_band_across_experiments(self):
    tmp = tempfile.mkdtemp()
    code = {'nca_low': [-0.10, -0.20, -0.15], 'nca_high': [0.05, 0.30, 0.10]}
    web = {'nca_low': [0.20, 0.25, 0.30], 'nca_high': [0.00, -0.05, 0.02]}
    make_experiment(os.path.join(tmp, 'code'), code)
    make_experiment(os.path.join(tmp, 'web'), web)
    out = os.path.join(tmp, 'report', 'bands')
    rows = band_report.write([f'code={tmp}/code', f'web text={tmp}/web'], out)
    by = {(r.experiment, r.band): r for r in rows}
    self.assertEqual(sorted(by), sorted((e, b) for e in ('code', 'web text') for b in BANDS))
    for label, deltas, best, other in (('code', code, 'nca_low', 'nca_high'),
                                       ('web text', web, 'nca_high', 'nca_low')):
      for band in BANDS:
        row = by[(label, band)]
        self.assertEqual(row.seeds, 3)
        np.testing.assert_allclose(row.vs_scratch, t_interval(deltas[band]), rtol=1e-5)
      self.assertTrue(by[(label, best)].best)
      self.assertFalse(by[(label, other)].best)
      self.assertIsNone(by[(label, best)].vs_best)
      np.testing.assert_allclose(
          by[(label, other)].vs_best,
          t_interval(np.subtract(deltas[other], deltas[best])), rtol=1e-5)
    table = open(out + '.md').read()
    self.assertIn('| band | code | web text |', table)
    low = t_interval(code['nca_low'])
    self.assertIn(f'| nca_low | {low[0]:+.3f} [{low[1]:+.3f}, {low[2]:+.3f}] |', table)
    with open(out + '.csv') as f:
      written = list(csv.DictReader(f))
    self.assertLen(written, 4)
    self.assertEqual([r['best'] for r in written], ['1', '0', '0', '1'])
    self.assertGreater(Image.open(out + '.png').size[0], 400)

  def test_halfway_compares_at_that_fraction_and_one_seed_has_no_interval(self):
    tmp = tempfile.mkdtemp()
    make_experiment(os.path.join(tmp, 'code'), {'nca_low': [0.3]}, seeds=(0,))
    rows = band_report.write([f'code={tmp}/code'], os.path.join(tmp, 'half'), fraction=0.5)
    self.assertAlmostEqual(rows[0].vs_scratch[0], 0.3)
    self.assertTrue(np.isnan(rows[0].vs_scratch[1]))
    self.assertIn('+0.300 (one seed)', open(os.path.join(tmp, 'half.md')).read())

  def test_bad_input(self):
    tmp = tempfile.mkdtemp()
    empty = os.path.join(tmp, 'empty')
    make_experiment(empty, {'nca_low': [0.1]}, seeds=(0,))
    os.remove(os.path.join(empty, 'seed_0', 'scratch', 'stage2', experiment.DONE_FILE))
    cases = [(['/tmp/bands'], 'LABEL=WORKDIR'), ([f'code={tmp}/none'], 'holds no'),
             ([f'code={empty}'], 'has finished'), ([f'code={empty}'], 'fraction')]
    for index, (specs, message) in enumerate(cases):
      with self.subTest(message), self.assertRaisesRegex(errors.UserError, message):
        band_report.write(specs, os.path.join(tmp, 'out'), fraction=1.5 if index == 3 else 1)


if __name__ == '__main__':
  absltest.main()
