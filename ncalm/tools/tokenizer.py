"""Trains a byte-level BPE tokeniser on local text, offline; shows what a tokeniser spec loads.

    python -m ncalm.tokenizer train --input='corpus/**/*.txt,notes.md' --vocab_size=8192 \\
        --out=/tmp/tok.json
    python -m ncalm.tokenizer info --tokenizer=/tmp/tok.json

`train` writes a Hugging Face `tokenizers` file (GPT-2 style: a ByteLevel pre-tokenizer and
decoder, every one of the 256 bytes in the initial alphabet, `<|endoftext|>` as the special
token with id 0), so any text encodes without unknown tokens and decodes back exactly. Each
file is one document; files are read as strict UTF-8 (a file that is not is refused, by name).
The file appears complete or not at all; `--tokenizer` of the other commands takes its path.
It prints the vocabulary size, the files and bytes read, the time, and bytes per token on the
training text. 12 MB of CPython's standard library, vocabulary 8,192: about 10 s on 2 CPU
cores (3.74 bytes per token), the pass that counts tokens included. The trainer keeps a count
of every distinct pre-token in memory: for a large corpus, train on a sample of it.

The trainer sees each file in pieces of at most TRAIN_PIECE_CHARS characters (as `prepare`
encodes long documents in pieces), cut before whitespace that follows a non-space
character, where the pre-tokenizer splits anyway: ordinary text trains exactly as if whole
(the same file, byte for byte). Only a stretch of TRAIN_PIECE_CHARS characters without such a
place (a line of one letter, base64) is cut where it ends. The trainer's time grows faster
than linearly with the length of a pre-token (one word of 128 KB took 13 s, of 1 MB minutes);
cut, a file of one 8 MB word trains in about 3 s.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
import time
from typing import Iterator, Sequence

from absl import flags

from ncalm import cli
from ncalm import errors
from ncalm import files
from ncalm.data import tokenizers

MIN_VOCAB_SIZE = 256 + 1 + 1  # the bytes, <|endoftext|>, and at least one merge
ENCODE_BATCH_FILES = 64       # files per encode_batch when measuring bytes per token
TRAIN_PIECE_CHARS = 4096      # the longest piece of text (so pre-token) the trainer sees
# Through the last non-space character followed by ASCII whitespace: no pre-token of the
# GPT-2 pattern that ByteLevel splits by spans such a place (only whitespace or a leading
# space joins a token), so cutting there changes no pre-token. Python's \S is narrower than
# the pattern's non-space, and ASCII whitespace is whitespace to both.
_LAST_BOUNDARY = re.compile(r'.*\S(?=[\t\n\v\f\r ])', re.DOTALL)


@dataclasses.dataclass(frozen=True)
class TrainReport:
  """What `train_bpe` did."""
  out_path: str
  vocab_size: int
  eot_id: int
  fingerprint: str
  num_files: int
  num_bytes: int
  num_tokens: int
  seconds: float

  @property
  def bytes_per_token(self) -> float:
    return self.num_bytes / max(self.num_tokens, 1)


def expand_inputs(patterns: str | Sequence[str]) -> list[str]:
  """The files that comma-separated globs name (`**` recurses), sorted, each once."""
  if isinstance(patterns, str):
    patterns = patterns.split(',')
  patterns = [p.strip() for p in patterns if p.strip()]
  if not patterns:
    raise errors.UserError('--input is empty; give one or more comma-separated globs of text '
                           "files, e.g. --input='corpus/**/*.txt'.")
  paths = set()
  for pattern in patterns:
    matched = glob.glob(os.path.expanduser(pattern), recursive=True)
    found = [p for p in matched if os.path.isfile(p)]
    if not found:
      what = 'only directories' if matched else 'nothing'
      raise errors.UserError(f'--input: {pattern!r} matches {what}; give a glob of text files, '
                             "e.g. 'DIR/**/*.txt' (quote it so the shell does not expand it).")
    paths.update(found)
  return sorted(paths)


def read_text(path: str) -> str:
  """A file's text as strict UTF-8; a UserError names the file otherwise."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as error:
    raise errors.UserError(f'--input: cannot read {path!r} ({error.strerror or error}).') from None
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as error:
    raise errors.UserError(f'--input: {path!r} is not UTF-8 text (byte {error.start}: '
                           f'{error.reason}); is it a binary file? Leave it out of the glob.'
                           ) from None


def training_pieces(text: str) -> list[str]:
  """`text` in pieces of at most TRAIN_PIECE_CHARS characters, each cut at the last
  pre-token boundary `_LAST_BOUNDARY` finds in it, or where it ends if there is none."""
  pieces, start = [], 0
  while len(text) - start > TRAIN_PIECE_CHARS:
    end = start + TRAIN_PIECE_CHARS
    boundary = _LAST_BOUNDARY.match(text, start, end + 1)   # sees text[end], cuts <= end
    cut = boundary.end() if boundary else end
    pieces.append(text[start:cut])
    start = cut
  return pieces + [text[start:]]


def check_out(out_path: str) -> None:
  """Refuses an --out that `train_bpe` could not write, before any training."""
  if not out_path.endswith('.json'):
    raise errors.UserError(f'--out={out_path!r}: give a path ending in .json (a Hugging Face '
                           'tokenizers file; that is how --tokenizer recognises it).')
  if os.path.isdir(out_path):
    raise errors.UserError(f'--out={out_path!r} is a directory; give the path of the file to '
                           'write, e.g. --out=DIR/tokenizer.json.')
  files.check_can_create(out_path)


