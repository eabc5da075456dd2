"""Dyck sequences: validity, distribution, determinism and config errors."""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from scipy import stats

from ncalm.data import dyck

BATCH, LENGTH = 64, 256
Z_BOUND = 5.0                 # standard errors allowed for frequency checks

KDYCK = dyck.DyckConfig()
SHUFFLE = dyck.DyckConfig(shuffle=True)
SHALLOW = dyck.DyckConfig(max_depth=3)                         # hits the depth cap
SHALLOW_SHUFFLE = dyck.DyckConfig(max_depth=3, shuffle=True)
CLOSING = dyck.DyckConfig(p_open=0.3)
CLOSING_SHUFFLE = dyck.DyckConfig(p_open=0.3, shuffle=True)
TWO_TYPES_SHUFFLE = dyck.DyckConfig(num_types=2, max_depth=8, p_open=0.6, shuffle=True)
ALL_CONFIGS = dict(kdyck=KDYCK, shuffle=SHUFFLE, shallow=SHALLOW,
                   shallow_shuffle=SHALLOW_SHUFFLE, closing=CLOSING,
                   closing_shuffle=CLOSING_SHUFFLE, two_types_shuffle=TWO_TYPES_SHUFFLE)

_jit_batch = jax.jit(dyck.dyck_batch, static_argnums=(1, 2, 3))


@functools.lru_cache(maxsize=None)
def sample(cfg: dyck.DyckConfig, seed: int = 0) -> np.ndarray:
  return np.asarray(_jit_batch(jax.random.key(seed), BATCH, LENGTH, cfg))


def walk(tokens_L: np.ndarray, cfg: dyck.DyckConfig):
  """Checks one sequence; yields (depth, counts, open_types) before each token.

  `open_types` lists the open brackets' types, oldest first; a close of type j
  removes the most recent open bracket of type j. k-Dyck closes must match the top.
  """
  k = cfg.num_types
  open_types = []
  counts = np.zeros(k, np.int64)
  for t, token in enumerate(tokens_L.tolist()):
    yield len(open_types), counts.copy(), list(open_types), token
    if token < k:
      open_types.append(token)
      counts[token] += 1
      assert len(open_types) <= cfg.max_depth, f'depth > max_depth at {t}'
    else:
      closed = token - k
      assert counts[closed] > 0, f'close of type {closed} with none open at {t}'
      if not cfg.shuffle:
        assert open_types[-1] == closed, f'k-Dyck close does not match top at {t}'
      last = len(open_types) - 1 - open_types[::-1].index(closed)
      del open_types[last]
      counts[closed] -= 1


def events(tokens_BL: np.ndarray, cfg: dyck.DyckConfig):
  """All (depth, counts, open_types, token) of a batch, checked by `walk`."""
  for tokens_L in tokens_BL:
    yield from walk(tokens_L, cfg)


def majority_close_z_scores(tokens_BL: np.ndarray, cfg: dyck.DyckConfig):
  """z-scores of how often a close hits the most-open type (lowest id on ties).

  Over closes with more than one type open: under instance weighting that type is
  closed with p = counts[j] / depth; under uniform-over-open-types with 1 / #types.
  Returns (z under instance weighting, z under type weighting).
  """
  hits, by_instance, var_instance, by_type, var_type = 0, 0.0, 0.0, 0.0, 0.0
  for depth, counts, _, token in events(tokens_BL, cfg):
    if token >= cfg.num_types and counts.max() < depth:
      j = int(np.argmax(counts))
      p, q = counts[j] / depth, 1 / np.count_nonzero(counts)
      hits += token - cfg.num_types == j
      by_instance, var_instance = by_instance + p, var_instance + p * (1 - p)
      by_type, var_type = by_type + q, var_type + q * (1 - q)
  assert var_instance > 50, 'too few closes with several types open'
  return ((hits - by_instance) / np.sqrt(var_instance),
          (hits - by_type) / np.sqrt(var_type))


