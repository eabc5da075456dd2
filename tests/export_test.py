"""Export of NCA sequences: same flags, same file; npz and ArrayRecord readable."""
import hashlib
import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import flagsaver
import grain
import jax
import numpy as np

from ncalm import errors
from ncalm import files
from ncalm.data import complexity
from ncalm.data import nca
from ncalm.data import nca_tokens
from ncalm.tools import export

import published_reference as published

CFG = nca.NCAConfig()


def fake_export(count: int, seed: int) -> dict[str, np.ndarray]:
  """The fields of an export, random (no simulation): enough to exercise the writers."""
  rng = np.random.default_rng(seed)
  return dict(tokens=rng.integers(0, 100, (count, 38), np.int32),
              grids=rng.integers(0, 10, (count, 1, 12, 12)).astype(np.int8),
              rule_keys=rng.integers(0, 2**32, (count, 2), np.uint32),
              sim_keys=rng.integers(0, 2**32, (count, 2), np.uint32),
              gzip_scores=rng.random(count), loss_mask=np.ones(37, np.float32),
              config=np.array(json.dumps(dict(count=count, seed=seed))))


class Killed(BaseException):
  """Stands for the signal that kills an export half-way."""


class UnprintableConfig:
  """A config whose text cannot be made: the export dies while writing the sidecar."""

  def __str__(self):
    raise Killed()


def read_all(folder: str) -> dict[str, tuple[int, str]]:
  """{file name: (size, sha256)} of every file in the folder: equal iff byte-identical."""
  contents = {}
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    contents[name] = (len(data), hashlib.sha256(data).hexdigest())
  return contents


