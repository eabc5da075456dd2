"""Chunks of input → records of token ids, over a pool of worker processes (`ncalm.data.prepare`).

    encoder = encode.Encoder(tokenizers.load('bytes'), 'text', validation_fraction=0.01, seed=0)
    for result in encode.results(inputs.chunks(items, {}, skipped), encoder, workers=4):

`Encoder` turns an `ncalm.data.inputs.Chunk` into a `Result`: each document's record
(`dataset.serialize_tokens`), its split, its tokens and bytes, and what was skipped or
replaced. Invalid UTF-8 is replaced by U+FFFD, as Python's 'replace' does, and counted per
document (so decode(record) is the text with those replacements; `decode_utf8`); a document
goes to validation when a keyed hash of (seed, its text) falls below validation_fraction, so
identical documents always share a split.

Documents longer than PIECE_CHARS characters are encoded in pieces (the tokenisers' own
buffers grow to ~100× the text), cut before a space between two non-space characters
(`cut_points`), where GPT-2-style pre-tokenisers (byte-level BPE, tiktoken) and SentencePiece
split anyway: the ids equal encoding the whole (tested for a byte-level BPE and a
SentencePiece BPE trained with SENTENCEPIECE_LOSSLESS_OPTIONS). A stretch of PIECE_CHARS
without such a space is cut where it ends; ids there may differ, the decoded text does not.

`results` runs the encoder over `workers` processes (1: this one) and yields the results in
the order of the chunks, however many workers encode them. Workers end with the process that
started them, even one killed by SIGKILL.
"""
from __future__ import annotations

import codecs
import collections
from concurrent import futures
import ctypes
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import signal
import threading
import time
from typing import Iterator

import numpy as np

from ncalm import errors
from ncalm.data import dataset
from ncalm.data import inputs
from ncalm.data import tokenizers

PIECE_CHARS = 1 << 18      # longer documents are encoded in pieces (memory, not speed)
CUT_WINDOW = 4096          # how far back from a piece's end a cut point is looked for
PR_SET_PDEATHSIG = 1       # linux/prctl.h
_CUT = re.compile(r'(?<=\S) (?=\S)')
_SURROGATE = re.compile('[\ud800-\udfff]')


@dataclasses.dataclass
class Result:
  records: list[bytes]
  validation: list[bool]
  tokens: list[int]
  text_bytes: list[int]
  skipped: list[tuple[str, str]]   # (reason, place)
  replaced: list[tuple[str, int]]  # (place, invalid UTF-8 sequences replaced by U+FFFD)
  input_bytes: int


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


def cut_points(text: str, piece_chars: int | None = None) -> list[int]:
  """Where a long text is cut into pieces of at most `piece_chars` (default PIECE_CHARS,
  read at the call) characters: before a space between two non-space characters, else at
  the piece's end."""
  piece_chars = piece_chars or PIECE_CHARS
  cuts, start = [], 0
  while len(text) - start > piece_chars:
    end = start + piece_chars
    cut = end
    for match in _CUT.finditer(text, max(start + 1, end - CUT_WINDOW), end):
      cut = match.start()
    cuts.append(cut)
    start = cut
  return cuts


class Encoder:
  """Turns a chunk into records; runs in each worker process (pickled by tokeniser spec)."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, text_field: str,
               validation_fraction: float, seed: int):
    self.tokenizer, self.text_field = tokenizer, text_field
    self.validation_fraction, self.seed = validation_fraction, seed
    self.dtype = dataset.token_dtype(tokenizer.vocab_size)

  def is_validation(self, text_bytes: bytes) -> bool:
    digest = hashlib.blake2b(text_bytes, digest_size=8, key=b'ncalm-split-%d' % self.seed)
    return int.from_bytes(digest.digest(), 'big') < self.validation_fraction * 2.0**64

  def __call__(self, chunk: inputs.Chunk) -> Result:
    result = Result([], [], [], [], [], [], chunk.input_bytes)
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
      result.records.append(dataset.serialize_tokens(ids))
      result.validation.append(self.is_validation(data))
      result.tokens.append(int(ids.size))
      result.text_bytes.append(len(data))
    return result

  def _text(self, chunk: inputs.Chunk, i: int, place: str, skipped: list):
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
      if b'\0' in data[:inputs.SNIFF_BYTES]:
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
      value = value.get(self.text_field, inputs.Missing(', '.join(sorted(map(str, value))[:8])
                                                        or 'none'))
    if isinstance(value, inputs.Missing):
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
      while end < len(pieces) and (end == start or
                                   size + len(pieces[end]) <= inputs.CHUNK_BYTES):
        size += len(pieces[end])
        end += 1
      for owner, ids in zip(owners[start:end], self.tokenizer.encode_batch(pieces[start:end])):
        parts[owner].append(ids.astype(self.dtype))
      start = end
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]


# ----------------------------------------------------------------------------- worker pool

_WORKER: Encoder | None = None


def _init_worker(encoder: Encoder, parent: int) -> None:
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


def _work(chunk: inputs.Chunk) -> Result:
  return _WORKER(chunk)


def results(chunks: Iterator[inputs.Chunk], encoder: Encoder, workers: int) -> Iterator[Result]:
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


def default_workers() -> int:
  """The cores this process may use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1