class DyckTest(parameterized.TestCase):

  @parameterized.named_parameters(*ALL_CONFIGS.items())
  def test_dtype_and_ids(self, cfg):
    tokens = sample(cfg)
    self.assertEqual(tokens.dtype, np.int32)
    self.assertEqual(tokens.shape, (BATCH, LENGTH))
    self.assertEqual(dyck.vocab_size(cfg), 2 * cfg.num_types)
    self.assertGreaterEqual(tokens.min(), 0)
    self.assertLess(tokens.max(), dyck.vocab_size(cfg))

  @parameterized.named_parameters(*ALL_CONFIGS.items())
  def test_valid_and_bounded(self, cfg):
    depths = [depth for depth, *_ in events(sample(cfg), cfg)]  # `walk` asserts
    self.assertGreaterEqual(min(depths), 0)
    self.assertLessEqual(max(depths), cfg.max_depth)
    self.assertGreater(depths.count(0), BATCH)      # words end and new ones start

  @parameterized.named_parameters(*ALL_CONFIGS.items())
  def test_out_of_order_closes_only_in_shuffle(self, cfg):
    out_of_order = sum(token >= cfg.num_types and open_types[-1] != token - cfg.num_types
                       for _, _, open_types, token in events(sample(cfg), cfg))
    if cfg.shuffle:
      self.assertGreater(out_of_order, 0)
    else:
      self.assertEqual(out_of_order, 0)

  @parameterized.named_parameters(*ALL_CONFIGS.items())
  def test_forced_moves(self, cfg):
    at_zero, at_cap = [], []
    for depth, _, _, token in events(sample(cfg), cfg):
      if depth == 0:
        at_zero.append(token < cfg.num_types)
      elif depth == cfg.max_depth:
        at_cap.append(token >= cfg.num_types)
    self.assertNotEmpty(at_zero)
    self.assertTrue(all(at_zero), 'depth 0 must open')
    self.assertTrue(all(at_cap), 'max_depth must close')
    if cfg.max_depth <= 3:
      self.assertGreater(len(at_cap), 100)

  @parameterized.named_parameters(*ALL_CONFIGS.items())
  def test_open_frequency(self, cfg):
    free = [token < cfg.num_types for depth, _, _, token in events(sample(cfg), cfg)
            if 0 < depth < cfg.max_depth]
    n, p = len(free), cfg.p_open
    self.assertGreater(n, 1000)
    bound = Z_BOUND * np.sqrt(p * (1 - p) / n)
    self.assertAlmostEqual(np.mean(free), p, delta=bound)

  @parameterized.named_parameters(*ALL_CONFIGS.items())
  def test_opened_types_uniform(self, cfg):
    tokens = sample(cfg)
    opened = tokens[tokens < cfg.num_types]
    observed = np.bincount(opened, minlength=cfg.num_types)
    self.assertGreater(opened.size / cfg.num_types, 20)
    self.assertGreater(stats.chisquare(observed).pvalue, 1e-4)

  @parameterized.named_parameters(('shuffle', SHUFFLE), ('two_types', TWO_TYPES_SHUFFLE))
  def test_shuffle_closes_uniform_over_open_instances(self, cfg):
    z_instance, z_type = majority_close_z_scores(sample(cfg), cfg)
    self.assertLess(abs(z_instance), Z_BOUND)
    # The statistic has power: closing a uniformly chosen open *type* would fail it.
    self.assertGreater(abs(z_type), Z_BOUND)

  @parameterized.named_parameters(('kdyck', KDYCK), ('shuffle', SHUFFLE))
  def test_determinism(self, cfg):
    np.testing.assert_array_equal(sample(cfg, 0),
                                  np.asarray(_jit_batch(jax.random.key(0), BATCH,
                                                        LENGTH, cfg)))
    self.assertFalse(np.array_equal(sample(cfg, 0), sample(cfg, 1)))
    self.assertFalse(np.array_equal(sample(cfg, 0)[0], sample(cfg, 0)[1]))

  @parameterized.named_parameters(('kdyck', KDYCK), ('shuffle', SHUFFLE))
  def test_jit_and_vmap_match_plain_call(self, cfg):
    keys = jax.random.split(jax.random.key(0), BATCH)[:2]   # rows 0, 1 of sample(cfg)
    plain = np.stack([np.asarray(dyck.dyck_tokens(k, LENGTH, cfg)) for k in keys])
    jitted = jax.jit(dyck.dyck_tokens, static_argnums=(1, 2))
    self.assertEqual(plain.dtype, np.int32)
    results = dict(
        jit=np.stack([np.asarray(jitted(k, LENGTH, cfg)) for k in keys]),
        vmap=jax.vmap(dyck.dyck_tokens, in_axes=(0, None, None))(keys, LENGTH, cfg),
        batch=dyck.dyck_batch(jax.random.key(0), BATCH, LENGTH, cfg)[:2],
        jit_batch=sample(cfg)[:2])
    for name, other in results.items():
      np.testing.assert_array_equal(plain, np.asarray(other), err_msg=name)

  def test_raw_uint32_keys_work(self):
    tokens = dyck.dyck_tokens(jax.random.PRNGKey(0), 16, KDYCK)
    self.assertEqual(tokens.shape, (16,))
    self.assertLess(int(tokens[0]), KDYCK.num_types)

  @parameterized.named_parameters(
      ('num_types', dict(num_types=0), 'dyck.num_types'),
      ('max_depth', dict(max_depth=0), 'dyck.max_depth'),
      ('p_open_zero', dict(p_open=0.0), 'dyck.p_open'),
      ('p_open_one', dict(p_open=1.0), 'dyck.p_open'),
      ('p_open_negative', dict(p_open=-0.1), 'dyck.p_open'))
  def test_config_errors(self, changes, field):
    with self.assertRaisesRegex(ValueError, field):
      dyck.DyckConfig(**changes)
    with self.assertRaisesRegex(ValueError, field):
      KDYCK.replace(**changes)


if __name__ == '__main__':
  absltest.main()
