"""The Llama-style decoder: shapes, causality, RoPE, scan/remat equivalence, counts."""
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import attention as attention_lib
from ncalm import model as model_lib
from ncalm import startup

CFG = model_lib.ModelConfig(vocab_size=50, d_model=32, num_layers=2, num_heads=4, mlp_dim=64,
                            max_len=16, dtype='float32')


def init(cfg, tokens):
  return nn.meta.unbox(model_lib.Transformer(cfg).init(jax.random.PRNGKey(0), tokens))


class ModelTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 50)
    self.params = init(CFG, self.tokens)

  def test_shapes_dtypes_and_init(self):
    logits = model_lib.Transformer(CFG.__class__(**{**CFG.__dict__, 'dtype': 'bfloat16'})).apply(
        self.params, self.tokens)
    self.assertEqual(logits.shape, (2, 16, 50))
    self.assertEqual(logits.dtype, jnp.float32)  # f32 logits from bf16 compute
    p = self.params['params']
    self.assertEqual(p['layers']['mlp']['gate'].shape, (2, 32, 64))
    self.assertAlmostEqual(float(jnp.std(p['embedding'])), 0.02, delta=0.003)
    np.testing.assert_array_equal(p['final_norm']['scale'], 1.0)
    self.assertFalse(np.array_equal(p['embedding'], p['head'].T))  # untied

  def test_param_count_formula_and_paper_size(self):
    self.assertEqual(sum(x.size for x in jax.tree.leaves(self.params)),
                     model_lib.count_params(CFG)['total'])
    paper = model_lib.ModelConfig()
    self.assertAlmostEqual(model_lib.count_params(paper)['blocks'] / 1e9, 1.61, places=2)
    abstract = jax.eval_shape(model_lib.Transformer(paper).init, jax.random.PRNGKey(0),
                              jnp.zeros((1, 8), jnp.int32))
    self.assertEqual(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(abstract))),
                     model_lib.count_params(paper)['total'])

  def test_causal(self):
    model = model_lib.Transformer(CFG)
    changed = self.tokens.at[:, 10:].set((self.tokens[:, 10:] + 1) % 50)
    a, b = model.apply(self.params, self.tokens), model.apply(self.params, changed)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-6)
    self.assertGreater(float(jnp.abs(a[:, 10:] - b[:, 10:]).max()), 1e-3)

  def test_rope_scores_depend_on_relative_position(self):
    q = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(3), (1, 1, 1, 8))
    seq = lambda x: jnp.tile(x, (1, 12, 1, 1))
    rq, rk = model_lib.rotary(seq(q), 1e4)[0, :, 0], model_lib.rotary(seq(k), 1e4)[0, :, 0]
    np.testing.assert_allclose(rq[5] @ rk[2], rq[9] @ rk[6], rtol=1e-5)
    np.testing.assert_allclose(model_lib.rotary(seq(q), 1e4)[0, 0, 0], q[0, 0, 0])
    self.assertNotAlmostEqual(float(rq[5] @ rk[2]), float(rq[5] @ rk[3]), places=3)

  def test_scan_equals_unrolled_layers(self):
    unrolled_cfg = CFG.__class__(**{**CFG.__dict__, 'scan_layers': False})
    stacked = self.params['params']['layers']
    unrolled = {k: v for k, v in self.params['params'].items() if k != 'layers'}
    for i in range(CFG.num_layers):
      unrolled[f'layers_{i}'] = jax.tree.map(lambda x: x[i], stacked)
    a = model_lib.Transformer(CFG).apply(self.params, self.tokens)
    b = model_lib.Transformer(unrolled_cfg).apply({'params': unrolled}, self.tokens)
    np.testing.assert_allclose(a, b, atol=1e-5)

  @parameterized.parameters('full', 'dots', 'dots_no_batch')
  def test_remat_keeps_values_and_gradients(self, policy):
    remat_cfg = CFG.__class__(**{**CFG.__dict__, 'remat': policy})
    loss = lambda cfg: jax.grad(
        lambda p: jnp.sum(model_lib.Transformer(cfg).apply(p, self.tokens) ** 2))(self.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 loss(CFG), loss(remat_cfg))

  def test_dropout_only_when_training(self):
    model = model_lib.Transformer(CFG)
    det = model.apply(self.params, self.tokens)
    np.testing.assert_array_equal(det, model.apply(self.params, self.tokens))
    rngs = {'dropout': jax.random.PRNGKey(5)}
    train = model.apply(self.params, self.tokens, deterministic=False, rngs=rngs)
    self.assertGreater(float(jnp.abs(train - det).max()), 1e-4)

  def test_dropout_is_reproducible_and_unrolled_scan_is_the_same_function(self):
    rngs = {'dropout': jax.random.PRNGKey(5)}
    unrolled = CFG.__class__(**{**CFG.__dict__, 'scan_unroll': CFG.num_layers})
    grads = lambda cfg: jax.grad(lambda p: jnp.sum(model_lib.Transformer(cfg).apply(
        p, self.tokens, deterministic=False, rngs=rngs) ** 2))(self.params)
    jax.tree.map(np.testing.assert_array_equal, grads(CFG), grads(CFG))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads(CFG), grads(unrolled))

  def test_causal_query_blocks_change_nothing(self):
    rngs = {'dropout': jax.random.PRNGKey(5)}
    blocked = CFG.__class__(**{**CFG.__dict__, 'attention_blocks': 4})
    grads = lambda cfg: jax.value_and_grad(lambda p: jnp.sum(model_lib.Transformer(cfg).apply(
        p, self.tokens, deterministic=False, rngs=rngs) ** 2))(self.params)
    (a, grads_a), (b, grads_b) = grads(CFG), grads(blocked)
    np.testing.assert_allclose(a, b, rtol=1e-6)  # same dropout bits, same function
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
                 grads_a, grads_b)
    with self.assertRaisesRegex(ValueError, 'attention_blocks=3'):
      model_lib.ModelConfig(max_len=16, attention_blocks=3)

  def test_dot_product_attention_equals_plain_attention(self):
    fused = CFG.__class__(**{**CFG.__dict__, 'attention': 'dot_product'})
    plain = model_lib.Transformer(CFG).apply(self.params, self.tokens)
    np.testing.assert_allclose(model_lib.Transformer(fused).apply(self.params, self.tokens),
                               plain, rtol=1e-5, atol=1e-5)
    # With dropout on, training uses the plain path (with the same bits) either way.
    rngs = {'dropout': jax.random.PRNGKey(5)}
    train = lambda cfg: model_lib.Transformer(cfg).apply(self.params, self.tokens,
                                                        deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(train(fused), train(CFG))

  def test_splash_attention_equals_plain_attention(self):
    # The Pallas TPU kernel, interpreted on CPU: values and gradients. Its blocks are
    # multiples of 128, so this model is longer than CFG: 256 tokens, 2 heads of 64.
    plain = model_lib.ModelConfig(vocab_size=50, d_model=128, num_layers=1, num_heads=2,
                                  mlp_dim=64, max_len=256, dtype='float32')
    splash = plain.__class__(**{**plain.__dict__, 'attention': 'splash'})
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 256), 0, 50)
    params = init(plain, tokens)
    loss = lambda cfg: jax.jit(jax.value_and_grad(lambda p: jnp.sum(
        model_lib.Transformer(cfg).apply(p, tokens) ** 2)))(params)
    (a, grads_a), (b, grads_b) = loss(plain), loss(splash)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4),
                 grads_a, grads_b)
    # With segment ids (two documents per row), forward.
    segments = jnp.broadcast_to((jnp.arange(256) >= 100).astype(jnp.int32), (2, 256))
    logits = lambda cfg: jax.jit(lambda p: model_lib.Transformer(cfg).apply(
        p, tokens, segment_ids_BL=segments))(params)
    np.testing.assert_allclose(logits(splash), logits(plain), rtol=1e-4, atol=1e-4)
    with self.assertRaisesRegex(ValueError, 'divisible by 128'):
      CFG.__class__(**{**CFG.__dict__, 'attention': 'splash'})

  def test_segments_attend_only_inside_themselves(self):
    # Two documents in one row: with segment ids, the second document's logits are the
    # model's on that document alone (RoPE scores depend on relative positions only).
    cut = 6
    segments = jnp.broadcast_to((jnp.arange(16) >= cut).astype(jnp.int32), (2, 16))
    model = model_lib.Transformer(CFG)
    masked = model.apply(self.params, self.tokens, segment_ids_BL=segments)
    alone = model.apply(self.params, self.tokens[:, cut:])
    np.testing.assert_allclose(masked[:, cut:], alone, rtol=1e-4, atol=1e-4)
    first = model.apply(self.params, self.tokens[:, :cut])
    np.testing.assert_allclose(masked[:, :cut], first, rtol=1e-4, atol=1e-4)
    plain = model.apply(self.params, self.tokens)
    self.assertGreater(float(jnp.abs(plain[:, cut:] - alone).max()), 1e-3)  # it matters
    # The same with blocks, dropout (same bits) and the fused path.
    rngs = {'dropout': jax.random.PRNGKey(5)}
    blocked = CFG.__class__(**{**CFG.__dict__, 'attention_blocks': 4})
    train = lambda cfg: model_lib.Transformer(cfg).apply(
        self.params, self.tokens, deterministic=False, rngs=rngs, segment_ids_BL=segments)
    np.testing.assert_allclose(train(blocked), train(CFG), rtol=1e-5, atol=1e-5)
    fused = CFG.__class__(**{**CFG.__dict__, 'attention': 'dot_product'})
    np.testing.assert_allclose(
        model_lib.Transformer(fused).apply(self.params, self.tokens, segment_ids_BL=segments),
        masked, rtol=1e-5, atol=1e-5)

  @parameterized.parameters(
      ('auto', 'cpu', 'plain'), ('auto', 'gpu', 'dot_product'), ('auto', 'tpu', 'splash'),
      ('fused', 'cpu', 'dot_product'), ('fused', 'tpu', 'splash'), ('plain', 'tpu', 'plain'),
      ('dot_product', 'tpu', 'dot_product'))
  def test_attention_choice_per_backend(self, choice, backend, kind):
    self.assertEqual(startup.attention_kind(choice, backend), kind)

  @parameterized.parameters(
      ('cpu', 1024, 4), ('gpu', 1024, 4), ('tpu', 1024, 1), ('gpu', 76, 1), ('cpu', 128, 1))
  def test_attention_blocks_per_backend(self, backend, seq_len, blocks):
    self.assertEqual(startup.default_attention_blocks(seq_len, backend), blocks)

  def test_dot_product_asks_for_cudnn_on_gpu_in_half_precision(self):
    # jax.nn.dot_product_attention's default implementation is XLA's, never cuDNN's: the
    # model must ask for cuDNN by name where it applies (bf16/fp16, no document mask).
    q_bf16 = jnp.zeros((1, 8, 2, 64), jnp.bfloat16)
    mask = jnp.ones((1, 1, 8, 8), bool)
    with mock.patch.object(attention_lib, '_platform', return_value='gpu'):
      self.assertEqual(attention_lib.dot_product_implementation(q_bf16, None), 'cudnn')
      self.assertIsNone(attention_lib.dot_product_implementation(q_bf16.astype(jnp.float32), None))
      self.assertIsNone(attention_lib.dot_product_implementation(q_bf16, mask))
      self.assertIsNone(attention_lib.dot_product_implementation(
          jnp.zeros((1, 8, 2, 256), jnp.bfloat16), None))
    self.assertIsNone(attention_lib.dot_product_implementation(q_bf16, None))  # on this CPU

  def test_logits_at(self):
    model = model_lib.Transformer(CFG)
    full = model.apply(self.params, self.tokens)
    at = jnp.array([3, 15])
    np.testing.assert_allclose(model.apply(self.params, self.tokens, logits_at=at),
                               full[jnp.arange(2), at], atol=1e-6)

  def test_bad_config(self):
    with self.assertRaisesRegex(ValueError, 'num_heads'):
      model_lib.ModelConfig(d_model=30, num_heads=4)
    with self.assertRaisesRegex(ValueError, 'model.remat'):
      model_lib.ModelConfig(remat='some')


