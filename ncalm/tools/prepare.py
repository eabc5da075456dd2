"""Tokenises a text corpus once into a dataset the text feed reads (`ncalm.data.prepare`).

    python -m ncalm.prepare --input='corpus/**/*.txt,notes.jsonl' --tokenizer=/tmp/bpe.json \\
        --out=/data/corpus [--text_field=text] [--validation_fraction=0.01] [--seed=0] \\
        [--workers=0] [--shard_mb=512] [--overwrite]

Writes a tensorflow-datasets ArrayRecord dataset (splits train and validation, one record of
token ids per document) that reads without TensorFlow, and `ncalm_dataset.json` with the
tokeniser's fingerprint, the counts per split and the dataset's content fingerprint; `--out`
appears complete or not at all, is replaced only with `--overwrite` (even if another prepare
fills it meanwhile), and a killed `--overwrite` is undone by the next prepare into it.
`--input` takes comma-separated files, globs (quote them), directories and .jsonl files (the
text in `--text_field`), and where there is network `tfds:NAME[@SPLIT]` or
`hf:PATH[:CONFIG][@SPLIT]` (untested offline). Empty and binary files are skipped and invalid
UTF-8 is replaced by U+FFFD; the summary counts and names both. A progress line (documents/s,
MB/s, ETA) runs on stderr when it is a terminal; the summary goes to stdout.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

from absl import flags

from ncalm import cli
from ncalm import errors
from ncalm.data import inputs
from ncalm.data import prepare as prepare_lib
from ncalm.data import tokenizers


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command line's flags, defined on demand so importing this module defines none."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('input', None, 'Comma-separated files, globs (** recurses), directories, '
                      '.jsonl files, tfds:NAME[@SPLIT] or hf:PATH[:CONFIG][@SPLIT].', **fv)
  flags.DEFINE_string('tokenizer', None, f'The tokeniser: {tokenizers.SPECS}.', **fv)
  flags.DEFINE_string('out', None, 'The dataset directory to write (DATA_DIR).', **fv)
  flags.DEFINE_string('text_field', 'text', 'The field of the text in .jsonl lines and in '
                      'tfds/hf records.', **fv)
  flags.DEFINE_float('validation_fraction', 0.01, 'Expected share of documents in the '
                     'validation split, in (0, 1).', **fv)
  flags.DEFINE_integer('seed', 0, 'Decides, with each text, which documents are in '
                       'validation.', **fv)
  flags.DEFINE_integer('workers', 0, 'Processes that encode; 0: every core, 1: no pool.', **fv)
  flags.DEFINE_float('shard_mb', 512, 'A new ArrayRecord file starts once one holds this many '
                     'MB of records.', **fv)
  flags.DEFINE_bool('overwrite', False, 'Replace the dataset at --out (only one made by '
                    'prepare).', **fv)


class Progress:
  """`prepare`'s progress on stderr: a live line on a terminal, else a line a minute."""

  def __init__(self, stream=None):
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.start = self.last = time.perf_counter()
    self.line = ''

  def __call__(self, done_bytes: int, documents: int, total_bytes: int) -> None:
    now = time.perf_counter()
    seconds = max(now - self.start, 1e-9)
    rate, per_second = done_bytes / seconds, documents / seconds
    self.line = (f'prepare: {documents:,} documents ('
                 f'{f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"}/s), '
                 f'{done_bytes / 1e6:,.1f}')
    if total_bytes:
      left = round(max(total_bytes - done_bytes, 0) / rate) if rate else None
      eta = '?' if left is None else f'{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}'
      self.line += f' of {total_bytes / 1e6:,.1f} MB ({rate / 1e6:.2f} MB/s), ETA {eta}'
    else:
      self.line += f' MB ({rate / 1e6:.2f} MB/s)'
    if now - self.last >= (0.2 if self.tty else 60.0):
      self.last = now
      self.stream.write(f'\r{self.line}\x1b[K' if self.tty else f'{self.line}\n')
      self.stream.flush()

  def close(self) -> None:
    if self.tty and self.line:
      self.stream.write(f'\r{self.line}\x1b[K\n')
      self.stream.flush()


USAGE = ('python -m ncalm.prepare --input=FILES --tokenizer=SPEC --out=DATA_DIR '
         '[--validation_fraction=0.01]')


def summary(report: prepare_lib.Report) -> list[str]:
  """What the command prints when it is done."""
  meta = report.meta
  splits = '; '.join(f'{name} {_count(s["documents"], "document")}, {s["tokens"]:,} tokens, '
                     f'{s["bytes"]:,} bytes' for name, s in meta['splits'].items())
  documents = sum(s['documents'] for s in meta['splits'].values())
  seconds = max(report.seconds, 1e-9)
  lines = [
      f'wrote {report.out_dir}: {splits}',
      f'tokenizer {meta["tokenizer"]} (vocab size {meta["vocab_size"]}, eot id '
      f'{meta["eot_id"]}, fingerprint {meta["tokenizer_fingerprint"][:12]}), '
      f'{meta["token_dtype"]} ids; {meta["bytes_per_token"]:.3f} bytes per token (train)',
      f'read {_count(report.input_files, "file")}, {report.input_bytes / 1e6:,.1f} MB in '
      f'{report.seconds:.1f} s ({report.input_bytes / 1e6 / seconds:.2f} MB/s, '
      f'{documents / seconds:,.0f} documents/s) with {_count(report.workers, "worker")}',
  ]
  skipped = [f'{s["count"]:,} {inputs.SKIP_REASONS[reason]} (e.g. '
             f'{", ".join(s["examples"][:3])})'
             for reason, s in meta['skipped'].items() if s['count']]
  if skipped:
    lines.append('skipped ' + '; '.join(skipped))
  invalid = meta['invalid_utf8']
  if invalid['documents']:
    examples = ', '.join(f'{e["where"]} ({e["replaced"]})' for e in invalid['examples'][:3])
    lines.append(f'invalid UTF-8 in {_count(invalid["documents"], "document")}: '
                 f'{_count(invalid["replaced"], "sequence")} replaced by U+FFFD (e.g. {examples})')
  lines.append(f'dataset fingerprint {meta["fingerprint"]}')
  return lines


def _count(n: int, noun: str) -> str:
  return f'{n:,} {noun}{"s" * (n != 1)}'


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  fv = flag_values
  if len(argv) > 1:
    raise errors.UserError(f'unexpected arguments {" ".join(argv[1:])!r}; {USAGE}.')
  for name in ('input', 'tokenizer', 'out'):
    if fv[name].value is None:
      raise errors.UserError(f'--{name} is missing; {USAGE}.')
  progress = Progress()
  try:
    report = prepare_lib.prepare(
        fv.input, fv.tokenizer, fv.out, text_field=fv.text_field,
        validation_fraction=fv.validation_fraction, seed=fv.seed, workers=fv.workers,
        shard_mb=fv.shard_mb, overwrite=fv.overwrite, progress=progress)
  finally:
    progress.close()
  print('\n'.join(summary(report)))


def command() -> None:
  """`python -m ncalm.prepare` (or `-m ncalm.tools.prepare`)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
