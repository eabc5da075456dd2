"""Every config in configs/ loads, has only known fields and passes the config-only checks;
every experiment config names runnable arms (its stage configs pass the same checks)."""
import json
import os

from absl.testing import absltest

from ncalm import config_lib
from ncalm import errors
from ncalm import experiment
from ncalm import run_files
from ncalm import startup
from ncalm import workdir as workdir_lib

import tiny_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
RUN_CONFIGS = {
    'nca_164m.py': ('', 'cpu', 'decay'),
    'stage1.py': tuple(f'{arm}{suffix}' for arm in ('nca_50', 'nca_30_40', 'dyck', 'c4', 'c4_10x')
                       for suffix in ('', '_cpu')),
    'text_code.py': ('', 'cpu', 'cpu1024'),
    'text_math.py': ('', 'cpu', 'cpu1024'),
    'text_web.py': ('', 'cpu', 'cpu1024'),
    'gsm8k.py': ('', 'cpu1024'),
    'bigbench.py': ('', 'cpu1024'),
}


def check(cfg):
  config_lib.check_fields(cfg)
  config_lib.check_values(cfg)
  if cfg.data.source not in ('text', 'finetune'):   # these need their prepared data here
    startup.check(cfg)


class ConfigsTest(absltest.TestCase):

  def test_every_file_is_listed(self):
    files = {f for f in os.listdir(CONFIGS) if f.endswith('.py')}
    self.assertEqual(files, set(RUN_CONFIGS))
    self.assertEqual({f for f in os.listdir(os.path.join(CONFIGS, 'experiments'))
                      if f.endswith('.py')},
                     {'code.py', 'math.py', 'web.py', 'code_controls.py', 'bands.py'})

  def test_run_configs(self):
    for name, variants in RUN_CONFIGS.items():
      for variant in variants:
        with self.subTest(f'{name}:{variant}'):
          path = os.path.join(CONFIGS, name) + (f':{variant}' if variant else '')
          check(config_lib.load_file(path))

  def test_experiment_configs(self):
    for name, variants in (('code', ('', ':cpu', ':cpu1024')), ('math', ('', ':cpu', ':cpu1024')),
                           ('web', ('', ':cpu')),
                           ('code_controls', (':cpu', ':tiny')),
                           ('bands', tuple(f':{domain}{scale}{rules}' for domain in (
                               'code', 'math', 'web') for scale in ('', '_cpu')
                                           for rules in ('', '_fresh')))):
      for variant in variants:
        with self.subTest(f'{name}{variant}'):
          exp = config_lib.load_file(os.path.join(CONFIGS, 'experiments', f'{name}.py{variant}'))
          experiment.check(exp)
          for _, cfg in experiment.jobs(exp, '/nonexistent'):
            check(cfg)

  def test_start_up_check_refuses_the_schedule_and_init_before_any_run(self):
    """An experiment checks every run with startup.check before the first: the optimizer's
    and the init section's refusals must be among its checks."""
    cfg = tiny_config.get_config()
    cfg.optim.update(schedule='warmup_cosine', warmup_steps=0)
    with self.assertRaisesRegex(errors.UserError, r'optim.warmup_steps=0 must be >= 1'):
      startup.check(cfg)
    cfg = tiny_config.get_config()
    cfg.init.kept = 'statistics'    # without init.from_run
    with self.assertRaisesRegex(errors.UserError, r'init.from_run is empty'):
      startup.check(cfg)

  def test_unknown_variant_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'Unknown arm'):
      config_lib.load_file(os.path.join(CONFIGS, 'stage1.py:nca_70'))


class MovedFieldsTest(absltest.TestCase):
  """eval_every, eval_batches and probe_sequences now live under evals."""

  def test_an_old_field_on_the_command_line_names_its_new_home(self):
    cfg = tiny_config.get_config()
    cfg.eval_every = 7
    with self.assertRaisesRegex(errors.UserError, r'eval_every is now evals.heldout.every '
                                r'and evals.probe.every'):
      config_lib.check_fields(cfg)

  def test_a_workdir_made_before_the_move_resumes_with_its_values_mapped(self):
    cfg = tiny_config.get_config()
    cfg.evals.heldout.update(every=7, batches=2)
    cfg.evals.probe.update(every=7, sequences=4)
    workdir = self.create_tempdir().full_path
    workdir_lib.check_identity(workdir, cfg)
    path = os.path.join(workdir, run_files.CONFIG)
    with open(path) as f:
      saved = json.load(f)
    for new in [k for k in saved['config'] if k.startswith('evals.')]:
      del saved['config'][new]
    saved['config'].update(eval_every=7, eval_batches=2, probe_sequences=4)  # as ncalm wrote
    with open(path, 'w') as f:
      json.dump(saved, f)
    open(os.path.join(workdir, 'metrics.jsonl'), 'w').close()   # it holds a run
    read = workdir_lib.read_run_config(workdir)['config']
    self.assertEqual({k: v for k, v in read.items() if k.startswith(('eval', 'probe'))},
                     {'evals.heldout.every': 7, 'evals.heldout.batches': 2,
                      'evals.probe.every': 7, 'evals.probe.sequences': 4})
    with self.assertNoLogs(level='WARNING'):   # nothing changed, so nothing to warn about
      workdir_lib.check_identity(workdir, cfg)
    cfg.evals.heldout.every = 9    # evaluation settings are not the run's identity
    workdir_lib.check_identity(workdir, cfg)

  def test_a_finished_run_from_before_a_new_field_is_reused_while_it_is_at_its_default(self):
    cfg = tiny_config.get_config()
    workdir = self.create_tempdir().full_path
    workdir_lib.check_identity(workdir, cfg)
    path = os.path.join(workdir, run_files.CONFIG)
    with open(path) as f:
      saved = json.load(f)
    for newer in ('init.warm_steps', 'data.shuffle'):   # as a run of an older ncalm wrote it
      del saved['config'][newer]
      del saved['identity'][newer]
    with open(path, 'w') as f:
      json.dump(saved, f)
    workdir_lib.check_finished_run(workdir, cfg)   # the fields' defaults: how it was made
    cfg.init.update(from_run='/elsewhere', warm_steps=3)
    with self.assertRaisesRegex(errors.UserError, r'init.warm_steps: "\(absent\)" in the run, '
                                r'3 now'):
      workdir_lib.check_finished_run(workdir, cfg)


if __name__ == '__main__':
  absltest.main()