class DropoutMaskTest(absltest.TestCase):
  """The counter-based attention-dropout mask: rate, independence, seeds."""

  def setUp(self):
    super().setUp()
    self.shape = (4, 4, 128, 128)
    self.keep = np.asarray(attention_lib.dropout_keep(jnp.uint32(7), self.shape, 0.1))

  def test_keep_rate_within_sampling_error(self):
    n, p = self.keep.size, 0.9
    sigma = np.sqrt(p * (1 - p) / n)
    self.assertLess(abs(self.keep.mean() - p), 6 * sigma)
    for axis in range(4):  # no row, head, query or key position is favoured
      per = self.keep.mean(axis=tuple(a for a in range(4) if a != axis))
      m = n / self.shape[axis]
      self.assertLess(np.abs(per - p).max(), 6 * np.sqrt(p * (1 - p) / m), axis)

  def test_neighbours_are_independent(self):
    p = 0.9
    same = p * p + (1 - p) * (1 - p)  # P(two independent draws agree)
    for axis in range(4):
      a = np.moveaxis(self.keep, axis, 0)
      agree = (a[1:] == a[:-1]).mean()
      self.assertLess(abs(agree - same), 6 * np.sqrt(same * (1 - same) / a[1:].size), axis)

  def test_seeds_and_rates(self):
    other = np.asarray(attention_lib.dropout_keep(jnp.uint32(8), self.shape, 0.1))
    self.assertLess((other == self.keep).mean(), 0.85)  # ~0.82 for independent masks
    np.testing.assert_array_equal(
        attention_lib.dropout_keep(jnp.uint32(7), self.shape, 0.1), self.keep)
    self.assertTrue(np.all(attention_lib.dropout_keep(jnp.uint32(7), (1, 1, 4, 4), 0.0)))
    half = np.asarray(attention_lib.dropout_keep(jnp.uint32(7), self.shape, 0.5)).mean()
    self.assertAlmostEqual(half, 0.5, delta=6 * np.sqrt(0.25 / self.keep.size))


if __name__ == '__main__':
  absltest.main()
