"""Transfer across device counts: a stage-1 run on an 8-device mesh (data × fsdp × tensor)
starts a 1-device stage 2, and a 1-device stage 1 starts an 8-device stage 2 — the kept
parameters bitwise equal to stage 1's, placed in the new run's shardings.

Like sharded_test.py, the work runs in a child process with 8 host CPU devices (XLA_FLAGS
set before jax is imported) that writes arrays to OUT_DIR for the test to compare.

    python -m pytest -q tests/transfer_sharded_test.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import xla_env

CHILD_FLAG = '--child'
DEVICE_COUNT = 8
if __name__ == '__main__' and CHILD_FLAG in sys.argv:
  os.environ['XLA_FLAGS'] = xla_env.xla_flags(DEVICE_COUNT)  # before jax is imported

from absl.testing import absltest  # pylint: disable=g-import-not-at-top
import jax
import numpy as np

from ncalm import checkpoint
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm import transfer

import helpers
import tiny_config

MESH_8 = dict(data=2, fsdp=2, tensor=2)
NCA_VOCAB, BYTES_VOCAB = 10_002, 384


def config(mesh, stage1_dir='', data_dir=''):
  cfg = helpers.text_config(data_dir) if data_dir else tiny_config.get_config()
  cfg.global_batch = 8
  cfg.train_steps = 2
  cfg.evals.probe.sequences = 4           # a multiple of the 4 data-parallel devices
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  cfg.mesh.update(**mesh)
  cfg.init.from_run = stage1_dir
  return cfg


def child_main(out_dir: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  one = jax.devices()[:1]
  data_dir = helpers.make_corpus(os.path.join(out_dir, 'corpus'))
  shards = {}
  for name, (mesh1, devices1, mesh2, devices2) in {
      'from8': (MESH_8, None, dict(data=1), one),
      'from1': (dict(data=1), one, MESH_8, None)}.items():
    stage1_dir = os.path.join(out_dir, name, 'stage1')
    cfg1 = config(mesh1)
    train.train_and_evaluate(cfg1, stage1_dir, devices1)
    setup1 = step_lib.create_setup(cfg1, startup.model_config(cfg1, NCA_VOCAB), devices1)
    state1, _ = checkpoint.load_latest(stage1_dir, cfg1, setup1)
    cfg2 = config(mesh2, stage1_dir, data_dir)
    setup2 = step_lib.create_setup(cfg2, startup.model_config(cfg2, BYTES_VOCAB), devices2)
    report_dir = os.path.join(out_dir, name, 'report')
    os.makedirs(report_dir)
    key = jax.random.PRNGKey(0)
    state2 = transfer.initial_state(setup2, lambda: step_lib.create_state(setup2, key), key,
                                    report_dir)
    np.savez(os.path.join(out_dir, f'{name}.stage1.npz'), **helpers.flat(state1.params))
    np.savez(os.path.join(out_dir, f'{name}.stage2.npz'), **helpers.flat(state2.params))
    gate = state2.params['layers']['mlp']['gate']
    shards[name] = dict(devices=int(setup2.mesh.size),
                        gate=helpers.shard_shapes(gate),
                        stage1_gate=helpers.shard_shapes(state1.params['layers']['mlp']['gate']))
    if name == 'from1':  # the whole stage-2 loop runs from the transfer on the 8-device mesh
      result = train.train_and_evaluate(cfg2, os.path.join(out_dir, name, 'stage2'), devices2)
      shards[name]['final_loss'] = result['eval/loss']
  with open(os.path.join(out_dir, 'result.json'), 'w') as f:
    json.dump(shards, f)


class TransferAcrossDeviceCountsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out_dir = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.out_dir, ignore_errors=True)
    env = xla_env.child_env(DEVICE_COUNT)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD_FLAG, cls.out_dir],
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode:
      raise AssertionError(f'child exited {proc.returncode}:\n{proc.stderr[-10000:]}')
    with open(os.path.join(cls.out_dir, 'result.json')) as f:
      cls.result = json.load(f)

  def arrays(self, name):
    with np.load(os.path.join(self.out_dir, f'{name}.npz')) as npz:
      return dict(npz)

  def test_kept_parameters_equal_stage1_bitwise_whatever_the_meshes(self):
    for name in ('from8', 'from1'):
      with self.subTest(name):
        stage1, stage2 = self.arrays(f'{name}.stage1'), self.arrays(f'{name}.stage2')
        kept = sorted(set(stage1) - {'embedding', 'head'})
        self.assertLen(kept, 10)
        for key in kept:
          self.assertEqual(stage2[key].tobytes(), stage1[key].tobytes(), f'{name}: {key}')
        self.assertEqual(stage2['embedding'].shape, (BYTES_VOCAB, 32))
    self.assertTrue(np.isfinite(self.result['from1']['final_loss']))

  def test_parameters_are_placed_in_the_new_runs_shardings(self):
    # gate [layers 2, embed 32, mlp 64]: embed over fsdp (2), mlp over tensor (2).
    self.assertEqual(self.result['from8']['stage1_gate'], [[2, 16, 32]])
    self.assertEqual(self.result['from8']['gate'], [[2, 32, 64]])
    self.assertEqual(self.result['from8']['devices'], 1)
    self.assertEqual(self.result['from1']['stage1_gate'], [[2, 32, 64]])
    self.assertEqual(self.result['from1']['gate'], [[2, 16, 32]])
    self.assertEqual(self.result['from1']['devices'], 8)


if __name__ == '__main__':
  if CHILD_FLAG in sys.argv:
    child_main(sys.argv[sys.argv.index(CHILD_FLAG) + 1])
  else:
    absltest.main()
