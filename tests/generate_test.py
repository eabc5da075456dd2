"""Export of NCA sequences: same flags, same file; npz and ArrayRecord readable."""
import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import flagsaver
import grain
import jax
import numpy as np

from ncalm import complexity
from ncalm import generate
from ncalm import nca
from ncalm import tokens
import published_reference as published

CFG = nca.NCAConfig()


class GenerateTest(absltest.TestCase):

  def test_reference_export_is_the_published_generator(self):
    data = generate.generate(3, rule_seed=5, sim_seed=7, band=None, mode='reference',
                             seq_len=100, chunk=2)
    frames = tokens.frames_needed(100, CFG)
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
    data = generate.generate(4, rule_seed=1, band=(0.5, 1.0), seq_len=100)
    bank = complexity.sample_rule_bank(jax.random.PRNGKey(1), 4, (0.5, 1.0), CFG)
    np.testing.assert_array_equal(data['rule_keys'], bank.keys)
    self.assertTrue(np.all(complexity.in_band(data['gzip_scores'], (0.5, 1.0))))

  def test_cli_npz_and_array_record(self):
    with tempfile.TemporaryDirectory() as tmp:
      npz, rec = os.path.join(tmp, 'a.npz'), os.path.join(tmp, 'b.array_record')
      for out in (npz, rec):
        with flagsaver.flagsaver(out=out, count=3, band='none', seq_len=100, rule_seed=2):
          generate.main([])
      with np.load(npz) as data:
        data = {k: data[k] for k in data.files}
      source = grain.sources.ArrayRecordDataSource(rec)
      self.assertLen(source, 3)
      for i in range(3):
        item = generate.read_record(source[i])
        for field in generate.PER_SEQUENCE:
          np.testing.assert_array_equal(item[field], data[field][i])
      self.assertEqual(json.load(open(rec + '.json'))['count'], 3)
      self.assertEqual(sorted(os.listdir(tmp)), ['a.npz', 'b.array_record', 'b.array_record.json'])

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'band'):
      generate.parse_band('0.5-1.0')
    with self.assertRaisesRegex(ValueError, 'band'):
      generate.parse_band('0.7,0.2')
    self.assertIsNone(generate.parse_band('none'))
    with flagsaver.flagsaver(out='/tmp/x.csv'):
      with self.assertRaisesRegex(Exception, '--out'):
        generate.main([])


if __name__ == '__main__':
  absltest.main()
