"""The evaluators a run can have, and which of them run when.

An evaluator measures and nothing else: `Evaluator(setup, cfg, feeds)` prepares (jits,
fixed held-out data), `run(params) -> (scalars, images)` measures; the training loop
writes what it returns (JSONL, TensorBoard, PNGs). Which evaluators a run has is what
its held-out source says suits it (`source.evaluators`) among those enabled by their
section of `cfg.evals`; each runs every `cfg.evals.NAME.every` steps and at the last.
A new evaluator: its module with the four methods below and `ITEMS` (the field of its
section that counts what it measures, which `ncalm.evaluate --limit` caps), one line of
`EVALUATORS`, and its section in `config_lib.base_config().evals`.
"""
from __future__ import annotations

from ncalm import errors
from ncalm.eval import bigbench
from ncalm.eval import gsm8k
from ncalm.eval import heldout
from ncalm.eval import humaneval
from ncalm.eval import induction
from ncalm.eval import nca_probe

# name → class with enabled(cfg), check(cfg, source), check_mesh(cfg, source,
# data_parallel) (static; refusals at start-up), __init__(setup, cfg, feeds), run(params)
EVALUATORS = {'heldout': heldout.HeldoutLoss, 'probe': nca_probe.NextFrameProbe,
              'induction': induction.InductionProbe, 'humaneval': humaneval.HumanEval,
              'gsm8k': gsm8k.GSM8K, 'bigbench': bigbench.BigBench}


def names(cfg, source) -> tuple[str, ...]:
  """The evaluators of a run whose held-out source is `source`, in EVALUATORS' order."""
  return tuple(n for n in EVALUATORS if n in source.evaluators and EVALUATORS[n].enabled(cfg))


def check_named(cfg, source, requested: list[str], flag: str = '--evals',
                config_flag: str = '--config.') -> None:
  """Refuses evaluator names that do not exist, do not suit the run's data or are off."""
  for name in requested:
    if name not in EVALUATORS:
      raise errors.UserError(f'{flag}: no evaluator {name!r}; the evaluators are '
                             f'{", ".join(EVALUATORS)}.')
    if name not in source.evaluators:
      raise errors.UserError(f'{flag}: {name!r} does not suit this run\'s data; its '
                             f'evaluators are {", ".join(source.evaluators)}.')
    if not EVALUATORS[name].enabled(cfg):
      field = f'evals.{name}.{EVALUATORS[name].ITEMS}'
      raise errors.UserError(f'{flag}: {name!r} is off in this run ({field}=0): give '
                             f'{config_flag}{field}=N to evaluate it on N items.')


def check(cfg, source) -> None:
  """Each evaluator's start-up refusals for this config and source."""
  for name in names(cfg, source):
    EVALUATORS[name].check(cfg, source)


def check_mesh(cfg, source, data_parallel: int) -> None:
  """Each evaluator's refusals that need the number of data-parallel devices."""
  for name in names(cfg, source):
    EVALUATORS[name].check_mesh(cfg, source, data_parallel)


def build(setup, cfg, feeds, only: tuple[str, ...] | None = None) -> dict:
  """{name: evaluator} of the run (feeds with their data, on the devices if on-device);
  `only` picks some of them."""
  return {name: EVALUATORS[name](setup, cfg, feeds) for name in names(cfg, feeds.val_source)
          if only is None or name in only}


def due(cfg, name: str, step: int) -> bool:
  """Whether evaluator `name` runs after `step` steps."""
  return step % cfg.evals[name].every == 0 or step == cfg.train_steps
