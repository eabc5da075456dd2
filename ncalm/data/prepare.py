"""Text → a tensorflow-datasets ArrayRecord dataset of token ids (`python -m ncalm.prepare`).

    report = prepare.prepare('corpus/**/*.txt,notes.jsonl', 'tok.json', 'data/corpus')
    records, meta = dataset.open_split('data/corpus', 'train')   # records[i]['tokens']

This module writes a dataset; what one is and how it is read is `ncalm.data.dataset` (readers
import only that). `prepare` finds the documents and cuts them into chunks of work
(`ncalm.data.inputs`), encodes the chunks over a pool of worker processes
(`ncalm.data.encode`), and writes the records of each split as they come (`_SplitWriter`),
then the tfds metadata and `dataset.META_FILE`.

A corpus with nothing left to keep, or one whose split leaves train or validation empty, is
refused with one paragraph naming the fix. Determinism: the results are kept in input order
however many worker processes encode them, and a document's split is a keyed hash of (seed,
its text), so the same inputs and options give the same files, byte for byte.

The dataset is written into a sibling `DIR.incomplete-HOST-PID` and renamed onto DIR once
complete (`ncalm.files.sibling`). That rename is refused when DIR has been filled since
start-up (another prepare into it finished first) unless `overwrite`; the dataset made is
then kept in `DIR.prepared-HOST-PID` and named in the error. `overwrite` moves the old dataset
aside to `DIR.old-HOST-PID`, renames the new one onto DIR, then deletes the old (its meta
first, so a half-deleted one never looks complete). Every prepare first repairs what a killed
prepare of DIR on this host left (`_repair`): an old dataset moved aside while DIR is missing
is put back, the rest is removed. Before the work, prepare checks that DIR can be renamed (a
mount point cannot). Workers end with the prepare that started them, even one killed by
SIGKILL.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import time
from typing import Callable, Sequence

from absl import logging
import numpy as np

from ncalm import errors
from ncalm import files
from ncalm.data import dataset
from ncalm.data import encode
from ncalm.data import inputs as inputs_lib
from ncalm.data import tokenizers

EXAMPLES = 5               # places named per kind of skipped input


@dataclasses.dataclass(frozen=True)
class Report:
  """What `prepare` wrote and how long it took."""
  out_dir: str
  meta: dict
  input_files: int
  input_bytes: int
  workers: int
  seconds: float


class _SplitWriter:
  """One split's shards (a new one past shard_bytes), counts and document lengths."""

  def __init__(self, directory: str, split: str, shard_bytes: int):
    self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
    self.shard_lengths: list[int] = []
    self.documents = self.tokens = self.text_bytes = self.num_bytes = 0
    self.digest = hashlib.sha256()  # of the records in order (`dataset.content_fingerprint`)
    self._writer, self._shard_size = None, 0
    self._lengths = open(  # pylint: disable=consider-using-with
        self._path(f'lengths-{self.split}.tmp'), 'wb')

  def _path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def _shard(self, i: int, n: int | None = None) -> str:
    name = f'{dataset.DATASET_NAME}-{self.split}.array_record-{i:05d}'
    return self._path(name if n is None else f'{name}-of-{n:05d}')

  def write(self, record: bytes, tokens: int, text_bytes: int) -> None:
    if self._writer is None or self._shard_size >= self.shard_bytes:
      from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
      self._close_shard()
      self._writer = array_record_module.ArrayRecordWriter(
          self._shard(len(self.shard_lengths)), dataset.ARRAY_RECORD_OPTIONS)
      self.shard_lengths.append(0)
      self._shard_size = 0
    self._writer.write(record)
    dataset.add_record(self.digest, record)
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


