"""Rules from keys, reference-mode exactness and fast-mode distribution (docs/method.md §1)."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ncalm.data import nca

import published_reference as published
from testdata import published_vectors

CFG = nca.NCAConfig()
rollout = jax.jit(nca.rollout, static_argnames=('cfg', 'mode'))


class RulesTest(absltest.TestCase):

  def test_params_equal_published_vectors(self):
    v = published_vectors()
    params = nca.rule_params(jnp.asarray(v['rule_keys'][0]), CFG)
    for i in range(3):
      for name in ('kernel', 'bias'):
        np.testing.assert_array_equal(params[f'Conv_{i}'][name], v[f'rule0_Conv_{i}_{name}'])

  def test_quirk_shapes_and_parameter_count(self):
    params = nca.rule_params(jax.random.PRNGKey(0), CFG)
    self.assertEqual(params['Conv_0']['kernel'].shape, (3, 3, 12, 4))
    self.assertEqual(sum(x.size for x in jax.tree.leaves(params)), 686)
    clean = nca.rule_params(jax.random.PRNGKey(0), CFG.replace(padding='clean'))
    self.assertEqual(clean['Conv_0']['kernel'].shape, (3, 3, 10, 4))

  def test_kernels_are_lecun_truncated_normal(self):
    keys = jax.random.split(jax.random.PRNGKey(1), 64)
    k0 = jax.vmap(nca.rule_params, in_axes=(0, None))(keys, CFG)['Conv_0']['kernel']
    # Variance 1/fan_in (fan_in = 3*3*12); truncated at 2 std of the untruncated normal.
    self.assertAlmostEqual(float(jnp.var(k0)) * 108, 1.0, delta=0.05)
    self.assertLess(float(jnp.abs(k0).max()) * np.sqrt(108) / 1.1368, 2.0 + 1e-5)


class ReferenceModeTest(parameterized.TestCase):

  def test_published_vectors(self):
    v = published_vectors()
    grids = rollout(v['rule_keys'], v['sim_keys'], CFG, 'reference')
    np.testing.assert_array_equal(grids, v['grids'])

  @parameterized.named_parameters(
      ('published', {}, 11),
      ('clean_padding', {'padding': 'clean'}, 12),
      ('small_grid_warm', {'grid': 6, 'num_states': 4, 'tau': 0.5, 'identity_bias': 1.0,
                           'burn_in': 3, 'frames': 5}, 13),
  )
  def test_equals_linen_reference(self, changes, seed):
    cfg = CFG.replace(**changes)
    rule_keys = jax.random.split(jax.random.PRNGKey(seed), 6)
    sim_keys = jax.random.split(jax.random.PRNGKey(seed + 100), 6)
    grids = np.asarray(rollout(rule_keys, sim_keys, cfg, 'reference'))
    for i in range(6):
      expected = published.simulate(
          rule_keys[i], sim_keys[i], grid=cfg.grid, num_states=cfg.num_states,
          burn_in=cfg.burn_in, frames=cfg.frames, tau=cfg.tau,
          identity_bias=cfg.identity_bias, wrap_states=cfg.padding == 'quirk')
      np.testing.assert_array_equal(grids[i], expected, err_msg=f'sequence {i}')

  def test_rule_with_all_hidden_units_off(self):
    """Where every hidden unit is off the logits are all zero: a uniform draw."""
    rule_keys = jax.random.split(jax.random.PRNGKey(37), 32)
    sim_keys = jax.random.split(jax.random.PRNGKey(1037), 32)
    grids = rollout(rule_keys, sim_keys, CFG, 'reference')
    params = jax.vmap(nca.rule_params, in_axes=(0, None))(rule_keys, CFG)
    logits = jax.vmap(jax.vmap(nca.rule_logits, in_axes=(None, 0, None)),
                      in_axes=(0, 0, None))(params, grids, CFG)
    all_off = np.asarray((logits == 0).all(-1).any((1, 2, 3)))
    self.assertTrue(all_off.any(), 'no rule with an all-off cell in this key set')
    for i in np.nonzero(all_off)[0][:2]:
      expected = published.simulate(rule_keys[i], sim_keys[i])
      np.testing.assert_array_equal(grids[i], expected)


class FastModeTest(parameterized.TestCase):

  def test_fused_logits_equal_network(self):
    for padding in ('quirk', 'clean'):
      cfg = CFG.replace(padding=padding)
      keys = jax.random.split(jax.random.PRNGKey(2), 32)
      params = jax.vmap(nca.rule_params, in_axes=(0, None))(keys, cfg)
      states = jax.random.randint(jax.random.PRNGKey(3), (32, 12, 12), 0, 10)
      want = jax.vmap(nca.rule_logits, in_axes=(0, 0, None))(params, states, cfg)
      fused = jax.vmap(nca.fuse_rule, in_axes=(0, None))(params, cfg)
      got = jax.vmap(nca.fast_logits, in_axes=(0, 0, None))(fused, states, cfg)
      np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)

  @parameterized.named_parameters(('warm', 1.0, 0.0), ('identity_bias', 0.3, 0.5),
                                  ('published_tau', 1e-4, 0.0))
  def test_transition_frequencies_match_softmax(self, tau, identity_bias):
    """Next-state frequencies for fixed rules and grids against exact probabilities."""
    cfg = CFG.replace(tau=tau, identity_bias=identity_bias)
    num_rules, draws = 3, 4000
    keys = jax.random.split(jax.random.PRNGKey(4), num_rules)
    params = jax.vmap(nca.rule_params, in_axes=(0, None))(keys, cfg)
    fused = jax.vmap(nca.fuse_rule, in_axes=(0, None))(params, cfg)
    states = jax.random.randint(jax.random.PRNGKey(5), (num_rules, 12, 12), 0, 10)

    logits = jax.vmap(nca.rule_logits, in_axes=(0, 0, None))(params, states, cfg)
    logits = np.float64(logits) + identity_bias * np.eye(10)[np.asarray(states)]
    z = logits / tau
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)

    step = jax.vmap(jax.vmap(nca.fast_step, in_axes=(0, 0, 0, None)), in_axes=(None, None, 0, None))
    draw_keys = jax.random.split(jax.random.PRNGKey(6), (draws, num_rules))
    nxt = jax.jit(step, static_argnums=3)(fused, states, draw_keys, cfg)
    freq = np.asarray(jax.nn.one_hot(nxt, 10).mean(0))
    # Each frequency is a mean of `draws` Bernoulli(p): 6 standard errors, plus a float
    # allowance for probabilities that round differently in float32.
    bound = 6 * np.sqrt(probs * (1 - probs) / draws) + 1e-3
    self.assertTrue(np.all(np.abs(freq - probs) <= bound),
                    f'worst excess {np.max(np.abs(freq - probs) - bound)}')
    if tau == 1.0:  # the check has power: a shifted draw breaks it
      shifted = np.roll(freq, 1, axis=-1)
      self.assertFalse(np.all(np.abs(shifted - probs) <= bound))

  def test_inverse_cdf_sampler(self):
    logits = jnp.log(jnp.array([0.5, 0.0, 0.2, 0.3]) + 1e-30)
    u = jnp.array([0.0, 0.49, 0.5, 0.69, 0.7, 0.999999])
    got = nca.sample_inverse_cdf(jnp.broadcast_to(logits, (6, 4)), u)
    np.testing.assert_array_equal(got, [0, 0, 2, 2, 3, 3])

  def test_initial_state_distribution(self):
    """Cells are i.i.d. softmax(z) with z ~ N(0, I): the state counts of one grid are
    multinomial, so the mean of count² over grids matches the reference's."""
    keys = jax.random.split(jax.random.PRNGKey(9), 3000)
    fast = jax.vmap(nca.fast_initial_state, in_axes=(0, None))(keys, CFG)
    ref = jax.vmap(nca.initial_state, in_axes=(0, None))(keys, CFG)[..., 0]
    for grids in (fast, ref):
      counts = np.asarray(jax.nn.one_hot(grids.reshape(3000, -1), 10).sum(1))
      self.assertAlmostEqual(counts.mean(), 14.4, delta=0.02)
    stat = lambda g: np.asarray(jax.nn.one_hot(g.reshape(3000, -1), 10).sum(1) ** 2).mean()
    self.assertAlmostEqual(stat(fast) / stat(ref), 1.0, delta=0.05)

  def test_bad_config(self):
    for changes, field in [({'grid': 13}, 'nca.grid'), ({'num_states': 300}, 'int32'),
                           ({'padding': 'mirror'}, 'nca.padding'), ({'tau': 0.0}, 'nca.tau')]:
      with self.assertRaisesRegex(ValueError, field):
        CFG.replace(**changes)
    with self.assertRaisesRegex(ValueError, 'mode'):
      nca.rollout(jnp.zeros((1, 2), jnp.uint32), jnp.zeros((1, 2), jnp.uint32), CFG, 'exact')


if __name__ == '__main__':
  absltest.main()
