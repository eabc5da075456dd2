"""The paper's comparison in one command: every arm through stage 1 and stage 2 (and a
fine-tuning stage 3), per seed.

    python -m ncalm.experiment --config=configs/experiments/code.py:cpu --workdir=/tmp/exp_code

An experiment config (configs/experiments/) holds `stage1` (arm → run config), `stage2`
(the language run config every arm shares), optionally `stage3` (a fine-tuning run config
every stage-2 run goes through, from its final checkpoint with its tokeniser: GSM8K's
protocol), `arms` (rows, in order; `scratch` has no
stage 1), `seeds`, `ablations` (name → an arm's stage 1 with init.* changed in stage 2),
and optionally `corpora` (name → input, tokenizer, vocab_size, out and optionally
validation_fraction): text datasets the runs
read, prepared here before anything else if `out` does not hold one yet (with a byte-level
BPE of `vocab_size` ids trained on `input` first when `tokenizer` does not exist), so that
one command needs nothing made beforehand; and optionally `contrasts`, (row, other row)
pairs whose paired differences per seed go to WORKDIR/contrasts.md; and optionally `evals`,
evaluator names (`ncalm.eval.registry`) run on each last-stage run's final checkpoint (stage
3's if there is one, else stage 2's) by `ncalm.evaluate` (its report in RUN/eval/STEP/; a
finished run without one is evaluated, not retrained), whose numbers become columns of the
tables; the compute column counts all of an arm's stages. Runs live in

    WORKDIR/seed_S/ARM/stage1    WORKDIR/seed_S/ARM/stage2    WORKDIR/seed_S/ABLATION/stage2
    WORKDIR/seed_S/ARM/stage3    (with a stage3)

A finished run has `experiment_run.json` and is skipped — after checking, before anything
runs, that the config would make it the same way (else one paragraph names the fields;
adding seeds, arms or ablations just adds runs); an interrupted one resumes from its
checkpoint; a run whose loss went non-finite is recorded as diverged. After every run the
tables are rewritten from what has finished: WORKDIR/comparison.{md,csv,png} and
WORKDIR/ablations.{md,csv,png} (docs/method.md §7). `--report_only` just rewrites them.
"""
from __future__ import annotations

import dataclasses
import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from ncalm import checkpoint
from ncalm import cli
from ncalm import comparison
from ncalm import errors
from ncalm import files
from ncalm import metrics
from ncalm import perf
from ncalm import run_files
from ncalm import startup
from ncalm import train
from ncalm import workdir as workdir_lib
from ncalm.data import dataset
from ncalm.data import feeds
from ncalm.eval import registry
from ncalm.eval import reports
from ncalm.tools import evaluate

SCRATCH = 'scratch'
DONE_FILE = 'experiment_run.json'
CONFIG_FILE = 'experiment_config.json'   # the config of the last start, for the record
EXPERIMENT_FIELDS = ('seeds', 'arms', 'stage1', 'stage2', 'stage3', 'ablations', 'corpora',
                     'contrasts', 'evals')
CORPUS_FIELDS = ('input', 'tokenizer', 'vocab_size', 'out', 'validation_fraction')


# -------------------------------------------------------------------- the runs


def arms_of(exp) -> tuple[str, ...]:
  """exp.arms as names (`--config.arms=scratch,nca_50` arrives as one comma string)."""
  return tuple(n.strip() for item in exp.arms for n in str(item).split(',') if n.strip())


