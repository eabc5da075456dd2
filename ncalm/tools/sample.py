"""Continuations from a run's checkpoint.

    python -m ncalm.sample --workdir=RUN [--step=N] --prompt=TEXT | --prompts_file=F \
        [--temperature=0 --top_k=0 --top_p=1 --max_new_tokens=128 --num_samples=1 --seed=0]

A text run reads the prompts through its own tokeniser and stops a sample at its
end-of-text id or a --stop string. `--prompts_file` is a text file of one prompt per line,
or a `.jsonl` file of one JSON string (or {"prompt": ...}) per line for prompts with
newlines. An NCA run is prompted with a held-out rule (--rule, an index into its held-out
bank) and --context_frames true frames; it predicts --frames frames, each patch among the
patch ids, prints them beside the true ones and, with --out=PNG, draws them
(previous | true | predicted). Samples are a function of (--seed, prompt, sample): the
same flags print the same text on any number of devices. Temperature 0 is greedy.
New tokens stop at the model's context (max_new_tokens is capped at context − prompt, and
the count of capped samples is printed); a prompt that leaves no room is refused.
"""
from __future__ import annotations

import json

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from ncalm import cli
from ncalm import config_lib
from ncalm import errors
from ncalm import run_model
from ncalm import sampler as sampler_lib
from ncalm import viz
from ncalm.data import nca_tokens
from ncalm.eval import heldout


def define_flags(fv: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None) -> None:
  """The command's flags (defined when it runs, so its module imports anywhere); `argv`
  (default sys.argv) says which --config.PATH overrides to define."""
  kw = dict(flag_values=fv)
  flags.DEFINE_string('workdir', None, 'The run to sample from (its --workdir).', **kw)
  flags.DEFINE_integer('step', 0, 'Checkpoint step; 0 = the newest intact one.', **kw)
  flags.DEFINE_string('prompt', None, 'A prompt (text runs).', **kw)
  flags.DEFINE_string('prompts_file', None, 'Prompts: one per line, or .jsonl strings.', **kw)
  flags.DEFINE_float('temperature', 0.0, '0 = greedy; > 0 samples.', **kw)
  flags.DEFINE_integer('top_k', 0, 'Sample among the k most likely tokens; 0 = all.', **kw)
  flags.DEFINE_float('top_p', 1.0, 'Sample from the smallest nucleus of this mass.', **kw)
  flags.DEFINE_integer('max_new_tokens', 128, 'New tokens per sample at most.', **kw)
  flags.DEFINE_integer('num_samples', 1, 'Samples per prompt.', **kw)
  flags.DEFINE_integer('seed', 0, 'Sampling seed.', **kw)
  flags.DEFINE_multi_string('stop', [], 'Stop strings (text runs); repeatable.', **kw)
  flags.DEFINE_integer('batch_size', 32, 'Rows decoded at once.', **kw)
  flags.DEFINE_integer('rule', 0, 'NCA runs: the held-out rule to prompt with.', **kw)
  flags.DEFINE_integer('context_frames', 2, 'NCA runs: true frames in the prompt.', **kw)
  flags.DEFINE_integer('frames', 1, 'NCA runs: frames to predict.', **kw)
  flags.DEFINE_string('out', None, 'NCA runs: a PNG of previous | true | predicted.', **kw)
  config_flags.DEFINE_config_dict('config', config_lib.base_config(),
                                  'Fields the run may take anew: data.text.path.',
                                  sys_argv=argv, **kw)


def read_prompts(fv) -> list[str]:
  if (fv.prompt is None) == (fv.prompts_file is None):
    raise errors.UserError('Give exactly one of --prompt=TEXT and --prompts_file=FILE.')
  if fv.prompt is not None:
    return [fv.prompt]
  try:
    with open(fv.prompts_file, encoding='utf-8') as f:
      lines = [line.rstrip('\n') for line in f if line.strip()]
  except OSError as e:
    raise errors.UserError(f'--prompts_file={fv.prompts_file!r} cannot be read: '
                           f'{e.strerror}.') from None
  if not fv.prompts_file.endswith('.jsonl'):
    return lines
  prompts = []
  for i, line in enumerate(lines, 1):
    try:
      item = json.loads(line)
      prompts.append(item['prompt'] if isinstance(item, dict) else str(item))
    except (ValueError, KeyError, TypeError):
      raise errors.UserError(f'--prompts_file={fv.prompts_file!r} line {i} is not a JSON '
                             'string or an object with "prompt".') from None
  return prompts


def request_of(fv, stop_ids=(), stop_strings=()) -> sampler_lib.Request:
  request = sampler_lib.Request(fv.max_new_tokens, fv.num_samples, fv.temperature, fv.top_k,
                                fv.top_p, fv.seed, tuple(stop_ids), tuple(stop_strings))
  request.check()
  return request


