"""The one place that turns a config into the run's data: `data.source` → its feeds.

A run has a training feed and a held-out feed: on-device sources (NCA, Dyck:
`ncalm.data.device_sources`) made inside the jitted step from (seed, step), or host feeds
of a prepared text dataset (`ncalm.data.text`). Each entry of `BUILDERS` checks its
section of the config and builds them from it and, for NCA, the rows of the rule bank
(train rules, held-out rules). With no bank (`rule_keys=None`) the sources still know
their vocabulary and shapes, which is all the start-up checks and the dry run need.
A source describes itself from then on (`on_device`, `vocab_size`, `tokens_per_frame`,
`evaluators`, `unigram_log_probs`): nothing else asks which `data.source` a run has.
New source: its module, a builder here and one line of `BUILDERS`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from ncalm import errors
from ncalm import files
from ncalm import run_files
from ncalm.data import calibration
from ncalm.data import complexity
from ncalm.data import dataset
from ncalm.data import device_sources
from ncalm.data import dyck
from ncalm.data import finetune
from ncalm.data import fresh_rules
from ncalm.data import nca
from ncalm.data import nca_tokens
from ncalm.data import text
from ncalm.eval import eval_data


@dataclasses.dataclass(frozen=True)
class Feeds:
  """The data of a run: training and held-out sources."""
  train_source: object
  val_source: object

  @property
  def on_device(self) -> bool:
    """True: sources made inside the step; False: host feeds (text)."""
    return self.train_source.on_device

  @property
  def selection_flops_per_row(self) -> float:
    """FLOPs spent choosing each training row's data beyond making it (fresh rules: the
    candidates' simulation), for the experiments' compute column."""
    return self.train_source.selection_flops_per_row if self.on_device else 0.0


# ----------------------------------------------------------- typed views of data.*


def nca_config(cfg: ml_collections.ConfigDict) -> nca.NCAConfig:
  """data.nca as an NCAConfig, with frames = 0 resolved to just enough for seq_len + 1."""
  fields = cfg.data.nca.to_dict()
  base = nca.NCAConfig(**{**fields, 'frames': 1})
  needed = nca_tokens.frames_needed(cfg.seq_len, base)
  frames = fields['frames']
  if frames and frames < needed:
    raise errors.UserError(
        f'data.nca.frames={frames} gives {frames * nca_tokens.tokens_per_frame(base)} tokens, '
        f'but seq_len={cfg.seq_len} needs {cfg.seq_len + 1}: set frames >= {needed} or 0 (auto).')
  return base.replace(frames=frames or needed)


def dyck_config(cfg: ml_collections.ConfigDict) -> dyck.DyckConfig:
  return dyck.DyckConfig(**cfg.data.dyck.to_dict())


# ------------------------------------------------------------------ the builders


RULES = ('bank', 'fresh')


def run_band(cfg: ml_collections.ConfigDict) -> calibration.Band | None:
  """data.band on both scores (reading the family's calibration when it is needed)."""
  d = cfg.data
  if d.rules not in RULES:
    raise errors.UserError(f"data.rules={d.rules!r}: use 'bank' (rules sampled once on the "
                           "host, by gzip) or 'fresh' (a new rule per sequence, scored on the "
                           'device inside the step).')
  if d.rules == 'fresh' and d.band is None:
    raise errors.UserError("data.rules='fresh' needs a band: data.band=(low, high) (gzip "
                           "ratios, or quantiles with data.band_units='quantile'); unfiltered "
                           "fresh rules are data.rules='fresh' with a band of (0, 1) in "
                           'quantiles.')
  return calibration.run_band(d.band, d.band_units, nca_config(cfg), d.calibration,
                              need_calibration=d.rules == 'fresh')


def check_candidates(cfg: ml_collections.ConfigDict, band: calibration.Band) -> None:
  """Fresh rules: enough candidates that at most MAX_SHORT_ROWS of rows find none in band."""
  d = cfg.data
  p = band.device_acceptance
  short = (1.0 - p) ** d.candidates
  if short <= calibration.MAX_SHORT_ROWS:
    return
  if p <= 0:
    raise errors.UserError(
        f'data.band={tuple(d.band)} ({d.band_units}) holds no rule of this family on the '
        f'device score (its calibration in {d.calibration!r}: lz_score edges {band.device}): '
        "widen the band, give it in quantiles (data.band_units='quantile'), or use "
        "data.rules='bank' (gzip on the host).")
  needed = calibration.candidates_needed(p)
  raise errors.UserError(
      f'data.candidates={d.candidates}: data.band={tuple(d.band)} ({d.band_units}) keeps '
      f'{p:.1%} of candidates on the device score, so {short:.1%} of sequences would find no '
      f'rule in the band (at most {calibration.MAX_SHORT_ROWS:.0%} allowed). Set '
      f'data.candidates >= {needed}, or widen the band.')


def _nca(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  nca_cfg = nca_config(cfg)
  band = run_band(cfg)
  train_keys, val_keys = rule_keys or (None, None)
  make = lambda keys: device_sources.NCASource(nca_cfg, cfg.seq_len, cfg.data.mode, keys,
                                               cfg.data.shuffle)
  if cfg.data.rules == 'bank':
    return Feeds(make(train_keys), make(val_keys))
  check_candidates(cfg, band)
  train = fresh_rules.FreshNCASource(
      nca_cfg, cfg.seq_len, cfg.data.mode, None, cfg.data.shuffle, held_out_keys=val_keys,
      band=band.device, candidates=cfg.data.candidates,
      reject_periodic=cfg.data.reject_periodic)
  return Feeds(train, make(val_keys))


def _dyck(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  del rule_keys  # Dyck needs no bank
  source = device_sources.DyckSource(dyck_config(cfg), cfg.seq_len)
  return Feeds(source, source)


def _text(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  del rule_keys  # text needs no bank
  t = cfg.data.text
  if not t.path:
    raise errors.UserError('data.source=text needs data.text.path: the DATA_DIR written by '
                           '`python -m ncalm.prepare --input=... --tokenizer=... --out=DATA_DIR`.')
  if t.prefetch < 1:
    raise errors.UserError(f'data.text.prefetch={t.prefetch} must be >= 1.')
  return Feeds(
      text.open_feed(t.path, 'train', cfg.seq_len, cfg.seed, t.shuffle, t.tokenizer),
      text.open_feed(t.path, 'validation', cfg.seq_len, cfg.seed, False, t.tokenizer))


def _finetune(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  del rule_keys  # fine-tuning items need no bank
  if not cfg.data.finetune.path:
    raise errors.UserError('data.source=finetune needs data.finetune.path: the EVAL_DIR written '
                           'by `python -m ncalm.prepare_evals --out=EVAL_DIR ...`.')
  if cfg.data.text.prefetch < 1:
    raise errors.UserError(f'data.text.prefetch={cfg.data.text.prefetch} must be >= 1.')
  return Feeds(*finetune.open_feeds(cfg))


# data.source → builder(cfg, (train rule keys, held-out rule keys) or None) → Feeds
BUILDERS: dict[str, Callable[..., Feeds]] = {'nca': _nca, 'dyck': _dyck, 'text': _text,
                                              'finetune': _finetune}


def build(cfg: ml_collections.ConfigDict, rule_keys=None) -> Feeds:
  """The feeds of `cfg` (checking its data section); bank-less when `rule_keys` is None."""
  if cfg.data.source not in BUILDERS:
    raise errors.UserError(f'data.source={cfg.data.source!r}: use one of {list(BUILDERS)}.')
  if cfg.data.source != 'nca' and (cfg.data.shuffle or cfg.data.reject_periodic):
    raise errors.UserError(
        f'data.shuffle={cfg.data.shuffle!r} and data.reject_periodic='
        f'{cfg.data.reject_periodic} act on NCA data, but data.source={cfg.data.source!r}: '
        "set them to '' and False, or data.source='nca'.")
  return BUILDERS[cfg.data.source](cfg, rule_keys)


def abstract(cfg: ml_collections.ConfigDict) -> Feeds:
  """Feeds whose rule bank is abstract (ShapeDtypeStructs): for lowering without data."""
  d = cfg.data
  keys = (None if d.rules == 'fresh' else jax.ShapeDtypeStruct((d.num_train_rules, 2), np.uint32),
          jax.ShapeDtypeStruct((d.num_val_rules, 2), np.uint32))
  return build(cfg, keys)


def load_or_sample_bank(cfg: ml_collections.ConfigDict, workdir: str) -> complexity.RuleBank:
  """The run's rule bank: read from the workdir, or sampled and saved there once."""
  path = os.path.join(workdir, run_files.RULE_BANK)
  if os.path.exists(path):
    return complexity.RuleBank.load(path)
  d = cfg.data
  total = d.num_val_rules if d.rules == 'fresh' else d.num_train_rules + d.num_val_rules
  band = run_band(cfg)
  band = band.gzip if band else None
  logging.info('Sampling %d rules in band %s ...', total, band)
  nca_cfg = nca_config(cfg)
  bank = complexity.sample_rule_bank(jax.random.PRNGKey(d.bank_seed), total, band, nca_cfg,
                                     d.bank_mode,
                                     aperiodic_frames=nca_cfg.frames if d.reject_periodic else 0)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with files.atomic_path(path) as tmp:
      bank.save(tmp)
  return bank


def load(cfg: ml_collections.ConfigDict, workdir: str) -> Feeds:
  """The run's feeds with their data: the rule bank is sampled (once) or read here."""
  if cfg.data.source != 'nca':   # only NCA has a rule bank
    return build(cfg)
  bank = load_or_sample_bank(cfg, workdir)
  if cfg.data.rules == 'fresh':   # the bank holds the held-out rules only
    return build(cfg, (None, np.asarray(bank.keys)))
  return build(cfg, tuple(np.asarray(b.keys) for b in bank.split(cfg.data.num_val_rules)))


def content_fingerprints(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """Digests of the data a config names only by path, for the run's identity
  (`workdir.check_identity`): an NCA run's calibration, when its band uses one; a text
  run's prepared dataset (its records and metadata, the
  tokeniser's fingerprint among them); a fine-tuning run's prepared benchmark files. NCA
  and Dyck data are functions of the config."""
  if cfg.data.source == 'nca' and (cfg.data.rules == 'fresh' or
                                   cfg.data.band_units == 'quantile'):
    path = calibration.path_for(cfg.data.calibration, nca_config(cfg))
    if not os.path.exists(path):
      return {'calibration': ''}
    with open(path, 'rb') as f:
      return {'calibration': hashlib.sha256(f.read()).hexdigest()}
  if cfg.data.source == 'finetune':
    return {'finetune': eval_data.fingerprint(cfg.data.finetune.path, cfg.data.finetune.task,
                                           'data.finetune.path')}
  if cfg.data.source != 'text':
    return {}
  return {'dataset': dataset.dataset_fingerprint(cfg.data.text.path)}
