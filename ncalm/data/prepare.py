"""Text → a tensorflow-datasets ArrayRecord dataset of token ids (`python -m ncalm.prepare`).

    report = prepare.prepare('corpus/**/*.txt,notes.jsonl', 'tok.json', 'data/corpus')
    records, meta = prepare.open_split('data/corpus', 'train')   # records[i]['tokens']

A dataset is a directory readable without TensorFlow
(`tfds.builder_from_directory(DIR).as_data_source(split)`): splits `train` and `validation`,
one record per document holding its token ids (`tokens`: uint16 when the vocabulary fits,
else int32; no end-of-text appended, the feed joins documents with it), in ArrayRecord files
`ncalm_text-{split}.array_record-{i:05d}-of-{n:05d}` written with `group_size:1`; beside them
`document_lengths-{split}.npy` (int64 tokens per record, in record order) and `META_FILE`
(the tokeniser and its fingerprint, counts per split, bytes per token, the inputs, the
options, what was skipped and what was replaced; `read_meta`).

Inputs (comma-separated): files and globs (`**` recurses) of plain text or code, one document
per file; `.jsonl` files, one document per line in the field `text_field` (a line that is not
JSON or lacks the field is skipped, counted and named); directories (every file under them,
recursively, except hidden ones). For machines with network, two more kinds, untested here
(nothing can be downloaded offline; without network each fails with a UserError):
`tfds:NAME[@SPLIT]` reads a tensorflow-datasets dataset already built in TFDS_DATA_DIR in the
ArrayRecord format (`tfds build NAME --file_format=array_record`), and `hf:PATH[:CONFIG][@SPLIT]`
streams a Hugging Face dataset (`pip install datasets`); both take the text from `text_field`.

What happens to bad input: empty files and binary files (a NUL byte in the first 8 KB) are
skipped, counted and a few named; invalid UTF-8 is replaced by U+FFFD, as Python's 'replace'
does, and counted per document (so decode(record) is the text with those replacements); a
glob that matches nothing, a missing file, a corpus with nothing left to keep, or one whose
split leaves train or validation empty is refused with one paragraph naming the fix.

Determinism: documents are read in the order of `--input`, each glob's or directory's files
sorted, and results are kept in that order however many worker processes encode them; a
document goes to validation when a keyed hash of (seed, its text) falls below
validation_fraction, so identical documents always share a split. The same inputs and
options give the same files, byte for byte. Documents longer than PIECE_CHARS characters are
encoded in pieces (the tokenisers' own buffers grow to ~100× the text), cut before a space
between two non-space characters, where GPT-2-style pre-tokenisers (byte-level BPE, tiktoken)
and SentencePiece split anyway: the ids equal encoding the whole (tested for a byte-level BPE
and a SentencePiece BPE trained with SENTENCEPIECE_LOSSLESS_OPTIONS). A stretch of PIECE_CHARS
without such a space is cut where it ends; ids there may differ, the decoded text does not.

The dataset is written into a sibling `DIR.incomplete-HOST-PID` and renamed onto DIR once
complete. That rename is refused when DIR has been filled since start-up (another prepare
into it finished first) unless `overwrite`; the dataset made is then kept in
`DIR.prepared-HOST-PID` and named in the error. `overwrite` moves the old dataset aside to
`DIR.old-HOST-PID`, renames the new one onto DIR, then deletes the old (its meta first, so a
half-deleted one never looks complete). Every prepare first repairs what a killed prepare of
DIR on this host left (`_repair`): an old dataset moved aside while DIR is missing is put
back, the rest is removed. Before the work, prepare checks that DIR can be renamed (a mount
point cannot). Workers end with the prepare that started them, even one killed by SIGKILL.

`meta['fingerprint']` (`dataset_fingerprint`) is a SHA-256 of what defines the dataset: the
tokeniser's fingerprint, the vocabulary, the counts per split and every record in order,
digested as the records are written; it does not depend on paths, shards or options, so
the same content always has the same fingerprint. A damaged ArrayRecord file (truncated,
flipped bits) is reported when read as a UserError naming it.
"""
from __future__ import annotations

import codecs
import collections
from concurrent import futures
import contextlib
import ctypes
import dataclasses
import errno
import glob
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import stat
import threading
import time
from typing import Callable, Iterator, Sequence

from absl import logging
import numpy as np

from ncalm import errors
from ncalm import workdir
from ncalm.data import tokenizers

FORMAT = 1
META_FILE = 'ncalm_dataset.json'
DATASET_NAME = 'ncalm_text'
SPLITS = ('train', 'validation')
FILENAME_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
ARRAY_RECORD_OPTIONS = 'group_size:1'
SNIFF_BYTES = 8192         # a NUL byte in the first SNIFF_BYTES makes a file binary
CHUNK_BYTES = 1 << 20      # input bytes per unit of work a worker encodes in one batch
CHUNK_DOCUMENTS = 1024     # ... and at most this many documents
PIECE_CHARS = 1 << 18      # longer documents are encoded in pieces (memory, not speed)
CUT_WINDOW = 4096          # how far back from a piece's end a cut point is looked for
EXAMPLES = 5               # places named per kind of skipped input
SKIP_REASONS = {           # reason → what it means, for the summary
    'empty': 'empty (no text)',
    'binary': 'binary (a NUL byte in the first 8 KB: not text, or UTF-16)',
    'bad_json': 'not a JSON object',
    'missing_field': 'without the text field',
    'field_not_text': 'whose text field is not a string',
    'no_tokens': 'encoding to no tokens',
}
INCOMPLETE = '.incomplete-'
REPLACED_OLD = '.old-'
KEPT = '.prepared-'        # a finished dataset whose --out was filled by someone else meanwhile
FINGERPRINTED = ('format', 'tokenizer_fingerprint', 'vocab_size', 'eot_id', 'token_dtype',
                 'splits')  # the meta that, with the records, defines a dataset
