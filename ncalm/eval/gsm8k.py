"""GSM8K (docs/evaluation.md): the fine-tuned math model solves grade-school word problems.

As published (docs/method.md §6): each test problem is shown after `evals.gsm8k.shots` (3)
solved examples, each prompt, solution and end-of-text as in fine-tuning
(`ncalm.data.finetune`), then its own "Question:\\n{question}\\n"; `samples` (32) samples at
temperature 0.6, top-p 1, at most 250 new tokens or end-of-text. The answer is the last
whitespace-separated word after the last '####' of the sample (a sample without '####' has
no answer and is wrong), compared with the reference number as a number (`same_number`:
commas, '$' and a trailing '.' do not matter; `math-verify` decides what is not a plain
number). Reported: unbiased pass@k for k = 1, 8 and the number of samples over the problems
whose prompt fits, the problems skipped (counted, never scored) and the share of samples
with no answer. Shots come from the train split (the published code drew them from the
test split, the target excluded: `shots_from='test'`), a function of (seed, problem).
"""
from __future__ import annotations

import decimal

import numpy as np

from ncalm import errors
from ncalm.data import tokenizers
from ncalm.eval import eval_data
from ncalm.eval import pass_at_k
from ncalm.eval import sampling

KS = (1, 8, 32)


def extract_answer(text: str) -> str | None:
  """The last whitespace-separated word after the last '####', or None."""
  if '####' not in text:
    return None
  words = text.rsplit('####', 1)[1].split()
  return words[-1] if words else None


def _plain_number(text: str) -> decimal.Decimal | None:
  cleaned = text.replace(',', '').replace('$', '').strip().rstrip('.')
  try:
    value = decimal.Decimal(cleaned)
  except decimal.InvalidOperation:
    return None
  return value if value.is_finite() else None


def same_number(answer: str | None, reference: str) -> bool:
  """Whether a sample's answer is the reference number."""
  if answer is None:
    return False
  a, r = _plain_number(answer), _plain_number(reference)
  if a is not None and r is not None:
    return a == r
  try:
    import math_verify  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise errors.UserError('GSM8K compares answers that are not plain numbers with '
                           'math-verify: pip install -e ".[evals]".') from None
  try:
    return bool(math_verify.verify(math_verify.parse(reference), math_verify.parse(answer)))
  except Exception:  # pylint: disable=broad-except  # an unparsable answer is a wrong one
    return False


def shot_indices(seed: int, problem: int, pool: int, shots: int, exclude: int | None
                 ) -> list[int]:
  """The solved examples shown before `problem`: `shots` distinct indices of the pool
  (never `exclude`), a function of (seed, problem)."""
  rng = np.random.default_rng([seed, problem, 2])
  size = pool - (exclude is not None)
  picks = rng.choice(size, size=min(shots, size), replace=False)
  if exclude is not None:
    picks = np.where(picks >= exclude, picks + 1, picks)
  return [int(p) for p in picks]


class GSM8K:
  """gsm8k/pass@{1,8,32}, gsm8k/problems, gsm8k/skipped, gsm8k/no_answer, gsm8k/capped."""

  ITEMS = 'problems'   # the field of its evals section that --limit caps

  @staticmethod
  def enabled(cfg) -> bool:
    return cfg.evals.gsm8k.problems > 0

  @staticmethod
  def check(cfg, source) -> None:
    del source
    g = cfg.evals.gsm8k
    if g.shots < 0:
      raise errors.UserError(f'evals.gsm8k.shots={g.shots} must be >= 0.')
    if g.shots_from not in ('train', 'test'):
      raise errors.UserError(f"evals.gsm8k.shots_from={g.shots_from!r}: use 'train' or "
                             "'test' (published: test, the target excluded).")
    sampling.check(cfg, 'gsm8k')

  @staticmethod
  def check_mesh(cfg, source, data_parallel: int) -> None:
    del cfg, source, data_parallel   # the sampler pads its batches to the mesh

  def __init__(self, setup, cfg, feeds):
    g = cfg.evals.gsm8k
    self.cfg = g
    test = eval_data.read(cfg.evals.data, 'gsm8k', 'test')
    self.problems = test[:g.problems]
    self.pool = test if g.shots_from == 'test' else eval_data.read(cfg.evals.data, 'gsm8k',
                                                                   'train')
    self.tokenizer = tokenizers.load(feeds.train_source.meta['tokenizer'])
    self.sampler = sampling.make_sampler(setup, g, self.tokenizer)

  def prompt(self, index: int) -> list[int]:
    """The token ids shown for problem `index`: its shots, then its question."""
    g = self.cfg
    exclude = index if g.shots_from == 'test' else None
    shots = shot_indices(g.seed, index, len(self.pool), g.shots, exclude)
    return sampling.few_shot_prompt(self.tokenizer, [self.pool[s] for s in shots],
                                    self.problems[index])

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    g = self.cfg
    prompts = [self.prompt(i) for i in range(len(self.problems))]
    fits = [i for i, ids in enumerate(prompts) if self.sampler.fits(len(ids))]
    request = sampling.request(g, (self.tokenizer.eot_id,))
    out = self.sampler.generate(params, [prompts[i] for i in fits], request) if fits else []
    correct, no_answer = [], 0
    for i, row in zip(fits, out):
      answers = [extract_answer(c.text) for c in row]
      no_answer += sum(a is None for a in answers)
      correct.append(sum(same_number(a, self.problems[i]['final']) for a in answers))
    ks = tuple(sorted(set(KS) | {g.samples}))
    scalars = {f'gsm8k/pass@{k}': v
               for k, v in pass_at_k.mean_pass_at_k(correct, g.samples, ks).items()}
    scalars.update({'gsm8k/problems': float(len(fits)),
                    'gsm8k/skipped': float(len(self.problems) - len(fits)),
                    'gsm8k/no_answer': no_answer / max(len(fits) * g.samples, 1),
                    'gsm8k/capped': float(sum(c.capped for row in out for c in row))})
    return scalars, {}
