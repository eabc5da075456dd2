"""The device score's calibration (`ncalm.data.calibration`, `python -m ncalm.calibrate`): bands
mapped between gzip ratios, quantiles and lz_score; the committed calibrations are what the
command makes; missing or mismatched ones are refused with the command to run."""
import json
import math
import os
import tempfile

from absl import flags
from absl.testing import absltest
import numpy as np

from ncalm import config_lib
from ncalm import errors
from ncalm.data import calibration
from ncalm.data import feeds
from ncalm.data import nca
from ncalm.tools import calibrate as calibrate_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = np.linspace(0, 1, calibration.LEVELS)


def linear(gzip_scale=1.0, device_scale=2.0):
  """A family whose scores are uniform: gzip on [0, gzip_scale], lz on [0, device_scale]."""
  return calibration.Calibration({}, 10_000, 0, LEVELS * gzip_scale, LEVELS * device_scale, 1.0)


class BandTest(absltest.TestCase):

  def test_gzip_band_maps_by_rank(self):
    cal = linear()
    low, high = cal.quantile_band((0.2, 0.4), 'gzip')
    self.assertAlmostEqual(low, 0.2, places=3)
    self.assertAlmostEqual(high, 0.4, places=3)
    self.assertEqual(cal.gzip_band((0.2, 0.4), 'gzip'), (0.2, 0.4))
    np.testing.assert_allclose(cal.device_band((0.2, 0.4), 'gzip'), (0.4, 0.8), atol=2e-3)
    self.assertAlmostEqual(cal.device_acceptance((0.2, 0.4), 'gzip'), 0.2, delta=2e-3)

  def test_quantile_band_maps_to_both_scores(self):
    cal = linear(gzip_scale=0.5)
    np.testing.assert_allclose(cal.gzip_band((0.5, 0.9), 'quantile'), (0.25, 0.45))
    np.testing.assert_allclose(cal.device_band((0.5, 0.9), 'quantile'), (1.0, 1.8))
    # A band from the bottom or to the top is open there: nothing is cut by rounding.
    self.assertEqual(cal.device_band((0.0, 1.0), 'quantile'), (-math.inf, math.inf))
    self.assertEqual(cal.device_acceptance((0.0, 1.0), 'quantile'), 1.0)

  def test_ties_make_a_band_unreachable_on_the_device(self):
    # 70% of rules share one device score: a band inside the clump keeps none of them.
    device = np.where(LEVELS < 0.7, 0.03, LEVELS)
    cal = calibration.Calibration({}, 10_000, 0, LEVELS, device, 0.9)
    self.assertEqual(cal.device_acceptance((0.2, 0.4), 'quantile'), 0.0)
    self.assertAlmostEqual(cal.device_acceptance((0.8, 0.9), 'quantile'), 0.1, delta=2e-3)


  def test_agreement_counts_membership_as_each_filter_does(self):
    cal = linear()                                    # gzip band (0.2, 0.4) ↔ lz (0.4, 0.8]
    gzip = np.array([0.1, 0.25, 0.3, 0.35, 0.5, 0.2])   # in gzip's band: rules 1, 2, 3
    device = np.array([0.2, 0.5, 0.6, 0.9, 0.7, 0.3])   # in the device band: rules 1, 2, 4
    agree, precision = calibration.agreement(cal, (0.2, 0.4), 'gzip', gzip, device)
    self.assertAlmostEqual(agree, 4 / 6)    # rules 0, 1, 2, 5 (0.2 is not inside (0.2, 0.4))
    self.assertAlmostEqual(precision, 2 / 3)


class FileTest(absltest.TestCase):

  def test_candidates_needed_leave_at_most_one_percent_short(self):
    for acceptance in (0.9, 0.471, 0.223, 0.066, 0.01):
      k = calibration.candidates_needed(acceptance)
      self.assertLessEqual((1 - acceptance) ** k, calibration.MAX_SHORT_ROWS)
      self.assertGreater((1 - acceptance) ** (k - 1), calibration.MAX_SHORT_ROWS)
    self.assertEqual(calibration.candidates_needed(1.0), 1)
    self.assertEqual(calibration.candidates_needed(0.0), math.inf)

  def test_family_names_are_stable_and_tell_families_apart(self):
    base = nca.NCAConfig()
    self.assertEqual(calibration.family_name(base), calibration.family_name(
        base.replace(frames=3)))                       # frames are not part of the family
    self.assertNotEqual(calibration.family_name(base),
                        calibration.family_name(base.replace(tau=1e-3)))
    self.assertTrue(calibration.family_name(base).startswith('grid12_states10_patch2_'))

  def test_the_committed_calibration_is_what_the_command_makes(self):
    cfg_path = os.path.join(REPO, 'configs', 'stage1.py') + ':nca_50_cpu'
    family = feeds.nca_config(config_lib.load_file(cfg_path))
    committed = calibration.path_for(os.path.join(REPO, 'configs', 'calibration'), family)
    out = tempfile.mkdtemp()
    fv = flags.FlagValues()
    calibrate_cli.define_flags(fv)
    fv([__file__, f'--config={cfg_path}', f'--out={out}'])
    written = calibrate_cli.run(fv)
    self.assertEqual(written, calibration.path_for(out, family))
    with open(written) as f, open(committed) as g:
      self.assertEqual(json.load(f), json.load(g))
    loaded = calibration.load(out, family)
    self.assertEqual(loaded.rules, calibration.DEFAULT_RULES)
    self.assertGreater(loaded.spearman, 0.8)

  def test_missing_or_mismatched_calibrations_are_refused(self):
    family = nca.NCAConfig(grid=6, num_states=3)
    empty = tempfile.mkdtemp()
    with self.assertRaisesRegex(errors.UserError, r'python -m ncalm.calibrate --config=CONFIG'):
      calibration.load(empty, family)
    other = calibration.Calibration(calibration.family(nca.NCAConfig()), 1, 0, LEVELS, LEVELS,
                                    1.0)
    calibration.save(other, calibration.path_for(empty, family))
    with self.assertRaisesRegex(errors.UserError, 'remake it'):
      calibration.load(empty, family)

  def test_default_folder_is_found_from_any_working_directory(self):
    here = os.getcwd()
    try:
      os.chdir(tempfile.mkdtemp())
      cal = calibration.load(config_lib.base_config().data.calibration, nca.NCAConfig())
    finally:
      os.chdir(here)
    self.assertEqual(cal.family, calibration.family(nca.NCAConfig()))


if __name__ == '__main__':
  absltest.main()
