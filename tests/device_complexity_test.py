"""The device complexity score: its LZ77 parse against a plain Python parse written from the
definition, on hand-made and random sequences."""
from absl.testing import absltest
import jax.numpy as jnp
import numpy as np

from ncalm.data import device_complexity


def python_parse(ids, max_match=device_complexity.MAX_MATCH):
  """(phrases, literals): at each position the longest match starting earlier (overlap
  allowed), capped; a literal when there is none."""
  ids, p, phrases, literals = list(ids), 0, 0, 0
  while p < len(ids):
    best = 0
    for j in range(p):
      k = 0
      while p + k < len(ids) and ids[j + k] == ids[p + k]:
        k += 1
      best = max(best, k)
    best = min(best, max_match)
    phrases, literals, p = phrases + 1, literals + (best == 0), p + max(best, 1)
  return phrases, literals


class LZScoreTest(absltest.TestCase):

  def test_hand_made_sequences(self):
    cases = {(1, 2, 3, 4): (4, 4),              # all new: four literals
             (7, 7, 7, 7, 7): (2, 1),           # a literal, then one overlapping copy
             (1, 2, 1, 2, 1, 2, 3): (4, 3),     # 1, 2, copy of "1 2 1 2", 3
             (5,) * 70: (3, 1)}                 # the copy is capped at 64 ids
    for ids, want in cases.items():
      got = device_complexity.lz_parse(jnp.asarray(ids))
      self.assertEqual((int(got[0]), int(got[1])), want, ids)
      self.assertEqual(python_parse(ids), want, ids)

  def test_random_sequences_equal_the_python_parse(self):
    rng = np.random.default_rng(0)
    rows = np.stack([rng.integers(0, k, 48) for k in (2, 3, 5, 50) for _ in range(4)])
    scores = np.asarray(device_complexity.lz_score(jnp.asarray(rows)))
    want = [sum(python_parse(r)) / 48 for r in rows]
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    self.assertLess(scores[:4].mean(), scores[-4:].mean())   # fewer symbols: simpler


if __name__ == '__main__':
  absltest.main()
