"""BIG-bench Lite (docs/evaluation.md): the fine-tuned web-text model answers each task's
held-out questions.

As published (docs/method.md §6): each example after the task's two fixed solved examples
(the first two of its training split; prompt, answer, end-of-text each, as in fine-tuning),
then its own prompt ("Question:\\n{input}\\n\\nchoice: ...\\n\\nAnswer:\\n"); `samples` (64)
samples at temperature 0.4, top-p 0.95, at most 35 new tokens or end-of-text; a sample is
right when it equals one of the example's targets, case and surrounding white space
ignored. Per task: unbiased pass@k over its examples (at most `examples` of them, 350),
chance-normalised where the task has choices, max(0, (p − 1/C) / (1 − 1/C)) with C its
examples' mean number of choices (raw where it has none); reported: the macro average over
tasks (`bigbench/pass@2` is the paper's headline) and each task's number. `mode`
'loglik' (or 'both') adds the multiple-choice score: the choice with the highest
log-likelihood after the prompt is the answer (`bigbench/mc_accuracy`, normalised the same
way, over the tasks with choices). Every sample is scored; an example whose prompt does not
fit the context is skipped, counted (`bigbench/skipped`) and scored nowhere, and a task with
no scored example has no number (it is not in the average).
"""
from __future__ import annotations

import collections

import jax
import numpy as np

from ncalm import errors
from ncalm import losses
from ncalm import sharding
from ncalm.data import batch as batch_lib
from ncalm.data import tokenizers
from ncalm.eval import eval_data
from ncalm.eval import pass_at_k
from ncalm.eval import sampling

KS = (1, 2)
MODES = ('generate', 'loglik', 'both')


def matches(text: str, targets: list[str]) -> bool:
  """Exact match, case and surrounding white space ignored."""
  return text.strip().lower() in {t.strip().lower() for t in targets}


def normalised(score: float, chance: float) -> float:
  """max(0, (score − chance) / (1 − chance)); the score itself when chance is 0."""
  return score if chance <= 0 else max(0.0, (score - chance) / (1.0 - chance))


def chance_of(examples: list[dict]) -> float:
  """1 / (mean number of choices) of a task's examples; 0 for a task without choices."""
  counts = [len(e.get('choices') or ()) for e in examples]
  return 0.0 if not any(counts) else 1.0 / float(np.mean(counts))


def by_task(items: list[dict]) -> dict[str, list[dict]]:
  out = collections.defaultdict(list)
  for item in items:
    out[item['task']].append(item)
  return dict(out)


