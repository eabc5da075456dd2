"""Fine-tuning on solved examples: prompt/answer items with the prompt kept out of the loss.

The items are a benchmark's splits in the prepared evaluation folder (`ncalm.eval.eval_data`:
`prompt`, `answer`), read through the run's tokeniser. Row g of a run (step t, row r:
g = t·B + r) is built from (seed, g) alone, so a resumed run reads what an uninterrupted
one would:

* its target item: each epoch walks the N items that fit in a permutation grain draws from
  the seed, as for text windows (held-out rows: in order);
* its shots: k solved examples of the shot split drawn from (seed, g) (k uniform in
  [min_shots, max_shots]; never the target itself), placed before the target;
* each example is prompt, answer, end-of-text; the answers and their end-of-text are
  scored, the prompts not (as published for GSM8K: docs/method.md §6);
* a row holds seq_len + 1 tokens: shots are dropped from the front while the row is too
  long, and the rest is padded with end-of-text, not scored. An item whose prompt and
  answer alone do not fit is never a target; `skipped` counts them.
"""
from __future__ import annotations

import dataclasses
import functools

import grain
import numpy as np

from ncalm import errors
from ncalm.data import batch as batch_lib
from ncalm.data import tokenizers
from ncalm.eval import eval_data

VOCAB_MULTIPLE = 128   # as text: the tokeniser's vocabulary padded to a multiple of this
# What each benchmark fine-tunes on, what it holds out, and which evaluators suit it.
SPLITS = {'gsm8k': ('train', 'test'), 'bigbench_lite': ('train', 'validation')}
EVALUATORS = {'gsm8k': ('heldout', 'gsm8k'), 'bigbench_lite': ('heldout', 'bigbench')}


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A split's items as token ids: prompt and answer of each."""
  prompts: tuple[np.ndarray, ...]
  answers: tuple[np.ndarray, ...]
  answer_bytes: int          # UTF-8 bytes of all answers (bits per byte of the scored text)

  @classmethod
  def of(cls, items: list[dict], tokenizer: tokenizers.Tokenizer) -> 'Encoded':
    prompts = tokenizer.encode_batch([it['prompt'] for it in items])
    answers = tokenizer.encode_batch([it['answer'] for it in items])
    return cls(tuple(np.asarray(p, np.int32) for p in prompts),
               tuple(np.asarray(a, np.int32) for a in answers),
               sum(len(it['answer'].encode()) + 1 for it in items))

  def __len__(self) -> int:
    return len(self.prompts)

  def length(self, i: int) -> int:
    """Tokens of item i as an example: prompt, answer, end-of-text."""
    return len(self.prompts[i]) + len(self.answers[i]) + 1


@dataclasses.dataclass(frozen=True)
class ItemFeed:
  """One split's items as rows of seq_len + 1 tokens with per-target loss weights."""
  targets: Encoded
  shots: Encoded
  meta: dict                 # tokenizer, vocab_size, eot_id, skipped, items (fitting)
  seq_len: int
  seed: int
  shuffle: bool
  min_shots: int
  max_shots: int
  evaluators: tuple[str, ...]
  on_device = False          # rows read by the host (`text.Prefetcher`)
  tokens_per_frame = 0

  @functools.cached_property
  def fitting(self) -> np.ndarray:
    """The targets whose prompt, answer and end-of-text fit in seq_len + 1 tokens."""
    return np.array([i for i in range(len(self.targets))
                     if self.targets.length(i) <= self.seq_len + 1], np.int64)

  @property
  def vocab_size(self) -> int:
    return tokenizers.padded_vocab_size(self.meta['vocab_size'], VOCAB_MULTIPLE)

  @property
  def bytes_per_token(self) -> float:
    scored = sum(len(a) + 1 for a in self.targets.answers)
    return self.targets.answer_bytes / max(scored, 1)

  @functools.cached_property
  def order(self):
    """grain MapDataset: row g → its target (each epoch a permutation of the fitting items
    from the seed, as the text feed's windows; held-out rows in order)."""
    dataset = grain.MapDataset.source(self.fitting)
    if self.shuffle:
      dataset = dataset.shuffle(seed=self.seed)
    return dataset.repeat()

  def target_of(self, g: int) -> int:
    """The target item of row g."""
    return int(self.order[g])

  def shots_of(self, g: int, target: int) -> list[int]:
    """The shot items of row g (indices into the shot split)."""
    rng = np.random.default_rng([self.seed, g, 1])
    k = int(rng.integers(self.min_shots, self.max_shots + 1))
    pool = len(self.shots) - (1 if self.shots is self.targets else 0)
    picks = rng.choice(pool, size=min(k, pool), replace=False)
    if self.shots is self.targets:       # skip the target itself
      picks = np.where(picks >= target, picks + 1, picks)
    return [int(p) for p in picks]

  def row(self, g: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [seq_len + 1], scored float32 [seq_len + 1]) of row g: whether each
    token is one the loss predicts."""
    eot, width = self.meta['eot_id'], self.seq_len + 1
    target = self.target_of(g)
    examples = [(self.shots, s) for s in self.shots_of(g, target)] + [(self.targets, target)]
    while sum(split.length(i) for split, i in examples) > width:
      examples.pop(0)
    tokens, scored = [], []
    for split, i in examples:
      prompt, answer = split.prompts[i], split.answers[i]
      tokens += [prompt, answer, [eot]]
      scored += [np.zeros(len(prompt)), np.ones(len(answer) + 1)]
    tokens, scored = np.concatenate(tokens).astype(np.int32), np.concatenate(scored)
    pad = width - len(tokens)
    return (np.concatenate([tokens, np.full(pad, eot, np.int32)]),
            np.concatenate([scored, np.zeros(pad)]).astype(np.float32))

  def read_batch(self, first: int, count: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(rows int32 [count, seq_len + 1], weights float32 [count, seq_len] of each target,
    segment ids or None) of rows first .. first + count - 1."""
    pairs = [self.row(g) for g in range(first, first + count)]
    rows = np.stack([p[0] for p in pairs])
    weights = np.stack([p[1][1:] for p in pairs])
    return rows, weights, None

  def read_rows(self, first: int, count: int) -> np.ndarray:
    return self.read_batch(first, count)[0]

  def unigram_log_probs(self) -> np.ndarray:
    """log p(token) of the scored targets of the first rows (add-½ smoothing)."""
    rows, weights, _ = self.read_batch(0, min(batch_lib.UNIGRAM_SEQUENCES, 256))
    counts = np.bincount(rows[:, 1:].ravel(), weights.ravel(), self.vocab_size) + 0.5
    return np.log(counts / counts.sum())


