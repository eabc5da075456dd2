"""benchmarks/gpu/check.sh: its --smoke run on the CPU (so it cannot rot between GPU runs),
its refusals, and the dry run's choice of batch and remat."""
import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

import xla_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, 'benchmarks', 'gpu', 'check.sh')
sys.path.insert(0, os.path.join(ROOT, 'benchmarks', 'gpu'))
from ncalm import perf  # pylint: disable=g-import-not-at-top,wrong-import-position

import shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_speed  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_check(*args, env=None):
  return subprocess.run([CHECK, *args], capture_output=True, text=True, timeout=600,
                        env=env or xla_env.child_env(), cwd=ROOT)


class SmokeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out = tempfile.mkdtemp()
    cls.proc = run_check('--smoke', f'--out={cls.out}')
    with open(os.path.join(cls.out, 'gpu_check.json')) as f:
      cls.report = json.load(f)

  def test_every_part_ran(self):
    self.assertEqual(self.proc.returncode, 0, self.proc.stdout[-3000:] + self.proc.stderr[-3000:])
    parts = self.report['parts']
    self.assertEqual(list(parts), ['correctness', 'steps', 'data', 'text'])
    for name, part in parts.items():
      self.assertTrue(part['ok'], f'{name}: {part}')
    with open(os.path.join(self.out, 'gpu_check.md')) as f:
      markdown = f.read()
    for name in parts:
      self.assertIn(f'## {name}: ok', markdown)

  def test_correctness_on_the_cpu_is_exact(self):
    c = self.report['parts']['correctness']['result']
    # The host against itself, and the published vectors on the CPU: bit for bit.
    self.assertEqual(c['logits_against_host']['highest_max_abs_diff'], 0.0)
    self.assertEqual(c['reference_nca']['trajectories_bit_exact'], 8)
    self.assertTrue(c['reference_nca']['tokens_bit_exact'])
    self.assertTrue(c['reference_nca']['rule_params_bit_exact'])
    self.assertFalse(c['fused_against_plain']['cudnn_called'])    # no cuDNN on a CPU
    self.assertLess(c['fused_against_plain']['logits_max_abs_diff'], 0.05)
    self.assertLess(c['bf16_against_f32']['abs_diff'], 0.05)

  def test_steps_data_and_text_measured(self):
    parts = self.report['parts']
    shape = parts['steps']['result']['shapes']['paper']
    self.assertEqual(list(shape['variants']), list(step_speed.VARIANTS))
    for variant in shape['variants'].values():
      self.assertTrue(variant['loss_finite'])
      self.assertGreater(variant['tokens_per_s'], 0)
    self.assertEqual(shape['shape']['batch'], shapes.SMOKE_BATCH)
    data = parts['data']['result']
    self.assertGreater(data['generation']['fast_tokens_per_s'], 0)
    self.assertGreater(data['scoring']['gzip_all_threads_rules_per_s'], 0)
    text = parts['text']['result']
    self.assertNotEmpty(text['data_wait_by_stretch'])
    self.assertTrue(all(0 <= w <= 1 for w in text['data_wait_by_stretch']))
    self.assertIsNotNone(text['eval_loss'])


class RefusalTest(absltest.TestCase):

  def test_no_gpu_without_smoke(self):
    proc = run_check('--out=' + tempfile.mkdtemp())
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn('No GPU visible', proc.stderr)
    self.assertIn('--smoke', proc.stderr)

  def test_missing_package_is_named_with_the_fetch_command(self):
    fake = tempfile.mkdtemp()
    os.makedirs(os.path.join(fake, 'grain'))
    with open(os.path.join(fake, 'grain', '__init__.py'), 'w') as f:
      f.write('raise ImportError("not installed here")\n')
    env = xla_env.child_env()
    env['PYTHONPATH'] = fake + os.pathsep + env.get('PYTHONPATH', '')
    env['NCALM_WHEELS'] = fake   # no wheels to install over the missing package
    proc = run_check('--smoke', '--out=' + tempfile.mkdtemp(), env=env)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertIn('grain==0.2.18', proc.stderr)
    self.assertIn('pip download', proc.stderr)


class ChooseTest(absltest.TestCase):

  def test_the_paper_batch_with_the_least_recomputation_that_fits(self):
    h200 = perf.TARGETS['h200x1']
    cfg, chosen = shapes.config('paper', h200, smoke=False)
    self.assertEqual(chosen['batch'], shapes.PAPER_BATCH)
    # Remat 'none' does not fit batch 32 of the 1.6B model; the chosen policy does, and
    # every policy tried before it fell short.
    self.assertLess(chosen['largest_batch_by_remat']['none'], shapes.PAPER_BATCH)
    self.assertEqual(list(chosen['largest_batch_by_remat'])[-1], chosen['remat'])
    self.assertEqual(cfg.model.remat, chosen['remat'])
    self.assertLessEqual(chosen['predicted_fraction'], 0.9)

  def test_a_shape_that_does_not_fit_gives_the_dry_run_numbers(self):
    tiny = perf.Target('tiny', 'a 1 GiB device', 'x', 'x', 1, 1.0, 1)
    with self.assertRaisesRegex(RuntimeError, r'not even batch 1 fits.*GiB of 1.0 GiB'):
      shapes.config('paper', tiny, smoke=False)


if __name__ == '__main__':
  absltest.main()
