"""Patch tokens, delimiters, sequence layout and loss mask (docs/method.md §2)."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ncalm.data import nca
from ncalm.data import nca_tokens

import published_reference as published
from testdata import published_vectors

CFG = nca.NCAConfig()


class TokensTest(parameterized.TestCase):

  def test_published_vectors(self):
    v = published_vectors()
    got = nca_tokens.frames_to_tokens(jnp.asarray(v['grids']), CFG)
    np.testing.assert_array_equal(got, v['tokens'])
    self.assertEqual(got.dtype, jnp.int32)

  def test_patch_id_layout(self):
    frame = np.zeros((12, 12), np.int32)
    frame[0:2, 0:2] = [[1, 2], [3, 4]]       # first patch: 1 + 10*2 + 100*3 + 1000*4
    frame[0:2, 2:4] = [[9, 0], [0, 0]]       # second patch, same patch row
    frame[2:4, 0:2] = [[0, 0], [0, 7]]       # first patch of the second patch row
    ids = np.asarray(nca_tokens.encode_frames(jnp.asarray(frame), CFG))
    self.assertEqual(ids.shape, (36,))
    self.assertEqual(ids[0], 4321)
    self.assertEqual(ids[1], 9)
    self.assertEqual(ids[6], 7000)

  @parameterized.named_parameters(
      ('published', {}),
      ('big_patch', {'grid': 8, 'patch': 4, 'num_states': 3}),
      ('many_states', {'grid': 6, 'patch': 3, 'num_states': 7}),
  )
  def test_round_trip_and_plain_reference(self, changes):
    cfg = CFG.replace(**changes)
    frames = jax.random.randint(jax.random.PRNGKey(0), (2, 5, cfg.grid, cfg.grid), 0,
                                cfg.num_states)
    toks = nca_tokens.frames_to_tokens(frames, cfg)
    self.assertEqual(toks.shape, (2, 5 * nca_tokens.tokens_per_frame(cfg)))
    np.testing.assert_array_equal(nca_tokens.tokens_to_frames(toks, cfg), frames)
    self.assertLess(int(toks.max()), nca_tokens.vocab_size(cfg))
    for i in range(2):
      np.testing.assert_array_equal(
          toks[i], published.tokenize(frames[i], cfg.patch, cfg.num_states))

  def test_strip_delimiters(self):
    v = published_vectors()
    ids = nca_tokens.strip_delimiters(v['tokens'][:, :380], CFG)
    self.assertEqual(ids.shape, (8, 360))
    self.assertTrue(np.all(ids < 10000))

  def test_sequence_layout_and_loss_mask(self):
    self.assertEqual(nca_tokens.frames_needed(1024, CFG), 27)
    self.assertEqual(nca_tokens.vocab_size(CFG), 10002)
    toks = jnp.arange(1026)[None]
    inputs, targets = nca_tokens.inputs_and_targets(toks, 1024)
    np.testing.assert_array_equal(inputs[0], np.arange(1024))
    np.testing.assert_array_equal(targets[0], np.arange(1, 1025))
    mask = np.asarray(nca_tokens.loss_mask(1024, CFG))
    self.assertEqual(mask.shape, (1024,))
    np.testing.assert_array_equal(mask[:37], 0)   # rest of the first frame
    np.testing.assert_array_equal(mask[37:], 1)   # from the second frame's start token
    v = published_vectors()
    _, published_targets = nca_tokens.inputs_and_targets(v['tokens'], 1024)
    self.assertEqual(int(published_targets[0, 37]), nca_tokens.start_of_frame(CFG))
    with self.assertRaisesRegex(ValueError, 'seq_len'):
      nca_tokens.inputs_and_targets(toks, 1026)

  def test_bad_frame_count(self):
    with self.assertRaisesRegex(ValueError, 'whole number'):
      nca_tokens.tokens_to_frames(jnp.zeros((39,), jnp.int32), CFG)


if __name__ == '__main__':
  absltest.main()