class GenerateTest(absltest.TestCase):

  def test_reference_export_is_the_published_generator(self):
    data = export.generate(3, rule_seed=5, sim_seed=7, band=None, mode='reference',
                             seq_len=100, chunk=2)
    frames = nca_tokens.frames_needed(100, CFG)
    np.testing.assert_array_equal(data['sim_keys'], jax.random.split(jax.random.PRNGKey(7), 3))
    np.testing.assert_array_equal(data['rule_keys'], jax.random.split(jax.random.PRNGKey(5), 3))
    for i in range(3):
      grid = published.simulate(data['rule_keys'][i], data['sim_keys'][i], frames=frames)
      np.testing.assert_array_equal(data['grids'][i], grid)
      np.testing.assert_array_equal(data['tokens'][i], published.tokenize(grid))
    scores = complexity.score_rules(data['rule_keys'],
                                    jax.random.split(data['rule_keys'][0], 3), CFG, 'reference')
    np.testing.assert_array_equal(data['gzip_scores'], scores)
    self.assertEqual(json.loads(str(data['config']))['nca']['frames'], frames)

  def test_band_export(self):
    data = export.generate(4, rule_seed=1, band=(0.5, 1.0), seq_len=100)
    bank = complexity.sample_rule_bank(jax.random.PRNGKey(1), 4, (0.5, 1.0), CFG)
    np.testing.assert_array_equal(data['rule_keys'], bank.keys)
    self.assertTrue(np.all(complexity.in_band(data['gzip_scores'], (0.5, 1.0))))

  def test_cli_npz_and_array_record(self):
    with tempfile.TemporaryDirectory() as tmp:
      npz, rec = os.path.join(tmp, 'a.npz'), os.path.join(tmp, 'b.array_record')
      for out in (npz, rec):
        with flagsaver.flagsaver(out=out, count=3, band='none', seq_len=100, rule_seed=2):
          export.main([])
      with np.load(npz) as data:
        data = {k: data[k] for k in data.files}
      source = grain.sources.ArrayRecordDataSource(rec)
      self.assertLen(source, 3)
      for i in range(3):
        item = export.read_record(source[i])
        for field in export.PER_SEQUENCE:
          np.testing.assert_array_equal(item[field], data[field][i])
      self.assertEqual(json.load(open(rec + '.json'))['count'], 3)
      self.assertEqual(sorted(os.listdir(tmp)), ['a.npz', 'b.array_record', 'b.array_record.json'])

  def test_killed_array_record_export_keeps_the_previous_files(self):
    with tempfile.TemporaryDirectory() as tmp:
      rec = os.path.join(tmp, 'b.array_record')
      export.write_array_record(rec, fake_export(3, seed=0))
      before = read_all(tmp)
      self.assertEqual(sorted(before), ['b.array_record', 'b.array_record.json'])
      # Killed after the first of 3 records of the new export.
      real = export.record_bytes
      def dies_at_the_second(data, i):
        if i == 1:
          raise Killed()
        return real(data, i)
      with mock.patch.object(export, 'record_bytes', dies_at_the_second):
        with self.assertRaises(Killed):
          export.write_array_record(rec, fake_export(3, seed=1))
      self.assertEqual(read_all(tmp), before)

  def test_killed_while_writing_the_sidecar_keeps_the_previous_files(self):
    with tempfile.TemporaryDirectory() as tmp:
      rec = os.path.join(tmp, 'b.array_record')
      export.write_array_record(rec, fake_export(3, seed=0))
      before = read_all(tmp)
      # Every record written, then killed while the sidecar is written.
      data = dict(fake_export(3, seed=2), config=UnprintableConfig())
      with self.assertRaises(Killed):
        export.write_array_record(rec, data)
      self.assertEqual(read_all(tmp), before)   # not a 0-byte .json beside the old data

  def test_killed_npz_export_keeps_the_previous_file(self):
    with tempfile.TemporaryDirectory() as tmp:
      npz = os.path.join(tmp, 'a.npz')
      export.write_npz(npz, fake_export(2, seed=0))
      before = read_all(tmp)
      with mock.patch.object(np, 'savez_compressed', side_effect=Killed()):
        with self.assertRaises(Killed):
          export.write_npz(npz, fake_export(2, seed=1))
      self.assertEqual(read_all(tmp), before)

  def test_stale_temp_files_of_a_killed_export_are_removed(self):
    with tempfile.TemporaryDirectory() as tmp:
      npz, rec = os.path.join(tmp, 'a.npz'), os.path.join(tmp, 'b.array_record')
      stale = [npz + '.tmp', files.tmp_path_for(npz), rec + '.tmp', files.tmp_path_for(rec),
               files.tmp_path_for(rec + '.json')]
      for path in stale:
        with open(path, 'wb') as f:
          f.write(b'half an export')
      data = fake_export(2, seed=3)
      export.write_npz(npz, data)
      export.write_array_record(rec, data)
      self.assertEqual(sorted(os.listdir(tmp)),
                       ['a.npz', 'b.array_record', 'b.array_record.json'])
      with np.load(npz) as loaded:
        np.testing.assert_array_equal(loaded['tokens'], data['tokens'])
      source = grain.sources.ArrayRecordDataSource(rec)
      self.assertLen(source, 2)
      np.testing.assert_array_equal(export.read_record(source[1])['tokens'],
                                    data['tokens'][1])
      self.assertEqual(json.load(open(rec + '.json')), dict(count=2, seed=3))

  def test_bad_input(self):
    with self.assertRaisesRegex(errors.UserError, '--band'):
      export.parse_band('0.5-1.0')
    with self.assertRaisesRegex(errors.UserError, '--band=.0.7,0.2.*low < high'):
      export.parse_band('0.7,0.2')
    self.assertIsNone(export.parse_band('none'))
    with flagsaver.flagsaver(out='/tmp/x.csv'):
      with self.assertRaisesRegex(errors.UserError, '--out'):
        export.main([])
    with flagsaver.flagsaver(out='/tmp/x.npz', count=0):
      with self.assertRaisesRegex(errors.UserError, '--count=0'):
        export.main([])


if __name__ == '__main__':
  absltest.main()