PR_SET_PDEATHSIG = 1       # linux/prctl.h
PREPARE_HINT = 'python -m ncalm.prepare --input=FILES --tokenizer=SPEC --out={}'
_GLOB_CHARS = re.compile(r'[*?[]')
_CUT = re.compile(r'(?<=\S) (?=\S)')
_SURROGATE = re.compile('[\ud800-\udfff]')


@dataclasses.dataclass(frozen=True)
class Report:
  """What `prepare` wrote and how long it took."""
  out_dir: str
  meta: dict
  input_files: int
  input_bytes: int
  workers: int
  seconds: float


# ----------------------------------------------------------------------------- reading back

def read_meta(data_dir: str) -> dict:
  """`DATA_DIR/ncalm_dataset.json`, once the directory is known to be a finished dataset."""
  make = PREPARE_HINT.format(data_dir)
  if not os.path.isdir(data_dir):
    old, left = _leftovers(data_dir, REPLACED_OLD), _leftovers(data_dir, INCOMPLETE)
    why = (f' (a prepare that replaced it was killed: the previous dataset is in {old[0]!r}, '
           'and the next prepare into it puts it back)' if old else
           f' (a prepare into it did not finish: {left[0]!r} is left; run it again)' if left
           else '')
    raise errors.UserError(f'data directory {data_dir!r} does not exist{why}; make it with '
                           f'`{make}`.')
  path = os.path.join(data_dir, META_FILE)
  if not os.path.exists(path):
    what = 'is empty' if not os.listdir(data_dir) else f'has no {META_FILE}'
    raise errors.UserError(f'data directory {data_dir!r} {what}: it is not a dataset made by '
                           f'ncalm.prepare; make one with `{make}`.')
  try:
    with open(path, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, ValueError) as error:
    raise errors.UserError(f'{path!r} cannot be read ({error}); prepare the dataset again '
                           f'with `{make}`.') from None
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    found = meta.get('format') if isinstance(meta, dict) else None
    raise errors.UserError(f'{path!r} has format {found!r}, and this ncalm reads format '
                           f'{FORMAT}; prepare the dataset again with `{make}`.')
  return meta


def open_split(data_dir: str, split: str):
  """(data source, meta): random access to a split's records, `source[i]['tokens']`."""
  meta = read_meta(data_dir)
  if split not in meta['splits']:
    raise errors.UserError(f'data directory {data_dir!r} has no split {split!r} (it has '
                           f'{", ".join(meta["splits"])}).')
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  make = PREPARE_HINT.format(data_dir)
  try:
    builder = tfds.builder_from_directory(data_dir)
    info = builder.info.splits[split]
    missing = [os.fspath(p) for p in info.filepaths if not os.path.exists(p)]
  except Exception as error:  # pylint: disable=broad-except
    raise errors.UserError(f'data directory {data_dir!r} is damaged: tensorflow-datasets '
                           f'cannot read its metadata ({type(error).__name__}: '
                           f'{" ".join(str(error).split())[:200]}); prepare it again with '
                           f'`{make}`.') from None
  expected = meta['splits'][split]['documents']
  if missing or info.num_examples != expected:
    what = (f'{len(missing)} of its {split} files are missing (e.g. {missing[0]!r})' if missing
            else f'its {split} files hold {info.num_examples:,} records, not {expected:,}')
    raise errors.UserError(f'data directory {data_dir!r} is incomplete: {what}; prepare it '
                           f'again with `{make}`.')
  return _Records(builder.as_data_source(split=split), data_dir,
                  [os.fspath(p) for p in info.filepaths], info.shard_lengths), meta


class _Records:
  """A split's records (`records[i]['tokens']`); a damaged file is a UserError naming it."""

  def __init__(self, source, data_dir: str, paths: list[str], shard_lengths: list[int]):
    self.source, self.data_dir, self.paths = source, data_dir, paths
    self.ends = np.cumsum(shard_lengths)  # record i is in the first shard whose end is > i

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    try:
      return self.source[index]
    except RuntimeError as error:  # Riegeli: a truncated file, a hash mismatch
      shard = int(np.searchsorted(self.ends, index, side='right'))
      raise _damaged(self.paths[min(shard, len(self.paths) - 1)], self.data_dir,
                     error) from None


def _damaged(path: str, data_dir: str, error: Exception) -> errors.UserError:
  return errors.UserError(
      f'{path!r} of the dataset {data_dir!r} cannot be read ('
      f'{" ".join(str(error).split())[:200]}): it is damaged (truncated, e.g. by a full disk or '
      'an interrupted copy, or with flipped bits) or was removed; prepare it again with '
      f'`{PREPARE_HINT.format(data_dir)}`.')


def dataset_fingerprint(data_dir: str) -> str:
  """SHA-256 (hex) of the dataset's content: `meta['fingerprint']`, written by prepare; for a
  dataset prepared before prepare wrote it, computed the same way by reading every record."""
  meta = read_meta(data_dir)
  if 'fingerprint' in meta:
    return meta['fingerprint']
  return _fingerprint(meta, {split: _split_digest(data_dir, split, meta['splits'][split])
                             for split in meta['splits']})


def _fingerprint(meta: dict, record_digests: dict[str, str]) -> str:
  content = {**{key: meta[key] for key in FINGERPRINTED}, 'records': record_digests}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode('utf-8')).hexdigest()


def _add_record(digest, record: bytes) -> None:
  """Adds a record to a split's digest (length-prefixed: records are not self-delimiting)."""
  digest.update(len(record).to_bytes(8, 'little'))
  digest.update(record)


