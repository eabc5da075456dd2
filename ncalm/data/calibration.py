"""Where a complexity band lies on each score, per NCA family: the calibration of the device score.

A band is given in gzip ratios (`data.band_units='gzip'`: the paper's bands) or as a range of
quantiles of the family's own score distribution (`'quantile'`: (0.85, 1.0) is its richest
15%). Rules are filtered by gzip on the host (a bank) or by `device_complexity.lz_score` inside
the step (fresh rules). What ties the three together is a *calibration*: the LEVELS quantiles of
both scores over `rules` random rules of the family, each rule scored by both on the same
trajectory. A gzip band (lo, hi) holds the rules whose gzip score lies above the fraction
F(lo) of the family and below F(hi); on the device the same rules are, as near as the ranking
allows, those whose lz_score lies in (q_lz(F(lo)), q_lz(F(hi))] — rank matching.

`python -m ncalm.calibrate --config=...` writes one JSON file per family into
configs/calibration/ (`data.calibration`); a family is every data.nca field but `frames`
(the score always reads SCORE_FRAMES frames). Rules are scored in fast mode, which draws the
same rules and trajectories in distribution as reference mode.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import jax
import numpy as np

from ncalm import errors
from ncalm import files
from ncalm.data import complexity
from ncalm.data import device_complexity
from ncalm.data import nca

LEVELS = 1001               # quantiles stored per score: 0, 0.001, ..., 1
DEFAULT_RULES = 10_000      # rules a calibration scores
CHUNK = 500                 # rules scored per compiled call
UNITS = ('gzip', 'quantile')
MAX_SHORT_ROWS = 0.01       # fresh rules: most rows a band may leave without an in-band rule
_LEVEL_GRID = np.linspace(0.0, 1.0, LEVELS)


def candidates_needed(acceptance: float) -> int | float:
  """Candidates per sequence for at most MAX_SHORT_ROWS of sequences to find none in a band
  that keeps `acceptance` of them (math.inf for a band that keeps none)."""
  if acceptance >= 1:
    return 1
  if acceptance <= 0:
    return math.inf
  return max(1, math.ceil(math.log(MAX_SHORT_ROWS) / math.log(1.0 - acceptance)))


def family(cfg: nca.NCAConfig) -> dict:
  """The fields that make an NCA family (all but `frames`)."""
  fields = dataclasses.asdict(cfg)
  del fields['frames']
  return fields


def family_name(cfg: nca.NCAConfig) -> str:
  """A readable file stem of the family, with a digest of every field."""
  f = family(cfg)
  digest = hashlib.sha256(json.dumps(f, sort_keys=True).encode()).hexdigest()[:8]
  return (f'grid{f["grid"]}_states{f["num_states"]}_patch{f["patch"]}_'
          f'perceive{f["perceive_channels"]}_hidden{f["hidden_channels"]}_{digest}')


def resolve_dir(directory: str) -> str:
  """`directory` as given, or relative to the repository when not found from here (so
  the default configs/calibration works from any working directory of a checkout)."""
  if os.path.isabs(directory) or os.path.isdir(directory):
    return directory
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, directory)


def path_for(directory: str, cfg: nca.NCAConfig) -> str:
  return os.path.join(resolve_dir(directory), family_name(cfg) + '.json')


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Quantiles of the gzip and device scores of one family's random rules."""
  family: dict
  rules: int
  seed: int
  gzip: np.ndarray      # float64 [LEVELS]: gzip score quantiles
  device: np.ndarray    # float64 [LEVELS]: lz_score quantiles
  spearman: float       # rank correlation of the two scores over the rules

  def fraction_below(self, gzip_score: float) -> float:
    """F(x): the share of the family's rules with gzip score <= x (to 1/(LEVELS-1))."""
    at_or_below = int(np.searchsorted(self.gzip, gzip_score, side='right'))
    return min(1.0, max(0.0, (at_or_below - 1) / (LEVELS - 1)))

  def quantile_band(self, band, units: str) -> tuple[float, float]:
    """The band as (low, high) fractions of the family."""
    if units == 'quantile':
      return float(band[0]), float(band[1])
    return self.fraction_below(band[0]), self.fraction_below(band[1])

  def gzip_band(self, band, units: str) -> tuple[float, float]:
    """The band in gzip ratios (what a bank filters on)."""
    if units == 'gzip':
      return float(band[0]), float(band[1])
    low, high = self.quantile_band(band, units)
    return (float(np.interp(low, _LEVEL_GRID, self.gzip)),
            float(np.interp(high, _LEVEL_GRID, self.gzip)))

  def device_band(self, band, units: str) -> tuple[float, float]:
    """The band on the device score: keep lz_score in (low, high]; ±inf at the ends."""
    low, high = self.quantile_band(band, units)
    return (-math.inf if low <= 0 else float(np.interp(low, _LEVEL_GRID, self.device)),
            math.inf if high >= 1 else float(np.interp(high, _LEVEL_GRID, self.device)))

  def device_acceptance(self, band, units: str) -> float:
    """The share of the family's rules the device band keeps (from the quantiles)."""
    low, high = self.device_band(band, units)
    inside = (self.device > low) & (self.device <= high)
    return float(inside.mean())

  def to_json(self) -> dict:
    return dict(family=self.family, rules=self.rules, seed=self.seed,
                spearman=round(self.spearman, 6), levels=LEVELS,
                gzip=[round(float(x), 6) for x in self.gzip],
                device=[round(float(x), 6) for x in self.device])

  @classmethod
  def from_json(cls, data: dict) -> 'Calibration':
    return cls(data['family'], data['rules'], data['seed'], np.asarray(data['gzip'], np.float64),
               np.asarray(data['device'], np.float64), data['spearman'])


