"""Finding what a prepare reads, and cutting it into chunks of work (`ncalm.data.prepare`).

    for chunk in inputs.chunks(inputs.resolve_inputs('corpus/**/*.txt,notes.jsonl'), {}, []):

Inputs (comma-separated): files and globs (`**` recurses) of plain text or code, one document
per file; `.jsonl` files, one document per line in the field `text_field` (a line that is not
JSON or lacks the field is skipped, counted and named); directories (every file under them,
recursively, except hidden ones). For machines with network, two more kinds, untested here
(nothing can be downloaded offline; without network each fails with a UserError):
`tfds:NAME[@SPLIT]` reads a tensorflow-datasets dataset already built in TFDS_DATA_DIR in the
ArrayRecord format (`tfds build NAME --file_format=array_record`), and `hf:PATH[:CONFIG][@SPLIT]`
streams a Hugging Face dataset (`pip install datasets`); both take the text from `text_field`
(`Remote`).

Documents are read in the order of `--input`, each glob's or directory's files sorted, each
file once, never the output dataset or the folders a prepare leaves beside it. A glob that
matches nothing or a missing file is refused with one paragraph naming the fix. The work is
cut into `Chunk`s in that order, of at most CHUNK_BYTES input bytes and CHUNK_DOCUMENTS
documents: runs of regular text files (read by the workers), JSON lines (read here) and texts
of remote datasets. Empty and binary files (a NUL byte in the first SNIFF_BYTES) are skipped,
here for .jsonl files, in `ncalm.data.encode` for the rest; SKIP_REASONS names every reason.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import stat
from typing import Iterator, Sequence

from ncalm import errors
from ncalm.data import dataset

SNIFF_BYTES = 8192         # a NUL byte in the first SNIFF_BYTES makes a file binary
CHUNK_BYTES = 1 << 20      # input bytes per unit of work a worker encodes in one batch
CHUNK_DOCUMENTS = 1024     # ... and at most this many documents
SKIP_REASONS = {           # reason → what it means, for the summary
    'empty': 'empty (no text)',
    'binary': 'binary (a NUL byte in the first 8 KB: not text, or UTF-16)',
    'bad_json': 'not a JSON object',
    'missing_field': 'without the text field',
    'field_not_text': 'whose text field is not a string',
    'no_tokens': 'encoding to no tokens',
}
_GLOB_CHARS = re.compile(r'[*?[]')


@dataclasses.dataclass(frozen=True)
class Input:
  """A file to read (`kind` text or jsonl), or a remote dataset (tfds, hf)."""
  kind: str
  path: str
  size: int
  regular: bool = True  # a regular file; others (pipes) are read alone, their size unknown


def resolve_inputs(inputs: str | Sequence[str], exclude: str = '') -> list[Input]:
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
      found.append(Input(entry.split(':', 1)[0], entry, 0))
      continue
    for path in _expand(entry):
      real = os.path.realpath(path)
      if real in seen or (exclude and (real == exclude or real.startswith(
          (exclude + os.sep, exclude + dataset.INCOMPLETE, exclude + dataset.REPLACED_OLD,
           exclude + dataset.KEPT)))):
        continue
      seen.add(real)
      kind = 'jsonl' if path.endswith('.jsonl') else 'text'
      try:
        status = os.stat(path)
      except OSError as error:
        raise errors.UserError(f'--input: cannot read {path!r} ({error.strerror}).') from None
      found.append(Input(kind, path, status.st_size, stat.S_ISREG(status.st_mode)))
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


class Remote:
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
        yield f'{self.entry}#{index}', Missing(', '.join(keys) or 'none')


@dataclasses.dataclass(frozen=True)
class Missing:
  """Stands for the text of a record that lacks the text field; `fields` are those it has."""
  fields: str


# ----------------------------------------------------------------------------- work units

@dataclasses.dataclass
class Chunk:
  """Documents a worker encodes together: files to read, JSON lines, or texts."""
  kind: str                   # 'files' | 'lines' | 'texts'
  places: list[str]           # a path, 'path:line' or 'tfds:...#index' per document
  payloads: list | None       # None (files), line bytes, or texts
  input_bytes: int


def chunks(items: list[Input], remotes: dict[str, Remote],
           skipped: list[tuple[str, str]]) -> Iterator[Chunk]:
  """The work, in input order; files are read by the workers, JSON lines here."""
  batch: list[Input] = []
  size = 0
  for item in items + [None]:
    if batch and (item is None or item.kind != 'text' or not item.regular or
                  not batch[-1].regular or len(batch) >= CHUNK_DOCUMENTS or size >= CHUNK_BYTES):
      yield Chunk('files', [i.path for i in batch], None, size)
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


def _jsonl_chunks(path: str, skipped: list[tuple[str, str]]) -> Iterator[Chunk]:
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
        yield Chunk('lines', places, lines, size)
        places, lines, size = [], [], 0
    if lines:
      yield Chunk('lines', places, lines, size)
    if not any_line:
      skipped.append(('empty', path))


def _text_chunks(texts: Iterator[tuple[str, object]]) -> Iterator[Chunk]:
  places, payloads, size = [], [], 0
  for place, text in texts:
    places.append(place)
    payloads.append(text)
    size += len(text) if isinstance(text, (str, bytes)) else 0
    if size >= CHUNK_BYTES or len(places) >= CHUNK_DOCUMENTS:
      yield Chunk('texts', places, payloads, size)
      places, payloads, size = [], [], 0
  if places:
    yield Chunk('texts', places, payloads, size)