def _split_digest(data_dir: str, split: str, counts: dict, batch: int = 1024) -> str:
  """The digest of a split's records in order, read back from its ArrayRecord files."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  digest, read = hashlib.sha256(), 0
  pattern = os.path.join(glob.escape(data_dir), f'{DATASET_NAME}-{split}.array_record-*-of-*')
  for path in sorted(glob.glob(pattern)):
    try:
      reader = array_record_module.ArrayRecordReader(path)
      try:
        count = reader.num_records()
        for start in range(0, count, batch):
          for record in reader.read(start, min(start + batch, count)):
            _add_record(digest, record)
      finally:
        reader.close()
    except RuntimeError as error:
      raise _damaged(path, data_dir, error) from None
    read += count
  if read != counts['documents']:
    raise errors.UserError(f'data directory {data_dir!r} is incomplete: its {split} files hold '
                           f'{read:,} records, not {counts["documents"]:,}; prepare it again '
                           f'with `{PREPARE_HINT.format(data_dir)}`.')
  return digest.hexdigest()


def document_lengths(data_dir: str, split: str) -> np.ndarray:
  """int64 [documents]: the number of tokens of each record of `split`, in record order."""
  meta = read_meta(data_dir)
  path = os.path.join(data_dir, f'document_lengths-{split}.npy')
  try:
    lengths = np.load(path)
  except (OSError, ValueError) as error:
    raise errors.UserError(f'{path!r} cannot be read ({error}); prepare the dataset again with '
                           f'`{PREPARE_HINT.format(data_dir)}`.') from None
  if lengths.shape != (meta['splits'][split]['documents'],):
    raise errors.UserError(f'{path!r} holds {lengths.size:,} lengths for '
                           f'{meta["splits"][split]["documents"]:,} documents; prepare the '
                           f'dataset again with `{PREPARE_HINT.format(data_dir)}`.')
  return lengths.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- records

def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def features(vocab_size: int):
  """The tfds features of a record: {'tokens': Tensor [None] of `token_dtype`}."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.features.FeaturesDict(
      {'tokens': tfds.features.Tensor(shape=(None,), dtype=token_dtype(vocab_size))})


def _varint(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7f | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _varints(ids: np.ndarray, block: int = 1 << 20) -> bytes:
  """Protobuf base-128 varints of non-negative uint16 or int32 ids, vectorised by blocks."""
  width = 3 if ids.dtype == np.uint16 else 5
  shifts = np.arange(0, 7 * width, 7, dtype=np.uint32)
  out = []
  for start in range(0, ids.size, block):
    values = ids[start:start + block, None].astype(np.uint32)
    groups = ((values >> shifts) & 0x7f).astype(np.uint8)
    keep = np.ones(groups.shape, bool)
    keep[:, 1:] = values >= (np.uint32(1) << shifts[1:])
    groups[:, :-1] |= keep[:, 1:].view(np.uint8) << 7  # continuation bit: more groups follow
    out.append(groups[keep].tobytes())
  return b''.join(out)


def serialize_tokens(ids: np.ndarray) -> bytes:
  """`features(v).serialize_example({'tokens': ids})`, byte for byte, ~3× faster.

  The bytes of a tf.train.Example {features {feature {key: 'tokens' value {int64_list
  {value: ids}}}}} with the values packed, as tfds writes them.
  """
  if ids.ndim != 1 or not ids.size or ids.dtype not in (np.uint16, np.int32):
    raise ValueError(f'serialize_tokens takes a non-empty uint16/int32 vector, not '
                     f'{ids.dtype}{list(ids.shape)}.')
  packed = _varints(ids)
  heads = []
  size = len(packed)
  for tag in (b'\x0a', b'\x1a', b'\x0a\x06tokens\x12', b'\x0a', b'\x0a'):
    # Int64List.value, Feature.int64_list, the map entry, Features.feature, Example.features
    head = tag + _varint(size)
    heads.append(head)
    size += len(head)
  return b''.join(heads[::-1]) + packed


# ----------------------------------------------------------------------------- inputs

@dataclasses.dataclass(frozen=True)
class _Input:
  """A file to read (`kind` text or jsonl), or a remote dataset (tfds, hf)."""
  kind: str
  path: str
  size: int
  regular: bool = True  # a regular file; others (pipes) are read alone, their size unknown


def resolve_inputs(inputs: str | Sequence[str], exclude: str = '') -> list[_Input]:
  """The files and datasets `inputs` names, in order, each file once; refuses what is not."""
  if isinstance(inputs, str):
    inputs = inputs.split(',')
  entries = [entry.strip() for entry in inputs if entry.strip()]
  if not entries:
    raise errors.UserError('--input is empty; give comma-separated files, globs (quoted, '
                           "e.g. 'corpus/**/*.txt'), directories, .jsonl files, tfds:NAME or "
                           'hf:NAME.')
  exclude = os.path.realpath(exclude) if exclude else ''
  seen, found = set(), []
  for entry in entries:
    if entry.startswith(('tfds:', 'hf:')):
      found.append(_Input(entry.split(':', 1)[0], entry, 0))
      continue
    for path in _expand(entry):
      real = os.path.realpath(path)
      if real in seen or (exclude and (real == exclude or real.startswith(
          (exclude + os.sep, exclude + INCOMPLETE, exclude + REPLACED_OLD, exclude + KEPT)))):
        continue
      seen.add(real)
      kind = 'jsonl' if path.endswith('.jsonl') else 'text'
      try:
        status = os.stat(path)
      except OSError as error:
        raise errors.UserError(f'--input: cannot read {path!r} ({error.strerror}).') from None
      found.append(_Input(kind, path, status.st_size, stat.S_ISREG(status.st_mode)))
  if not found:
    raise errors.UserError(f'--input={",".join(entries)!r} names no files (only the output '
                           'directory); give the corpus.')
  return found


def _expand(entry: str) -> list[str]:
  path = os.path.expanduser(entry)
  if _GLOB_CHARS.search(path):
    matched = sorted(glob.glob(path, recursive=True))
    paths = []
    for match in matched:
      paths.extend(_walk(match) if os.path.isdir(match) else [match])
    if not paths:
      what = 'only empty directories' if matched else 'nothing'
      raise errors.UserError(f'--input: {entry!r} matches {what}; give a glob of text files, '
                             "e.g. 'DIR/**/*.txt' (quote it so the shell does not expand it).")
    return paths
  if os.path.isdir(path):
    paths = _walk(path)
    if not paths:
      raise errors.UserError(f'--input: the directory {entry!r} holds no files (hidden ones '
                             'are left out); give the directory of the corpus.')
    return paths
  if not os.path.exists(path):
    raise errors.UserError(f'--input: no such file or directory {entry!r}; check the path '
                           '(a glob needs *, ? or [...]).')
  return [path]


def _walk(directory: str) -> list[str]:
  """Every file under `directory`, sorted, leaving out hidden files and directories."""
  paths = []
  for root, dirs, names in os.walk(directory):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    paths.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith('.'))
  return sorted(paths)


