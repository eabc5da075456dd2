"""Every config in configs/ loads, has only known fields and passes the config-only checks;
every experiment config names runnable arms (its stage configs pass the same checks)."""
import os

from absl.testing import absltest

from ncalm import config_lib
from ncalm import experiment

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
RUN_CONFIGS = {
    'nca_164m.py': ('', 'cpu', 'decay'),
    'stage1.py': tuple(f'{arm}{suffix}' for arm in ('nca_50', 'nca_30_40', 'dyck', 'c4', 'c4_10x')
                       for suffix in ('', '_cpu')),
    'text_code.py': ('', 'cpu'),
    'text_math.py': ('', 'cpu'),
    'text_web.py': ('', 'cpu'),
}


def check(cfg):
  config_lib.check_fields(cfg)
  config_lib.check_values(cfg)
  if cfg.data.source != 'text':   # text configs need their prepared corpus on this machine
    config_lib.check_config(cfg)


class ConfigsTest(absltest.TestCase):

  def test_every_file_is_listed(self):
    files = {f for f in os.listdir(CONFIGS) if f.endswith('.py')}
    self.assertEqual(files, set(RUN_CONFIGS))
    self.assertEqual({f for f in os.listdir(os.path.join(CONFIGS, 'experiments'))
                      if f.endswith('.py')}, {'code.py', 'math.py', 'web.py'})

  def test_run_configs(self):
    for name, variants in RUN_CONFIGS.items():
      for variant in variants:
        with self.subTest(f'{name}:{variant}'):
          check(config_lib.load_file(os.path.join(CONFIGS, name) + (f':{variant}' if variant else '')))

  def test_experiment_configs(self):
    for name in ('code', 'math', 'web'):
      for variant in ('', ':cpu'):
        with self.subTest(f'{name}{variant}'):
          exp = config_lib.load_file(os.path.join(CONFIGS, 'experiments', f'{name}.py{variant}'))
          experiment.check(exp)
          for _, cfg in experiment.jobs(exp, '/nonexistent'):
            check(cfg)

  def test_unknown_variant_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'Unknown arm'):
      config_lib.load_file(os.path.join(CONFIGS, 'stage1.py:nca_70'))


if __name__ == '__main__':
  absltest.main()
