"""What a prepared text dataset is, and how to read and verify one (readers import only this).

    records, meta = dataset.open_split('data/corpus', 'train')   # records[i]['tokens']

A dataset is a directory, made by `python -m ncalm.prepare` (`ncalm.data.prepare`), readable
without TensorFlow (`tfds.builder_from_directory(DIR).as_data_source(split)`): splits `train`
and `validation`, one record per document holding its token ids (`tokens`: uint16 when the
vocabulary fits, else int32, `token_dtype`; no end-of-text appended, the feed joins documents
with it), in ArrayRecord files `ncalm_text-{split}.array_record-{i:05d}-of-{n:05d}` written
with `group_size:1`; beside them `document_lengths-{split}.npy` (int64 tokens per record, in
record order) and `META_FILE` (the tokeniser and its fingerprint, counts per split, bytes per
token, the inputs, the options, what was skipped and what was replaced; `read_meta`). A
record's bytes are `serialize_tokens(ids)`, exactly what tfds writes for `features(v)`.

Next to DIR, a prepare that runs or was killed leaves folders named DIR + INCOMPLETE (the
dataset being written), REPLACED_OLD (an old dataset an --overwrite moved aside) or KEPT (a
finished dataset whose DIR was filled meanwhile), each + HOST-PID; the readers name them
when DIR is missing, and `ncalm.data.inputs` never reads them as input.

`meta['fingerprint']` (`dataset_fingerprint`) is a SHA-256 of what defines the dataset: the
tokeniser's fingerprint, the vocabulary, the counts per split and every record in order,
digested as the records are written (`add_record`, `content_fingerprint`); it does not
depend on paths, shards or options, so the same content always has the same fingerprint. A
damaged ArrayRecord file (truncated, flipped bits) is reported when read as a UserError
naming it.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np

from ncalm import errors
from ncalm import files

FORMAT = 1
META_FILE = 'ncalm_dataset.json'
DATASET_NAME = 'ncalm_text'
SPLITS = ('train', 'validation')
FILENAME_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'
ARRAY_RECORD_OPTIONS = 'group_size:1'
FINGERPRINTED = ('format', 'tokenizer_fingerprint', 'vocab_size', 'eot_id', 'token_dtype',
                 'splits')  # the meta that, with the records, defines a dataset
PREPARE_HINT = 'python -m ncalm.prepare --input=FILES --tokenizer=SPEC --out={}'
INCOMPLETE = '.incomplete-'
REPLACED_OLD = '.old-'
KEPT = '.prepared-'        # a finished dataset whose --out was filled by someone else meanwhile


# ----------------------------------------------------------------------------- reading back

def read_meta(data_dir: str) -> dict:
  """`DATA_DIR/ncalm_dataset.json`, once the directory is known to be a finished dataset."""
  make = PREPARE_HINT.format(data_dir)
  if not os.path.isdir(data_dir):
    old, left = files.siblings(data_dir, REPLACED_OLD), files.siblings(data_dir, INCOMPLETE)
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
  return content_fingerprint(meta, {split: _split_digest(data_dir, split, meta['splits'][split])
                                    for split in meta['splits']})


def content_fingerprint(meta: dict, record_digests: dict[str, str]) -> str:
  """`meta['fingerprint']`: the FINGERPRINTED meta and each split's `add_record` digest."""
  content = {**{key: meta[key] for key in FINGERPRINTED}, 'records': record_digests}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode('utf-8')).hexdigest()


def add_record(digest, record: bytes) -> None:
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
            add_record(digest, record)
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