class _Remote:
  """A tfds or Hugging Face dataset, opened at start-up; yields (place, text) in order."""

  def __init__(self, entry: str, text_field: str):
    kind, name = entry.split(':', 1)
    name, _, self.split = name.partition('@')
    self.split = self.split or 'train'
    self.entry, self.text_field = entry, text_field
    offline = ('It needs network (or a local copy) and is untested offline; prepare from local '
               'files instead, or run this where the dataset can be reached.')
    if kind == 'tfds':
      try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        builder = tfds.builder(name)
        if not builder.is_prepared():
          raise FileNotFoundError(f'it is not built in {builder.data_dir}')
        self.source = builder.as_data_source(split=self.split)
      except Exception as error:  # pylint: disable=broad-except
        raise errors.UserError(
            f'--input={entry}: tensorflow-datasets cannot read {name!r} split {self.split!r} '
            f'({type(error).__name__}: {" ".join(str(error).split())[:200]}). tfds: inputs '
            'read a dataset already built in TFDS_DATA_DIR (~/tensorflow_datasets) as '
            f'ArrayRecord: `tfds build {name} --file_format=array_record`. {offline}') from None
      self.items = (self.source[i] for i in range(len(self.source)))
    else:
      path, _, config = name.partition(':')
      try:
        import datasets  # pylint: disable=import-outside-toplevel
      except ImportError:
        raise errors.UserError(f'--input={entry}: hf: inputs need the Python package '
                               f'`datasets` (pip install datasets). {offline}') from None
      try:
        self.items = iter(datasets.load_dataset(path, config or None, split=self.split,
                                                streaming=True))
      except Exception as error:  # pylint: disable=broad-except
        raise errors.UserError(
            f'--input={entry}: Hugging Face datasets cannot stream {path!r} (config '
            f'{config or None!r}, split {self.split!r}: {type(error).__name__}: '
            f'{" ".join(str(error).split())[:200]}). {offline}') from None

  def texts(self) -> Iterator[tuple[str, object]]:
    for index, item in enumerate(self.items):
      if isinstance(item, dict) and self.text_field in item:
        yield f'{self.entry}#{index}', item[self.text_field]
      else:
        keys = sorted(map(str, item))[:8] if isinstance(item, dict) else []
        yield f'{self.entry}#{index}', _Missing(', '.join(keys) or 'none')


@dataclasses.dataclass(frozen=True)
class _Missing:
  """Stands for the text of a record that lacks the text field; `fields` are those it has."""
  fields: str


# ----------------------------------------------------------------------------- work units

@dataclasses.dataclass
class _Chunk:
  """Documents a worker encodes together: files to read, JSON lines, or texts."""
  kind: str                   # 'files' | 'lines' | 'texts'
  places: list[str]           # a path, 'path:line' or 'tfds:...#index' per document
  payloads: list | None       # None (files), line bytes, or texts
  input_bytes: int


@dataclasses.dataclass
class _Result:
  records: list[bytes]
  validation: list[bool]
  tokens: list[int]
  text_bytes: list[int]
  skipped: list[tuple[str, str]]   # (reason, place)
  replaced: list[tuple[str, int]]  # (place, invalid UTF-8 sequences replaced by U+FFFD)
  input_bytes: int


def _chunks(items: list[_Input], remotes: dict[str, _Remote],
            skipped: list[tuple[str, str]]) -> Iterator[_Chunk]:
  """The work, in input order; files are read by the workers, JSON lines here."""
  batch: list[_Input] = []
  size = 0
  for item in items + [None]:
    if batch and (item is None or item.kind != 'text' or not item.regular or
                  not batch[-1].regular or len(batch) >= CHUNK_DOCUMENTS or size >= CHUNK_BYTES):
      yield _Chunk('files', [i.path for i in batch], None, size)
      batch, size = [], 0
    if item is None:
      break
    if item.kind == 'text':
      batch.append(item)
      size += item.size
    elif item.kind == 'jsonl':
      yield from _jsonl_chunks(item.path, skipped)
    else:
      yield from _text_chunks(remotes[item.path].texts())


def _jsonl_chunks(path: str, skipped: list[tuple[str, str]]) -> Iterator[_Chunk]:
  try:
    f = open(path, 'rb')  # pylint: disable=consider-using-with
  except OSError as error:
    raise errors.UserError(f'--input: cannot read {path!r} ({error.strerror}).') from None
  with f:
    if b'\0' in f.peek(SNIFF_BYTES)[:SNIFF_BYTES]:
      skipped.append(('binary', path))
      return
    places, lines, size, any_line = [], [], 0, False
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      any_line = True
      places.append(f'{path}:{number}')
      lines.append(line)
      size += len(line)
      if size >= CHUNK_BYTES or len(lines) >= CHUNK_DOCUMENTS:
        yield _Chunk('lines', places, lines, size)
        places, lines, size = [], [], 0
    if lines:
      yield _Chunk('lines', places, lines, size)
    if not any_line:
      skipped.append(('empty', path))


