"""What several test files share: the repository path, a small real corpus (CPython's own
json/ and email/ packages, so nothing is downloaded), awkward texts for tokenisers, a tiny
tiktoken encoding, the tiny text config, `python -m ncalm.main` as a user runs it, and
comparisons of parameter trees and metric lines. Test files import this, never each other."""
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import jax
import numpy as np

import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_path('stdlib')
CORPUS_GLOBS = [os.path.join(STDLIB, 'json', '*.py'), os.path.join(STDLIB, 'email', '*.py')]
CORPUS_FILES = sorted(p for g in CORPUS_GLOBS for p in glob.glob(g))

# Texts that break careless tokenisers: whitespace runs, control characters, emoji
# sequences, combining marks, right-to-left scripts, specials written as text, long runs.
NASTY_TEXTS = [
    '', 'a', 'hello world', 'The quick brown fox.\n',
    '  two leading spaces', 'two trailing spaces  ', 'a     b', ' ', '   ', ' ' * 1000,
    '\t', '\tindented\t\ttabs\t', '\n', '\n\n\n', '\r', 'a\rb', '\r\n', 'a\r\nb\r\n', '\n\r',
    '\x00', 'a\x00b\x00', '\x01\x02\x07\x08\x0b\x0c\x1b[31mred\x1b[0m\x7f', '\x85\u2028\u2029',
    '👍', '👍🏽', '👩\u200d👩\u200d👧\u200d👦', '🏳️\u200d🌈', '🇫🇷🇯🇵', 'a👩\u200d💻b',
    '中文字符测试，标点。', '日本語のテキスト', '한국어 텍스트', '각',
    'e\u0301', 'a\u0300\u0301\u0302\u0303\u0304', 'क्षि', 'שלום עולם', 'مرحبا بالعالم',
    '\ufeffBOM first', 'non\u00a0breaking', 'ideographic\u3000space',
    'ｆｕｌｌｗｉｄｔｈ', 'ﬁ ligature',
    '\u200b\u200c\u200d', '\ufffd', '\U0010ffff', '\ue000',
    '\u2581', '\u2581\u2581', 'a\u2581b', ' \u2581 ', '\u2581 x \u2581',
    '<|endoftext|>', 'x<|endoftext|>y', ' <|endoftext|> ', '</s>', '<s>', '<unk>', '<pad>',
    '<0x41>', '<|end_of_text|>', '[SEP]',
    'a' * 10000, 'ü' * 3000, 'Donaudampfschifffahrtsgesellschaftskapitänswitwe' * 20,
    'x' + '0123456789' * 300,
    'def f(x):\n    return x  +  1\n\n\n# comment\n',
]
NASTY_TEXTS.append(''.join(NASTY_TEXTS))


def tiny_tiktoken(name: str = 'tiny', extra_merges: tuple[bytes, ...] = ()):
  """A tiktoken encoding of 256 bytes plus a few merges and `<|endoftext|>`, built from
  ranks (no download)."""
  import tiktoken  # pylint: disable=import-outside-toplevel
  from tiktoken_ext import openai_public  # pylint: disable=import-outside-toplevel

  from ncalm.data import tokenizers  # pylint: disable=import-outside-toplevel
  ranks = {bytes([b]): b for b in range(256)}
  for token in (b'  ', b'    ', b'de', b'def', b'in', b'pr', b'pri', b'print') + extra_merges:
    ranks[token] = len(ranks)
  return tiktoken.Encoding(name, pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
                           special_tokens={tokenizers.EOT_TEXT: len(ranks)})


def make_corpus(out_dir: str, tokenizer: str = 'bytes') -> str:
  """~300 KB of CPython's json/ and email/ packages, prepared with `tokenizer`."""
  from ncalm.data import prepare  # pylint: disable=import-outside-toplevel
  prepare.prepare(CORPUS_GLOBS, tokenizer, out_dir, validation_fraction=0.2, workers=1)
  return out_dir


