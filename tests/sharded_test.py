"""Sharded training steps equal the single-device step on 8 host CPU devices (data, fsdp
and tensor meshes); each device makes its own rows of the very batch a single device
makes (with a rule bank, and with fresh rules chosen in the step); a batch or a mesh that
does not fit the devices stops the run at start-up.

JAX fixes its device count when it starts, and under pytest another test file has usually
started it already, with one CPU device. So the work runs in child processes — this file
run as `sharded_test.py --child OUT_DIR TASK...`, XLA_FLAGS set before jax is imported —
which write what they measured (losses, final params, shardings, batches, error messages)
to OUT_DIR; the test methods here read it and assert. Two children share the tasks, one
per CPU core; a persistent compilation cache makes later runs of this file fast.

    python -m pytest -q tests/sharded_test.py
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
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import model as model_lib
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm.data import device_sources
from ncalm.data import feeds

import helpers
import tiny_config

GLOBAL_BATCH = 8   # divisible by the 8 data-parallel devices of the data and fsdp meshes
SEQ_LEN = 76
STEPS = 2
INIT_SEED, DATA_SEED, OTHER_DATA_SEED = 0, 1, 2

# The NCA vocabulary (10,002 ids) does not split 4 ways: that run keeps vocab replicated.
VOCAB_REPLICATED = tuple((name, None if name in ('vocab', 'act_vocab') else axes)
                         for name, axes in sharding.LOGICAL_AXIS_RULES)
# run name → (mesh, logical axis rules; () = the defaults). 'single' is the reference.
RUNS = {
    'single': (dict(data=1), ()),
    'data': (dict(data=8), ()),
    'fsdp': (dict(fsdp=8), ()),
    'data_fsdp_tensor': (dict(data=2, fsdp=2, tensor=2), ()),
    'data_tensor4': (dict(data=2, tensor=4), VOCAB_REPLICATED),
}
SHARDED = ('data', 'fsdp', 'data_fsdp_tensor', 'data_tensor4')
# One child per core; the compile work is about even.
CHILD_TASKS = (('single', 'single_other_data', 'data', 'errors', 'single_fresh'),
               ('fsdp', 'data_fsdp_tensor', 'data_tensor4', 'splash', 'data_fresh'))


# ------------------------------------------------------------------- the child


def run_config(mesh: dict[str, int], rules=(), global_batch: int = GLOBAL_BATCH):
  cfg = tiny_config.get_config()
  cfg.global_batch = global_batch
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  cfg.mesh.update(**mesh)
  cfg.logical_axis_rules = rules
  cfg.evals.probe.sequences = 8     # divides over every mesh's data-parallel devices
  return cfg


def train_steps(run: str, source, out_dir: str, label: str, data_seed: int = DATA_SEED):
  """STEPS real train steps on the mesh of RUNS[run]; writes `<label>.json` (losses,
  shardings), `<label>.params.npz` and `<label>.batch.npz` (the first step's batch)."""
  mesh, rules = RUNS[run]
  cfg = run_config(mesh, rules)
  num_devices = int(np.prod(list(mesh.values())))
  checked = startup.check(cfg)
  setup = step_lib.create_setup(cfg, checked.model, devices=jax.devices()[:num_devices])
  startup.check_mesh(cfg, checked, setup.mesh)
  state = step_lib.create_state(setup, jax.random.PRNGKey(INIT_SEED))
  train_step = step_lib.make_train_step(setup)
  seed_key = jax.random.PRNGKey(data_seed)
  losses, grad_norms = [], []
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    for _ in range(STEPS):
      state, scalars = train_step(state, source, seed_key)
      losses.append(float(scalars['train/loss']))
      grad_norms.append(float(scalars['train/grad_norm']))
    # The first step's batch as the step makes it: each device its own rows.
    data_key, _ = step_lib.step_keys(seed_key, 0)
    batch = jax.jit(lambda src, key: device_sources.make_sharded_batch(
        src, key, GLOBAL_BATCH, setup.mesh)[0])(source, data_key)
  gate = state.params['layers']['mlp']['gate']   # [layers, embed, mlp]
  result = {
      'devices': int(setup.mesh.devices.size),
      'losses': losses,
      'grad_norms': grad_norms,
      'gate_shape': list(gate.shape),
      'gate_spec': str(tuple(gate.sharding.spec)),
      'gate_fully_replicated': gate.sharding.is_fully_replicated,
      'gate_shard_shapes': helpers.shard_shapes(gate),
      'embedding_shard_shapes': helpers.shard_shapes(state.params['embedding']),
      'batch_shard_shapes': helpers.shard_shapes(batch.inputs),
  }
  np.savez(os.path.join(out_dir, f'{label}.params.npz'), **helpers.flat(state.params))
  np.savez(os.path.join(out_dir, f'{label}.batch.npz'), **helpers.flat(batch._asdict()))
  if run == 'single':  # the reference batch: made in one piece, without shard_map
    whole = jax.jit(lambda src, key: src.batch(key, GLOBAL_BATCH))(source, data_key)
    np.savez(os.path.join(out_dir, f'{label}.whole_batch.npz'), **helpers.flat(whole._asdict()))
  return result


def startup_error(cfg, workdir: str) -> dict | None:
  """The error train_and_evaluate stops with before its first step, or None."""
  try:
    train.train_and_evaluate(cfg, workdir)
  except Exception as e:  # pylint: disable=broad-except
    return {'type': type(e).__name__, 'message': str(e)}
  return None


def probe_config(sequences: int, mesh: dict[str, int]):
  cfg = run_config(mesh)
  cfg.evals.probe.sequences = sequences
  return cfg


def startup_errors(workdir: str) -> dict:
  return {
      'batch_4_on_8_data': startup_error(run_config({'data': -1}, global_batch=4), workdir),
      'batch_4_on_2x4_data_fsdp': startup_error(
          run_config({'data': 2, 'fsdp': 4}, global_batch=4), workdir),
      'mesh_3_slots': startup_error(run_config({'data': 3}), workdir),
      'probe_2_on_8_data': startup_error(probe_config(2, {'data': 8}), workdir),
      'mesh_16_slots': startup_error(run_config({'data': 2, 'fsdp': 2, 'tensor': 4}), workdir),
      'vocab_over_tensor4': startup_error(run_config({'data': 2, 'tensor': 4}), workdir),
  }


def splash_on_mesh(out_dir: str) -> dict:
  """Loss and gradients of a small model with plain and with splash attention (interpreted
  on CPU, inside shard_map) on a data=2 × fsdp=2 × tensor=2 mesh; arrays to splash.*.npz."""
  plain = model_lib.ModelConfig(vocab_size=64, d_model=128, num_layers=1, num_heads=2,
                                mlp_dim=64, max_len=256, dtype='float32', attn_dropout=0.0)
  splash = plain.__class__(**{**plain.__dict__, 'attention': 'splash'})
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2), jax.devices())
  rules = sharding.rules_from_config(())
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 256), 0, 64)
  result = {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    model = model_lib.Transformer(plain)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens))
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh))
    for name, cfg in (('plain', plain), ('splash', splash)):
      loss, grads = jax.jit(jax.value_and_grad(lambda p, t, cfg=cfg: jnp.sum(
          model_lib.Transformer(cfg).apply(p, t) ** 2)))(params, tokens)
      result[name] = float(loss)
      np.savez(os.path.join(out_dir, f'splash.{name}.npz'), **helpers.flat(grads))
  return result


