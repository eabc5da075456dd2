"""What the evaluators that sample (HumanEval, GSM8K, BIG-bench) share: their section's
sampling fields (`samples`, `temperature`, `top_p`, `max_new_tokens`, `seed`, `batch_size`)
checked and turned into a sampler and a request, and the prepared benchmark folder
(`evals.data`) checked at start-up."""
from __future__ import annotations

from ncalm import errors
from ncalm import sampler as sampler_lib
from ncalm.eval import eval_data


def check(cfg, name: str) -> None:
  """Refuses sampling fields of evals.NAME that cannot work, and a missing evals.data."""
  section = cfg.evals[name]
  if section.samples < 1:
    raise errors.UserError(f'evals.{name}.samples={section.samples} must be at least 1.')
  try:
    request(section).check()
  except errors.UserError as e:   # the sampler names its own flags: name the fields here
    raise errors.UserError(f'evals.{name}: {str(e).replace("--", "")}') from None
  eval_data.read_manifest(cfg.evals.data)


def request(section, stop_ids: tuple[int, ...] = (), stop_strings: tuple[str, ...] = ()
            ) -> sampler_lib.Request:
  """The request of an evaluator's section: `samples` per prompt, no top-k."""
  return sampler_lib.Request(section.max_new_tokens, section.samples, section.temperature, 0,
                             section.top_p, section.seed, stop_ids, stop_strings)


def make_sampler(setup, section, tokenizer) -> sampler_lib.Sampler:
  """A sampler over the run's model and mesh, `batch_size` rows at once, text ids only."""
  return sampler_lib.Sampler(setup.model.cfg, setup.mesh, setup.rules, section.batch_size,
                             tokenizer.vocab_size, tokenizer.decode)


def few_shot_prompt(tokenizer, shots: list[dict], item: dict) -> list[int]:
  """The ids shown for `item`: each shot as in fine-tuning (prompt, answer, end-of-text;
  `ncalm.data.finetune`), then the item's prompt."""
  ids = []
  for shot in shots:
    ids += [*tokenizer.encode(shot['prompt']), *tokenizer.encode(shot['answer']),
            tokenizer.eot_id]
  return ids + list(tokenizer.encode(item['prompt']))
