"""Schedules and optimizers as docs/method.md §5 describes them."""
from absl.testing import absltest
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ncalm import config_lib
from ncalm import optim


class OptimTest(absltest.TestCase):

  def test_published_warmup_only(self):
    lr = optim.schedule('warmup', 1e-4, 5000, 5000)
    self.assertEqual(float(lr(0)), 0.0)
    self.assertAlmostEqual(float(lr(2500)), 5e-5, delta=1e-11)
    self.assertAlmostEqual(float(lr(4999)), 1e-4 * 4999 / 5000, delta=1e-11)
    self.assertAlmostEqual(float(lr(5000)), 1e-4, delta=1e-11)
    self.assertAlmostEqual(float(lr(9000)), 1e-4, delta=1e-11)

  def test_warmup_cosine(self):
    lr = optim.schedule('warmup_cosine', 5e-4, 100, 1000)
    self.assertAlmostEqual(float(lr(100)), 5e-4, places=9)
    self.assertAlmostEqual(float(lr(550)), 2.5e-4, places=9)
    self.assertAlmostEqual(float(lr(1000)), 0.0, places=9)

  def test_adam_as_published(self):
    cfg = config_lib.base_config().optim
    tx, _ = optim.make_optimizer(cfg, 5000)
    params = {'w': jnp.array([1.0, -2.0])}
    grads = {'w': jnp.array([0.5, 0.1])}
    state = tx.init(params)
    for _ in range(3):
      updates, state = tx.update(grads, state, params)
    ref = optax.adam(optim.schedule('warmup', 1e-4, 5000, 5000), b1=0.9, b2=0.999, eps=1e-8)
    ref_state = ref.init(params)
    for _ in range(3):
      ref_updates, ref_state = ref.update(grads, ref_state, params)
    np.testing.assert_array_equal(updates['w'], ref_updates['w'])

  def test_clipping_and_errors(self):
    cfg = ml_collections.ConfigDict(dict(name='adamw', lr=1.0, b1=0.9, b2=0.999, eps=1e-8,
                                         weight_decay=0.0, clip_norm=1.0, schedule='constant',
                                         warmup_steps=0, final_lr=0.0))
    tx, _ = optim.make_optimizer(cfg, 10)
    params = {'w': jnp.zeros(2)}
    sgd_like, _ = tx.update({'w': jnp.array([300.0, 400.0])}, tx.init(params), params)
    self.assertTrue(np.all(np.isfinite(sgd_like['w'])))
    cfg.name = 'adam'
    cfg.weight_decay = 0.1
    with self.assertRaisesRegex(ValueError, 'weight_decay'):
      optim.make_optimizer(cfg, 10)
    with self.assertRaisesRegex(ValueError, 'optim.warmup_steps'):
      optim.schedule('warmup_cosine', 1.0, 10, 10)


if __name__ == '__main__':
  absltest.main()