def train_bpe(inputs: str | Sequence[str], vocab_size: int, out_path: str,
              show_progress: bool = False) -> TrainReport:
  """Trains a byte-level BPE with `vocab_size` ids on the files of `inputs`; writes `out_path`."""
  import tokenizers as hf  # pylint: disable=import-outside-toplevel
  if vocab_size < MIN_VOCAB_SIZE:
    raise errors.UserError(f'--vocab_size={vocab_size} is too small: a byte-level BPE needs the '
                           f'256 bytes, {tokenizers.EOT_TEXT} and at least one merge, so '
                           f'--vocab_size >= {MIN_VOCAB_SIZE}.')
  check_out(out_path)
  paths = expand_inputs(inputs)
  start = time.perf_counter()
  num_bytes = 0

  def pieces() -> Iterator[str]:
    nonlocal num_bytes
    for path in paths:  # read as training goes; merges are learnt after the last file
      text = read_text(path)
      num_bytes += len(text.encode('utf-8'))
      yield from training_pieces(text)

  backend = hf.Tokenizer(hf.models.BPE())
  backend.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  backend.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[tokenizers.EOT_TEXT], show_progress=show_progress,
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
  backend.train_from_iterator(pieces(), trainer)
  if num_bytes == 0:
    raise errors.UserError(f'--input: every file it matches ({len(paths)}) is empty; there is '
                           'no text to train on.')
  num_tokens = 0
  for i in range(0, len(paths), ENCODE_BATCH_FILES):
    texts = [piece for path in paths[i:i + ENCODE_BATCH_FILES]
             for piece in training_pieces(read_text(path))]
    num_tokens += sum(len(e.ids) for e in backend.encode_batch_fast(texts,
                                                                   add_special_tokens=False))
  try:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with files.atomic_path(out_path) as tmp:
      backend.save(tmp)
  except OSError as error:   # --out changed since `check_out`, or the disk is full
    if os.path.lexists(files.tmp_path_for(out_path)):
      os.remove(files.tmp_path_for(out_path))
    raise errors.UserError(f'--out={out_path!r} could not be written ({error.strerror or error}); '
                           'nothing was written: free space or give another --out and train '
                           'again.') from None
  seconds = time.perf_counter() - start
  written = tokenizers.load(out_path)  # what the other commands will load
  return TrainReport(out_path, written.vocab_size, written.eot_id, written.fingerprint,
                     len(paths), num_bytes, num_tokens, seconds)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command line's flags, defined on demand so importing this module defines none."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('input', None, 'train: comma-separated globs of UTF-8 text files '
                      "(** recurses), e.g. 'corpus/**/*.txt'.", **fv)
  flags.DEFINE_integer('vocab_size', None, f'train: ids in all (>= {MIN_VOCAB_SIZE}).', **fv)
  flags.DEFINE_string('out', None, 'train: the tokenizers file to write (.json).', **fv)
  flags.DEFINE_string('tokenizer', None, f'info: the tokeniser: {tokenizers.SPECS}.', **fv)
  flags.DEFINE_integer('pad_multiple', 128, 'info: the multiple the model vocabulary is '
                       'padded to.', **fv)


COMMAND_FLAGS = {'train': ('input', 'vocab_size', 'out'), 'info': ('tokenizer', 'pad_multiple')}
USAGE = ('give a command: `train --input=GLOB --vocab_size=N --out=FILE.json` or '
         '`info --tokenizer=SPEC`')


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  if len(argv) != 2 or argv[1] not in COMMAND_FLAGS:
    given = ' '.join(argv[1:])
    problem = f'{given!r} is not a command of this tool' if given else 'no command given'
    raise errors.UserError(f'{problem}; {USAGE}.')
  command = argv[1]
  fv = flag_values
  for name in COMMAND_FLAGS[command]:
    if fv[name].default is None and fv[name].value is None:
      raise errors.UserError(f'{command} needs --{name}; {USAGE}.')
  others = [f'--{name}' for names in COMMAND_FLAGS.values() for name in names
            if name not in COMMAND_FLAGS[command] and fv[name].present]
  if others:
    raise errors.UserError(f'{", ".join(others)}: not a flag of `{command}`; {USAGE}.')
  if command == 'train':
    report = train_bpe(fv.input, fv.vocab_size, fv.out, show_progress=sys.stderr.isatty())
    note = '' if report.vocab_size == fv.vocab_size else (
        f' (asked {fv.vocab_size}: the text has no more pairs to merge)')
    print(f'wrote {report.out_path}: byte-level BPE, vocab size {report.vocab_size}{note}, '
          f'{tokenizers.EOT_TEXT} = id {report.eot_id}')
    print(f'read {report.num_files} files, {report.num_bytes:,} bytes in {report.seconds:.1f} s; '
          f'{report.bytes_per_token:.3f} bytes per token on the training text')
    print(f'fingerprint {report.fingerprint}')
  else:
    tokenizer = tokenizers.load(fv.tokenizer)
    print(f'name {tokenizer.name}')
    print(f'vocab size {tokenizer.vocab_size} (padded to a multiple of {fv.pad_multiple}: '
          f'{tokenizers.padded_vocab_size(tokenizer.vocab_size, fv.pad_multiple)})')
    print(f'eot id {tokenizer.eot_id}')
    print(f'fingerprint {tokenizer.fingerprint}')


def command() -> None:
  """`python -m ncalm.tokenizer` (or `-m ncalm.tools.tokenizer`)."""
  define_flags()
  cli.run(main)


if __name__ == '__main__':
  command()