def _text_chunks(texts: Iterator[tuple[str, object]]) -> Iterator[_Chunk]:
  places, payloads, size = [], [], 0
  for place, text in texts:
    places.append(place)
    payloads.append(text)
    size += len(text) if isinstance(text, (str, bytes)) else 0
    if size >= CHUNK_BYTES or len(places) >= CHUNK_DOCUMENTS:
      yield _Chunk('texts', places, payloads, size)
      places, payloads, size = [], [], 0
  if places:
    yield _Chunk('texts', places, payloads, size)


class _ReplaceCounter:
  """Python's 'replace' decoding error handler, counting what it replaces."""
  count = 0

  @classmethod
  def handle(cls, error: UnicodeDecodeError) -> tuple[str, int]:
    cls.count += 1
    return '\ufffd', error.end


codecs.register_error('ncalm_count_replace', _ReplaceCounter.handle)


def decode_utf8(data: bytes) -> tuple[str, int]:
  """(text, n): `data.decode('utf-8', 'replace')` and the number of sequences replaced."""
  try:
    return data.decode('utf-8'), 0
  except UnicodeDecodeError:
    _ReplaceCounter.count = 0
    return data.decode('utf-8', 'ncalm_count_replace'), _ReplaceCounter.count


def cut_points(text: str, piece_chars: int = PIECE_CHARS) -> list[int]:
  """Where a long text is cut into pieces of at most `piece_chars` characters: before a
  space between two non-space characters, else at the piece's end."""
  cuts, start = [], 0
  while len(text) - start > piece_chars:
    end = start + piece_chars
    cut = end
    for match in _CUT.finditer(text, max(start + 1, end - CUT_WINDOW), end):
      cut = match.start()
    cuts.append(cut)
    start = cut
  return cuts


class _Encoder:
  """Turns a chunk into records; runs in each worker process (pickled by tokeniser spec)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, text_field: str,
               validation_fraction: float, seed: int):
    self.tokenizer, self.text_field = tokenizer, text_field
    self.validation_fraction, self.seed = validation_fraction, seed
    self.dtype = token_dtype(tokenizer.vocab_size)

  def is_validation(self, text_bytes: bytes) -> bool:
    digest = hashlib.blake2b(text_bytes, digest_size=8, key=b'ncalm-split-%d' % self.seed)
    return int.from_bytes(digest.digest(), 'big') < self.validation_fraction * 2.0**64

  def __call__(self, chunk: _Chunk) -> _Result:
    result = _Result([], [], [], [], [], [], chunk.input_bytes)
    documents = []  # (place, text, its UTF-8 bytes, replaced)
    for i, place in enumerate(chunk.places):
      document = self._text(chunk, i, place, result.skipped)
      if document is not None:
        documents.append(document)
    for (place, text, data, replaced), ids in zip(documents, self._encode(
        [d[1] for d in documents])):
      if not ids.size:
        result.skipped.append(('no_tokens', place))
        continue
      if replaced:
        result.replaced.append((place, replaced))
      result.records.append(serialize_tokens(ids))
      result.validation.append(self.is_validation(data))
      result.tokens.append(int(ids.size))
      result.text_bytes.append(len(data))
    return result

  def _text(self, chunk: _Chunk, i: int, place: str, skipped: list):
    """(place, text, bytes, replaced) of document i of the chunk, or None (skipped)."""
    if chunk.kind == 'files':
      try:
        with open(place, 'rb') as f:
          data = f.read()
      except OSError as error:
        raise errors.UserError(f'--input: cannot read {place!r} ({error.strerror}).') from None
      if not data:
        skipped.append(('empty', place))
        return None
      if b'\0' in data[:SNIFF_BYTES]:
        skipped.append(('binary', place))
        return None
      text, replaced = decode_utf8(data)
      return place, text, data if not replaced else text.encode('utf-8'), replaced
    value, replaced = chunk.payloads[i], 0
    if chunk.kind == 'lines':
      value, replaced = decode_utf8(value)
      try:
        value = json.loads(value)
      except ValueError:
        value = None
      if not isinstance(value, dict):
        skipped.append(('bad_json', place))
        return None
      value = value.get(self.text_field, _Missing(', '.join(sorted(map(str, value))[:8])
                                                  or 'none'))
    if isinstance(value, _Missing):
      skipped.append(('missing_field', f'{place} (its fields: {value.fields})'))
      return None
    if isinstance(value, (bytes, np.bytes_)):
      value, replaced = decode_utf8(bytes(value))
    if not isinstance(value, str):
      skipped.append(('field_not_text', f'{place} ({type(value).__name__})'))
      return None
    if not value:
      skipped.append(('empty', place))
      return None
    try:
      data = value.encode('utf-8')
    except UnicodeEncodeError:  # lone surrogates, from JSON escapes such as "\ud800"
      value, count = _SURROGATE.subn('\ufffd', value)
      replaced += count
      data = value.encode('utf-8')
    return place, value, data, replaced

  def _encode(self, texts: list[str]) -> list[np.ndarray]:
    """The ids of each text, long ones encoded piecewise, at most ~CHUNK_BYTES at a time."""
    pieces, owners = [], []
    for owner, text in enumerate(texts):
      bounds = [0] + cut_points(text) + [len(text)]
      for a, b in zip(bounds[:-1], bounds[1:]):
        pieces.append(text[a:b] if len(bounds) > 2 else text)
        owners.append(owner)
    parts = [[] for _ in texts]
    start = 0
    while start < len(pieces):
      end, size = start, 0
      while end < len(pieces) and (end == start or size + len(pieces[end]) <= CHUNK_BYTES):
        size += len(pieces[end])
        end += 1
      for owner, ids in zip(owners[start:end], self.tokenizer.encode_batch(pieces[start:end])):
        parts[owner].append(ids.astype(self.dtype))
      start = end
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]


_WORKER: _Encoder | None = None


def _init_worker(encoder: _Encoder, parent: int) -> None:
  global _WORKER  # pylint: disable=global-statement
  _end_with(parent)
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one thread per process: the pool is the
  signal.signal(signal.SIGINT, signal.SIG_IGN)    # parallelism; Ctrl-C is the parent's
  _WORKER = encoder


def _end_with(parent: int) -> None:
  """Ends this process when process `parent` ends, even by SIGKILL (which leaves a pool's
  workers waiting for work forever, and with them multiprocessing's resource tracker)."""
  # Linux sends SIGKILL once the thread that started this process ends (prepare's pool is
  # started and shut down by one thread); elsewhere a thread looks every second.
  prctl = getattr(ctypes.CDLL(None), 'prctl', None)
  if prctl is None or prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL)) != 0:
    threading.Thread(target=_end_when_orphaned, args=(parent,), daemon=True).start()
  if os.getppid() != parent:  # it ended before prctl
    os._exit(1)  # pylint: disable=protected-access