class BigBench:
  """bigbench/pass@{1,2,samples}, bigbench/mc_accuracy, per task bigbench/TASK/...,
  bigbench/tasks, bigbench/examples, bigbench/skipped."""

  ITEMS = 'examples'   # the field of its evals section that --limit caps

  @staticmethod
  def enabled(cfg) -> bool:
    return cfg.evals.bigbench.examples > 0

  @staticmethod
  def check(cfg, source) -> None:
    del source
    b = cfg.evals.bigbench
    if b.mode not in MODES:
      raise errors.UserError(f'evals.bigbench.mode={b.mode!r}: use one of {list(MODES)}.')
    if b.shots < 0:
      raise errors.UserError(f'evals.bigbench.shots={b.shots} must be >= 0.')
    sampling.check(cfg, 'bigbench')

  @staticmethod
  def check_mesh(cfg, source, data_parallel: int) -> None:
    del source
    if cfg.evals.bigbench.batch_size % data_parallel:
      raise errors.UserError(f'evals.bigbench.batch_size={cfg.evals.bigbench.batch_size} is '
                             f'not divisible by the {data_parallel} data-parallel devices.')

  def __init__(self, setup, cfg, feeds):
    b = self.cfg = cfg.evals.bigbench
    train = by_task(eval_data.read(cfg.evals.data, 'bigbench_lite', 'train'))
    held = by_task(eval_data.read(cfg.evals.data, 'bigbench_lite', 'validation'))
    self.tasks = {t: examples[:b.examples] for t, examples in held.items() if t in train}
    self.shots = {t: train[t][:b.shots] for t in self.tasks}
    self.tokenizer = tokenizers.load(feeds.train_source.meta['tokenizer'])
    self.sampler = sampling.make_sampler(setup, b, self.tokenizer)
    self.seq_len = setup.model.cfg.max_len
    batch_sharding = sharding.batch_sharding(setup.mesh)
    self._sharding = batch_sharding

    def choice_loglik(params, batch):   # Σ log p(choice tokens | prompt), per row
      logits = setup.model.apply({'params': params}, batch.inputs, deterministic=True)
      return -(losses.token_cross_entropy(logits, batch.targets) * batch.loss_mask).sum(-1)

    self._loglik = jax.jit(choice_loglik,
                           in_shardings=(setup.state_shardings.params, batch_sharding),
                           out_shardings=sharding.replicated(setup.mesh))

  def prompt(self, task: str, example: dict) -> list[int]:
    """The task's shots (prompt, answer, end-of-text each), then the example's prompt."""
    return sampling.few_shot_prompt(self.tokenizer, self.shots[task], example)

  def _generate(self, params, prompts: dict) -> dict[str, list[int]]:
    """{task: correct samples per scored example}."""
    b = self.cfg
    keys = list(prompts)
    request = sampling.request(b, (self.tokenizer.eot_id,))
    out = self.sampler.generate(params, [prompts[k] for k in keys], request) if keys else []
    correct = collections.defaultdict(list)
    for (task, i), row in zip(keys, out):
      targets = self.tasks[task][i]['targets']
      correct[task].append(sum(matches(c.text, targets) for c in row))
    return correct

  def _choose(self, params, prompts: dict) -> dict[str, list[bool]]:
    """{task: whether the most likely choice is a target, per scored example with choices}."""
    rows, owners = [], []
    for (task, i), prompt in prompts.items():
      choices = self.tasks[task][i].get('choices') or ()
      encoded = [list(self.tokenizer.encode(c)) for c in choices]
      if encoded and all(len(prompt) + len(ids) <= self.seq_len + 1 for ids in encoded):
        rows += [(prompt, ids) for ids in encoded]   # (an example with a choice too long
        owners += [(task, i, c) for c in choices]    # for the context is not scored here)
    scores = self._score(params, rows)
    best = {}
    for (task, i, choice), score in zip(owners, scores):
      if (task, i) not in best or score > best[(task, i)][0]:
        best[(task, i)] = (score, choice)
    right = collections.defaultdict(list)
    for (task, i), (_, choice) in best.items():
      right[task].append(choice in self.tasks[task][i]['targets'])
    return right

  def _score(self, params, rows: list[tuple[list[int], list[int]]]) -> np.ndarray:
    """Σ log p(continuation | prompt) of each (prompt, continuation), batch_size rows at a
    time at the model's full length (one compiled shape)."""
    size, width, out = self.cfg.batch_size, self.seq_len + 1, []
    for start in range(0, len(rows), size):
      chunk = rows[start:start + size]
      tokens = np.zeros((size, width), np.int32)
      scored = np.zeros((size, width), np.float32)
      for r, (prompt, continuation) in enumerate(chunk):
        tokens[r, :len(prompt) + len(continuation)] = prompt + continuation
        scored[r, len(prompt):len(prompt) + len(continuation)] = 1
      make = lambda a: jax.device_put(a, self._sharding)
      batch = batch_lib.Batch(make(tokens[:, :-1]), make(tokens[:, 1:]), make(scored[:, 1:]))
      out.append(np.asarray(jax.device_get(self._loglik(params, batch)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros(0)

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    b = self.cfg
    prompts, skipped = {}, 0
    for task, examples in self.tasks.items():
      for i, example in enumerate(examples):
        ids = self.prompt(task, example)
        if self.sampler.fits(len(ids)):
          prompts[(task, i)] = ids
        else:
          skipped += 1
    scalars = {'bigbench/examples': float(len(prompts)), 'bigbench/skipped': float(skipped)}
    per_task = collections.defaultdict(dict)
    if b.mode in ('generate', 'both'):
      ks = tuple(sorted(set(KS) | {b.samples}))
      for task, correct in self._generate(params, prompts).items():
        chance = chance_of(self.tasks[task])
        for k, p in pass_at_k.mean_pass_at_k(correct, b.samples, ks).items():
          per_task[f'pass@{k}'][task] = normalised(p, chance)
    if b.mode in ('loglik', 'both'):
      for task, right in self._choose(params, prompts).items():
        per_task['mc_accuracy'][task] = normalised(float(np.mean(right)),
                                                   chance_of(self.tasks[task]))
    for metric, tasks in per_task.items():
      scalars[f'bigbench/{metric}'] = float(np.mean(list(tasks.values())))
      scalars.update({f'bigbench/{task}/{metric}': v for task, v in tasks.items()})
    scalars['bigbench/tasks'] = float(len({t for tasks in per_task.values() for t in tasks}))
    return scalars, {}
