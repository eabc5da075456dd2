"""gzip scores, band checks and the rule sampler (docs/method.md §3)."""
import gzip
import os
import tempfile

from absl.testing import absltest
import jax
import numpy as np
from scipy import stats

from ncalm import errors
from ncalm.data import complexity
from ncalm.data import nca

import published_reference as published
from testdata import published_vectors

CFG = nca.NCAConfig()


class GzipScoreTest(absltest.TestCase):

  def test_equals_python_gzip(self):
    rng = np.random.default_rng(0)
    for ids in (rng.integers(0, 10000, 360), np.zeros(360, int), np.arange(360) % 7):
      raw = ids.astype('<i4').tobytes()
      self.assertEqual(complexity.gzip_score(ids), len(gzip.compress(raw, 9)) / len(raw))

  def test_published_scores_reference_mode(self):
    v = published_vectors()
    scores = complexity.score_rules(v['rule_keys'], v['score_sim_keys'], CFG, 'reference',
                                    chunk=8)
    np.testing.assert_array_equal(scores, v['gzip_scores'])

  def test_chunking_does_not_change_scores(self):
    v = published_vectors()
    whole = complexity.score_rules(v['rule_keys'], v['score_sim_keys'], CFG, 'fast', chunk=8)
    parts = complexity.score_rules(v['rule_keys'], v['score_sim_keys'], CFG, 'fast', chunk=3)
    np.testing.assert_array_equal(whole, parts)

  def test_fast_mode_score_distribution(self):
    """Over 1,024 rules, fast-mode scores are distributed as reference-mode scores."""
    rule_keys = jax.random.split(jax.random.PRNGKey(0), 1024)
    sim_keys = jax.random.split(jax.random.PRNGKey(1), 1024)
    ref = complexity.score_rules(rule_keys, sim_keys, CFG, 'reference')
    fast = complexity.score_rules(rule_keys, sim_keys, CFG, 'fast')
    self.assertGreater(stats.ks_2samp(ref, fast).pvalue, 1e-3)
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(fast, q), np.quantile(ref, q), atol=0.02)
    # The same rules land in the same band (the rule, not the noise, sets complexity).
    agree = complexity.in_band(ref, (0.5, 1.0)) == complexity.in_band(fast, (0.5, 1.0))
    self.assertGreater(agree.mean(), 0.9)
    # And the measured distribution (docs/method.md §3; 2,000 published rules): ~45% in 0.5-1.0.
    self.assertAlmostEqual(complexity.in_band(fast, (0.5, 1.0)).mean(), 0.45, delta=0.05)