def _end_when_orphaned(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(1)
  os._exit(1)  # pylint: disable=protected-access


def _work(chunk: _Chunk) -> _Result:
  return _WORKER(chunk)


def _results(chunks: Iterator[_Chunk], encoder: _Encoder, workers: int) -> Iterator[_Result]:
  """encoder(chunk) for each chunk, in order, over `workers` processes (1: this one)."""
  if workers == 1:
    yield from map(encoder, chunks)
    return
  context = multiprocessing.get_context('spawn')  # no fork of a process that has threads
  pool = futures.ProcessPoolExecutor(workers, context, _init_worker, (encoder, os.getpid()))
  pending, finished = collections.deque(), False
  try:
    for chunk in chunks:
      pending.append(pool.submit(_work, chunk))
      while len(pending) > 2 * workers:  # bounded: results are held until written
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
    finished = True
  except futures.process.BrokenProcessPool as error:
    raise errors.UserError(
        f'a worker process of prepare died ({error}): killed by the system, perhaps for '
        'memory (try fewer --workers), or unable to start: workers are started afresh '
        '(spawn), so a script calling prepare with workers != 1 must guard its code with '
        "`if __name__ == '__main__':` and be a file, not stdin.") from None
  finally:  # on an error, do not wait for the chunks being encoded
    pool.shutdown(wait=finished, cancel_futures=True)


# ----------------------------------------------------------------------------- writing

class _SplitWriter:
  """One split's shards (a new one past shard_bytes), counts and document lengths."""

  def __init__(self, directory: str, split: str, shard_bytes: int):
    self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
    self.shard_lengths: list[int] = []
    self.documents = self.tokens = self.text_bytes = self.num_bytes = 0
    self.digest = hashlib.sha256()  # of the records in order (`_fingerprint`)
    self._writer, self._shard_size = None, 0
    self._lengths = open(  # pylint: disable=consider-using-with
        self._path(f'lengths-{self.split}.tmp'), 'wb')

  def _path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def _shard(self, i: int, n: int | None = None) -> str:
    name = f'{DATASET_NAME}-{self.split}.array_record-{i:05d}'
    return self._path(name if n is None else f'{name}-of-{n:05d}')

  def write(self, record: bytes, tokens: int, text_bytes: int) -> None:
    if self._writer is None or self._shard_size >= self.shard_bytes:
      from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
      self._close_shard()
      self._writer = array_record_module.ArrayRecordWriter(
          self._shard(len(self.shard_lengths)), ARRAY_RECORD_OPTIONS)
      self.shard_lengths.append(0)
      self._shard_size = 0
    self._writer.write(record)
    _add_record(self.digest, record)
    self.shard_lengths[-1] += 1
    self._shard_size += len(record)
    self.num_bytes += len(record)
    self.documents += 1
    self.tokens += tokens
    self.text_bytes += text_bytes
    self._lengths.write(tokens.to_bytes(8, 'little'))

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def finish(self) -> None:
    """Names the shards `-of-N` and writes `document_lengths-{split}.npy`."""
    self._close_shard()
    n = len(self.shard_lengths)
    for i in range(n):
      os.rename(self._shard(i), self._shard(i, n))
    self._lengths.close()
    with open(self._path(f'document_lengths-{self.split}.npy'), 'wb') as out, \
        open(self._path(f'lengths-{self.split}.tmp'), 'rb') as raw:
      np.lib.format.write_array_header_1_0(
          out, {'descr': '<i8', 'fortran_order': False, 'shape': (self.documents,)})
      shutil.copyfileobj(raw, out)
    os.remove(self._path(f'lengths-{self.split}.tmp'))

  def abandon(self) -> None:
    self._close_shard()
    self._lengths.close()


def default_workers() -> int:
  """The cores this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def prepare(inputs: str | Sequence[str], tokenizer: str, out_dir: str, *,
            text_field: str = 'text', validation_fraction: float = 0.01, seed: int = 0,
            workers: int = 0, shard_mb: float = 512, overwrite: bool = False,
            progress: Callable[[int, int, int], None] | None = None) -> Report:
  """Tokenises `inputs` with the tokeniser spec `tokenizer` into the dataset `out_dir`.

  Args:
    inputs: comma-separated (or a list of) files, globs, directories, .jsonl files, tfds:NAME
      or hf:NAME (module docstring).
    tokenizer: a spec of `tokenizers.load`.
    out_dir: the dataset directory; must not exist or be empty, unless `overwrite` (which
      replaces only a dataset made by prepare), when prepare starts and when it ends.
    text_field: the field holding the text in .jsonl lines and remote datasets.
    validation_fraction: the expected share of documents in validation, in (0, 1).
    seed: decides, with each document's text, which documents are in validation.
    workers: processes that encode (0: every core; 1: this process only).
    shard_mb: a new ArrayRecord file starts once one holds this many MB of records.
    overwrite: replace an existing dataset at `out_dir`.
    progress: called after each chunk of work with (input bytes done, documents written,
      input bytes in all, 0 when unknown).
  """
  start = time.perf_counter()
  out_dir = os.path.normpath(out_dir)
  _repair(out_dir)
  if not 0 < validation_fraction < 1:
    raise errors.UserError(f'--validation_fraction={validation_fraction} must be > 0 and < 1 '
                           '(e.g. 0.01): the dataset needs both a train and a validation split.')
  if workers < 0 or shard_mb <= 0 or seed < 0:
    raise errors.UserError(f'--workers={workers} (>= 0, 0: every core), --shard_mb={shard_mb} '
                           f'(> 0) and --seed={seed} (>= 0): one is out of range.')
  if not text_field:
    raise errors.UserError('--text_field is empty; name the field of the text in .jsonl lines.')
  workers = workers or default_workers()
  tok = tokenizers.load(tokenizer)
  _check_out_dir(out_dir, overwrite)
  items = resolve_inputs(inputs, exclude=out_dir)
  remotes = {i.path: _Remote(i.path, text_field) for i in items if i.kind in ('tfds', 'hf')}
  if not remotes:  # no more processes than chunks of work
    workers = min(workers, max(1, -(-sum(i.size for i in items) // CHUNK_BYTES)))
  tmp = _claim_temp_dir(out_dir)
  writers: list[_SplitWriter] = []
  try:
    encoder = _Encoder(tok, text_field, validation_fraction, seed)
    writers = [_SplitWriter(tmp, split, int(shard_mb * 1e6)) for split in SPLITS]
    skipped: list[tuple[str, str]] = []
    replaced: list[tuple[str, int]] = []
    total_bytes = 0 if remotes else sum(i.size for i in items)
    done_bytes = done_documents = 0
    with contextlib.closing(_results(_chunks(items, remotes, skipped), encoder,
                                     workers)) as results:
      for result in results:
        for record, is_validation, tokens, text_bytes in zip(
            result.records, result.validation, result.tokens, result.text_bytes):
          writers[is_validation].write(record, tokens, text_bytes)
        skipped += result.skipped
        replaced += result.replaced
        done_bytes += result.input_bytes
        done_documents += len(result.records)
        if progress:
          progress(done_bytes, done_documents, total_bytes)
    skips = {reason: {'count': sum(r == reason for r, _ in skipped),
                      'examples': [p for r, p in skipped if r == reason][:EXAMPLES]}
             for reason in SKIP_REASONS}
    _check_splits(writers, skips, validation_fraction)
    for writer in writers:
      writer.finish()
    _write_tfds_metadata(tmp, tok.vocab_size, writers)
    train = writers[0]
    meta = {
        'format': FORMAT,
        'tokenizer': tokenizer,
        'tokenizer_fingerprint': tok.fingerprint,
        'vocab_size': tok.vocab_size,
        'eot_id': tok.eot_id,
        'token_dtype': token_dtype(tok.vocab_size).name,
        'splits': {w.split: {'documents': w.documents, 'tokens': w.tokens,
                             'bytes': w.text_bytes} for w in writers},
        'bytes_per_token': train.text_bytes / train.tokens,
        'inputs': [i.strip() for i in (inputs.split(',') if isinstance(inputs, str) else inputs)
                   if i.strip()],
        'input_files': sum(i.kind in ('text', 'jsonl') for i in items),
        'text_field': text_field,
        'validation_fraction': validation_fraction,
        'seed': seed,
        'skipped': skips,
        'invalid_utf8': {
            'policy': 'each invalid sequence replaced by U+FFFD (Python "replace")',
            'documents': len(replaced), 'replaced': sum(n for _, n in replaced),
            'examples': [{'where': p, 'replaced': n} for p, n in replaced[:EXAMPLES]]},
    }
    meta['fingerprint'] = _fingerprint(meta, {w.split: w.digest.hexdigest() for w in writers})
    with open(os.path.join(tmp, META_FILE), 'w', encoding='utf-8') as f:
      f.write(json.dumps(meta, indent=2) + '\n')
    _move_into_place(tmp, out_dir, overwrite)
  except BaseException:
    for writer in writers:
      writer.abandon()
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return Report(out_dir, meta, meta['input_files'], sum(i.size for i in items), workers,
                time.perf_counter() - start)


def _check_splits(writers: list[_SplitWriter], skips: dict, fraction: float) -> None:
  documents = sum(w.documents for w in writers)
  if not documents:
    what = '; '.join(f'{s["count"]} {SKIP_REASONS[r]} (e.g. {", ".join(s["examples"][:3])})'
                     for r, s in skips.items() if s['count'])
    raise errors.UserError(f'--input holds no document to keep: {what or "nothing was read"}. '
                           'Give text files, or --text_field naming the text of .jsonl lines.')
  for writer in writers:
    if not writer.documents:
      change = ('raise it' if writer.split == 'validation' else 'lower it')
      suggest = min(0.5, max(fraction * 2, 3 / documents)) if writer.split == 'validation' \
          else max(fraction / 2, 1 - 3 / documents, 0.01)
      raise errors.UserError(
          f'--validation_fraction={fraction} left the {writer.split} split empty: none of the '
          f'{documents:,} documents fell in it (the split is by a hash of each text with '
          f'--seed). {change.capitalize()} (e.g. --validation_fraction={suggest:.3g}), try '
          'another --seed, or give more documents.')


def _write_tfds_metadata(directory: str, vocab_size: int, writers: list[_SplitWriter]) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  split_infos = [tfds.core.SplitInfo(name=w.split, shard_lengths=w.shard_lengths,
                                     num_bytes=w.num_bytes, filename_template=None)
                 for w in writers]
  tfds.folder_dataset.write_metadata(
      data_dir=directory, features=features(vocab_size), split_infos=split_infos,
      filename_template=FILENAME_TEMPLATE, check_data=False)


def _check_out_dir(out_dir: str, overwrite: bool) -> None:
  if os.path.islink(out_dir):  # the final rename would replace the link, not fill its target
    raise errors.UserError(f'--out={out_dir!r} is a symbolic link; give the folder it points '
                           f'to, --out={os.path.realpath(out_dir)!r}.')
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise errors.UserError(f'--out={out_dir!r} is a file; give a directory for the dataset.')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise errors.UserError(f'--out={out_dir!r} exists and is not empty; give another --out, '
                             'or --overwrite to replace the dataset in it.')
    if not os.path.exists(os.path.join(out_dir, META_FILE)):
      raise errors.UserError(f'--out={out_dir!r} is not a dataset made by ncalm.prepare (no '
                             f'{META_FILE}), so --overwrite will not delete it; give another '
                             '--out or empty it yourself.')


def _leftovers(out_dir: str, kind: str) -> list[str]:
  return sorted(glob.glob(glob.escape(out_dir) + kind + '*'))


def _sibling(out_dir: str, kind: str) -> str:
  """`out_dir{kind}HOST-PID`: a folder beside `out_dir` that belongs to this prepare."""
  return f'{out_dir}{kind}{socket.gethostname()}-{os.getpid()}'


def _repair(out_dir: str) -> None:
  """Undoes what killed prepares of `out_dir` on this host left: puts back the dataset an
  --overwrite moved aside when `out_dir` holds none, and removes the rest; refuses while
  another prepare of `out_dir` runs. Every prepare does this first, whatever follows."""
  for path in _leftovers(out_dir, REPLACED_OLD) + _leftovers(out_dir, INCOMPLETE):
    kind = REPLACED_OLD if path.startswith(out_dir + REPLACED_OLD) else INCOMPLETE
    owner_host, _, pid = path[len(out_dir + kind):].rpartition('-')
    mine = pid.isdigit() and int(pid) == os.getpid()  # left by an earlier call here
    if owner_host != socket.gethostname() or not pid.isdigit() or not (
        mine or not workdir.process_alive(int(pid))):
      fix = (f'rename it back to {out_dir!r} if {out_dir!r} is missing, else delete it'
             if kind == REPLACED_OLD else 'delete the folder')
      raise errors.UserError(f'{path!r} belongs to another prepare of {out_dir!r} (process '
                             f'{pid} on {owner_host}); wait for it to finish, or {fix} if that '
                             'prepare is no longer running.')
    if kind == REPLACED_OLD and os.path.exists(os.path.join(path, META_FILE)) and not \
        os.path.exists(os.path.join(out_dir, META_FILE)):
      try:
        os.rename(path, out_dir)  # the swap did not finish: the old dataset goes back
      except FileNotFoundError:  # put back by another prepare just now
        continue
      except OSError as error:
        raise errors.UserError(
            f'{path!r} holds the dataset that a killed prepare --overwrite moved aside from '
            f'{out_dir!r}, and it cannot be put back ({error.strerror}): move {out_dir!r} '
            f'away and rename {path!r} to {out_dir!r}.') from None
      logging.warning('Put back the dataset %s, which a prepare --overwrite that was killed '
                      'had moved aside to %s.', out_dir, path)
    else:
      _discard(path)


def _discard(path: str) -> None:
  """Deletes a folder, its meta first: a half-deleted dataset never looks complete."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(path, META_FILE))
  shutil.rmtree(path, ignore_errors=True)


def _claim_temp_dir(out_dir: str) -> str:
  """A fresh `out_dir.incomplete-HOST-PID`, once it is known that the rename at the end can
  replace `out_dir` (it cannot if it is a mount point or immutable, or its folder is read-only)."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  tmp, aside = _sibling(out_dir, INCOMPLETE), _sibling(out_dir, REPLACED_OLD)
  step = f'creating {parent!r}'
  try:
    os.makedirs(parent, exist_ok=True)
    if os.path.isdir(out_dir):  # what the end does to it, now: moved aside (and back)
      step = f'renaming {out_dir!r}'
      os.rename(out_dir, aside)  # a kill here leaves it to `_repair`
      os.rename(aside, out_dir)
    step = f'creating {tmp!r}'
    os.makedirs(tmp)
  except OSError as error:
    raise errors.UserError(
        f'--out={out_dir!r}: {step} failed ({error.strerror}). prepare writes the dataset '
        'beside --out and renames it onto --out once complete, so the folder holding --out '
        'must be writable and --out, if it exists, renamable (not a mount point, not '
        f'immutable); give another --out (e.g. a new folder inside {out_dir!r}).') from None
  return tmp


def _move_into_place(tmp: str, out_dir: str, overwrite: bool) -> None:
  """Renames the finished `tmp` onto `out_dir`; one filled since start-up is replaced only if
  `overwrite` and a dataset, else left as it is, `tmp` kept beside it (UserError)."""
  try:
    os.rename(tmp, out_dir)  # atomic: replaces nothing or an empty folder, else fails
    return
  except OSError as error:
    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
      raise
  if not overwrite or not os.path.exists(os.path.join(out_dir, META_FILE)):
    kept = _sibling(out_dir, KEPT)
    os.rename(tmp, kept)
    why = ('--overwrite was not given' if not overwrite else
           f'it holds no {META_FILE}, so it is not a dataset --overwrite may replace')
    raise errors.UserError(
        f'--out={out_dir!r} was filled while this prepare ran (by another prepare into it?) '
        f'and {why}: it is left as it is, and the dataset this prepare made is in {kept!r}; '
        'use it from there, move it, or delete it.')
  old = _sibling(out_dir, REPLACED_OLD)
  os.rename(out_dir, old)  # a kill from here ...
  os.rename(tmp, out_dir)  # ... to here leaves `old` to be put back by `_repair`
  _discard(old)