def check(exp: ml_collections.ConfigDict) -> None:
  """Refuses an experiment config that cannot run, before any run starts."""
  unknown = sorted(set(exp.keys()) - set(EXPERIMENT_FIELDS))
  if unknown:
    raise errors.UserError(f'experiment config: unknown field(s) {unknown}; it has '
                           f'{list(EXPERIMENT_FIELDS)}.')
  if not exp.seeds:
    raise errors.UserError('experiment seeds=() is empty: give at least one seed.')
  if not arms_of(exp):
    raise errors.UserError('experiment arms is empty (--config.arms= or ()), so nothing would '
                           f'run: name at least one of {[SCRATCH, *exp.stage1.keys()]}, e.g. '
                           f'--config.arms={SCRATCH}.')
  if len(set(exp.seeds)) != len(exp.seeds):
    raise errors.UserError(f'experiment seeds={tuple(exp.seeds)} repeat a seed.')
  for arm in arms_of(exp):
    if arm != SCRATCH and arm not in exp.stage1:
      raise errors.UserError(f'experiment arms lists {arm!r}, which has no stage1.{arm} '
                             f'config; stage1 has {sorted(exp.stage1.keys())}.')
  for name, ablation in exp.ablations.items():
    if ablation.arm not in exp.stage1:
      raise errors.UserError(f'ablations.{name}.arm={ablation.arm!r} has no stage-1 config.')
  if exp.ablations and SCRATCH not in arms_of(exp):
    raise errors.UserError('ablations are compared with scratch: list "scratch" in arms.')
  rows = {SCRATCH} | set(exp.stage1.keys()) | set(exp.ablations.keys())
  for pair in exp.get('contrasts', ()):   # a pair whose rows are not run is left out
    if len(pair) != 2 or not set(pair) <= rows:
      raise errors.UserError(f'contrasts has {tuple(pair)!r}: each is (row, other row), both '
                             f'among the arms and ablations {sorted(rows)}.')


def evals_of(exp) -> tuple[str, ...]:
  """exp.evals as names (`--config.evals=heldout,induction` arrives as one string)."""
  return tuple(n.strip() for item in exp.get('evals', ()) for n in str(item).split(',')
               if n.strip())


def prepare_corpora(exp) -> None:
  """Makes each of `exp.corpora` that is not there yet (module docstring); a prepared one
  is left as it is (its content fingerprint is what the runs check)."""
  from ncalm.data import dataset  # pylint: disable=import-outside-toplevel
  from ncalm.data import prepare  # pylint: disable=import-outside-toplevel
  from ncalm.tools import tokenizer as tokenizer_cli  # pylint: disable=import-outside-toplevel
  for name, corpus in exp.get('corpora', {}).items():
    unknown = sorted(set(corpus.keys()) - set(CORPUS_FIELDS))
    if unknown:
      raise errors.UserError(f'corpora.{name}: unknown field(s) {unknown}; it has '
                             f'{list(CORPUS_FIELDS)}.')
    if os.path.exists(os.path.join(corpus.out, dataset.META_FILE)):
      continue
    tokenizer = corpus.tokenizer
    if corpus.vocab_size and not os.path.exists(tokenizer):
      logging.info('Corpus %s: training a %d-id BPE on %s', name, corpus.vocab_size,
                   corpus.input)
      os.makedirs(os.path.dirname(os.path.abspath(tokenizer)), exist_ok=True)
      tokenizer_cli.train_bpe(corpus.input, corpus.vocab_size, tokenizer)
    logging.info('Corpus %s: preparing %s', name, corpus.out)
    prepare.prepare(corpus.input, tokenizer, corpus.out,
                    validation_fraction=corpus.get('validation_fraction', 0.01))


def stage1_config(exp, arm: str, seed: int) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(exp.stage1[arm].to_dict())
  cfg.seed = seed
  cfg.data.bank_seed = seed  # each seed its own rules, as its own model init
  return cfg


def stage2_config(exp, seed: int, stage1_dir: str = '', **init) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(exp.stage2.to_dict())
  cfg.seed = seed
  cfg.init.from_run = stage1_dir
  cfg.init.update(init)
  return cfg


def stage3_config(exp, seed: int, stage2_dir: str = '') -> ml_collections.ConfigDict:
  """The fine-tuning stage of a stage-2 run: from its final checkpoint, with its tokeniser
  (stage 2's, named here so that the config is checked before stage 2 exists)."""
  cfg = ml_collections.ConfigDict(exp.stage3.to_dict())
  cfg.seed = seed
  cfg.init.from_run = stage2_dir
  if not cfg.data.finetune.tokenizer:
    text = exp.stage2.data.text
    cfg.data.finetune.tokenizer = text.tokenizer or dataset.read_meta(text.path)['tokenizer']
  return cfg