class SamplerTest(absltest.TestCase):

  def test_published_sampler(self):
    v = published_vectors()
    bank = complexity.sample_rule_bank(v['sampler_key'], 8, (0.5, 1.0), CFG, 'reference')
    np.testing.assert_array_equal(bank.keys, v['sampler_accepted_50_100'])
    self.assertTrue(np.all(complexity.in_band(bank.scores, (0.5, 1.0))))

  def test_equals_linen_sampler_other_band(self):
    key = jax.random.PRNGKey(21)
    bank = complexity.sample_rule_bank(key, 4, (0.3, 0.5), CFG, 'reference')
    np.testing.assert_array_equal(bank.keys, published.sample_rules(key, 4, 0.3, 0.5))

  def test_band_edge_is_excluded(self):
    """A rule scoring exactly on an edge is rejected (strict, in float32)."""
    v = published_vectors()
    key = v['sampler_key']
    candidates, sim_keys = next(complexity.candidate_rounds(key, 8))
    scores = complexity.score_rules(candidates, sim_keys, CFG, 'reference', chunk=8)
    edge = float(scores[np.argmax(scores < 0.7)])  # an accepted rule of the (0.5, 1) band
    for band in ((edge, 1.0), (0.0, edge)):
      bank = complexity.sample_rule_bank(key, 8, band, CFG, 'reference')
      np.testing.assert_array_equal(bank.keys, published.sample_rules(key, 8, *band))
      self.assertFalse(np.any(np.float32(bank.scores) == np.float32(edge)))
      self.assertFalse(complexity.in_band(np.array([edge]), band)[0])

  def test_fast_sampler_band_and_split(self):
    bank = complexity.sample_rule_bank(jax.random.PRNGKey(3), 40, (0.3, 0.4), CFG, 'fast')
    self.assertLen(bank, 40)
    self.assertTrue(np.all((bank.scores > 0.3) & (bank.scores < 0.4)))
    self.assertLen(np.unique(bank.keys, axis=0), 40)
    train, val = bank.split(8)
    self.assertLen(train, 32)
    np.testing.assert_array_equal(np.concatenate([train.keys, val.keys]), bank.keys)
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'bank.npz')
      val.save(path)
      loaded = complexity.RuleBank.load(path)
    np.testing.assert_array_equal(loaded.keys, val.keys)
    np.testing.assert_array_equal(loaded.scores, val.scores)
    self.assertEqual(loaded.band, (0.3, 0.4))

  def test_periodicity_filter(self):
    """A rule is rejected when its trajectory over the window shows a frame twice: checked
    against a plain set of frames, on a small family where fixed points and cycles abound."""
    small = nca.NCAConfig(grid=8, num_states=2, perceive_channels=1)
    frames = 12
    rules, sims = next(complexity.candidate_rounds(jax.random.PRNGKey(5), 64))
    got = complexity.periodic_rules(rules, sims, small, 'fast', frames, chunk=32)
    traj = np.asarray(nca.rollout(rules, sims, small.replace(frames=frames), 'fast'))
    want = [len({f.tobytes() for f in t}) < frames for t in traj]
    np.testing.assert_array_equal(got, want)
    self.assertTrue(0 < sum(want) < 64, sum(want))    # the family has both kinds
    bank = complexity.sample_rule_bank(jax.random.PRNGKey(5), 16, None, small, 'fast',
                                       aperiodic_frames=frames)
    plain = complexity.sample_rule_bank(jax.random.PRNGKey(5), 16, None, small, 'fast')
    self.assertFalse(np.array_equal(bank.keys, plain.keys))
    # Every accepted rule was one of the sampler's candidates and is aperiodic on its
    # scoring trajectory.
    rounds = complexity.candidate_rounds(jax.random.PRNGKey(5), 16)
    seen = {}
    while not all(k.tobytes() in seen for k in bank.keys):
      cands, cand_sims = next(rounds)
      seen.update({c.tobytes(): s for c, s in zip(cands, cand_sims)})
    accepted_sims = np.stack([seen[k.tobytes()] for k in bank.keys])
    self.assertFalse(complexity.periodic_rules(bank.keys, accepted_sims, small, 'fast',
                                               frames).any())

  def test_bad_bands(self):
    for band in ((0.5, 0.5), (0.6, 0.4), (-0.1, 0.3), (0.5, 1.2), (0.5,)):
      with self.assertRaisesRegex(ValueError, 'band'):
        complexity.sample_rule_bank(jax.random.PRNGKey(0), 4, band, CFG)

  def test_unreachable_band_fails_fast(self):
    with self.assertRaises(errors.UserError) as raised:
      complexity.sample_rule_bank(jax.random.PRNGKey(0), 8, (0.98, 1.0), CFG, 'fast',
                                  max_rounds=3)
    message = str(raised.exception)
    self.assertIn('out of 24 candidates', message)   # 3 rounds of 8
    # Only knobs a user has: the band and the number of rules, never max_rounds.
    self.assertNotIn('max_rounds', message)
    for knob in ('data.band', '--band', 'data.num_train_rules', '--count', '--rules_per_band'):
      self.assertIn(knob, message)

  def test_bad_band_is_a_user_error(self):
    with self.assertRaises(errors.UserError):
      complexity.check_band((0.7, 0.2))


if __name__ == '__main__':
  absltest.main()
