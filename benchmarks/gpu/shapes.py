"""The two training shapes the GPU check measures, and the batch and remat the dry run picks.

  * `paper`: `configs/nca_164m.py` as it is (1.6B parameters, 1,024 tokens, bf16, the
    paper's 50%+ NCA data made inside the step).
  * `gpt2_small`: the same run at the GPT-2-small shape (12 layers, d_model 768, 12 heads,
    MLP 3,072), the smallest paper-like model docs/transfer.md names.

The per-device batch and the remat policy come from the dry run (`footprint.estimate`), not from
trial and error: the least recomputation under which the paper's batch of 32 sequences fits
on the device (<= footprint.FIT_FRACTION of its memory); if none does, the policy that fits
the largest power-of-two batch. With `smoke`, tiny models on 76-token sequences instead.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import jax
import ml_collections

from ncalm import perf
from ncalm.tools import footprint

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'configs'))
import nca_164m  # pylint: disable=g-import-not-at-top,wrong-import-position

# Least recomputation first: 'dots' keeps more activations than 'dots_no_batch'.
REMAT_ORDER = ('none', 'dots', 'dots_no_batch', 'full')
PAPER_BATCH = 32
SMOKE_BATCH = 4


def device_target(smoke: bool) -> perf.Target:
  """The visible device as a dry-run target: its HBM is what JAX may allocate on it."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if smoke or not stats or 'bytes_limit' not in stats:
    return perf.Target('smoke', 'CPU (smoke)', 'cpu', device.device_kind, 1, 4.0, 1)
  limit = stats['bytes_limit'] / footprint.GIB
  for target in perf.TARGETS.values():
    if target.num_devices == 1 and target.device_kind.lower() in device.device_kind.lower():
      return dataclasses.replace(target, hbm_gib=limit)
  return perf.Target('device', device.device_kind, device.device_kind, device.device_kind, 1,
                     limit, 1)


def base_config(name: str, smoke: bool) -> ml_collections.ConfigDict:
  """The shape's config before the batch and remat are chosen."""
  c = nca_164m.get_config()
  c.data.num_train_rules = 1024   # unfiltered random rules: a step costs the same (see part 2)
  c.data.num_val_rules = 64
  if name == 'gpt2_small':
    c.model.update(d_model=768, num_layers=12, num_heads=12, mlp_dim=3072)
  if smoke:
    c.seq_len = 76                 # two whole 38-token frames (+ 1 target)
    width = 64 if name == 'paper' else 32
    c.model.update(d_model=width, num_layers=2, num_heads=4, mlp_dim=2 * width)
  return c


def choose(cfg: ml_collections.ConfigDict, target: perf.Target, smoke: bool) -> dict:
  """Sets cfg.global_batch and cfg.model.remat from the dry run; returns what was weighed."""
  cap = SMOKE_BATCH if smoke else PAPER_BATCH
  batches = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= cap]
  considered = {}
  for remat in REMAT_ORDER:
    cfg.model.remat = remat
    fits = 0
    for batch in batches:
      cfg.global_batch = batch
      p = footprint.estimate(cfg, target, dict(data=1))
      if p.fits != 'yes':
        break
      fits = batch
    considered[remat] = fits
    if fits == cap:
      break
  remat = max(considered, key=lambda r: (considered[r], -REMAT_ORDER.index(r)))
  if not considered[remat]:
    p = footprint.estimate(cfg, target, dict(data=1))
    raise RuntimeError(f'{target.label}: not even batch 1 fits with full remat: the dry run '
                       f'needs {p.memory.total / footprint.GIB:.1f} GiB of '
                       f'{target.hbm_gib:.1f} GiB ({p.hbm_fraction:.0%}).')
  cfg.model.remat, cfg.global_batch = remat, considered[remat]
  p = footprint.estimate(cfg, target, dict(data=1))
  return dict(remat=remat, batch=cfg.global_batch, largest_batch_by_remat=considered,
              predicted_bytes=dataclasses.asdict(p.memory), predicted_fraction=p.hbm_fraction,
              hbm_gib=target.hbm_gib, params=p.param_counts['total'])


def config(name: str, target: perf.Target, smoke: bool) -> tuple[ml_collections.ConfigDict, dict]:
  cfg = base_config(name, smoke)
  return cfg, choose(cfg, target, smoke)
