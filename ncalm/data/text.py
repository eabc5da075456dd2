"""The text feed: a prepared ArrayRecord dataset → windows → global batches, f(seed, step).

Documents (token ids, one record each, written by `python -m ncalm.prepare`) are joined
into one stream with the end-of-text id after each and cut into consecutive windows of
seq_len + 1 tokens (inputs = window[:-1], targets = window[1:]), with no padding (docs/
method.md §5); attention crosses document boundaries as in the paper unless
data.text.document_masking gives each window's documents segment ids. grain shuffles the
windows with a per-epoch permutation of the seed; row g of the run (step t, row r:
g = t·B + r) is always the same window, so a step's batch is a pure function of (seed, step)
and a resumed run reads exactly what an uninterrupted one would, with no iterator state to
save.

Each process reads only the rows its devices hold (`jax.make_array_from_process_local_data`
assembles the global batch), and a background thread prepares the next steps' rows while
the devices work; `Prefetcher.wait_seconds` is how long the loop waited for it.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time

import grain
import jax
import numpy as np

from ncalm import errors
from ncalm.data import batch as batch_lib
from ncalm.data import dataset as dataset_lib
from ncalm.data import tokenizers

VOCAB_MULTIPLE = 128  # the model's vocabulary = the tokeniser's, padded to a multiple of this


class Windows:
  """Random access to the windows of seq_len + 1 tokens of one split's token stream."""

  def __init__(self, records, seq_len: int, eot_id: int, lengths: np.ndarray):
    self.records, self.width, self.eot_id = records, seq_len + 1, eot_id
    # Document d occupies stream positions [starts[d], starts[d + 1]): its tokens, then eot.
    self.starts = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64) + 1)])
    self.num_windows = int(self.starts[-1] // self.width)

  def __len__(self) -> int:
    return self.num_windows

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, segment ids), int32 [seq_len + 1] each: stream tokens [index·width,
    (index + 1)·width) and, for each, which document of the window it belongs to (0, 1,
    ...; a document's end-of-text is its own)."""
    begin = int(index) * self.width
    end = begin + self.width
    first = int(np.searchsorted(self.starts, begin, side='right')) - 1
    pieces, segments, position, doc = [], [], int(self.starts[first]), first
    while position < end:
      tokens = np.asarray(self.records[doc]['tokens'], np.int32)
      pieces.append(np.append(tokens, np.int32(self.eot_id)))
      segments.append(np.full(len(tokens) + 1, doc - first, np.int32))
      position += len(tokens) + 1
      doc += 1
    offset = begin - int(self.starts[first])
    window = slice(offset, offset + self.width)
    return np.concatenate(pieces)[window], np.concatenate(segments)[window]


@dataclasses.dataclass(frozen=True)
class TextFeed:
  """One split of a prepared dataset as windows, and what the model needs to know of it."""
  windows: Windows
  meta: dict
  seq_len: int
  seed: int
  shuffle: bool
  on_device = False             # rows read by the host (`Prefetcher`), not made in the step
  tokens_per_frame = 0          # text has no frames
  # names in ncalm.eval.registry.EVALUATORS that suit it
  evaluators = ('heldout', 'induction', 'humaneval')

  @property
  def vocab_size(self) -> int:
    """The model's vocabulary: the tokeniser's padded to a multiple of VOCAB_MULTIPLE."""
    return tokenizers.padded_vocab_size(self.meta['vocab_size'], VOCAB_MULTIPLE)

  @property
  def bytes_per_token(self) -> float:
    return float(self.meta['bytes_per_token'])

  @functools.cached_property
  def rows(self):
    """grain MapDataset: row g of the run → its window (shuffled per epoch, or in order)."""
    dataset = grain.MapDataset.source(self.windows)
    if self.shuffle:
      dataset = dataset.shuffle(seed=self.seed)
    return dataset.repeat()

  def unigram_log_probs(self) -> np.ndarray:
    """log p(token) of the first UNIGRAM_SEQUENCES rows' targets (add-½ smoothing): the
    baseline that predicts each target from the token distribution alone."""
    sample = self.read_rows(0, batch_lib.UNIGRAM_SEQUENCES)[:, 1:]
    counts = np.bincount(sample.ravel(), minlength=self.vocab_size) + 0.5
    return np.log(counts / counts.sum())

  def read_rows(self, first: int, count: int) -> np.ndarray:
    """int32 [count, seq_len + 1]: rows first .. first + count - 1 of the run."""
    return self.read_rows_and_segments(first, count)[0]

  def read_rows_and_segments(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, their segment ids), int32 [count, seq_len + 1] each."""
    pairs = [self.rows[g] for g in range(first, first + count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

  def read_batch(self, first: int, count: int) -> tuple[np.ndarray, None, np.ndarray]:
    """What every host feed gives: (rows, per-target weights (None: all scored), segment
    ids) of rows first .. first + count - 1."""
    rows, segments = self.read_rows_and_segments(first, count)
    return rows, None, segments


def open_feed(data_dir: str, split: str, seq_len: int, seed: int, shuffle: bool,
              tokenizer_spec: str = '') -> TextFeed:
  """The split as windows; refuses a dataset made with another tokeniser than
  `tokenizer_spec` (when given) or too small for one window."""
  records, meta = dataset_lib.open_split(data_dir, split)
  if tokenizer_spec:
    wanted = tokenizers.load(tokenizer_spec).fingerprint
    if wanted != meta['tokenizer_fingerprint']:
      raise errors.UserError(
          f'data.text.tokenizer={tokenizer_spec!r} is not the tokeniser {data_dir!r} was '
          f'prepared with ({meta["tokenizer"]!r}; fingerprints differ): set '
          f'data.text.tokenizer={meta["tokenizer"]!r} or prepare the corpus again with yours.')
  windows = Windows(records, seq_len, meta['eot_id'], dataset_lib.document_lengths(data_dir, split))
  if len(windows) == 0:
    tokens = meta['splits'][split]['tokens']
    raise errors.UserError(
        f'The {split} split of {data_dir!r} holds {tokens:,} tokens (with one end-of-text per '
        f'document), fewer than one window of seq_len + 1 = {seq_len + 1}: use a larger '
        'corpus (or validation_fraction for the validation split) or a smaller seq_len.')
  return TextFeed(windows, meta, seq_len, seed, shuffle)


def local_rows(sharding: jax.sharding.Sharding, batch_size: int) -> tuple[int, int]:
  """(first, count): the contiguous rows of a [batch_size, ...] array this process holds."""
  indices = sharding.addressable_devices_indices_map((batch_size, 1)).values()
  starts = [index[0].start or 0 for index in indices]
  stops = [batch_size if index[0].stop is None else index[0].stop for index in indices]
  first, stop = min(starts), max(stops)
  held = set().union(*(range(a, b) for a, b in zip(starts, stops)))
  if held != set(range(first, stop)):
    raise ValueError(f'this process holds rows {sorted(held)}, not one contiguous range.')
  return first, stop - first


def to_global_batch(rows: np.ndarray, sharding, batch_size: int,
                    segments: np.ndarray | None = None,
                    weights: np.ndarray | None = None) -> batch_lib.Batch:
  """This process's rows → a global Batch sharded like `sharding`; `weights` (float32
  [rows, seq_len]) weigh each target, default all scored; with `segments` (the rows'
  segment ids) attention will stay inside each document."""
  shape = (batch_size, rows.shape[1] - 1)
  make = lambda local: jax.make_array_from_process_local_data(sharding, local, shape)
  inputs, targets = rows[:, :-1], rows[:, 1:]
  weights = np.ones(inputs.shape, np.float32) if weights is None else weights
  return batch_lib.Batch(make(inputs), make(targets), make(weights),
                         None if segments is None else make(segments[:, :-1]))


class Prefetcher:
  """Makes the host's rows of step t+1, t+2, ... in a background thread while step t runs,
  from any host feed (text windows, fine-tuning items: `read_batch`); what reading them
  raises (a damaged dataset file: a UserError) is raised by `batch`."""

  def __init__(self, feed: TextFeed, sharding, batch_size: int, depth: int = 2,
               document_masking: bool = False):
    self.feed, self.sharding, self.batch_size, self.depth = feed, sharding, batch_size, depth
    self.document_masking = document_masking
    self.first, self.count = local_rows(sharding, batch_size)
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='text_feed')
    self.pending: dict[int, concurrent.futures.Future] = {}
    self.wait_seconds = 0.0

  def _rows(self, step: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    rows, weights, segments = self.feed.read_batch(step * self.batch_size + self.first,
                                                   self.count)
    return rows, weights, segments if self.document_masking else None

  def batch(self, step: int) -> batch_lib.Batch:
    """The global batch of `step` (asked for in increasing order)."""
    for ahead in range(step, step + self.depth + 1):
      if ahead not in self.pending:
        self.pending[ahead] = self.pool.submit(self._rows, ahead)
    start = time.perf_counter()
    rows, weights, segments = self.pending.pop(step).result()
    self.wait_seconds += time.perf_counter() - start
    return to_global_batch(rows, self.sharding, self.batch_size, segments, weights)

  def close(self) -> None:
    self.pool.shutdown(wait=False, cancel_futures=True)
