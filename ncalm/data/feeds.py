"""The one place that turns a config into the run's data: `data.source` → its feeds.

A run has a training feed and a held-out feed: on-device sources (NCA, Dyck:
`ncalm.data.device_sources`) made inside the jitted step from (seed, step), or host feeds
of a prepared text dataset (`ncalm.data.text`). Each entry of `BUILDERS` builds them from
the config and, for NCA, the rows of the rule bank (train rules, held-out rules). With no
bank (`rule_keys=None`) the sources still know their vocabulary and shapes, which is all
the start-up checks and the dry run need.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from ncalm import config_lib
from ncalm import files
from ncalm.data import complexity
from ncalm.data import device_sources
from ncalm.data import prepare as prepare_lib
from ncalm.data import text

BANK_FILE = 'rule_bank.npz'


@dataclasses.dataclass(frozen=True)
class Feeds:
  """The data of a run: training and held-out sources."""
  train_source: object
  val_source: object

  @property
  def on_device(self) -> bool:
    """True: sources made inside the step; False: host feeds (text)."""
    return not isinstance(self.train_source, text.TextFeed)


def _nca(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  nca_cfg = config_lib.nca_config(cfg)
  make = lambda keys: device_sources.NCASource(nca_cfg, cfg.seq_len, cfg.data.mode, keys)
  train_keys, val_keys = rule_keys or (None, None)
  return Feeds(make(train_keys), make(val_keys))


def _dyck(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  del rule_keys  # Dyck needs no bank
  source = device_sources.DyckSource(config_lib.dyck_config(cfg), cfg.seq_len)
  return Feeds(source, source)


def _text(cfg: ml_collections.ConfigDict, rule_keys) -> Feeds:
  del rule_keys  # text needs no bank
  t = cfg.data.text
  return Feeds(
      text.open_feed(t.path, 'train', cfg.seq_len, cfg.seed, t.shuffle, t.tokenizer),
      text.open_feed(t.path, 'validation', cfg.seq_len, cfg.seed, False, t.tokenizer))


# data.source → builder(cfg, (train rule keys, held-out rule keys) or None) → Feeds
BUILDERS: dict[str, Callable[..., Feeds]] = {'nca': _nca, 'dyck': _dyck, 'text': _text}
assert tuple(BUILDERS) == config_lib.SOURCES


def build(cfg: ml_collections.ConfigDict, rule_keys=None) -> Feeds:
  return BUILDERS[cfg.data.source](cfg, rule_keys)


def check(cfg: ml_collections.ConfigDict) -> Feeds:
  """Every check that needs no devices and writes nothing; returns bank-less feeds (enough
  to build the model and check the mesh). The model's vocabulary is checked against
  the data's here."""
  config_lib.check_config(cfg)
  feeds = build(cfg)
  config_lib.model_config(cfg, feeds.train_source.vocab_size)
  return feeds


def abstract(cfg: ml_collections.ConfigDict) -> Feeds:
  """Feeds whose rule bank is abstract (ShapeDtypeStructs): for lowering without data."""
  d = cfg.data
  keys = (jax.ShapeDtypeStruct((d.num_train_rules, 2), np.uint32),
          jax.ShapeDtypeStruct((d.num_val_rules, 2), np.uint32))
  return build(cfg, keys)


def load_or_sample_bank(cfg: ml_collections.ConfigDict, workdir: str) -> complexity.RuleBank:
  """The run's rule bank: read from the workdir, or sampled and saved there once."""
  path = os.path.join(workdir, BANK_FILE)
  if os.path.exists(path):
    return complexity.RuleBank.load(path)
  d = cfg.data
  total = d.num_train_rules + d.num_val_rules
  band = tuple(d.band) if d.band else None
  logging.info('Sampling %d rules in band %s ...', total, band)
  bank = complexity.sample_rule_bank(jax.random.PRNGKey(d.bank_seed), total, band,
                                     config_lib.nca_config(cfg), d.bank_mode)
  if jax.process_index() == 0:
    with files.atomic_path(path) as tmp:
      bank.save(tmp)
  return bank


def load(cfg: ml_collections.ConfigDict, workdir: str) -> Feeds:
  """The run's feeds with their data: the rule bank is sampled (once) or read here."""
  if cfg.data.source != 'nca':
    return build(cfg)
  bank = load_or_sample_bank(cfg, workdir)
  return build(cfg, tuple(np.asarray(b.keys) for b in bank.split(cfg.data.num_val_rules)))


def content_fingerprints(cfg: ml_collections.ConfigDict) -> dict[str, str]:
  """Digests of the data a config names only by path, for the run's identity
  (`workdir.check_identity`): a text run's prepared dataset (its records and metadata, the
  tokeniser's fingerprint among them). NCA and Dyck data are functions of the config."""
  if cfg.data.source != 'text':
    return {}
  return {'dataset': prepare_lib.dataset_fingerprint(cfg.data.text.path)}


def prepare(cfg: ml_collections.ConfigDict, workdir: str) -> Feeds:
  """Checks the config, then builds the feeds (sampling the rule bank if needed)."""
  check(cfg)
  os.makedirs(workdir, exist_ok=True)
  return load(cfg, workdir)
