"""Evaluate a run's checkpoint with evaluators by name.

    python -m ncalm.evaluate --workdir=RUN [--step=N] [--evals=heldout,probe,...] [--limit=K]

The evaluators are `ncalm.eval.registry.EVALUATORS` (default: those the run itself ran).
The checkpoint (the newest intact one, or --step) is read verified into the run's own
shardings, and the numbers are those the training loop logs at that step: the same
held-out data, the same settings. `--limit=K` caps each evaluator's items (held-out
batches, probe sequences) at K; `--config.evals.NAME.FIELD=V` sets an evaluator's field
(e.g. turns on one that the run had off) and `--config.data.text.path=DIR` points at a
prepared dataset that has moved; nothing else of the run can be changed.

Everything is written under RUN/eval/STEP/ (RUN/eval/STEP/limit_K/ with --limit=K, so a
capped look never replaces a whole evaluation) and nothing else in RUN is touched, so this is
safe while the run is training: `report.json` (written last, atomically: its presence means
the evaluation is complete), the pictures beside it, and `items/NAME.json` for each
evaluator as it finishes. A rerun after an interruption reuses the items made with the same
settings and runs only the rest; so does evaluating a finished run's last checkpoint, whose
items the training loop wrote at its final evaluation (`ncalm.eval.reports`).
"""
from __future__ import annotations

import json
import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ncalm import cli
from ncalm import config_lib
from ncalm import errors
from ncalm import files
from ncalm import run_model
from ncalm import sharding
from ncalm.data import feeds as feeds_lib
from ncalm.eval import registry
from ncalm.eval import reports


def define_flags(fv: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None) -> None:
  """The command's flags; `argv` (default sys.argv) says which --config.PATH to define."""
  kw = dict(flag_values=fv)
  flags.DEFINE_string('workdir', None, 'The run to evaluate (its --workdir).', **kw)
  flags.DEFINE_integer('step', 0, 'Checkpoint step; 0 = the newest intact one.', **kw)
  flags.DEFINE_list('evals', [], 'Evaluators by name; empty = those the run has.', **kw)
  flags.DEFINE_integer('limit', 0, 'Items per evaluator at most; 0 = as configured.', **kw)
  config_flags.DEFINE_config_dict('config', config_lib.base_config(),
                                  'Fields the run may take anew: data.text.path, evals.*.',
                                  sys_argv=argv, **kw)


def evaluate(workdir: str, step: int = 0, names=(), limit: int = 0,
             overrides: dict | None = None) -> dict:
  """Evaluates the checkpoint; returns the report (also written to RUN/eval/STEP/)."""
  if limit < 0:
    raise errors.UserError(f'--limit={limit} must be >= 0 (0 = as configured).')
  overrides = dict(overrides or {})
  run = run_model.load(workdir, step, overrides)
  names = list(names) or list(registry.names(run.cfg, run.feeds.val_source))
  registry.check_named(run.cfg, run.feeds.val_source, names)
  if limit:
    with run.cfg.unlocked():
      for name in names:
        field = registry.EVALUATORS[name].ITEMS
        run.cfg.evals[name][field] = min(run.cfg.evals[name][field], limit)
  registry.check(run.cfg, run.feeds.val_source)
  registry.check_mesh(run.cfg, run.feeds.val_source, sharding.data_parallel_size(run.setup.mesh))
  folder = reports.out_dir(workdir, run.step, limit)
  writer = jax.process_index() == 0
  if writer:
    os.makedirs(folder, exist_ok=True)
  feeds = run.feeds
  if feeds.on_device:
    feeds = feeds_lib.Feeds(*jax.device_put((feeds.train_source, feeds.val_source),
                                            sharding.replicated(run.setup.mesh)))
  results = {}
  for name in names:
    settings = reports.settings(run.cfg, name)
    item = reports.read_item(folder, name, settings)
    if item is not None:
      logging.info('%s: reusing %s', name, reports.item_path(folder, name))
    else:
      evaluator = registry.build(run.setup, run.cfg, feeds, only=(name,))[name]
      scalars, images = evaluator.run(run.params)
      item = dict(settings=settings, scalars=scalars,
                  pictures={tag: tag.replace('/', '_') + '.png' for tag in images})
      if writer:
        item = reports.write_item(folder, name, settings, scalars, images)
    results[name] = item
  report = dict(workdir=os.path.abspath(workdir), step=run.step, evals=names, limit=limit,
                overrides=overrides,
                scalars={k: v for item in results.values() for k, v in item['scalars'].items()},
                pictures=sorted(p for item in results.values() for p in item['pictures'].values()))
  if writer:
    with files.atomic_open(os.path.join(folder, reports.REPORT)) as f:
      json.dump(report, f, indent=1)
  return report


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  if fv.workdir is None:
    raise errors.UserError('--workdir is missing: python -m ncalm.evaluate --workdir=RUN '
                           '[--step=N] [--evals=heldout,probe] [--limit=K].')
  report = evaluate(fv.workdir, fv.step, fv.evals, fv.limit,
                    config_flags.get_override_values(fv['config']))
  print(f'{report["workdir"]} step {report["step"]}: {", ".join(report["evals"])}')
  for key, value in sorted(report['scalars'].items()):
    print(f'  {key:32s} {value:.6g}')
  folder = reports.out_dir(fv.workdir, report['step'], report['limit'])
  print(f'Wrote {os.path.join(folder, reports.REPORT)}'
        + (f' and {len(report["pictures"])} picture(s) beside it.' if report['pictures']
           else '.'))


def command() -> None:
  """`python -m ncalm.evaluate` (or `-m ncalm.tools.evaluate`)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