def scores(cfg: nca.NCAConfig, rules: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(gzip, device) scores of `rules` random rules of the family, on the same trajectories."""
  rule_keys = np.asarray(jax.random.split(jax.random.PRNGKey(seed), rules))
  sim_keys = np.asarray(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), rules))
  gzip, device = [], []
  for start in range(0, rules, CHUNK):
    rk = complexity.pad_rows(rule_keys[start:start + CHUNK], CHUNK)
    sk = complexity.pad_rows(sim_keys[start:start + CHUNK], CHUNK)
    ids = complexity.score_ids(rk, sk, cfg, 'fast')
    count = min(CHUNK, rules - start)
    device.append(np.asarray(device_complexity.lz_score(ids))[:count])
    gzip.append([complexity.gzip_score(row) for row in np.asarray(ids)[:count]])
  return np.concatenate(gzip).astype(np.float64), np.concatenate(device).astype(np.float64)


def calibrate(cfg: nca.NCAConfig, rules: int = DEFAULT_RULES, seed: int = 0,
              scored: tuple[np.ndarray, np.ndarray] | None = None) -> Calibration:
  """Scores `rules` random rules both ways (or takes `scored`, as `scores` returns them) and
  keeps the quantiles."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  gzip, device = scored if scored is not None else scores(cfg, rules, seed)
  return Calibration(family(cfg), rules, seed, np.quantile(gzip, _LEVEL_GRID),
                     np.quantile(device, _LEVEL_GRID),
                     float(stats.spearmanr(gzip, device).correlation))


def agreement(cal: Calibration, band, units: str, gzip: np.ndarray,
              device: np.ndarray) -> tuple[float, float]:
  """(the share of rules on which gzip's band and the device band agree about membership,
  the share of the device band's rules that lie in gzip's band), each band compared as its
  filter compares it (`complexity.in_band` for gzip; float32 (low, high] on the device)."""
  glow, ghigh = cal.gzip_band(band, units)
  in_gzip = complexity.in_band(gzip, (glow, ghigh))
  low, high = (np.float32(edge) for edge in cal.device_band(band, units))
  on_device = device.astype(np.float32)
  in_device = (on_device > low) & (on_device <= high)
  precision = float(in_gzip[in_device].mean()) if in_device.any() else math.nan
  return float(np.mean(in_gzip == in_device)), precision


def save(calibration: Calibration, path: str) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with files.atomic_open(path) as f:
    json.dump(calibration.to_json(), f, indent=None, separators=(',', ':'))
    f.write('\n')


def load(directory: str, cfg: nca.NCAConfig, command: str = '') -> Calibration:
  """The family's calibration from `directory`, or one paragraph naming the command."""
  path = path_for(directory, cfg)
  if not os.path.exists(path):
    raise errors.UserError(
        f'data.calibration={directory!r} holds no calibration of this NCA family '
        f'({family_name(cfg)}.json: {family(cfg)}); a band on the device score or in quantiles '
        'needs one. Make it with `python -m ncalm.calibrate --config=CONFIG` (the run\'s config; '
        f'about a minute on a CPU){command}, or point data.calibration at a folder that has it.')
  with open(path) as f:
    calibration = Calibration.from_json(json.load(f))
  if calibration.family != family(cfg):
    raise errors.UserError(f'{path}: written for the family {calibration.family}, not '
                           f'{family(cfg)}; remake it with `python -m ncalm.calibrate`.')
  return calibration


@dataclasses.dataclass(frozen=True)
class Band:
  """A run's band on both scores, and how much of the family each keeps."""
  gzip: tuple[float, float]          # bank filter (strict: low < gzip < high)
  device: tuple[float, float]        # fresh filter (low < lz_score <= high)
  device_acceptance: float           # share of candidates the device filter keeps


def check_units(units: str) -> None:
  if units not in UNITS:
    raise errors.UserError(f"data.band_units={units!r}: use 'gzip' (data.band in gzip ratios, "
                           "the paper's bands) or 'quantile' (a range of the family's own scores, "
                           'e.g. (0.85, 1.0) for its richest 15%).')


def check_quantiles(band) -> None:
  low, high = float(band[0]), float(band[1])
  if not 0.0 <= low < high <= 1.0:
    raise errors.UserError(f"data.band={tuple(band)} with data.band_units='quantile' must "
                           'satisfy 0 <= low < high <= 1 (fractions of the family).')


def run_band(band, units: str, cfg: nca.NCAConfig, directory: str, need_calibration: bool
             ) -> Band | None:
  """The band of a run on both scores; None for unfiltered rules. Reads the family's
  calibration when the band is in quantiles or `need_calibration` (fresh rules)."""
  check_units(units)
  if band is None:
    return None
  if units == 'quantile':
    check_quantiles(band)
  else:
    band = complexity.check_band(band)
  if units == 'gzip' and not need_calibration:
    return Band(tuple(band), (math.nan, math.nan), math.nan)
  cal = load(directory, cfg)
  return Band(cal.gzip_band(band, units), cal.device_band(band, units),
              cal.device_acceptance(band, units))