def child_main(out_dir: str, tasks: list[str]) -> None:
  assert jax.device_count() == DEVICE_COUNT, jax.devices()
  workdir = os.path.join(out_dir, f'workdir_{os.getpid()}')  # each child its own bank file
  source = feeds.load(run_config(RUNS['single'][0]), workdir).train_source
  fresh = run_config(RUNS['single'][0])
  fresh.data.rules = 'fresh'        # a new in-band rule per sequence, chosen in the step
  fresh_source = feeds.load(fresh, workdir + '_fresh').train_source
  for task in tasks:
    if task.endswith('_fresh'):
      result = train_steps(task.removesuffix('_fresh'), fresh_source, out_dir, task)
    elif task == 'errors':
      result = startup_errors(workdir)
    elif task == 'splash':
      result = splash_on_mesh(out_dir)
    elif task == 'single_other_data':
      result = train_steps('single', source, out_dir, task, OTHER_DATA_SEED)
    else:
      result = train_steps(task, source, out_dir, task)
    with open(os.path.join(out_dir, f'{task}.json'), 'w') as f:
      json.dump(result, f, indent=1)


# ----------------------------------------------------------------- the parent


def run_children(out_dir: str) -> None:
  """Runs the child tasks, one process per group of CHILD_TASKS, all at once."""
  env = xla_env.child_env(DEVICE_COUNT)
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), CHILD_FLAG, out_dir,
                             *tasks], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for tasks in CHILD_TASKS]
  try:
    for tasks, proc in zip(CHILD_TASKS, procs):
      out, _ = proc.communicate(timeout=600)
      if proc.returncode:
        raise AssertionError(f'child {tasks} exited {proc.returncode}:\n{out[-10000:]}')
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()


class ShardedStepTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out_dir = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.out_dir, ignore_errors=True)
    run_children(cls.out_dir)

  def result(self, name: str) -> dict:
    with open(os.path.join(self.out_dir, f'{name}.json')) as f:
      return json.load(f)

  def arrays(self, name: str, kind: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(self.out_dir, f'{name}.{kind}.npz')) as npz:
      return dict(npz)

  def assert_same_training(self, name: str, reference: str) -> None:
    """Same losses and gradient norms (rtol 1e-5) and final params (atol 1e-5)."""
    got, want = self.result(name), self.result(reference)
    np.testing.assert_allclose(got['losses'], want['losses'], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(got['grad_norms'], want['grad_norms'], rtol=1e-5, err_msg=name)
    got_params, want_params = self.arrays(name, 'params'), self.arrays(reference, 'params')
    self.assertEqual(sorted(got_params), sorted(want_params))
    for key, value in want_params.items():
      np.testing.assert_allclose(got_params[key], value, rtol=0, atol=1e-5,
                                 err_msg=f'{name}: {key}')

  def test_sharded_steps_equal_single_device_steps(self):
    self.assertEqual(self.result('single')['devices'], 1)
    for name in SHARDED:
      with self.subTest(name):
        self.assertEqual(self.result(name)['devices'], DEVICE_COUNT)
        self.assert_same_training(name, 'single')

  def test_fresh_rules_sharded_equal_single_device(self):
    # Fresh rules: each device chooses its rows' rules; the same batch and training.
    self.assert_same_training('data_fresh', 'single_fresh')
    single, data = self.arrays('single_fresh', 'batch'), self.arrays('data_fresh', 'batch')
    for field, value in single.items():
      np.testing.assert_array_equal(data[field], value, err_msg=field)
    self.assertFalse(np.array_equal(single['inputs'], self.arrays('single', 'batch')['inputs']))

  def test_comparison_catches_other_training(self):
    # Two steps on other data (same init): losses and params differ beyond the tolerances.
    with self.assertRaises(AssertionError):
      self.assert_same_training('single_other_data', 'single')
    other, single = self.result('single_other_data'), self.result('single')
    self.assertFalse(np.allclose(other['losses'], single['losses'], rtol=1e-5, atol=0))
    params = self.arrays('single', 'params')
    other_params = self.arrays('single_other_data', 'params')
    self.assertGreater(max(np.abs(params[k] - other_params[k]).max() for k in params), 1e-3)

  def test_splash_attention_under_shard_map_equals_plain(self):
    # The kernel runs per device shard (batch over data×fsdp, heads over tensor).
    result = self.result('splash')
    np.testing.assert_allclose(result['splash'], result['plain'], rtol=1e-5)
    plain, splash = self.arrays('splash', 'plain'), self.arrays('splash', 'splash')
    self.assertEqual(sorted(plain), sorted(splash))
    for key, value in plain.items():
      np.testing.assert_allclose(splash[key], value, rtol=1e-4, atol=1e-4, err_msg=key)

  def test_params_are_sharded(self):
    shape = [2, 32, 64]   # gate: [layers, embed, mlp]
    want_shard = {
        'single': [2, 32, 64],
        'data': [2, 32, 64],              # data parallel: every device holds all params
        'fsdp': [2, 4, 64],               # embed / 8
        'data_fsdp_tensor': [2, 16, 32],  # embed / 2, mlp / 2
        'data_tensor4': [2, 32, 16],      # mlp / 4
    }
    for name, shard in want_shard.items():
      with self.subTest(name):
        result = self.result(name)
        self.assertEqual(result['gate_shape'], shape)
        self.assertEqual(result['gate_spec'], "(None, 'fsdp', 'tensor')")
        self.assertEqual(result['gate_shard_shapes'], [shard])
        self.assertEqual(result['gate_fully_replicated'], shard == shape)
    # The embedding [vocab, embed]: vocab over tensor (unless the rules replicate it),
    # embed over fsdp.
    self.assertEqual(self.result('fsdp')['embedding_shard_shapes'], [[10002, 4]])
    self.assertEqual(self.result('data_fsdp_tensor')['embedding_shard_shapes'], [[5001, 16]])
    self.assertEqual(self.result('data_tensor4')['embedding_shard_shapes'], [[10002, 32]])

  def test_batch_made_per_device_equals_whole_batch(self):
    whole = self.arrays('single', 'whole_batch')
    self.assertEqual(whole['inputs'].shape, (GLOBAL_BATCH, SEQ_LEN))
    self.assertGreater(len(np.unique(whole['inputs'])), 20)  # real, varied tokens
    rows_per_device = {'single': 8, 'data': 1, 'fsdp': 1, 'data_fsdp_tensor': 2,
                       'data_tensor4': 4}
    for name, rows in rows_per_device.items():
      with self.subTest(name):
        self.assertEqual(self.result(name)['batch_shard_shapes'], [[rows, SEQ_LEN]])
        batch = self.arrays(name, 'batch')
        self.assertEqual(sorted(batch), sorted(whole))
        for field, value in whole.items():
          np.testing.assert_array_equal(batch[field], value, err_msg=f'{name}: {field}')
    other = self.arrays('single_other_data', 'batch')['inputs']
    self.assertFalse(np.array_equal(other, whole['inputs']))

  def test_startup_errors(self):
    errors = self.result('errors')
    want = {
        'batch_4_on_8_data': r'global_batch=4 .* 8 data-parallel devices',
        'batch_4_on_2x4_data_fsdp': r'global_batch=4 .* 8 data-parallel devices',
        'mesh_3_slots': r'mesh=.* has 3 slots but there are 8 devices',
        'probe_2_on_8_data': r'evals.probe.sequences=2 is not divisible by the 8 data-parallel',
        'mesh_16_slots': r'mesh=.* has 16 slots but there are 8 devices',
        'vocab_over_tensor4':
            r"'vocab' dimension \(10002\) does not split .* model.vocab_size=10004",
    }
    for case, pattern in want.items():
      with self.subTest(case):
        self.assertIsNotNone(errors[case], f'{case}: no error raised')
        self.assertEqual(errors[case]['type'], 'UserError', errors[case]['message'])
        self.assertRegex(errors[case]['message'], pattern)


if __name__ == '__main__':
  if CHILD_FLAG in sys.argv:
    at = sys.argv.index(CHILD_FLAG)
    child_main(sys.argv[at + 1], sys.argv[at + 2:])
  else:
    absltest.main()
