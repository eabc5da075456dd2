"""Batches a step can eat: NCA and Dyck sources behind one interface."""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ncalm.data import device_sources
from ncalm.data import dyck
from ncalm.data import nca
from ncalm.data import nca_tokens

import published_reference as published

CFG = nca.NCAConfig()


class NCASourceTest(absltest.TestCase):

  def test_batch_layout(self):
    bank = jax.random.split(jax.random.PRNGKey(0), 5)
    source = device_sources.NCASource(CFG, seq_len=1024, rule_keys=bank)
    batch_fn = jax.jit(lambda src, key: src.batch(key, 4))
    batch = batch_fn(source, jax.random.PRNGKey(1))
    self.assertEqual(batch.inputs.shape, (4, 1024))
    self.assertEqual(batch.inputs.dtype, jnp.int32)
    np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
    np.testing.assert_array_equal(batch.loss_mask[0], nca_tokens.loss_mask(1024, CFG))
    self.assertEqual(source.vocab_size, 10002)
    self.assertLess(int(batch.targets.max()), source.vocab_size)
    # Each row is whole frames of the simulated trajectory, first frame delimited.
    np.testing.assert_array_equal(batch.inputs[:, 0], nca_tokens.start_of_frame(CFG))
    # The same key gives the same batch; the bank is an argument, not a constant.
    np.testing.assert_array_equal(batch_fn(source, jax.random.PRNGKey(1)).inputs, batch.inputs)
    other = device_sources.NCASource(CFG, seq_len=1024, rule_keys=bank[::-1])
    batch_fn(other, jax.random.PRNGKey(1))
    self.assertEqual(batch_fn._cache_size(), 1)

  def test_rules_come_from_the_bank_and_reference_mode_is_exact(self):
    bank = jax.random.split(jax.random.PRNGKey(2), 3)
    source = device_sources.NCASource(CFG, seq_len=200, mode='reference', rule_keys=bank)
    key = jax.random.PRNGKey(3)
    rule_keys, sim_keys = source.row_keys(key, 2)
    for rk in np.asarray(rule_keys):
      self.assertTrue(np.any(np.all(np.asarray(bank) == rk, axis=1)))
    batch = source.batch(key, 2)
    frames = nca_tokens.frames_needed(200, CFG)
    for i in range(2):
      want = published.tokenize(published.simulate(rule_keys[i], sim_keys[i], frames=frames))
      np.testing.assert_array_equal(batch.inputs[i], want[:200])
      np.testing.assert_array_equal(batch.targets[i], want[1:201])

  def test_fresh_rules_without_a_bank(self):
    source = device_sources.NCASource(CFG, seq_len=100)
    rule_keys, _ = source.row_keys(jax.random.PRNGKey(4), 3)
    self.assertLen(np.unique(np.asarray(rule_keys), axis=0), 3)

  def test_bad_settings(self):
    with self.assertRaisesRegex(ValueError, 'mode'):
      device_sources.NCASource(CFG, mode='exact')
    with self.assertRaisesRegex(ValueError, 'seq_len'):
      device_sources.NCASource(CFG, seq_len=10)


class DyckSourceTest(absltest.TestCase):

  def test_batch(self):
    cfg = dyck.DyckConfig(num_types=8, max_depth=4)
    source = device_sources.DyckSource(cfg, seq_len=64)
    batch = jax.jit(lambda s, k: s.batch(k, 3))(source, jax.random.PRNGKey(0))
    want = dyck.dyck_batch(jax.random.PRNGKey(0), 3, 65, cfg)
    np.testing.assert_array_equal(batch.inputs, want[:, :64])
    np.testing.assert_array_equal(batch.targets, want[:, 1:])
    np.testing.assert_array_equal(batch.loss_mask, 1.0)
    self.assertEqual(source.vocab_size, 16)


if __name__ == '__main__':
  absltest.main()
