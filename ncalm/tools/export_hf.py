"""Export a run's model as a Hugging Face `LlamaForCausalLM` checkpoint.

    python -m ncalm.export_hf --workdir=RUN [--step=N] --out=DIR

DIR gets `config.json`, `model.safetensors` (float32), the tokeniser files where the run
reads text with a tokeniser it can find (ncalm/hf_tokenizer.py), and `ncalm_export.json`
(the run, step and config it came from). `transformers`, vLLM and lm-evaluation-harness
read DIR as a Llama model:

    LlamaForCausalLM.from_pretrained(DIR)        # same logits as ncalm, float32

and ncalm reads it back with `--config.init.from_run=hf:DIR --config.init.embedding=keep`.
The checkpoint is restored read-only and checked against its checksums; the newest intact
one is used unless --step names one. `model.safetensors` carries the SHA-256 of each tensor
in its header, which the import checks (ncalm/hf_llama.py).

DIR must be new or an empty directory, in a folder this user can write (checked before the
checkpoint is read). Each export writes into its own folder beside DIR,
`DIR.tmp-HOST-PID-RANDOM`, and renames it onto DIR when every file is complete: a killed
export leaves no half-written DIR (its folder is removed by the next export into DIR on
this host), and two exports into one DIR at once never mix their files. The first to finish
gets DIR; the other is refused when it finds DIR filled meanwhile (an export never replaces
or adds to a finished one) and removes its own folder.
"""
from __future__ import annotations

import json
import os
import shutil

from absl import flags
from absl import logging
import jax
import numpy as np

from ncalm import cli
from ncalm import config_lib
from ncalm import errors
from ncalm import files
from ncalm import hf_llama
from ncalm import hf_tokenizer
from ncalm import run_files
from ncalm import run_params
from ncalm import safetensors_io
from ncalm.data import dataset
from ncalm.data import tokenizers

EXPORT_INFO = 'ncalm_export.json'


def run_config(workdir: str) -> dict:
  """The config a run was made with (its run_config.json)."""
  path = os.path.join(workdir, run_files.CONFIG)
  if not os.path.exists(path):
    raise errors.UserError(f'--workdir={workdir!r} is not an ncalm workdir (no '
                           f'{run_files.CONFIG}): name the --workdir of a '
                           '`python -m ncalm.main` run.')
  fix = (f'--workdir={workdir!r} cannot be exported without the config the run was made '
         'with, which this file holds; restore it from a copy of the workdir')
  config = safetensors_io.read_json(path, fix).get('config')
  if not isinstance(config, dict):
    raise errors.UserError(f'{path} has no "config" object: {fix}.')
  return config_lib.unflatten(config)   # {'model.d_model': 32, ...} → nested


def check_out(out: str) -> None:
  """Refuses an --out that cannot become the export: a file, a directory with files in it,
  or a place in a folder this user cannot write (its nearest existing ancestor)."""
  if not out:
    raise errors.UserError('--out is empty: name a new directory for the export.')
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.UserError(f'--out={out!r} is a file: name a new directory (an export never '
                           'overwrites anything).')
  if os.path.isdir(out) and os.listdir(out):
    raise errors.UserError(f'--out={out!r} exists and is not empty: name a new directory (an '
                           'export never overwrites one).')
  files.check_can_create(out)


def _staging_folder(out: str) -> str:
  """A new `OUT.tmp-HOST-PID-RANDOM` beside `out`, once the folders of exports that died on
  this host are removed (those of live ones are left alone)."""
  tag = f'{files.TMP_SUFFIX}-'
  for path in files.siblings(out, tag):
    if files.left_by_dead_process(path, out, tag, unique=True):
      shutil.rmtree(path, ignore_errors=True)
  return files.claim_sibling(out, tag, unique=True)   # unique in this process too


def _move_into_place(staging: str, out: str) -> None:
  """Renames the complete `staging` onto `out` (absent, or an empty directory): one atomic
  rename, which fails rather than replace a directory another export filled meanwhile."""
  try:
    os.rename(staging, out)
  except OSError as e:
    if not os.path.lexists(out) or (os.path.isdir(out) and not os.listdir(out)):
      raise   # not a race: a real failure to report as it is
    raise errors.UserError(
        f'--out={out!r} was filled by another export (or process) while this one ran; that '
        'export is left as it is and this one\'s files were removed. Name a new --out to '
        f'export again ({e.strerror}).') from None