def steps_for_epochs(epochs: float, items: int, global_batch: int) -> int:
  """Optimizer steps that show each of `items` targets `epochs` times (rounded up)."""
  return max(1, int(np.ceil(epochs * items / global_batch)))


def tokenizer_spec(cfg) -> str:
  """data.finetune.tokenizer, or else the tokeniser of the run init.from_run names (its
  config's data.text.tokenizer or its dataset's)."""
  spec = cfg.data.finetune.tokenizer
  if spec:
    return spec
  from_run = cfg.init.from_run
  if not from_run or from_run.startswith('hf:'):
    raise errors.UserError('data.source=finetune needs a tokeniser: set '
                           'data.finetune.tokenizer, or init.from_run to the text run it '
                           'fine-tunes (its tokeniser is then used).')
  from ncalm import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from ncalm.data import dataset  # pylint: disable=import-outside-toplevel
  saved = workdir_lib.read_run_config(from_run)['config']
  source = saved.get('data.source')
  if source == 'finetune' and saved.get('data.finetune.tokenizer'):
    return saved['data.finetune.tokenizer']
  if source != 'text':
    raise errors.UserError(f'init.from_run={from_run!r} is a data.source={source!r} run, '
                           'which names no tokeniser: set data.finetune.tokenizer.')
  return saved.get('data.text.tokenizer') or dataset.read_meta(saved['data.text.path'])[
      'tokenizer']


def open_feeds(cfg) -> tuple[ItemFeed, ItemFeed]:
  """(training feed, held-out feed) of data.finetune: the benchmark's training split, and its
  held-out split with shots from the training split."""
  it = cfg.data.finetune
  if it.task not in SPLITS:
    raise errors.UserError(f'data.finetune.task={it.task!r}: use one of {list(SPLITS)}.')
  if not 0 <= it.min_shots <= it.max_shots:
    raise errors.UserError(f'data.finetune.min_shots={it.min_shots} and max_shots='
                           f'{it.max_shots} need 0 <= min_shots <= max_shots.')
  if it.epochs < 0:
    raise errors.UserError(f'data.finetune.epochs={it.epochs} must be >= 0 (0: give '
                           'train_steps yourself).')
  train_split, held_split = SPLITS[it.task]
  train_items = eval_data.read(it.path, it.task, train_split, 'data.finetune.path')
  held_items = eval_data.read(it.path, it.task, held_split, 'data.finetune.path')
  spec = tokenizer_spec(cfg)
  tokenizer = tokenizers.load(spec)
  train, held = Encoded.of(train_items, tokenizer), Encoded.of(held_items, tokenizer)
  make = lambda targets, shuffle: ItemFeed(
      targets, train, {'tokenizer': spec, 'vocab_size': tokenizer.vocab_size,
                       'eot_id': tokenizer.eot_id}, cfg.seq_len, cfg.seed,
      shuffle, it.min_shots, it.max_shots, EVALUATORS[it.task])
  feeds = make(train, True), make(held, False)
  for feed, split in zip(feeds, (train_split, held_split)):
    feed.meta.update(items=len(feed.fitting), skipped=len(feed.targets) - len(feed.fitting))
    if not len(feed.fitting):
      longest = min(feed.targets.length(i) for i in range(len(feed.targets)))
      raise errors.UserError(
          f'No {it.task} {split} item fits seq_len={cfg.seq_len}: the shortest needs '
          f'{longest} tokens (prompt, answer, end-of-text). Use a longer context.')
  if it.epochs:
    steps = steps_for_epochs(it.epochs, len(feeds[0].fitting), cfg.global_batch)
    if cfg.train_steps != steps:
      raise errors.UserError(
          f'data.finetune.epochs={it.epochs} over {len(feeds[0].fitting):,} {it.task} items '
          f'at global_batch={cfg.global_batch} is {steps} steps: set train_steps={steps} '
          '(or data.finetune.epochs=0 to choose train_steps yourself).')
  return feeds