def sample_text(run: run_model.Run, fv) -> None:
  tok = run_model.tokenizer_of(run)
  if tok is None:
    raise errors.UserError(
        f'--workdir={fv.workdir!r} is a {run.cfg.data.source} run: it has no tokeniser to '
        'read a text prompt. Prompt an NCA run with --rule and --context_frames; a Dyck run '
        'cannot be prompted by this command.')
  prompts = read_prompts(fv)
  ids = [list(tok.encode(p)) for p in prompts]
  request = request_of(fv, (tok.eot_id,), fv.stop)
  sampler = sampler_lib.Sampler(run.setup.model.cfg, run.setup.mesh,
                                run.setup.rules, fv.batch_size, tok.vocab_size, tok.decode)
  for i, p in enumerate(ids):
    if not sampler.fits(len(p)):
      raise errors.UserError(
          f'Prompt {i} is {len(p)} tokens long; the model\'s context is {sampler.context} '
          'tokens and must leave room for one new token: shorten the prompt.')
  out = sampler.generate(run.params, ids, request)
  capped = 0
  for prompt, samples in zip(prompts, out):
    for c in samples:
      capped += c.capped
      print(f'=== prompt {c.prompt_index}, sample {c.sample_index}: {len(c.tokens)} new '
            f'tokens, stopped by {c.finish} ===')
      print(prompt + c.text)
  print(f'{capped} of {sum(map(len, out))} samples were capped at the context '
        f'({sampler.context} tokens).')


def sample_nca(run: run_model.Run, fv) -> None:
  source = run.feeds.val_source
  ncfg, tpf = source.cfg, source.tokens_per_frame
  patches = nca_tokens.patches_per_frame(ncfg)
  frames = run.cfg.seq_len // tpf
  if not 0 <= fv.rule < source.rule_keys.shape[0]:
    raise errors.UserError(f'--rule={fv.rule}: the run has {source.rule_keys.shape[0]} held-out '
                           f'rules, 0 .. {source.rule_keys.shape[0] - 1}.')
  if fv.context_frames < 1 or fv.frames < 1 or fv.context_frames + fv.frames > frames:
    raise errors.UserError(
        f'--context_frames={fv.context_frames} plus --frames={fv.frames} must be at least 1 '
        f'each and at most the {frames} whole frames of the run\'s seq_len={run.cfg.seq_len}.')
  sim_key = jax.random.fold_in(heldout.eval_key(run.cfg), fv.seed)
  truth = np.asarray(source.sequences(jnp.asarray(source.rule_keys)[fv.rule:fv.rule + 1],
                                      sim_key[None])[0])
  sampler = sampler_lib.Sampler(run.setup.model.cfg, run.setup.mesh,
                                run.setup.rules, fv.batch_size,
                                nca_tokens.start_of_frame(ncfg))
  request = request_of(fv)
  prompts = [list(truth[:fv.context_frames * tpf + 1]) for _ in range(fv.num_samples)]
  for _ in range(fv.frames):   # a frame at a time; the delimiters are the true ones
    out = sampler.generate(run.params, prompts, sampler_lib.Request(
        patches, 1, request.temperature, request.top_k, request.top_p, request.seed))
    prompts = [p + list(row[0].tokens) + list(truth[len(p) + patches:len(p) + patches + 2])
               for p, row in zip(prompts, out)]
  start = fv.context_frames * tpf
  cells = lambda ids: np.asarray(nca_tokens.tokens_to_frames(jnp.asarray(ids), ncfg))
  true_frames = cells(truth[start - tpf:start + fv.frames * tpf])
  for s, p in enumerate(prompts):
    predicted = cells(np.asarray(p[start:start + fv.frames * tpf]))
    for f in range(fv.frames):
      accuracy = float(np.mean(predicted[f] == true_frames[f + 1]))
      print(f'=== rule {fv.rule}, sample {s}, frame {fv.context_frames + f} (after '
            f'{fv.context_frames + f} true or predicted frames): true | predicted, '
            f'{accuracy:.1%} of cells right ===')
      for a, b in zip(true_frames[f + 1], predicted[f]):
        print(''.join(map(str, a)), ' ', ''.join(map(str, b)))
  if fv.out:
    predicted = np.stack([cells(np.asarray(p[start:start + fv.frames * tpf]))[-1]
                          for p in prompts])
    last = np.repeat(true_frames[None, -1], len(prompts), axis=0)
    before = np.repeat(true_frames[None, -2], len(prompts), axis=0)
    viz.save_png(fv.out, viz.probe_picture(before, last, predicted, ncfg.num_states,
                                           rows=len(prompts)))
    print(f'Wrote {fv.out}: previous | true | predicted last frame, a row per sample.')


def main(argv, fv: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  if fv.workdir is None:
    raise errors.UserError('--workdir is missing: python -m ncalm.sample --workdir=RUN '
                           '--prompt=TEXT (see --help).')
  run = run_model.load(fv.workdir, fv.step, config_flags.get_override_values(fv['config']))
  print(f'{fv.workdir} step {run.step}: a {run.cfg.data.source} run.')
  if run.cfg.data.source == 'nca' and fv.prompt is None and fv.prompts_file is None:
    sample_nca(run, fv)
  else:
    sample_text(run, fv)


def command() -> None:
  """`python -m ncalm.sample` (or `-m ncalm.tools.sample`)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
