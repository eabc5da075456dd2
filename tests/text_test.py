"""The text feed: windows of the document stream, per-epoch shuffling as a pure function of
(seed, row), this process's rows, global batches, a damaged dataset file, and the feed inside a
training run."""
import glob
import os

from absl.testing import absltest
import jax
import numpy as np

from ncalm import errors
from ncalm import sharding
from ncalm.data import dataset
from ncalm.data import prepare
from ncalm.data import text

EOT = 99


def documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [{'tokens': rng.integers(0, 90, n).astype(np.uint16)} for n in lengths]


def joined(records):
  """The whole stream, written out: each document's tokens, then end-of-text."""
  return np.concatenate([np.append(r['tokens'].astype(np.int32), EOT) for r in records])


def feed(records, seq_len, seed=0, shuffle=True):
  lengths = [len(r['tokens']) for r in records]
  windows = text.Windows(records, seq_len, EOT, np.array(lengths))
  meta = {'vocab_size': 100, 'bytes_per_token': 1.0}
  return text.TextFeed(windows, meta, seq_len, seed, shuffle)


class WindowsTest(absltest.TestCase):

  def test_windows_are_consecutive_slices_of_the_joined_stream(self):
    # Documents shorter and longer than a window, one empty, one exactly a window.
    records = documents([3, 0, 17, 40, 1, 9, 10, 25])
    stream = joined(records)
    windows = text.Windows(records, 9, EOT, np.array([len(r['tokens']) for r in records]))
    self.assertLen(windows, len(stream) // 10)
    # Each token's document, numbered from the window's first; an eot is its document's.
    doc_of = np.concatenate([np.full(len(r['tokens']) + 1, d) for d, r in enumerate(records)])
    for i in range(len(windows)):
      tokens, segments = windows[i]
      np.testing.assert_array_equal(tokens, stream[i * 10:(i + 1) * 10])
      self.assertEqual(tokens.dtype, np.int32)
      docs = doc_of[i * 10:(i + 1) * 10]
      np.testing.assert_array_equal(segments, docs - docs[0])

  def test_rows_are_a_pure_function_of_seed_and_row(self):
    records = documents([30] * 12)
    a, b = feed(records, 15, seed=1), feed(records, 15, seed=1)
    n = len(a.windows)
    rows = a.read_rows(0, 3 * n)
    np.testing.assert_array_equal(rows, b.read_rows(0, 3 * n))
    np.testing.assert_array_equal(rows[n + 5:n + 9], b.read_rows(n + 5, 4))  # any start
    # Each epoch is a permutation of all windows; epochs differ; another seed differs.
    all_windows = np.stack([a.windows[i][0] for i in range(n)])
    for epoch in range(3):
      got = rows[epoch * n:(epoch + 1) * n]
      self.assertEqual(sorted(map(bytes, got)), sorted(map(bytes, all_windows)))
    self.assertFalse(np.array_equal(rows[:n], rows[n:2 * n]))
    self.assertFalse(np.array_equal(rows[:n], feed(records, 15, seed=2).read_rows(0, n)))
    # Unshuffled (validation): row g is window g mod n.
    plain = feed(records, 15, shuffle=False).read_rows(0, n + 2)
    np.testing.assert_array_equal(plain[:n], all_windows)
    np.testing.assert_array_equal(plain[n:], all_windows[:2])

  def test_global_batch_from_this_process_rows(self):
    records = documents([50] * 8)
    f = feed(records, 11)
    mesh = sharding.make_mesh(dict(data=1), jax.devices()[:1])
    batch_sharding = sharding.batch_sharding(mesh)
    self.assertEqual(text.local_rows(batch_sharding, 4), (0, 4))
    rows = f.read_rows(8, 4)
    batch = text.to_global_batch(rows, batch_sharding, 4)
    np.testing.assert_array_equal(batch.inputs, rows[:, :-1])
    np.testing.assert_array_equal(batch.targets, rows[:, 1:])
    np.testing.assert_array_equal(batch.loss_mask, np.ones((4, 11), np.float32))
    self.assertEqual(batch.inputs.sharding, batch_sharding)

  def test_document_masking_batches_carry_segment_ids(self):
    f = feed(documents([7, 3, 12] * 6), 11)
    mesh = sharding.make_mesh(dict(data=1), jax.devices()[:1])
    prefetcher = text.Prefetcher(f, sharding.batch_sharding(mesh), 4, document_masking=True)
    try:
      batch = prefetcher.batch(2)
    finally:
      prefetcher.close()
    rows, segments = f.read_rows_and_segments(8, 4)
    np.testing.assert_array_equal(batch.inputs, rows[:, :-1])
    np.testing.assert_array_equal(batch.segment_ids, segments[:, :-1])
    self.assertGreater(int(np.max(segments)), 0)  # windows do hold several documents

  def test_prefetcher_returns_each_steps_batch_in_order(self):
    f = feed(documents([50] * 8), 11)
    mesh = sharding.make_mesh(dict(data=1), jax.devices()[:1])
    prefetcher = text.Prefetcher(f, sharding.batch_sharding(mesh), 4, depth=2)
    try:
      for step in range(3, 9):
        np.testing.assert_array_equal(prefetcher.batch(step).inputs,
                                      f.read_rows(step * 4, 4)[:, :-1])
        # Asked for step t, it has t + 1 .. t + depth under way, and nothing older.
        self.assertEqual(sorted(prefetcher.pending), [step + 1, step + 2])
    finally:
      prefetcher.close()


class DamagedDatasetTest(absltest.TestCase):

  def test_a_damaged_file_is_a_user_error_naming_it_from_the_prefetch_thread(self):
    corpus = self.create_tempdir('corpus')
    for i in range(12):
      corpus.create_file(f'{i:02d}.txt', f'document {i}: ' + 'lorem ipsum dolor ' * 10)
    damages = {'truncated': lambda data: data[:-1],  # an interrupted copy
               'bit-flipped': lambda data: data[:120] + bytes([data[120] ^ 4]) + data[121:]}
    for damage, change in damages.items():  # byte 120: in the first record (after 64 of header)
      with self.subTest(damage):
        data_dir = os.path.join(self.create_tempdir(damage).full_path, 'data')
        prepare.prepare(corpus.full_path, 'bytes', data_dir, validation_fraction=0.3, workers=1)
        shard, = glob.glob(os.path.join(data_dir, 'ncalm_text-train.array_record-*'))
        with open(shard, 'rb') as f:
          data = f.read()
        with open(shard, 'wb') as f:
          f.write(change(data))
        feed = text.open_feed(data_dir, 'train', 16, 0, shuffle=False)  # window 0: record 0
        mesh = sharding.make_mesh(dict(data=1), jax.devices()[:1])
        prefetcher = text.Prefetcher(feed, sharding.batch_sharding(mesh), 4)
        try:
          with self.assertRaises(errors.UserError) as raised:
            prefetcher.batch(0)
        finally:
          prefetcher.close()
        message = str(raised.exception)
        self.assertStartsWith(message, f'{shard!r} of the dataset {data_dir!r} cannot be read (')
        self.assertIn('it is damaged', message)
        self.assertEndsWith(message, f'prepare it again with '
                                     f'`{dataset.PREPARE_HINT.format(data_dir)}`.')


if __name__ == '__main__':
  absltest.main()
