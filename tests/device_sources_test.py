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

  def test_shuffled_controls_keep_every_token_and_lose_the_order(self):
    """data.shuffle: the same trajectory (same keys) with its frames reordered, or each
    frame's patches moved; never a token added or lost."""
    cfg = CFG                                  # 12×12, 2×2 patches: 36 per frame
    bank = jax.random.split(jax.random.PRNGKey(3), 4)
    tpf = nca_tokens.tokens_per_frame(cfg)
    seq_len = 10 * tpf - 1                     # ten whole frames per row
    keys = device_sources.NCASource(cfg, seq_len, rule_keys=bank).row_keys(
        jax.random.PRNGKey(4), 3)
    rows = {kind: np.asarray(jax.jit(lambda src, k: src.rows(k))(
        device_sources.NCASource(cfg, seq_len, rule_keys=bank, shuffle=kind), keys))
            for kind in device_sources.SHUFFLES}
    frames = {k: np.asarray(nca_tokens.tokens_to_frames(v, cfg)) for k, v in rows.items()}
    plain = frames['']
    self.assertEqual(plain.shape, (3, 10, 12, 12))
    sim_keys = keys[1]
    for b in range(3):   # the reference: numpy indexing with the permutations of the keys
      key = jax.random.fold_in(sim_keys[b], device_sources.SHUFFLE_KEY)
      np.testing.assert_array_equal(frames['frames'][b],
                                    plain[b][np.asarray(jax.random.permutation(key, 10))])
      for t, frame_key in enumerate(jax.random.split(key, 10)):
        order = np.asarray(jax.random.permutation(frame_key, 36))
        tiles = plain[b, t].reshape(6, 2, 6, 2).swapaxes(1, 2).reshape(36, 2, 2)
        want = tiles[order].reshape(6, 6, 2, 2).swapaxes(1, 2).reshape(12, 12)
        np.testing.assert_array_equal(frames['patches'][b, t], want)
    self.assertFalse(np.array_equal(frames['frames'], plain))
    self.assertFalse(np.array_equal(frames['patches'], plain))
    for kind in ('frames', 'patches'):   # every token kept: the unigram counts are the same
      np.testing.assert_array_equal(np.bincount(rows[kind].ravel()),
                                    np.bincount(rows[''].ravel()))
    with self.assertRaisesRegex(Exception, r"data.shuffle='rows': use one of"):
      device_sources.NCASource(cfg, seq_len, shuffle='rows')

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