def gsm8k_like(count: int, start: int = 0) -> list[dict]:
  """`count` GSM8K-format problems (question, answer ending in '#### N'), short enough for
  a tiny byte-level context."""
  out = []
  for i in range(start, start + count):
    a, b = i % 7 + 1, i % 5 + 2
    out.append({'question': f'{a} plus {b}?',
                'answer': f'{a}+{b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}'})
  return out


def make_eval_data(out_dir: str, train: int = 12, test: int = 4) -> str:
  """A prepared evaluation folder: GSM8K-format items written here and HumanEval's."""
  from ncalm.eval import eval_data  # pylint: disable=import-outside-toplevel
  from ncalm.tools import prepare_evals  # pylint: disable=import-outside-toplevel
  source = out_dir + '_gsm8k'
  os.makedirs(source)
  for split, items in (('train', gsm8k_like(train)), ('test', gsm8k_like(test, 100))):
    with open(os.path.join(source, f'{split}.jsonl'), 'w') as f:
      f.writelines(json.dumps(item) + '\n' for item in items)
  prepare_evals.prepare(out_dir, {'gsm8k': source,
                                  'humaneval': eval_data.humaneval_source()})
  return out_dir


def text_config(data_dir: str, variant: str = 'text'):
  """The tiny config's `variant`, reading the prepared dataset at `data_dir`."""
  cfg = tiny_config.get_config(variant)
  cfg.data.text.path = data_dir
  return cfg


def run_main(workdir, variant='', extra=(), wait=True, cache_dir=None):
  """`python -m ncalm.main` on the tiny config, as a user would run it: (exit code, output),
  or with `wait=False` the running process."""
  config = os.path.join(REPO, 'tests', 'tiny_config.py') + (f':{variant}' if variant else '')
  env = dict(os.environ)
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  cmd = [sys.executable, '-m', 'ncalm.main', f'--config={config}', f'--workdir={workdir}',
         *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if wait:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out
  return proc


def comparable(rows):
  """Metric lines without timing-dependent fields."""
  return [{k: v for k, v in r.items() if not k.startswith('perf/')} for r in rows]


def flat(tree) -> dict[str, np.ndarray]:
  """{'layers/mlp/gate': array, ...} of a pytree, fetched to the host."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): np.asarray(leaf)
          for path, leaf in leaves}


def shard_shapes(array: jax.Array) -> list[list[int]]:
  """The distinct shapes of the shards of `array` this process holds, sorted."""
  return sorted({tuple(s.data.shape) for s in array.addressable_shards})


def setup_and_params(cfg):
  """A tiny model's setup and initial parameters, and the run's feeds on the devices."""
  from ncalm import startup  # pylint: disable=import-outside-toplevel
  from ncalm import step as step_lib  # pylint: disable=import-outside-toplevel
  from ncalm.data import feeds as feeds_lib  # pylint: disable=import-outside-toplevel
  checked = startup.check(cfg)
  setup = step_lib.create_setup(cfg, checked.model)
  params = step_lib.create_state(setup, jax.random.PRNGKey(cfg.seed)).params
  run = feeds_lib.load(cfg, tempfile.mkdtemp())
  if run.on_device:
    run = feeds_lib.Feeds(*jax.device_put((run.train_source, run.val_source),
                                          jax.sharding.NamedSharding(setup.mesh,
                                                                     jax.sharding.PartitionSpec())))
  return setup, params, run


def assert_resumes_exactly(test, cfg, workdir: str, setup, last_step: int = 6):
  """A copy of finished run `workdir` without its last checkpoint, run again, ends identical."""
  from ncalm import checkpoint  # pylint: disable=import-outside-toplevel
  from ncalm import train  # pylint: disable=import-outside-toplevel
  resumed = os.path.join(tempfile.mkdtemp(), 'resumed')
  shutil.copytree(workdir, resumed, ignore=shutil.ignore_patterns(str(last_step), 'eval'))
  train.train_and_evaluate(cfg, resumed)
  (a, step_a), (b, step_b) = (checkpoint.load_latest(w, cfg, setup) for w in (workdir, resumed))
  test.assertEqual((step_a, step_b), (last_step, last_step))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params), jax.device_get(b.params))