def prepare(inputs: str | Sequence[str], tokenizer: str, out_dir: str, *,
            text_field: str = 'text', validation_fraction: float = 0.01, seed: int = 0,
            workers: int = 0, shard_mb: float = 512, overwrite: bool = False,
            progress: Callable[[int, int, int], None] | None = None) -> Report:
  """Tokenises `inputs` with the tokeniser spec `tokenizer` into the dataset `out_dir`.

  Args:
    inputs: comma-separated (or a list of) files, globs, directories, .jsonl files, tfds:NAME
      or hf:NAME (`ncalm.data.inputs`).
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
  workers = workers or encode.default_workers()
  tok = tokenizers.load(tokenizer)
  _check_out_dir(out_dir, overwrite)
  items = inputs_lib.resolve_inputs(inputs, exclude=out_dir)
  remotes = {i.path: inputs_lib.Remote(i.path, text_field) for i in items
             if i.kind in ('tfds', 'hf')}
  if not remotes:  # no more processes than chunks of work
    workers = min(workers, max(1, -(-sum(i.size for i in items) // inputs_lib.CHUNK_BYTES)))
  tmp = _claim_temp_dir(out_dir)
  writers: list[_SplitWriter] = []
  try:
    encoder = encode.Encoder(tok, text_field, validation_fraction, seed)
    writers = [_SplitWriter(tmp, split, int(shard_mb * 1e6)) for split in dataset.SPLITS]
    skipped: list[tuple[str, str]] = []
    replaced: list[tuple[str, int]] = []
    total_bytes = 0 if remotes else sum(i.size for i in items)
    done_bytes = done_documents = 0
    with contextlib.closing(encode.results(inputs_lib.chunks(items, remotes, skipped), encoder,
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
             for reason in inputs_lib.SKIP_REASONS}
    _check_splits(writers, skips, validation_fraction)
    for writer in writers:
      writer.finish()
    _write_tfds_metadata(tmp, tok.vocab_size, writers)
    train = writers[0]
    meta = {
        'format': dataset.FORMAT,
        'tokenizer': tokenizer,
        'tokenizer_fingerprint': tok.fingerprint,
        'vocab_size': tok.vocab_size,
        'eot_id': tok.eot_id,
        'token_dtype': dataset.token_dtype(tok.vocab_size).name,
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
    meta['fingerprint'] = dataset.content_fingerprint(
        meta, {w.split: w.digest.hexdigest() for w in writers})
    with open(os.path.join(tmp, dataset.META_FILE), 'w', encoding='utf-8') as f:
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
    what = '; '.join(f'{s["count"]} {inputs_lib.SKIP_REASONS[r]} (e.g. '
                     f'{", ".join(s["examples"][:3])})' for r, s in skips.items() if s['count'])
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
      data_dir=directory, features=dataset.features(vocab_size), split_infos=split_infos,
      filename_template=dataset.FILENAME_TEMPLATE, check_data=False)


# ----------------------------------------------------------------------------- into place

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
    if not os.path.exists(os.path.join(out_dir, dataset.META_FILE)):
      raise errors.UserError(f'--out={out_dir!r} is not a dataset made by ncalm.prepare (no '
                             f'{dataset.META_FILE}), so --overwrite will not delete it; give '
                             'another --out or empty it yourself.')


def _repair(out_dir: str) -> None:
  """Undoes what killed prepares of `out_dir` on this host left: puts back the dataset an
  --overwrite moved aside when `out_dir` holds none, and removes the rest; refuses while
  another prepare of `out_dir` runs. Every prepare does this first, whatever follows."""
  for path in (files.siblings(out_dir, dataset.REPLACED_OLD) +
               files.siblings(out_dir, dataset.INCOMPLETE)):
    kind = (dataset.REPLACED_OLD if path.startswith(out_dir + dataset.REPLACED_OLD)
            else dataset.INCOMPLETE)
    owner_host, pid = files.sibling_owner(path, out_dir, kind)
    mine = (owner_host == socket.gethostname() and pid.isdigit() and
            int(pid) == os.getpid())  # left by an earlier call here
    if not (mine or files.left_by_dead_process(path, out_dir, kind)):
      fix = (f'rename it back to {out_dir!r} if {out_dir!r} is missing, else delete it'
             if kind == dataset.REPLACED_OLD else 'delete the folder')
      raise errors.UserError(f'{path!r} belongs to another prepare of {out_dir!r} (process '
                             f'{pid} on {owner_host}); wait for it to finish, or {fix} if that '
                             'prepare is no longer running.')
    if kind == dataset.REPLACED_OLD and os.path.exists(
        os.path.join(path, dataset.META_FILE)) and not os.path.exists(
            os.path.join(out_dir, dataset.META_FILE)):
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
    os.remove(os.path.join(path, dataset.META_FILE))
  shutil.rmtree(path, ignore_errors=True)


def _claim_temp_dir(out_dir: str) -> str:
  """A fresh `out_dir.incomplete-HOST-PID`, once it is known that the rename at the end can
  replace `out_dir` (it cannot if it is a mount point or immutable, or its folder is read-only)."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  aside = files.sibling(out_dir, dataset.REPLACED_OLD)
  step = f'creating {parent!r}'
  try:
    os.makedirs(parent, exist_ok=True)
    if os.path.isdir(out_dir):  # what the end does to it, now: moved aside (and back)
      step = f'renaming {out_dir!r}'
      os.rename(out_dir, aside)  # a kill here leaves it to `_repair`
      os.rename(aside, out_dir)
    step = f'creating {files.sibling(out_dir, dataset.INCOMPLETE)!r}'
    tmp = files.claim_sibling(out_dir, dataset.INCOMPLETE)
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
  if not overwrite or not os.path.exists(os.path.join(out_dir, dataset.META_FILE)):
    kept = files.sibling(out_dir, dataset.KEPT)
    os.rename(tmp, kept)
    why = ('--overwrite was not given' if not overwrite else
           f'it holds no {dataset.META_FILE}, so it is not a dataset --overwrite may replace')
    raise errors.UserError(
        f'--out={out_dir!r} was filled while this prepare ran (by another prepare into it?) '
        f'and {why}: it is left as it is, and the dataset this prepare made is in {kept!r}; '
        'use it from there, move it, or delete it.')
  old = files.sibling(out_dir, dataset.REPLACED_OLD)
  os.rename(out_dir, old)  # a kill from here ...
  os.rename(tmp, out_dir)  # ... to here leaves `old` to be put back by `_repair`
  _discard(old)
