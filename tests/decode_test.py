"""Cached decoding: exactly the tokens of decoding by full forward passes; token choice."""
from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import decode
from ncalm import errors
from ncalm import model as model_lib
from ncalm import sampler as sampler_lib
from ncalm import sharding

CFG = model_lib.ModelConfig(vocab_size=40, d_model=32, num_layers=2, num_heads=4, mlp_dim=64,
                            max_len=32, dtype='float32', attn_dropout=0.0)
CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789 .:\n'   # a character per id, for stop strings
PROMPTS = ([5, 9, 1, 30, 2, 7, 7], [3], [11, 12, 13, 14], [8, 8, 8, 8, 8, 8, 8, 8, 8, 1, 2])


def init(cfg):
  model = model_lib.Transformer(cfg)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  params = nn.meta.unbox(variables)['params']
  # Larger weights than the N(0, 0.02) init, so that argmax is not decided by noise.
  params = jax.tree.map(lambda x: x * 20 if x.ndim > 1 else x, params)
  return model, params


def greedy_by_full_passes(model, params, prompt, new_tokens, allowed_ids):
  """The reference: the whole sequence through the model for every new token."""
  forward = jax.jit(lambda seq, last: model.apply({'params': params}, seq,
                                                   logits_at=last)[0])
  seq = np.zeros((1, model.cfg.max_len), np.int32)   # one shape: causal, so the tail is moot
  seq[0, :len(prompt)] = prompt
  for i in range(len(prompt), len(prompt) + new_tokens):
    logits = forward(jnp.asarray(seq), jnp.asarray([i - 1]))
    seq[0, i] = int(jnp.argmax(logits[:allowed_ids]))
  return seq[0, len(prompt):len(prompt) + new_tokens].tolist()


def left_padded(prompts, length):
  rows = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    rows[i, length - len(p):] = p
  return jnp.asarray(rows), jnp.asarray([len(p) for p in prompts], jnp.int32)


class CachedGreedyTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_equals_full_forward_passes_with_mixed_prompt_lengths(self, scan_layers):
    cfg = model_lib.ModelConfig(**{**CFG.__dict__, 'scan_layers': scan_layers})
    model, params = init(cfg)
    new_tokens, allowed = 12, 37
    s = decode.settings(cfg.vocab_size, allowed_ids=allowed)
    prompts, lengths = left_padded(PROMPTS, 16)
    limit = jnp.full((len(PROMPTS),), new_tokens, jnp.int32)
    keys = decode.row_keys(0, jnp.arange(len(PROMPTS)), jnp.zeros(len(PROMPTS), jnp.int32))

    @jax.jit
    def run(params, prompts, lengths):
      state = decode.prefill(model, params, prompts, lengths, 16 + new_tokens, new_tokens,
                             limit, keys, s)
      return decode.decode(model, params, state, jnp.int32(new_tokens), s).tokens

    got = np.asarray(run(params, prompts, lengths))
    for row, prompt in enumerate(PROMPTS):
      want = greedy_by_full_passes(model, params, prompt, new_tokens, allowed)
      self.assertEqual(got[row].tolist(), want, f'prompt {row}')
    self.assertLess(got.max(), allowed)
    self.assertGreater(len(set(got.ravel().tolist())), 3)   # not a constant continuation



def detokenize(ids):
  return ''.join(CHARS[i] for i in ids)


def make_sampler(cfg=CFG, allowed_ids=37, batch_size=4):
  model, params = init(cfg)
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1})
  sampler = sampler_lib.Sampler(cfg, mesh, sharding.LOGICAL_AXIS_RULES, batch_size,
                                allowed_ids, detokenize, segment=4)   # the cache grows twice
  return model, params, sampler


class SamplerTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params, cls.sampler = make_sampler()
    cls.greedy = [greedy_by_full_passes(cls.model, cls.params, p, 10, 37) for p in PROMPTS]

  def test_greedy_rows_in_batches_equal_the_reference(self):
    out = self.sampler.generate(self.params, PROMPTS,
                                sampler_lib.Request(max_new_tokens=10, num_samples=2))
    for p, samples in enumerate(out):
      for s, completion in enumerate(samples):
        self.assertEqual((completion.prompt_index, completion.sample_index), (p, s))
        self.assertEqual(list(completion.tokens), self.greedy[p])
        self.assertEqual(completion.text, detokenize(self.greedy[p]))
        self.assertEqual((completion.finish, completion.capped), ('length', False))

  def test_stop_string_across_tokens_and_stop_id_each_row_on_its_own(self):
    row0 = detokenize(self.greedy[0])
    stop = row0[3:5]                    # made of the 4th and 5th new tokens
    stop_id = self.greedy[1][6]
    out = self.sampler.generate(self.params, PROMPTS, sampler_lib.Request(
        max_new_tokens=10, stop_strings=(stop,), stop_ids=(stop_id,)))
    for p, (completion,) in enumerate(out):
      text = detokenize(self.greedy[p])
      id_end = self.greedy[p].index(stop_id) if stop_id in self.greedy[p] else None
      if id_end is not None:
        text = text[:id_end]
      if stop in text:
        self.assertEqual(completion.finish, 'stop_string')
        self.assertEqual(completion.text, text[:text.find(stop)])
      elif id_end is not None:
        self.assertEqual(completion.finish, 'stop_id')
        self.assertEqual(list(completion.tokens), self.greedy[p][:id_end + 1])
        self.assertEqual(completion.text, text)
      else:
        self.assertEqual(completion.finish, 'length')
    self.assertEqual(out[0][0].text, row0[:row0.find(stop)])
    self.assertEqual(out[1][0].finish, 'stop_id' if stop not in detokenize(self.greedy[1][:6])
                     else 'stop_string')

  def test_new_tokens_capped_at_the_context(self):
    long_prompt = list(range(1, 30))      # 29 of the 32 positions: room for 3
    (completion,), = self.sampler.generate(self.params, [long_prompt],
                                           sampler_lib.Request(max_new_tokens=8))
    self.assertEqual((len(completion.tokens), completion.capped), (3, True))
    self.assertEqual(list(completion.tokens),
                     greedy_by_full_passes(self.model, self.params, long_prompt, 3, 37))
    self.assertFalse(self.sampler.fits(32))
    self.assertTrue(self.sampler.fits(31))

  def test_samples_depend_on_seed_prompt_and_sample_only(self):
    request = sampler_lib.Request(max_new_tokens=6, num_samples=3, temperature=1.0, seed=4)
    both = self.sampler.generate(self.params, PROMPTS[:2], request)
    alone = self.sampler.generate(self.params, PROMPTS[1:2], request)   # now prompt 0 of its call
    moved = [[c.tokens for c in row] for row in both]
    self.assertNotEqual(moved[1], [c.tokens for c in alone[0]])  # prompt index is in the key
    again = self.sampler.generate(self.params, PROMPTS[:2], request)
    self.assertEqual(moved, [[c.tokens for c in row] for row in again])
    self.assertGreater(len({c.tokens for c in both[0]}), 1)      # samples differ
    for row in both:
      for c in row:
        self.assertLess(max(c.tokens), 37)

  def test_bad_requests_name_the_flag(self):
    for field, value, flag in (('temperature', -1.0, '--temperature'), ('top_p', 0.0, '--top_p'),
                               ('top_p', 1.5, '--top_p'), ('top_k', -2, '--top_k'),
                               ('num_samples', 0, '--num_samples')):
      with self.assertRaisesRegex(errors.UserError, flag):
        sampler_lib.Request(**{field: value}).check()


class ChooseTest(absltest.TestCase):
  """Token choice draws from the right distribution (frequencies within 5 standard errors)."""

  LOGITS = jnp.log(jnp.asarray([0.05, 0.3, 0.1, 0.4, 0.15]))
  DRAWS = 20_000

  def frequencies(self, temperature=1.0, top_k=0, top_p=1.0, allowed=5):
    keys = jax.random.split(jax.random.PRNGKey(0), self.DRAWS)
    draw = jax.jit(jax.vmap(lambda k: decode.choose(self.LOGITS, k, temperature, top_k, top_p,
                                                    jnp.arange(5) < allowed)))
    return np.bincount(np.asarray(draw(keys)), minlength=5) / self.DRAWS

  def assert_distribution(self, got, want):
    want = np.asarray(want) / np.sum(want)
    bound = 5 * np.sqrt(want * (1 - want) / self.DRAWS) + 1e-9
    np.testing.assert_array_less(np.abs(got - want), bound)

  def test_temperature(self):
    p = np.exp(np.asarray(self.LOGITS))
    self.assert_distribution(self.frequencies(1.0), p)
    self.assert_distribution(self.frequencies(0.5), p ** 2)
    self.assert_distribution(self.frequencies(2.0), p ** 0.5)

  def test_greedy(self):
    np.testing.assert_array_equal(self.frequencies(0.0), [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(self.frequencies(0.0, allowed=3), [0, 1, 0, 0, 0])

  def test_top_k(self):
    self.assert_distribution(self.frequencies(top_k=2), [0, 0.3, 0, 0.4, 0])
    self.assert_distribution(self.frequencies(top_k=3), [0, 0.3, 0, 0.4, 0.15])

  def test_top_p_keeps_exactly_the_smallest_nucleus(self):
    # Sorted: 0.4, 0.3, 0.15, 0.1, 0.05; mass before each: 0, 0.4, 0.7, 0.85, 0.95.
    self.assert_distribution(self.frequencies(top_p=0.4), [0, 0, 0, 1, 0])
    self.assert_distribution(self.frequencies(top_p=0.41), [0, 0.3, 0, 0.4, 0])
    self.assert_distribution(self.frequencies(top_p=0.7), [0, 0.3, 0, 0.4, 0])
    self.assert_distribution(self.frequencies(top_p=0.71), [0, 0.3, 0, 0.4, 0.15])
    # After top-k the nucleus is taken of the renormalised distribution (4/7, 3/7).
    self.assert_distribution(self.frequencies(top_k=2, top_p=0.57), [0, 0, 0, 1, 0])
    self.assert_distribution(self.frequencies(top_k=2, top_p=0.58), [0, 0.3, 0, 0.4, 0])

  def test_allowed_ids(self):
    self.assert_distribution(self.frequencies(allowed=3), [0.05, 0.3, 0.1, 0, 0])


if __name__ == '__main__':
  absltest.main()
