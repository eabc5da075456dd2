"""Export NCA sequences to .npz or ArrayRecord, reproducibly from seeds.

    python -m ncalm.generate --out=/tmp/nca.npz --count=64 --band=0.5,1.0 --mode=fast

Rules come from the rule seed (rejection-sampled into --band, or unfiltered with
--band=none) and sequence i uses simulation key split(PRNGKey(sim_seed), count)[i],
as the published generator does: the same flags always give the same file. Fields:
tokens (int32 [N, frames·38]), grids ([N, frames, 12, 12]), loss_mask (float32
[seq_len], for targets tokens[1:seq_len+1]), rule_keys and sim_keys (uint32 [N, 2]),
gzip_scores (float64 [N]) and `config` (JSON of everything needed to regenerate).

ArrayRecord output holds one record per sequence: the bytes of an .npz with that
sequence's fields (read with `read_record`, or `grain.sources.ArrayRecordDataSource`
plus `read_record`), and a `<out>.json` sidecar with the config.

Both files are written to a temporary name beside `<out>` and renamed when complete
(`ncalm.files`), so a killed export leaves the previous `<out>` and `<out>.json` as they
were; its stale temporary files are removed by the next run.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os

from absl import flags
import jax
import numpy as np

from ncalm import cli
from ncalm import errors
from ncalm import files
from ncalm.data import complexity
from ncalm.data import device_sources
from ncalm.data import nca
from ncalm.data import nca_tokens

PER_SEQUENCE = ('tokens', 'grids', 'rule_keys', 'sim_keys', 'gzip_scores')


def parse_band(text: str | None) -> tuple[float, float] | None:
  """--band: 'low,high', or none/all (unfiltered)."""
  try:
    return complexity.parse_band(text)
  except errors.UserError as error:
    raise errors.UserError(f'--band={text!r}: {error}') from None


def generate(count: int, *, rule_seed: int = 0, sim_seed: int = 1, band=None,
             mode: str = 'fast', seq_len: int = 1024, cfg: nca.NCAConfig = nca.NCAConfig(),
             chunk: int = 256) -> dict[str, np.ndarray]:
  """Sequences with everything needed to inspect or regenerate them."""
  if count < 1:
    raise errors.UserError(f'count={count} must be >= 1 (--count).')
  source = device_sources.NCASource(cfg, seq_len, mode)   # checks mode and seq_len before sampling
  bank = complexity.sample_rule_bank(jax.random.PRNGKey(rule_seed), count, band, cfg, mode)
  sim_keys = np.asarray(jax.random.split(jax.random.PRNGKey(sim_seed), count))
  make = jax.jit(source.sequences)
  sim_cfg = source.sim_cfg
  seqs = []
  for start in range(0, count, chunk):
    rk, sk = bank.keys[start:start + chunk], sim_keys[start:start + chunk]
    padded = (complexity.pad_rows(rk, chunk), complexity.pad_rows(sk, chunk))
    seqs.append(np.asarray(make(*padded))[:len(rk)])
  toks = np.concatenate(seqs)
  grid_dtype = np.int8 if cfg.num_states <= 127 else np.int32
  grids = np.asarray(nca_tokens.tokens_to_frames(toks, cfg)).astype(grid_dtype)
  meta = dict(count=count, rule_seed=rule_seed, sim_seed=sim_seed, band=band, mode=mode,
              seq_len=seq_len, nca=dataclasses.asdict(sim_cfg))
  return dict(tokens=toks, grids=grids, loss_mask=np.asarray(nca_tokens.loss_mask(seq_len, cfg)),
              rule_keys=bank.keys.astype(np.uint32), sim_keys=sim_keys.astype(np.uint32),
              gzip_scores=bank.scores, config=np.array(json.dumps(meta)))


def remove_stale_tmp(path: str) -> None:
  """Removes temporary files a killed export of `path` left behind (this naming and the
  older `<path>.tmp`); `files.atomic_path` also overwrites its own."""
  for stale in (path + '.tmp', files.tmp_path_for(path), files.tmp_path_for(path + '.json')):
    if os.path.lexists(stale) and not os.path.isdir(stale):
      os.remove(stale)


def write_npz(path: str, data: dict[str, np.ndarray]) -> None:
  """Writes through a temporary file: a killed export never leaves a half-written one."""
  remove_stale_tmp(path)
  with files.atomic_open(path, 'wb') as f:
    np.savez_compressed(f, **data)


def record_bytes(data: dict[str, np.ndarray], i: int) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **{k: data[k][i] for k in PER_SEQUENCE}, loss_mask=data['loss_mask'])
  return buf.getvalue()


def read_record(record: bytes) -> dict[str, np.ndarray]:
  """One exported sequence from its ArrayRecord bytes."""
  with np.load(io.BytesIO(record)) as item:
    return {k: item[k] for k in item.files}


def write_array_record(path: str, data: dict[str, np.ndarray]) -> None:
  """The records, then the `<path>.json` sidecar, each through a temporary file.

  Both temporary files are complete before either is renamed, so a kill mid-export
  leaves the previous `<path>` and `<path>.json` untouched.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  remove_stale_tmp(path)
  with files.atomic_path(path) as tmp, files.atomic_open(path + '.json', 'w') as sidecar:
    writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
    try:
      for i in range(len(data['tokens'])):
        writer.write(record_bytes(data, i))
    finally:
      writer.close()
    sidecar.write(str(data['config']))


