"""The dry run: parameter counts, per-device memory under the sharding rules, the CLI, and
the lowering and TPU compile checks (ncalm/tools/aot.py)."""
import importlib.util
import math
import os
import re
import subprocess
import sys
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp

from ncalm import errors
from ncalm import model as model_lib
from ncalm import perf
from ncalm.tools import aot
from ncalm.tools import dryrun
from ncalm.tools import footprint

import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paper_config():
  spec = importlib.util.spec_from_file_location(
      'nca_164m', os.path.join(REPO, 'configs', 'nca_164m.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class CountsTest(absltest.TestCase):

  def test_counts_match_the_model_and_eval_shape(self):
    cfg = tiny_config.get_config()
    p = footprint.estimate(cfg, 'h100x1')
    m = footprint.model_config(cfg)
    for key, value in model_lib.count_params(m).items():
      self.assertEqual(p.param_counts[key], value, key)
    shapes = jax.eval_shape(model_lib.Transformer(m).init, jax.random.key(0),
                            jnp.zeros((1, cfg.seq_len), jnp.int32))
    leaves = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    self.assertEqual(p.param_counts['total'], leaves)
    self.assertEqual(p.param_counts['leaves'], leaves)


class MemoryTest(absltest.TestCase):

  def test_fsdp_divides_the_sharded_leaves_exactly(self):
    cfg = tiny_config.get_config()
    cfg.global_batch = 8                      # splits over 8 data-parallel devices
    data = footprint.estimate(cfg, 'h100x8', dict(data=8))
    fsdp = footprint.estimate(cfg, 'h100x8', dict(fsdp=8))
    self.assertEqual((data.problems, fsdp.problems), ((), ()))
    sharded = {s.path for s in footprint.state_shards(cfg, fsdp.mesh) if 8 in s.splits}
    self.assertLen(sharded & set(fsdp.leaf_param_bytes), 9)   # all but the 3 norms
    for path, dp_bytes in data.leaf_param_bytes.items():
      expected = dp_bytes // 8 if path in sharded else dp_bytes
      self.assertEqual(fsdp.leaf_param_bytes[path], expected, path)
      if path in sharded:
        self.assertEqual(dp_bytes % 8, 0)
    self.assertEqual(data.memory.params, 4 * data.param_counts['total'])   # f32, replicated
    self.assertEqual(fsdp.memory.grads, fsdp.memory.params)

  def test_paper_model_on_one_h100(self):
    p = footprint.estimate(paper_config(), 'h100x1')
    n = p.param_counts
    self.assertEqual(round(n['blocks'] / 1e9, 2), 1.61)  # docs/method.md §4: 1.61B w/o embeddings
    self.assertAlmostEqual(n['non_embedding'] / 1e9, 1.61, delta=0.025)  # + final norm, head
    state = p.memory.params + p.memory.opt_state + p.memory.grads
    self.assertAlmostEqual(state / n['total'], 16, places=6)  # f32 params, mu, nu, grads
    self.assertEqual(p.mesh, dict(data=1, fsdp=1, tensor=1))
    self.assertEqual(p.fits, 'yes')
    self.assertEqual(p.tokens_per_step, 32 * 1024)
    self.assertEqual(p.flops_per_token, perf.flops_per_token(footprint.model_config(
        paper_config()), 1024))

  def test_recommendations(self):
    cfg = paper_config()
    use, _ = footprint.recommend(cfg, 'v5e-16')     # 16 GiB chips: the config's data=16 fails
    self.assertGreater(use.mesh['fsdp'], 1)
    self.assertEqual(use.fits, 'yes')
    # Batch 32 over 256 chips leaves tensor >= 8, which vocab 10002 does not divide, and
    # the 16x16 torus only lays axes of 16 or 256: the vocabulary is padded, tensor=16.
    use, note = footprint.recommend(cfg, 'v5e-256')
    self.assertEqual(use.mesh, dict(data=16, fsdp=1, tensor=16))
    self.assertEqual(use.vocab_size, 10112)
    self.assertIn('model.vocab_size=10112', note)
    self.assertFalse(footprint.torus_layout_ok(perf.TARGETS['v5p-128'],
                                            dict(data=32, fsdp=1, tensor=2)))
    self.assertTrue(footprint.torus_layout_ok(perf.TARGETS['v5p-128'],
                                           dict(data=16, fsdp=1, tensor=4)))

  def test_activation_terms_follow_the_remat_policy(self):
    m = model_lib.ModelConfig(vocab_size=100, d_model=8, num_layers=3, num_heads=2,
                              mlp_dim=16, dtype='bfloat16', remat='full')
    full = footprint.activation_bytes(m, batch=2, seq_len=4)
    self.assertEqual(full['saved_layers'], 3 * 2 * 4 * 8 * 2)
    self.assertEqual(full['logits'], 3 * 2 * 4 * 100 * 4)
    totals = {r: footprint.activation_bytes(m.__class__(**{**m.__dict__, 'remat': r}), 2, 4)
              ['total'] for r in model_lib.REMAT_POLICIES}
    self.assertLess(totals['full'], totals['dots_no_batch'])
    self.assertLess(totals['dots_no_batch'], totals['dots'])


class MeshOverrideTest(absltest.TestCase):
  """--config.mesh.data=4 --config.mesh.fsdp=4: 16 devices, which only some targets have."""

  def setUp(self):
    super().setUp()
    self.cfg = paper_config()
    self.cfg.mesh.update(data=4, fsdp=4)

  def test_table_covers_every_target_and_says_which_are_skipped(self):
    table = dryrun.format_table(self.cfg, list(perf.TARGETS), 0.4)
    skipped = [line for line in table.splitlines() if 'skipped' in line]
    self.assertEqual(skipped, [
        f'    ! skipped: config.mesh data=4 fsdp=4 tensor=1 needs 16 devices; {label} has {n}'
        for label, n in (('1xH100-80GB', 1), ('8xH100-80GB', 8), ('1xH200-141GB', 1),
                         ('TPU v5e-256', 256), ('TPU v5p-128', 64))])
    for target in perf.TARGETS.values():
      for row in ('config', 'fsdp'):
        self.assertRegex(table, re.compile(
            rf'^{re.escape(target.label)} +{target.num_devices} +\d+ {row} ', re.M))
    for name in ('v4-32', 'v5e-16', 'v5p-32'):   # 16 devices: the config row is the user's mesh
      label = re.escape(perf.TARGETS[name].label)
      self.assertRegex(table, re.compile(rf'^{label} +16 +4 config +4 +4 +1 ', re.M))
      config_row = dryrun.target_rows(self.cfg, name)[0]
      self.assertEqual((config_row[0], config_row[1].mesh),
                       ('config', dict(data=4, fsdp=4, tensor=1)))
    row, p, _ = dryrun.target_rows(self.cfg, 'h100x8')[2]
    self.assertEqual((row, p.mesh), ('use', dict(data=8, fsdp=1, tensor=1)))

  def test_a_mesh_with_minus_one_needs_a_multiple(self):
    self.cfg.mesh.update(data=-1, fsdp=3)
    self.assertEqual(dryrun.mesh_mismatch(self.cfg, 'h100x8'),
                     'skipped: config.mesh data=-1 fsdp=3 tensor=1 needs a multiple of 3 '
                     'devices; 8xH100-80GB has 8')
    self.cfg.mesh.update(data=-1, fsdp=4)
    self.assertEqual(dryrun.mesh_mismatch(self.cfg, 'h100x8'), '')

  def test_aot_of_a_skipped_config_row_says_so(self):
    compiled = []
    def compile_for_tpu(cfg, name, mesh, libtpu):
      compiled.append((name, mesh))
      raise aot.AotUnavailable('not here')
    with mock.patch.object(aot, 'find_libtpu', return_value='/libtpu.so'), \
         mock.patch.object(aot, 'compile_for_tpu', compile_for_tpu):
      lines = list(dryrun.aot_lines(self.cfg, [('v5p-128', 'config'), ('v4-32', 'run')], '',
                                    0.4))
    self.assertEqual(lines[0], 'AOT TPU v5p-128 config: skipped: config.mesh data=4 fsdp=4 '
                               'tensor=1 needs 16 devices; TPU v5p-128 has 64')
    self.assertEqual(compiled, [('v4-32', dict(data=4, fsdp=4, tensor=1))])

  def test_bad_configs_are_user_errors(self):
    self.cfg.mesh.update(data=0)
    with self.assertRaisesRegex(errors.UserError, r'config\.mesh\.data=0'):
      dryrun.check_config(self.cfg, 'configs/nca_164m.py')
    cfg = paper_config()
    cfg.modle = dict(d_model=3)
    with self.assertRaisesRegex(errors.UserError, r"--config=configs/nca_164m.py: .*'modle"):
      dryrun.check_config(cfg, 'configs/nca_164m.py')
    cfg = paper_config()
    cfg.model.num_heads = 3
    with self.assertRaisesRegex(errors.UserError, 'model.d_model=2048 is not divisible'):
      dryrun.check_config(cfg, 'configs/nca_164m.py')


class RequireFitTest(absltest.TestCase):
  """--require_fit: the config's own mesh must fit; the error names the mesh that would."""

  def test_the_config_mesh_must_fit_and_the_error_names_the_fix(self):
    cfg = paper_config()
    self.assertEqual(dryrun.fit_problem(cfg, 'v5p-32'), '')
    self.assertEqual(dryrun.fit_problem(cfg, 'h100x8'), '')
    self.assertEqual(
        dryrun.fit_problem(cfg, 'v4-32'),   # 91% of HBM: 'tight' is not enough
        'TPU v4-32: config.mesh data=16 fsdp=1 tensor=1 needs 91% of HBM per device (fits: '
        'tight; yes is <= 90%); this mesh fits: --config.mesh.data=8 --config.mesh.fsdp=2 '
        '--config.mesh.tensor=1 (the "use" row, 49% of HBM).')
    cfg.mesh.update(data=-1, fsdp=2)        # ... and with that mesh it passes
    self.assertEqual(dryrun.fit_problem(cfg, 'v4-32'), '')

  def test_a_mesh_that_cannot_lay_out_or_run(self):
    cfg = paper_config()
    cfg.mesh.update(data=4, fsdp=4)
    self.assertEqual(dryrun.fit_problem(cfg, 'h100x8'),
                     '8xH100-80GB: config.mesh data=4 fsdp=4 tensor=1 needs 16 devices; '
                     '8xH100-80GB has 8; this mesh fits: --config.mesh.data=8 '
                     '--config.mesh.fsdp=1 --config.mesh.tensor=1 (the "use" row, 38% of HBM).')
    self.assertRegex(dryrun.fit_problem(paper_config(), 'v5p-128'),
                     r'^TPU v5p-128: config.mesh data=64 fsdp=1 tensor=1 cannot run: .* not '
                     r'divisible by the 64 data-parallel devices .*; this mesh fits: '
                     r'--config.mesh.data=16 --config.mesh.fsdp=1 --config.mesh.tensor=4 '
                     r'--config.model.vocab_size=10112 \(')


class ChecksTest(absltest.TestCase):

  def test_lowering_the_train_step_allocates_nothing(self):
    before = aot._peak_rss_gib()
    r = aot.lower_train_step(paper_config())   # 1.65B parameters, abstract
    self.assertEqual(r['platform'], 'cpu')
    self.assertLess(r['peak_rss_gib'] - before, 2)  # the f32 state alone would be 26 GB

  def test_no_libtpu_is_said_cleanly(self):
    saved = os.environ.pop('TPU_LIBRARY_PATH', None)
    try:
      if importlib.util.find_spec('libtpu') is not None:
        self.skipTest('libtpu is installed')
      with self.assertRaisesRegex(aot.AotUnavailable, 'no libtpu'):
        aot.compile_for_tpu(tiny_config.get_config(), 'v4-32', libtpu='/nonexistent')
    finally:
      if saved is not None:
        os.environ['TPU_LIBRARY_PATH'] = saved
    with self.assertRaisesRegex(aot.AotUnavailable, 'not a TPU'):
      aot.tpu_devices(perf.TARGETS['h100x8'])

  def test_cli_prints_the_table(self):
    env = {k: v for k, v in os.environ.items() if k != 'TPU_LIBRARY_PATH'}
    out = subprocess.run(
        [sys.executable, '-m', 'ncalm.dryrun', '--config=configs/nca_164m.py'], cwd=REPO,
        env=env, capture_output=True, text=True, timeout=120)
    self.assertEqual(out.returncode, 0, out.stderr[-2000:])
    for text in ('H100', 'v5p', 'v4-32', 'v5e-256', '1,651,681,280', 'Lowering:', 'AOT'):
      self.assertIn(text, out.stdout)


if __name__ == '__main__':
  absltest.main()
