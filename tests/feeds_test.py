"""The data section reaches the sources: the shuffled-NCA control and the periodicity
filter are passed through, and refused where they cannot act."""
from unittest import mock

from absl.testing import absltest

from ncalm import errors
from ncalm.data import complexity
from ncalm.data import feeds

import tiny_config


class NCAOptionsTest(absltest.TestCase):

  def test_shuffle_reaches_the_training_and_held_out_sources(self):
    cfg = tiny_config.get_config()
    cfg.data.shuffle = 'frames'
    run = feeds.build(cfg)
    self.assertEqual((run.train_source.shuffle, run.val_source.shuffle), ('frames', 'frames'))
    self.assertEqual(feeds.build(tiny_config.get_config()).train_source.shuffle, '')

  def test_reject_periodic_filters_over_the_training_window(self):
    cfg = tiny_config.get_config()
    cfg.data.reject_periodic = True
    with mock.patch.object(complexity, 'sample_rule_bank',
                           wraps=complexity.sample_rule_bank) as sampler:
      bank = feeds.load_or_sample_bank(cfg, self.create_tempdir().full_path)
    self.assertEqual(sampler.call_args.kwargs['aperiodic_frames'], feeds.nca_config(cfg).frames)
    self.assertLen(bank, cfg.data.num_train_rules + cfg.data.num_val_rules)
    cfg.data.reject_periodic = False
    with mock.patch.object(complexity, 'sample_rule_bank',
                           wraps=complexity.sample_rule_bank) as sampler:
      feeds.load_or_sample_bank(cfg, self.create_tempdir().full_path)
    self.assertEqual(sampler.call_args.kwargs['aperiodic_frames'], 0)

  def test_nca_options_on_other_sources_are_refused(self):
    for field, value in (('shuffle', 'patches'), ('reject_periodic', True)):
      cfg = tiny_config.get_config()
      cfg.data.source = 'dyck'
      cfg.data[field] = value
      with self.assertRaisesRegex(errors.UserError, r"act on NCA data, but data.source='dyck'"):
        feeds.build(cfg)


if __name__ == '__main__':
  absltest.main()
