"""Where the evaluation of one checkpoint is kept, whoever made it: RUN/eval/STEP/.

`items/NAME.json` holds one evaluator's result ({settings, scalars, pictures}) with the
settings it depends on (`settings`); `report.json`, written last by `ncalm.evaluate`, says
the evaluation of that step is complete. An evaluation capped at K items (`--limit=K`) has
its own folder, STEP/limit_K/, so a quick look never replaces the whole one. The training
loop writes the items of its final evaluation here too, so evaluating a finished run's
last checkpoint with the same settings (`ncalm.evaluate`, an experiment's `evals`) reuses
them instead of measuring twice.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ncalm import config_lib
from ncalm import files
from ncalm import run_files
from ncalm import viz

REPORT = 'report.json'
ITEMS_DIR = 'items'


def out_dir(workdir: str, step: int, limit: int = 0) -> str:
  """Where an evaluation of `step` is written: RUN/eval/STEP, or RUN/eval/STEP/limit_K for
  one capped at K items (so a quick look never replaces the whole evaluation)."""
  folder = os.path.join(workdir, run_files.EVAL, str(step))
  return os.path.join(folder, f'limit_{limit}') if limit else folder


def settings(cfg, name: str) -> dict:
  """What an evaluator's numbers depend on besides the checkpoint: its section, the data's
  path and the held-out batch size (an item made with other settings is not reused)."""
  source = cfg.data.source
  host_data = cfg.data[source].path if source in ('text', 'finetune') else ''
  return dict(config_lib.flatten(cfg.evals[name]), global_batch=cfg.global_batch,
              seq_len=cfg.seq_len, data=host_data, evals_data=cfg.evals.data)


def item_path(folder: str, name: str) -> str:
  return os.path.join(folder, ITEMS_DIR, f'{name}.json')


def read_item(folder: str, name: str, wanted: dict) -> dict | None:
  """The item of `name` if it was made with `wanted` settings, else None."""
  try:
    with open(item_path(folder, name)) as f:
      item = json.load(f)
  except (OSError, ValueError):
    return None   # absent, or cut short: made again
  return item if item.get('settings') == wanted else None


def write_item(folder: str, name: str, wanted: dict, scalars: dict, images: dict) -> dict:
  """Writes one evaluator's result (its pictures beside the report) and returns the item."""
  os.makedirs(os.path.join(folder, ITEMS_DIR), exist_ok=True)
  pictures = {}
  for tag, picture in images.items():
    pictures[tag] = tag.replace('/', '_') + '.png'
    viz.save_png(os.path.join(folder, pictures[tag]), np.asarray(picture))
  item = dict(settings=wanted, scalars={k: float(v) for k, v in scalars.items()},
              pictures=pictures)
  with files.atomic_open(item_path(folder, name)) as f:
    json.dump(item, f, indent=1)
  return item