def last_stage(exp) -> str:
  """The stage whose model the experiment's evaluators measure: 'stage3' when there is
  one (fine-tuning, as GSM8K's protocol), else 'stage2'."""
  return 'stage3' if exp.get('stage3') else 'stage2'


def jobs(exp, workdir: str):
  """(run directory, config) pairs in order: the arms (stage 1, 2 and 3 if any, seed by
  seed), then the ablations."""
  out = []

  def add_stage2(base, seed, cfg):
    out.append((os.path.join(base, 'stage2'), cfg))
    if exp.get('stage3'):
      out.append((os.path.join(base, 'stage3'),
                  stage3_config(exp, seed, os.path.join(base, 'stage2'))))

  for arm in arms_of(exp):
    for seed in exp.seeds:
      base = os.path.join(workdir, f'seed_{seed}', arm)
      if arm == SCRATCH:
        add_stage2(base, seed, stage2_config(exp, seed))
        continue
      stage1 = os.path.join(base, 'stage1')
      out.append((stage1, stage1_config(exp, arm, seed)))
      add_stage2(base, seed, stage2_config(exp, seed, stage1))
  for name, ablation in exp.ablations.items():
    for seed in exp.seeds:
      stage1 = os.path.join(workdir, f'seed_{seed}', ablation.arm, 'stage1')
      init = {k: v for k, v in ablation.items() if k != 'arm'}
      add_stage2(os.path.join(workdir, f'seed_{seed}', name), seed,
                 stage2_config(exp, seed, stage1, **init))
  for name, ablation in exp.ablations.items():  # an ablation's stage 1 runs if its arm is not a row
    if ablation.arm not in arms_of(exp):
      for seed in exp.seeds:
        stage1 = os.path.join(workdir, f'seed_{seed}', ablation.arm, 'stage1')
        out.insert(0, (stage1, stage1_config(exp, ablation.arm, seed)))
  return _unique(out)


def _unique(pairs):
  seen, out = set(), []
  for path, cfg in pairs:
    if path not in seen:
      seen.add(path)
      out.append((path, cfg))
  return out


# ------------------------------------------------------------------------- runs


def compute(cfg: ml_collections.ConfigDict) -> dict:
  """Tokens and FLOPs of a whole run: training (6·N per token plus attention) and choosing
  its data (fresh rules: every candidate's simulation)."""
  checked = startup.check(cfg)
  tokens = cfg.train_steps * cfg.global_batch * cfg.seq_len
  selection = cfg.train_steps * cfg.global_batch * checked.feeds.selection_flops_per_row
  return dict(tokens=tokens,
              flops=perf.flops_per_token(checked.model, cfg.seq_len) * tokens + selection)


def _stage1_diverged(cfg) -> bool:
  done = os.path.join(cfg.init.from_run, DONE_FILE) if cfg.init.from_run else ''
  if not done:
    return False
  with open(done) as f:
    return json.load(f).get('diverged', False)


