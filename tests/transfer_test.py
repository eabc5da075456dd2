"""Stage 2 from stage 1 (ncalm/transfer.py): what is kept, re-drawn, re-initialised and
frozen, bitwise; the start-up order (own checkpoint, then init.from_run, then scratch);
and the start-up errors, which leave the stage-1 run untouched."""
import json
import os
import shutil
import tempfile

from absl.testing import absltest
import flax.linen as nn
import jax
import numpy as np

from ncalm import checkpoint
from ncalm import errors
from ncalm import init_section
from ncalm import run_files
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm import transfer
from ncalm.data import text

import helpers
import tiny_config

NCA_VOCAB = 10_002
BYTES_VOCAB = 384  # 256 bytes + the tokeniser's specials, padded to a multiple of 128


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
  return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def snapshot(directory: str) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime_ns)} of every file and directory under `directory`."""
  out = {}
  for root, dirs, names in os.walk(directory):
    for name in dirs + names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      out[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
  return out


class TransferTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.data_dir = helpers.make_corpus(os.path.join(cls.tmp, 'corpus'))
    cls.stage1_dir = os.path.join(cls.tmp, 'stage1')
    cls.stage1_cfg = tiny_config.get_config()
    cls.stage1_cfg.train_steps = 3
    train.train_and_evaluate(cls.stage1_cfg, cls.stage1_dir)
    setup = step_lib.create_setup(cls.stage1_cfg, startup.model_config(cls.stage1_cfg, NCA_VOCAB))
    state, step = checkpoint.load_latest(cls.stage1_dir, cls.stage1_cfg, setup)
    assert step == 3
    cls.stage1 = {k[len('params/'):]: v for k, v in helpers.flat(state).items()
                  if k.startswith('params/')}

  def config(self, **init):
    cfg = helpers.text_config(self.data_dir)
    cfg.init.from_run = self.stage1_dir
    cfg.init.update(init)
    return cfg

  def transferred(self, cfg, workdir=None):
    """(params of the first stage-2 state, params of a scratch init with the same key,
    the report written to the workdir)."""
    workdir = workdir or self.create_tempdir().full_path
    setup = step_lib.create_setup(cfg, startup.check(cfg).model)
    init_key, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
    state = transfer.initial_state(setup, lambda: step_lib.create_state(setup, init_key), init_key,
                                   workdir)
    fresh = step_lib.create_state(setup, init_key)
    with open(os.path.join(workdir, transfer.REPORT_FILE)) as f:
      report = json.load(f)
    return helpers.flat(state.params), helpers.flat(fresh.params), report

  def test_keeps_blocks_and_norms_bitwise_and_redraws_embedding_and_head(self):
    params, fresh, report = self.transferred(self.config())
    self.assertEqual(sorted(params), sorted(self.stage1))
    kept = [n for n in params if n not in ('embedding', 'head')]
    self.assertIn('final_norm/scale', kept)
    self.assertLen(kept, 10)  # 4 attention + 3 MLP + 2 block norms (stacked) + final norm
    for name in kept:
      self.assertTrue(same_bits(params[name], self.stage1[name]), name)
    for name in ('embedding', 'head'):
      self.assertTrue(same_bits(params[name], fresh[name]), name)   # this run's own init
    self.assertEqual(params['embedding'].shape, (BYTES_VOCAB, 32))
    self.assertEqual(self.stage1['embedding'].shape, (NCA_VOCAB, 32))
    self.assertEqual(sorted(report['kept']), sorted(kept))
    self.assertEqual(report['new'], ['embedding', 'head'])
    self.assertEqual(report['counts']['kept'], sum(params[n].size for n in kept))
    self.assertEqual(report['counts']['new'], 2 * BYTES_VOCAB * 32)
    self.assertEqual(report['counts']['frozen'], 0)
    self.assertEqual(report['from_step'], 3)

  def test_framework_initialisation_of_the_new_embedding_and_head(self):
    cfg = self.config(embedding='framework')
    params, fresh, _ = self.transferred(cfg)
    init_key, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
    key = jax.random.fold_in(init_key, transfer.TRANSFER_KEY)
    embedding, head = params['embedding'], params['head']
    # Exactly PyTorch's defaults drawn from the run's keys: N(0, 1); U(±1/√d_model).
    want_embedding = jax.random.normal(jax.random.fold_in(key, 0), (BYTES_VOCAB, 32))
    bound = 1 / np.sqrt(32)
    want_head = jax.random.uniform(jax.random.fold_in(key, 1), (32, BYTES_VOCAB),
                                   minval=-bound, maxval=bound)
    np.testing.assert_array_equal(embedding, np.asarray(want_embedding))
    np.testing.assert_array_equal(head, np.asarray(want_head))
    self.assertLessEqual(float(np.abs(head).max()), bound)
    self.assertFalse(same_bits(embedding, fresh['embedding']))
    self.assertTrue(same_bits(params['layers/mlp/gate'], self.stage1['layers/mlp/gate']))

  def test_scratch_with_the_framework_embedding_and_head(self):
    """The published init for scratch too (like for like with the arms): the run's own
    blocks and norms bit for bit, the embedding and head drawn as a transfer draws them."""
    cfg = helpers.text_config(self.data_dir)
    cfg.init.embedding = 'framework'
    setup = step_lib.create_setup(cfg, startup.check(cfg).model)
    self.assertTrue(setup.init_spec.changes_fresh_init)
    init_key, _ = jax.random.split(jax.random.PRNGKey(cfg.seed))
    workdir = self.create_tempdir().full_path
    state = transfer.initial_state(setup, lambda: step_lib.create_state(setup, init_key),
                                   init_key, workdir)
    params = helpers.flat(state.params)
    fresh = helpers.flat(step_lib.create_state(setup, init_key).params)
    with_transfer, _, _ = self.transferred(self.config(embedding='framework'))
    for name in params:
      if name in ('embedding', 'head'):
        self.assertTrue(same_bits(params[name], with_transfer[name]), name)
        self.assertFalse(same_bits(params[name], fresh[name]), name)
      else:
        self.assertTrue(same_bits(params[name], fresh[name]), name)
    self.assertEqual(os.listdir(workdir), [])    # no transfer report: nothing was read
    plain = helpers.text_config(self.data_dir)
    self.assertFalse(step_lib.create_setup(plain, startup.check(plain).model)
                     .init_spec.changes_fresh_init)

  def test_statistics_control_has_stage1s_mean_and_std_per_layer(self):
    """init.kept='statistics': each kept tensor is this run's own draw moved to stage 1's
    mean and std, layer by layer; the weights themselves are not stage 1's."""
    params, fresh, report = self.transferred(self.config(kept='statistics'))
    matched = [n for n in params if n not in ('embedding', 'head')]
    self.assertEqual(sorted(report['statistics']), sorted(matched))
    self.assertEqual(report['kept'], [])
    self.assertEqual(report['counts']['statistics'], sum(params[n].size for n in matched))
    for name in matched:
      got, want, own = params[name], self.stage1[name], fresh[name]
      layers = [(got[i], want[i], own[i]) for i in range(len(got))] if name.startswith(
          'layers/') else [(got, want, own)]
      for g, w, o in layers:
        np.testing.assert_allclose(g.mean(), w.mean(), atol=1e-6, err_msg=name)
        np.testing.assert_allclose(g.std(), w.std(), rtol=1e-4, atol=1e-7, err_msg=name)
        self.assertFalse(np.array_equal(g, w), name)
        if o.std() > 0:   # an affine image of the own draw: the same pattern, new scale
          np.testing.assert_allclose(np.corrcoef(g.ravel(), o.ravel())[0, 1], 1.0,
                                     rtol=1e-5, err_msg=name)
    with self.assertRaisesRegex(errors.UserError, r'init.kept=.weight.: use one of'):
      self.transferred(self.config(kept='weight'))

  def trained(self, cfg, steps: int) -> list[dict[str, np.ndarray]]:
    """The parameters of a stage-2 run after 0, 1, ..., `steps` steps on the feed's rows."""
    workdir = self.create_tempdir().full_path
    checked = startup.check(cfg)
    setup = step_lib.create_setup(cfg, checked.model)
    init_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
    state = transfer.initial_state(setup, lambda: step_lib.create_state(setup, init_key),
                                   init_key, workdir)
    step = step_lib.make_train_step_on_batch(setup)
    out = [helpers.flat(state.params)]
    for i in range(steps):
      rows = checked.feeds.train_source.read_rows(i * cfg.global_batch, cfg.global_batch)
      batch = text.to_global_batch(rows, sharding.batch_sharding(setup.mesh), cfg.global_batch)
      with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        state, _ = step(state, batch, train_key)
      out.append(helpers.flat(state.params))
    return out

  def test_warm_steps_train_only_the_new_embedding_and_head_first(self):
    cfg = self.config(warm_steps=2)
    cfg.optim.update(schedule='constant', lr=1e-2)
    history = self.trained(cfg, 3)
    for name in history[0]:
      new = name in ('embedding', 'head')
      for t in (1, 2):   # the warm phase: the kept parameters do not move, bit for bit
        self.assertEqual(same_bits(history[t][name], history[t - 1][name]), not new, (name, t))
      self.assertFalse(same_bits(history[3][name], history[2][name]), name)  # then all train

  def test_transferred_lr_scale_scales_the_kept_parameters_updates(self):
    deltas = {}
    for scale in (1.0, 0.25, 0.0):
      cfg = self.config(transferred_lr_scale=scale)
      cfg.optim.update(schedule='constant', lr=1e-2, clip_norm=0.0)
      before, after = self.trained(cfg, 1)
      deltas[scale] = {n: after[n] - before[n] for n in before}
    for name, full in deltas[1.0].items():
      if name in ('embedding', 'head'):   # the new parameters at the run's own rate
        np.testing.assert_array_equal(deltas[0.25][name], full)
      else:   # Adam's step is linear in the learning rate
        np.testing.assert_allclose(deltas[0.25][name], 0.25 * full, rtol=1e-4, atol=1e-9)
        self.assertFalse(deltas[0.0][name].any(), name)

  def test_unit_rms_norms(self):
    params, _, _ = self.transferred(self.config(norms='unit_rms'))
    for name, value in params.items():
      if name.endswith('norm/scale'):
        want = self.stage1[name]
        axes = tuple(range(1 if name.startswith('layers/') else 0, want.ndim))
        want = want / np.sqrt(np.mean(want ** 2, axis=axes, keepdims=True))
        np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=name)
      elif name not in ('embedding', 'head'):
        self.assertTrue(same_bits(value, self.stage1[name]), name)
    with self.assertRaisesRegex(errors.UserError, r'init.warm_steps=2 trains only the new'):
      startup.check(self.config(warm_steps=2, embedding='keep'))

  def test_reinit_groups_touch_exactly_their_parameters_in_the_layer_range(self):
    groups = {'attention': ('attn/query', 'attn/key', 'attn/value', 'attn/out'),
              'mlp': ('mlp/gate', 'mlp/up', 'mlp/down'),
              'norms': ('attn_norm/scale', 'mlp_norm/scale')}
    for group, members in groups.items():
      with self.subTest(group):
        params, fresh, report = self.transferred(self.config(reinit=group, layer_start=1))
        for name, value in params.items():
          if name in ('embedding', 'head'):
            continue
          rest = name.split('/', 1)[1] if name.startswith('layers/') else None
          if rest in members:  # layer 1 re-drawn (this run's init), layer 0 kept
            self.assertTrue(same_bits(value[1], fresh[name][1]), name)
            self.assertTrue(same_bits(value[0], self.stage1[name][0]), name)
            self.assertFalse(same_bits(value[1], self.stage1[name][1]), name)
          else:
            self.assertTrue(same_bits(value, self.stage1[name]), name)
        self.assertEqual(sorted(report['mixed']), sorted(f'layers/{m}' for m in members))
    params, fresh, _ = self.transferred(self.config(reinit='final_norm'))
    self.assertTrue(same_bits(params['final_norm/scale'], fresh['final_norm/scale']))
    self.assertTrue(same_bits(params['layers/attn/query'], self.stage1['layers/attn/query']))

  def test_stacked_stage1_into_per_layer_stage2(self):
    cfg = self.config(reinit='mlp', layer_start=0, layer_stop=1)
    cfg.model.scan_layers = False
    params, fresh, report = self.transferred(cfg)
    for i in range(2):
      for name in ('attn/query', 'attn/out', 'attn_norm/scale', 'mlp_norm/scale'):
        self.assertTrue(same_bits(params[f'layers_{i}/{name}'], self.stage1[f'layers/{name}'][i]))
    self.assertTrue(same_bits(params['layers_0/mlp/gate'], fresh['layers_0/mlp/gate']))
    self.assertTrue(same_bits(params['layers_1/mlp/gate'], self.stage1['layers/mlp/gate'][1]))
    self.assertIn('layers_0/mlp/up', report['reinitialised'])
    self.assertIn('layers_1/mlp/up', report['kept'])

  def test_per_layer_stage1_into_stacked_stage2(self):
    cfg = self.config()
    setup = step_lib.create_setup(cfg, startup.model_config(cfg, BYTES_VOCAB))
    fresh = step_lib.create_state(setup, jax.random.PRNGKey(0)).params
    per_layer = {'final_norm/scale': self.stage1['final_norm/scale']}
    for name, value in self.stage1.items():
      if name.startswith('layers/'):
        for i in range(2):
          per_layer[f'layers_{i}/{name[7:]}'] = value[i]
    params, how = transfer.build_params(init_section.parse(cfg), fresh, per_layer,
                                        jax.random.PRNGKey(1))
    params = helpers.flat(params)
    for name, value in self.stage1.items():
      if name not in ('embedding', 'head'):
        self.assertTrue(same_bits(params[name], value), name)
        self.assertEqual(how[name], 'kept')

  def test_frozen_parameters_are_bitwise_unchanged_and_have_no_optimizer_state(self):
    cfg = self.config(freeze='attention,norms', layer_start=0, layer_stop=1)
    cfg.model.scan_layers = False
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(cfg, workdir)
    setup = step_lib.create_setup(cfg, startup.model_config(cfg, BYTES_VOCAB))
    state, step = checkpoint.load_latest(workdir, cfg, setup)
    self.assertEqual(step, cfg.train_steps)
    params = helpers.flat(state.params)
    frozen = [n for n in params if n.startswith('layers_0/attn') or n in (
        'layers_0/attn_norm/scale', 'layers_0/mlp_norm/scale')]
    self.assertLen(frozen, 6)
    for name in frozen:
      self.assertTrue(same_bits(params[name], self.stage1[f'layers/{name[9:]}'][0]), name)
    for name in ('layers_1/attn/query', 'layers_0/mlp/gate', 'layers_1/mlp_norm/scale'):
      stage1 = self.stage1[f'layers/{name[9:]}'][int(name[7])]
      self.assertGreater(np.abs(params[name] - stage1).max(), 1e-4, name)
    opt_names = list(helpers.flat(state.opt_state))
    for name in frozen:
      self.assertEqual([n for n in opt_names if n.endswith('/' + name)], [], name)
    self.assertLen([n for n in opt_names if n.endswith('/layers_0/mlp/gate')], 2)  # mu, nu
    with open(os.path.join(workdir, transfer.REPORT_FILE)) as f:
      report = json.load(f)
    self.assertEqual(sorted(report['frozen']), sorted(frozen))
    self.assertEqual(report['counts']['frozen'], sum(params[n].size for n in frozen))

  def test_own_checkpoint_first_then_init_from_run(self):
    stage1 = os.path.join(self.create_tempdir().full_path, 'stage1')
    shutil.copytree(self.stage1_dir, stage1)
    cfg = self.config()
    cfg.init.from_run = stage1
    cfg.train_steps = 3
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(cfg, workdir)
    report = snapshot(workdir)[transfer.REPORT_FILE]
    shutil.rmtree(stage1)        # a preempted stage 2 resumes itself: stage 1 is not read
    cfg.train_steps = 6
    train.train_and_evaluate(cfg, workdir)
    setup = step_lib.create_setup(cfg, startup.model_config(cfg, BYTES_VOCAB))
    _, step = checkpoint.load_latest(workdir, cfg, setup)
    self.assertEqual(step, 6)
    self.assertEqual(snapshot(workdir)[transfer.REPORT_FILE], report)  # no second transfer

  def test_damaged_newest_checkpoint_falls_back_and_none_intact_is_exit_4(self):
    stage1 = os.path.join(self.create_tempdir().full_path, 'stage1')
    shutil.copytree(self.stage1_dir, stage1)
    steps = os.path.join(stage1, run_files.CHECKPOINTS)
    shutil.copytree(os.path.join(steps, '3'), os.path.join(steps, '5'))   # a newer step ...
    with open(os.path.join(steps, '5', 'state', '_METADATA'), 'w') as f:
      f.write('{"tree_metadata": garbage')  # ... whose metadata is damaged
    cfg = self.config()
    cfg.init.from_run = stage1
    with self.assertLogs('absl', 'ERROR') as logs:
      params, _, report = self.transferred(cfg)
    self.assertEqual(report['from_step'], 3)
    self.assertLen(logs.output, 1)                       # one line for the damaged step
    self.assertRegex(logs.output[0], r'step 5 .* cannot be used .*trying an older one')
    for name, value in self.stage1.items():
      if name not in ('embedding', 'head'):
        self.assertTrue(same_bits(params[name], value), name)
    with open(os.path.join(steps, '3', 'state', '_METADATA'), 'w') as f:
      f.write('')
    with self.assertRaisesRegex(errors.CheckpointError, r'none of its checkpoints \(steps '
                                r'\[5, 3\]\) is intact') as caught:
      train.train_and_evaluate(cfg, self.create_tempdir().full_path)
    self.assertEqual(caught.exception.exit_code, errors.EXIT_CHECKPOINT)

  def test_bad_input_fails_at_startup_and_writes_nothing_to_stage1(self):
    before = snapshot(self.stage1_dir)
    foreign = self.create_tempdir().full_path
    with open(os.path.join(foreign, 'notes.txt'), 'w') as f:
      f.write('not a run')
    partial = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.stage1_dir, 'run_config.json'), partial)
    cases = {
        'missing': (dict(from_run='/nonexistent/stage1'), {}, r'does not exist'),
        'foreign': (dict(from_run=foreign), {}, r'is not an ncalm workdir'),
        'partial': (dict(from_run=partial), {}, r'has no finished checkpoint'),
        'step': (dict(from_step=7), {}, r'init.from_step=7: .* steps \[3\]'),
        'shape': ({}, dict(mlp_dim=48),
                  r"parameter 'layers_0/mlp/down' has shape \(64, 32\) there but \(48, 32\)"),
        'layers': ({}, dict(num_layers=3), r'has 2 layers but model.num_layers=3'),
        'vocab': (dict(embedding='keep'), {},
                  r"parameter 'embedding' has shape \(10002, 32\) there but \(384, 32\).*"
                  r'init.embedding="normal"'),
        'range': (dict(reinit='mlp', layer_start=1, layer_stop=3), {},
                  r'layer range \[1, 3\) is outside the model\'s 2 layers'),
        'everything': (dict(freeze='attention,mlp,norms,final_norm,embedding,head'), {},
                       r'freezes every parameter'),
        'unknown_group': (dict(reinit='attn'), {}, r"unknown group\(s\) \['attn'\]"),
        'reinit_without_run': (dict(from_run='', reinit='mlp'), {}, r'init.from_run is empty'),
        'partial_freeze_stacked': (dict(freeze='mlp', layer_stop=1), {},
                                   r'model.scan_layers=False'),
    }
    for case, (init, model, pattern) in cases.items():
      with self.subTest(case):
        cfg = self.config(**init)
        cfg.model.update(model)
        workdir = self.create_tempdir().full_path
        with self.assertRaisesRegex(errors.UserError, pattern):
          train.train_and_evaluate(cfg, workdir)
        self.assertFalse(checkpoint.has_checkpoints(workdir))
    with self.subTest('own workdir'):
      with self.assertRaisesRegex(errors.UserError, r"is this run's own --workdir"):
        transfer.check_stage1(init_section.parse(self.config()), {}, self.stage1_dir)
    self.assertEqual(snapshot(self.stage1_dir), before)


if __name__ == '__main__':
  absltest.main()