def per_layer(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Stacked ('layers/...', [L, ...]) parameters split into per-layer names."""
  out = {}
  for name, x in params.items():
    if name.startswith('layers/'):
      rest = name[len('layers/'):]
      out.update({f'layers_{i}/{rest}': x[i] for i in range(x.shape[0])})
    else:
      out[name] = x
  return out


def tokenizer_spec(config: dict) -> str | None:
  """The run's tokeniser spec, or None (not a text run, or its dataset is gone)."""
  text = config['data']['text']
  if config['data']['source'] != 'text':
    return None
  if text.get('tokenizer'):
    return text['tokenizer']
  try:
    return dataset.read_meta(text['path'])['tokenizer']
  except errors.UserError:
    return None


def export(workdir: str, out: str, step: int = 0) -> dict:
  """Writes the Hugging Face checkpoint of `workdir` into `out`; returns the export info."""
  config = run_config(workdir)
  out = out.rstrip('/') or out
  check_out(out)
  mesh = jax.make_mesh((1,), ('replica',), devices=jax.devices('cpu')[:1])  # host memory
  params, step = run_params.read_run_params(
      run_params.RunRef(workdir, step, field='--workdir', step_field='--step'), mesh)
  params = per_layer({name: np.asarray(jax.device_get(x)) for name, x in params.items()})
  model = dict(config['model'], max_len=config['seq_len'])
  vocab = params['embedding'].shape[0]
  spec = tokenizer_spec(config)
  tok = None
  if spec:
    try:
      tok = tokenizers.load(spec)
    except errors.UserError as e:
      logging.warning('The tokeniser is not exported: %s', e)
      spec = None
  staging = _staging_folder(out)
  try:
    safetensors_io.write_safetensors(os.path.join(staging, safetensors_io.WEIGHTS_FILE),
                               hf_llama.export_tensors(params))
    with open(os.path.join(staging, hf_llama.CONFIG_FILE), 'w') as f:
      json.dump(hf_llama.llama_config(model, vocab, tok.eot_id if tok else None), f, indent=1)
    tokenizer_files = hf_tokenizer.write(spec, staging, config['seq_len']) if spec else []
    info = dict(workdir=os.path.abspath(workdir), step=step, tokenizer=spec,
                tokenizer_files=tokenizer_files, vocab_size=vocab, config=config,
                data=('text' if spec else config['data']['source']))
    with open(os.path.join(staging, EXPORT_INFO), 'w') as f:
      json.dump(info, f, indent=1)
    _move_into_place(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return info


# ---------------------------------------------------------------------------- CLI

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags (defined when it runs, so its module imports anywhere)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('workdir', None, 'The run to export (its --workdir).', **fv)
  flags.DEFINE_integer('step', 0, 'Checkpoint step; 0 = the newest intact one.', **fv)
  flags.DEFINE_string('out', None, 'New directory for the Hugging Face checkpoint.', **fv)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  fv = flag_values
  if len(argv) > 1:
    raise errors.UserError(f'Unexpected arguments: {argv[1:]}')
  for name in ('workdir', 'out'):
    if fv[name].value is None:
      raise errors.UserError(f'--{name} is missing: python -m ncalm.export_hf --workdir=RUN '
                             '[--step=N] --out=DIR.')
  info = export(fv.workdir, fv.out, fv.step)
  tok = (f'tokeniser {info["tokenizer"]} ({", ".join(info["tokenizer_files"])})'
         if info['tokenizer'] else f'no tokeniser (a {info["data"]} run)')
  print(f'Exported {info["workdir"]} step {info["step"]} to {os.path.abspath(fv.out)}: '
        f'LlamaForCausalLM, vocabulary {info["vocab_size"]}, {tok}.')


def command() -> None:
  """`python -m ncalm.export_hf` (or `-m ncalm.tools.export_hf`)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