def run(cfg: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Runs (or resumes, or skips) one run; returns its record."""
  done = os.path.join(run_dir, DONE_FILE)
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  logging.info('Experiment run %s', run_dir)
  record = compute(cfg)
  if _stage1_diverged(cfg):  # nothing to transfer: the arm's stage 2 counts as diverged
    record.update(diverged=True, error=f'its stage 1 ({cfg.init.from_run}) diverged')
  else:
    try:
      final = train.train_and_evaluate(cfg, run_dir)
      record.update(diverged=False, final={k: v for k, v in final.items()
                                           if isinstance(v, (int, float))})
    except errors.NonFiniteLoss as e:
      logging.error('%s diverged: %s', run_dir, e)
      record.update(diverged=True, error=str(e))
  os.makedirs(run_dir, exist_ok=True)
  with files.atomic_open(done) as f:
    json.dump(record, f, indent=1)
  return record


def final_report(run_dir: str, names: tuple[str, ...]) -> dict | None:
  """The `ncalm.evaluate` report of a run's final checkpoint that covers `names`, or None."""
  steps = checkpoint.finished_steps(run_dir)
  path = os.path.join(reports.out_dir(run_dir, steps[0]), reports.REPORT) if steps else ''
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    report_ = json.load(f)
  return report_ if set(names) <= set(report_['evals']) and not report_['limit'] else None


def evaluate_final(exp, run_dir: str) -> None:
  """Runs the experiment's evaluators on a finished last-stage run that lacks their
  report."""
  names = evals_of(exp)
  done = os.path.join(run_dir, DONE_FILE)
  if not names or not os.path.exists(done) or final_report(run_dir, names) is not None:
    return
  with open(done) as f:
    if json.load(f).get('diverged'):
      return
  logging.info('Experiment: evaluating %s with %s', run_dir, ', '.join(names))
  evaluate.evaluate(run_dir, 0, names)


def _result(run_dir: str, stage1_dir: str | None, evals=(), stage3_dir: str | None = None
            ) -> comparison.ArmResult | None:
  """An arm's stage-2 outcome on one seed (with the evaluations and compute of its stage 3
  when it has one), or None if its runs have not finished."""
  done = os.path.join(run_dir, DONE_FILE)
  if not os.path.exists(done) or (stage3_dir and not os.path.exists(
      os.path.join(stage3_dir, DONE_FILE))):
    return None
  with open(done) as f:
    record = json.load(f)
  stage1 = stage3 = {'tokens': 0, 'flops': 0.0}
  if stage1_dir:
    with open(os.path.join(stage1_dir, DONE_FILE)) as f:
      stage1 = json.load(f)
  if stage3_dir:
    with open(os.path.join(stage3_dir, DONE_FILE)) as f:
      stage3 = json.load(f)
  path = os.path.join(run_dir, run_files.METRICS)
  rows = metrics.read_jsonl(path) if os.path.exists(path) else []
  curve = [(r['step'], r['eval/loss']) for r in rows if r.get('eval/loss') is not None]
  induction = [(r['step'], r['induction/second_copy_loss'] / r['induction/first_copy_loss'])
               for r in rows if r.get('induction/second_copy_loss') is not None]
  report_ = final_report(stage3_dir or run_dir, evals) if evals else None
  return comparison.ArmResult(curve=curve, stage1_tokens=stage1['tokens'],
                              stage2_tokens=record['tokens'],
                              flops=stage1['flops'] + record['flops'] + stage3['flops'],
                              diverged=record.get('diverged', False), induction=induction,
                              evals=report_['scalars'] if report_ else {})


def collect(exp, workdir: str) -> tuple[dict, dict]:
  """({arm: {seed: ArmResult}}, the same for the ablation set) from finished runs."""
  def one(name, seed, stage1_arm):
    base = os.path.join(workdir, f'seed_{seed}')
    stage1 = os.path.join(base, stage1_arm, 'stage1') if stage1_arm else None
    stage3 = os.path.join(base, name, 'stage3') if exp.get('stage3') else None
    return _result(os.path.join(base, name, 'stage2'), stage1, evals_of(exp), stage3)

  def table(rows):
    out = {}
    for name, stage1_arm in rows:
      found = {s: r for s in exp.seeds if (r := one(name, s, stage1_arm)) is not None}
      if found:
        out[name] = found
    return out

  main = table([(a, None if a == SCRATCH else a) for a in arms_of(exp)])
  ablation_rows = [(SCRATCH, None)]
  for arm in dict.fromkeys(a.arm for a in exp.ablations.values()):
    ablation_rows.append((arm, arm))
  ablation_rows += [(name, a.arm) for name, a in exp.ablations.items()]
  return main, table(ablation_rows) if exp.ablations else {}


def report(exp, workdir: str) -> None:
  """Rewrites the comparison and ablation tables and plots from what has finished, and the
  contrasts table (`contrasts`: (row, other) pairs whose paired difference decides what a
  control says, docs/transfer.md)."""
  main, ablations = collect(exp, workdir)
  every = {**main, **ablations}
  contrasts = []
  for a, b in exp.get('contrasts', ()):
    if a in every and b in every:
      row = comparison.paired({b: every[b], a: every[a]}, reference=b)[1]
      contrasts.append(dataclasses.replace(row, arm=f'{a} − {b}'))
  if contrasts:
    with files.atomic_open(os.path.join(workdir, 'contrasts.md')) as f:
      f.write(comparison.paired_markdown(contrasts, reference=''))
  if main:
    comparison.write(main, os.path.join(workdir, 'comparison'),
                  'validation loss in stage 2, mean and min–max over seeds')
  if ablations:
    comparison.write(ablations, os.path.join(workdir, 'ablations'),
                  'ablations: validation loss in stage 2, mean and min–max over seeds')


def use_compilation_cache(workdir: str) -> None:
  """Keeps compiled programs on disk: the arms and seeds of an experiment share their
  shapes, so every run after the first of its kind skips XLA compilation (~5× faster
  starts on CPU). An explicitly configured cache directory is left alone."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'compilation_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def check_finished(todo) -> None:
  """Refuses, before anything runs, a config that would change a run already finished
  (it is skipped, so its config must still describe it); new runs need no check."""
  for run_dir, cfg in todo:
    made = os.path.join(run_dir, run_files.CONFIG)
    if os.path.exists(os.path.join(run_dir, DONE_FILE)) and os.path.exists(made):
      workdir_lib.check_finished_run(run_dir, cfg, feeds.content_fingerprints(cfg))


def check_runs(exp) -> None:
  """The start-up check of every kind of run (each arm's stage 1, the stage 2 and stage 3
  they share), so that a config that cannot work is refused before the first run, not
  hours into it."""
  seed = exp.seeds[0]
  for arm in arms_of(exp):
    if arm != SCRATCH:
      startup.check(stage1_config(exp, arm, seed))
  stage2 = stage2_config(exp, seed)
  checked = startup.check(stage2)
  if exp.get('stage3'):
    stage3 = stage3_config(exp, seed)
    stage3.init.update(from_run='', embedding='normal')   # its stage 2 does not exist yet
    checked = startup.check(stage3)
    if stage3.model.to_dict() != stage2.model.to_dict():
      differ = sorted(k for k, v in stage3.model.items() if stage2.model.get(k) != v)
      raise errors.UserError(f'stage3.model differs from stage2.model in {differ}: stage 3 '
                             'fine-tunes stage 2\'s model, so give it the same model section.')
  registry.check_named(stage3 if exp.get('stage3') else stage2, checked.feeds.val_source,
                       list(evals_of(exp)), 'evals', f'--config.{last_stage(exp)}.')


def run_experiment(exp: ml_collections.ConfigDict, workdir: str, report_only: bool = False):
  check(exp)
  if not report_only:
    prepare_corpora(exp)
  check_runs(exp)
  todo = jobs(exp, workdir)
  check_finished(todo)
  os.makedirs(workdir, exist_ok=True)
  with files.atomic_open(os.path.join(workdir, CONFIG_FILE)) as f:
    f.write(exp.to_json_best_effort(indent=1, sort_keys=True))
  use_compilation_cache(workdir)
  if not report_only:
    for index, (run_dir, cfg) in enumerate(todo):
      logging.info('Experiment: run %d of %d', index + 1, len(todo))
      run(cfg, run_dir)
      if os.path.basename(run_dir) == last_stage(exp):
        evaluate_final(exp, run_dir)
      report(exp, workdir)
  report(exp, workdir)
  logging.info('Experiment tables: %s', os.path.join(workdir, 'comparison.md'))


def main() -> None:
  """`python -m ncalm.experiment`: the flags are defined here, not at import, so that the
  module can be imported beside other entry points (tests import it with ncalm.main)."""
  config = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Every run of the experiment goes under it; '
                                'rerun the same command to resume.')
  report_only = flags.DEFINE_bool('report_only', False, 'Only rewrite the tables and plots '
                                  'from the runs that have finished.')
  flags.mark_flags_as_required(['config', 'workdir'])

  def run_main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    run_experiment(config.value, workdir.value, report_only.value)

  cli.run(run_main)


if __name__ == '__main__':
  main()