# ---------------------------------------------------------------------------- CLI

_OUT = flags.DEFINE_string('out', None, 'Output path ending in .npz or .array_record.')
_COUNT = flags.DEFINE_integer('count', 64, 'Number of sequences.')
_RULE_SEED = flags.DEFINE_integer('rule_seed', 0, 'Seed of the rule sampler.')
_SIM_SEED = flags.DEFINE_integer('sim_seed', 1, 'Seed of the simulation keys.')
_BAND = flags.DEFINE_string('band', '0.5,1.0', 'gzip band low,high, or none (unfiltered).')
_MODE = flags.DEFINE_enum('mode', 'fast', list(nca.MODES), 'reference (bit-exact) or fast.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 1024, 'Model context; frames cover seq_len+1.')
_GRID = flags.DEFINE_integer('grid', 12, 'Grid side.')
_STATES = flags.DEFINE_integer('num_states', 10, 'States per cell.')
_PATCH = flags.DEFINE_integer('patch', 2, 'Patch side (one token per patch).')
_TAU = flags.DEFINE_float('tau', 1e-4, 'Softmax temperature.')
_IDENTITY_BIAS = flags.DEFINE_float('identity_bias', 0.0, 'Bias towards the current state.')
_BURN_IN = flags.DEFINE_integer('burn_in', 10, 'Steps dropped before recording.')
_PADDING = flags.DEFINE_enum('padding', 'quirk', ['quirk', 'clean'], 'Published quirk or clean.')


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {argv[1:]}: every input is a --flag.')
  out = _OUT.value
  if not out or not out.endswith(('.npz', '.array_record')):
    raise errors.UserError(f'--out={out!r}: give a path ending in .npz or .array_record.')
  if _COUNT.value < 1:
    raise errors.UserError(f'--count={_COUNT.value}: give at least 1 sequence.')
  band = parse_band(_BAND.value)   # every check before any sampling
  try:
    cfg = nca.NCAConfig(grid=_GRID.value, num_states=_STATES.value, patch=_PATCH.value,
                        tau=_TAU.value, identity_bias=_IDENTITY_BIAS.value,
                        burn_in=_BURN_IN.value, padding=_PADDING.value)
    device_sources.NCASource(cfg, _SEQ_LEN.value, _MODE.value)
  except errors.UserError as error:
    raise errors.UserError(f'{error} (flags --grid, --num_states, --patch, --tau, --burn_in, '
                           '--seq_len, --mode)') from None
  try:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  except OSError as error:
    raise errors.UserError(f'--out={out!r}: cannot create its folder ({error}).') from None
  data = generate(_COUNT.value, rule_seed=_RULE_SEED.value, sim_seed=_SIM_SEED.value,
                  band=band, mode=_MODE.value, seq_len=_SEQ_LEN.value, cfg=cfg)
  (write_npz if out.endswith('.npz') else write_array_record)(out, data)
  scores = data['gzip_scores']
  print(f'wrote {len(scores)} sequences × {data["tokens"].shape[1]} tokens to {out} '
        f'(gzip scores {scores.min():.3f}–{scores.max():.3f}, median {np.median(scores):.3f})')


def command() -> None:
  """`python -m ncalm.generate` (or `-m ncalm.tools.export`)."""
  cli.run(main)


if __name__ == '__main__':
  command()
