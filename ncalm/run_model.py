"""A run's model, ready to use: its config, its setup on this machine's devices, and the
parameters of a verified checkpoint placed in the run's own shardings.

For the commands that use a trained model without training it (`ncalm.sample`,
`ncalm.evaluate`). Nothing is written to the run: the checkpoint manager is read-only
(safe while training holds the workdir's lock), and an NCA run's rule bank is read, never
sampled (a missing bank is refused, not made again). A few fields may be given anew on
the command line (`OVERRIDABLE`: where the data lives, how much to evaluate); everything
that decides the numbers comes from the run's `run_config.json`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from ncalm import config_lib
from ncalm import errors
from ncalm import param_names
from ncalm import run_files
from ncalm import run_params
from ncalm import startup
from ncalm import step as step_lib
from ncalm import workdir as workdir_lib
from ncalm.data import complexity
from ncalm.data import feeds as feeds_lib
from ncalm.data import tokenizers

# Fields a command may set for a run it reads: where its data lives now, and how much of
# it an evaluator reads (prefixes of dotted paths).
OVERRIDABLE = ('data.text.path', 'data.finetune.path', 'evals.')


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: str
  cfg: ml_collections.ConfigDict
  checked: startup.Checked
  feeds: feeds_lib.Feeds   # with their data (an NCA run's held-out rules from its bank)
  setup: step_lib.Setup
  params: Any              # in setup.state_shardings.params
  step: int                # the checkpoint's step


def config_of(workdir: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The config a run was made with (fields newer than the run at their defaults), with
  `overrides` ({dotted path: value}, only OVERRIDABLE fields) applied."""
  if not os.path.exists(os.path.join(workdir, run_files.CONFIG)):
    raise errors.UserError(f'--workdir={workdir!r} is not an ncalm workdir (no '
                           f'{run_files.CONFIG}): name the --workdir of a `python -m '
                           'ncalm.main` run.')
  saved = workdir_lib.read_run_config(workdir)['config']
  cfg = config_lib.base_config()
  unknown = sorted(set(saved) - set(config_lib.flatten(cfg)))
  if unknown:
    raise errors.UserError(f'{workdir!r} was made by a newer ncalm (fields {unknown[:5]} are '
                           'unknown here): use that version to read it.')
  refused = sorted(k for k in overrides or {} if not k.startswith(OVERRIDABLE))
  if refused:
    raise errors.UserError(
        f'--config.{refused[0]} cannot be changed for a run that is read, not trained: the '
        f'numbers must be the run\'s own. Only {", ".join(OVERRIDABLE)}* may be given (where '
        'the data lives now, how much to evaluate).')
  with cfg.unlocked():
    cfg.update_from_flattened_dict(dict(saved, **(overrides or {})))
  return cfg


def feeds_of(cfg: ml_collections.ConfigDict, workdir: str) -> feeds_lib.Feeds:
  """The run's feeds with their data; an NCA run's rule bank is read from its workdir."""
  if cfg.data.source != 'nca':
    return feeds_lib.build(cfg)
  path = os.path.join(workdir, run_files.RULE_BANK)
  if not os.path.exists(path):
    raise errors.UserError(
        f'{path} is missing: the held-out rules of this NCA run are in its rule bank, which '
        'training writes before its first step. Restore the file from a copy of the workdir '
        '(it is not made again here: another bank would give other held-out numbers).')
  bank = complexity.RuleBank.load(path)
  return feeds_lib.build(cfg, tuple(np.asarray(b.keys)
                                    for b in bank.split(cfg.data.num_val_rules)))


def load(workdir: str, step: int = 0, overrides: dict[str, Any] | None = None) -> Run:
  """The run's config, setup and parameters of checkpoint `step` (0 = newest intact)."""
  cfg = config_of(workdir, overrides)
  try:
    checked = startup.check(cfg)
  except errors.UserError as e:
    if cfg.data.source == 'text' and not os.path.isdir(cfg.data.text.path):
      raise errors.UserError(f'{e} If the run\'s prepared dataset has moved, name its new '
                             'place with --config.data.text.path=DIR.') from None
    raise
  feeds = feeds_of(cfg, workdir)
  setup = step_lib.create_setup(cfg, checked.model)
  shardings = param_names.flat(setup.state_shardings.params)
  abstract = param_names.flat(setup.abstract_state.params)

  def target_for(meta_flat):
    if set(meta_flat) != set(abstract):
      raise errors.CheckpointError(
          f'--workdir={workdir!r}: its checkpoint holds parameters '
          f'{sorted(set(meta_flat) ^ set(abstract))[:4]} that its config does not make.')
    return {n: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings[n])
            for n, a in abstract.items()}

  ref = run_params.RunRef(workdir, step, field='--workdir', step_field='--step')
  flat, step = run_params.restore_newest(ref, '', setup.mesh, target_for)
  return Run(workdir, cfg, checked, feeds, setup, param_names.nest(flat), step)


def tokenizer_of(run: Run) -> tokenizers.Tokenizer | None:
  """A text or fine-tuning run's tokeniser (its feed's); None for NCA and Dyck."""
  if run.feeds.on_device:
    return None
  return tokenizers.load(run.feeds.train_source.meta['tokenizer'])
