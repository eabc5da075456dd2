"""`python -m ncalm.calibrate`: the device score's calibration of a config's NCA family.

    python -m ncalm.calibrate --config=configs/stage1.py:nca_50_cpu [--rules=10000] [--seed=0]

Scores `--rules` random rules of the config's family (data.nca) by gzip on the host and by
the device score on the same trajectories, and writes the quantiles of both into the
config's data.calibration folder (configs/calibration/FAMILY.json by default; the file is
replaced whole). Prints the rank correlation and, for the config's band, where it lies on
each score and the share of candidates it keeps. About a minute for 10,000 rules on 2 CPU
cores (12×12, 10 states). `ncalm.data.calibration` says how a band uses it.
"""
from __future__ import annotations

from absl import flags
from absl import logging
from ml_collections import config_flags

from ncalm import cli
from ncalm import errors
from ncalm.data import calibration
from ncalm.data import feeds


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command line's flags, defined on demand so importing this module defines none."""
  fv = dict(flag_values=flag_values)
  config_flags.DEFINE_config_file('config', None, 'Run config whose data.nca family to '
                                  'calibrate.', lock_config=True, **fv)
  flags.DEFINE_integer('rules', calibration.DEFAULT_RULES, 'Random rules scored both ways.',
                       lower_bound=calibration.LEVELS, **fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the rules and their trajectories.', **fv)
  flags.DEFINE_string('out', '', 'Folder to write into; default the config\'s '
                      'data.calibration.', **fv)
  flags.mark_flag_as_required('config', flag_values=flag_values)


def run(flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """Calibrates the config's family; returns the path written."""
  cfg = flag_values.config
  if cfg.data.source != 'nca':
    raise errors.UserError(f'--config: data.source={cfg.data.source!r}; only NCA rules have a '
                           'complexity band to calibrate.')
  family = feeds.nca_config(cfg)
  directory = flag_values.out or cfg.data.calibration
  path = calibration.path_for(directory, family)
  print(f'Scoring {flag_values.rules:,} rules of {calibration.family_name(family)} both ways ...',
        flush=True)
  scored = calibration.scores(family, flag_values.rules, flag_values.seed)
  cal = calibration.calibrate(family, flag_values.rules, flag_values.seed, scored)
  calibration.save(cal, path)
  print(f'Spearman rank correlation of gzip and lz_score: {cal.spearman:.4f}')
  if cfg.data.band is not None:
    band = tuple(cfg.data.band)
    units = cfg.data.band_units
    low, high = cal.quantile_band(band, units)
    glow, ghigh = cal.gzip_band(band, units)
    dlow, dhigh = cal.device_band(band, units)
    print(f'data.band={band} ({units}): quantiles {low:.3f}-{high:.3f} of the family, gzip '
          f'{glow:.4f}-{ghigh:.4f}, lz_score ({dlow:.4f}, {dhigh:.4f}], keeping '
          f'{cal.device_acceptance(band, units):.1%} of candidates on the device')
    agree, precision = calibration.agreement(cal, band, units, *scored)
    print(f'On these rules the two bands agree about membership on {agree:.1%} of them, and '
          f'{precision:.1%} of the device band\'s rules lie in gzip\'s band.')
  print(f'Wrote {path}')
  return path


def main(argv) -> None:
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}: every input is a --flag.')
  logging.set_verbosity(logging.WARNING)
  run(flags.FLAGS)


def command() -> None:
  define_flags()
  cli.run(main)
