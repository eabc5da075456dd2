"""Fresh in-band rules chosen inside the step (`ncalm.data.fresh_rules`): the choice, the
sequences it makes, short rows, the held-out rules it never takes, periodic candidates, the
metrics, exact resume, and the start-up errors of data.rules='fresh'."""
import functools
import math
import os
import tempfile

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import errors
from ncalm import experiment
from ncalm import metrics
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm.data import complexity
from ncalm.data import device_complexity
from ncalm.data import device_sources
from ncalm.data import fresh_rules
from ncalm.data import nca
from ncalm.data import nca_tokens

import helpers
import tiny_config

SMALL = nca.NCAConfig(grid=8, num_states=2, perceive_channels=1)   # the CPU family
MESH = sharding.make_mesh(dict(data=1), jax.devices()[:1])
make_batch = jax.jit(device_sources.make_sharded_batch, static_argnums=(2, 3))


def fresh_config(**data):
  cfg = tiny_config.get_config()
  cfg.data.rules = 'fresh'
  cfg.data.update(**data)
  return cfg


def candidate_scores(source, candidate_keys, sim_key):
  """Each candidate's lz_score on the first SCORE_FRAMES frames after the burn-in of its own
  rollout from the sequence's key — computed here through `nca.rollout`."""
  window = source.window_cfg
  frames = nca.rollout(candidate_keys, jnp.broadcast_to(sim_key, candidate_keys.shape),
                       window, 'fast')[:, :complexity.SCORE_FRAMES]
  ids = nca_tokens.encode_frames(frames, window).reshape(len(candidate_keys), -1)
  return np.asarray(device_complexity.lz_score(ids)), frames


class ChoiceTest(absltest.TestCase):

  def make(self, **fields):
    return fresh_rules.FreshNCASource(SMALL, fields.pop('seq_len', 18 * 12 - 1), 'fast', None,
                                      '', **fields)

  def test_each_row_is_the_first_in_band_candidate_made_as_a_bank_would(self):
    source = self.make(band=(0.1, 0.5), candidates=8)
    keys = source.row_keys(jax.random.PRNGKey(0), 6)
    rows, stats = jax.jit(source.rows_and_stats)(keys)
    bank = device_sources.NCASource(SMALL, source.seq_len, 'fast', None, '')
    for r in range(6):
      scores, _ = candidate_scores(source, keys[0][r], keys[1][r])
      ok = (scores > 0.1) & (scores <= 0.5)
      self.assertEqual(bool(stats['kept'][r]), ok.any())
      self.assertEqual(int(stats['accepted'][r]), ok.sum())
      if ok.any():
        chosen = keys[0][r][np.argmax(ok)]
        np.testing.assert_array_equal(stats['rule_keys'][r], chosen)
        # 12 frames >= SCORE_FRAMES: exactly the bank source's sequence of that rule and key.
        want = bank.rows((chosen[None], keys[1][r][None]))[0]
        np.testing.assert_array_equal(rows[r], want)
    self.assertGreater(int(stats['kept'].sum()), 0)

  def test_a_sequence_shorter_than_the_scored_frames_is_the_head_of_the_window(self):
    source = self.make(seq_len=18 * 3 - 1, band=(-math.inf, math.inf), candidates=2)
    keys = source.row_keys(jax.random.PRNGKey(1), 3)
    rows, stats = jax.jit(source.rows_and_stats)(keys)
    self.assertTrue(np.all(stats['kept']))
    _, frames = candidate_scores(source, stats['rule_keys'], keys[1][0])
    for r in range(3):
      window = nca.rollout(stats['rule_keys'][r:r + 1], keys[1][r:r + 1], source.window_cfg)
      want = nca_tokens.frames_to_tokens(window[:, :3], SMALL)[0, :source.seq_len + 1]
      np.testing.assert_array_equal(rows[r], want)

  def test_short_rows_are_unscored_and_counted(self):
    source = self.make(band=(5.0, 6.0), candidates=4)        # no lz_score reaches 5
    batch, scalars = make_batch(
        source, jax.random.PRNGKey(2), 4, MESH)
    self.assertEqual(float(jnp.sum(batch.loss_mask)), 0.0)
    self.assertEqual(float(scalars['data/short_rows']), 4.0)
    self.assertEqual(float(scalars['data/accepted_fraction']), 0.0)
    # A band every candidate fits: all rows scored, as the NCA loss mask says.
    wide = self.make(band=(-math.inf, math.inf), candidates=4)
    batch, scalars = make_batch(
        wide, jax.random.PRNGKey(2), 4, MESH)
    np.testing.assert_array_equal(batch.loss_mask[0], wide.loss_mask())
    self.assertEqual((float(scalars['data/short_rows']),
                      float(scalars['data/accepted_fraction'])), (0.0, 1.0))

  def test_held_out_rules_are_never_chosen(self):
    source = self.make(band=(-math.inf, math.inf), candidates=3)
    keys = source.row_keys(jax.random.PRNGKey(3), 4)
    _, stats = jax.jit(source.rows_and_stats)(keys)
    first_choices = np.asarray(stats['rule_keys'])     # every row took its candidate 0
    np.testing.assert_array_equal(first_choices, np.asarray(keys[0][:, 0]))
    held = np.concatenate([first_choices[:2], np.asarray(keys[0][2:]).reshape(-1, 2)])
    guarded = self.make(band=(-math.inf, math.inf), candidates=3, held_out_keys=held)
    _, stats = jax.jit(guarded.rows_and_stats)(keys)
    np.testing.assert_array_equal(stats['rule_keys'][:2], np.asarray(keys[0][:2, 1]))
    self.assertEqual(stats['kept'].tolist(), [True, True, False, False])

  def test_periodic_candidates_are_rejected(self):
    source = self.make(band=(-math.inf, math.inf), candidates=8)
    keys = source.row_keys(jax.random.PRNGKey(4), 8)
    _, stats = jax.jit(source.rows_and_stats)(keys)
    plain = nca.rollout(stats['rule_keys'], keys[1], source.sim_cfg)
    firsts = [int(device_complexity.periodicity(t)[0]) for t in plain]
    self.assertLess(min(firsts), 12)                   # the first candidates are often periodic
    aperiodic = self.make(band=(-math.inf, math.inf), candidates=8, reject_periodic=True)
    _, stats = jax.jit(aperiodic.rows_and_stats)(keys)
    chosen = nca.rollout(stats['rule_keys'], keys[1], aperiodic.sim_cfg)
    for kept, trajectory in zip(stats['kept'], chosen):
      if kept:
        self.assertEqual(int(device_complexity.periodicity(trajectory)[0]), 12)
    self.assertGreater(int(stats['kept'].sum()), 0)


class PeriodicityTest(absltest.TestCase):

  def test_first_repeat_and_period(self):
    frames = np.zeros((6, 2, 2), np.int32)
    frames[:, 0, 0] = [0, 1, 2, 3, 1, 2]      # frame 4 repeats frame 1: period 3
    self.assertEqual(tuple(map(int, device_complexity.periodicity(frames))), (4, 3))
    frames[:, 0, 0] = [0, 1, 2, 3, 4, 4]      # a fixed point from frame 4
    self.assertEqual(tuple(map(int, device_complexity.periodicity(frames))), (5, 1))
    frames[:, 0, 0] = [0, 1, 2, 3, 4, 5]
    self.assertEqual(tuple(map(int, device_complexity.periodicity(frames))), (6, 0))

  def test_agrees_with_the_bank_filter(self):
    rule_keys = jax.random.split(jax.random.PRNGKey(5), 32)
    sim_keys = jax.random.split(jax.random.PRNGKey(6), 32)
    cfg = SMALL.replace(frames=12)
    frames = nca.rollout(rule_keys, sim_keys, cfg)
    first = np.asarray(jax.vmap(lambda t: device_complexity.periodicity(t)[0])(frames))
    repeats = np.asarray(complexity.repeats_a_frame(rule_keys, sim_keys, SMALL, 'fast', 12))
    np.testing.assert_array_equal(first < 12, repeats)
    self.assertTrue(repeats.any() and not repeats.all())


class ComputeTest(absltest.TestCase):

  def test_the_compute_column_counts_every_candidates_simulation(self):
    fresh, bank = fresh_config(candidates=24), fresh_config(rules='bank')
    source = startup.check(fresh).feeds.train_source
    window = source.window_cfg
    self.assertEqual(source.candidate_steps, window.burn_in + complexity.SCORE_FRAMES)
    per_row = 24 * source.candidate_steps * nca.step_flops(window)
    extra = experiment.compute(fresh)['flops'] - experiment.compute(bank)['flops']
    self.assertEqual(extra, fresh.train_steps * fresh.global_batch * per_row)
    periodic = startup.check(fresh_config(reject_periodic=True)).feeds.train_source
    self.assertEqual(periodic.candidate_steps, window.steps)

  def test_step_flops_is_near_xlas_count(self):
    # XLA also counts the random bits of the draw, which the estimate leaves out.
    for cfg in (SMALL, nca.NCAConfig()):
      rule = nca.fuse_rule(nca.rule_params(jax.random.PRNGKey(0), cfg), cfg)
      state = nca.fast_initial_state(jax.random.PRNGKey(1), cfg)
      compiled = jax.jit(functools.partial(nca.fast_step, cfg=cfg)).lower(
          rule, state, jax.random.PRNGKey(2)).compile()
      cost = compiled.cost_analysis()
      xla = (cost[0] if isinstance(cost, list) else cost)['flops']
      self.assertBetween(nca.step_flops(cfg) / xla, 0.6, 1.0)


class FreshRunTest(absltest.TestCase):

  def test_trains_reports_its_metrics_and_resumes_exactly(self):
    cfg = fresh_config()
    cfg.evals.heldout.every = cfg.evals.probe.every = 100
    workdir = os.path.join(tempfile.mkdtemp(), 'run')
    train.train_and_evaluate(cfg, workdir)
    rows = [r for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
            if 'train/loss' in r]
    self.assertLen(rows, cfg.train_steps)
    for row in rows:
      self.assertEqual(row['data/short_rows'], 0.0)
      self.assertBetween(row['data/accepted_fraction'], 0.2, 0.8)   # the band keeps ~47%
    # The run's bank holds the held-out rules only.
    bank = complexity.RuleBank.load(os.path.join(workdir, 'rule_bank.npz'))
    self.assertLen(bank, cfg.data.num_val_rules)
    checked = startup.check(cfg)
    setup = step_lib.create_setup(cfg, checked.model)
    helpers.assert_resumes_exactly(self, cfg, workdir, setup)

  def test_startup_errors_name_the_field(self):
    cases = [
        (dict(band=None), "needs a band"),
        (dict(mode='reference'), "data.mode='reference'"),
        (dict(band=(0.2, 0.3), candidates=4), r'data.candidates >= \d+'),
        (dict(band=(0.999, 1.0)), 'holds no rule of this family'),
        (dict(rules='new'), "data.rules='new'"),
        (dict(band_units='percent'), "data.band_units='percent'"),
        (dict(band_units='quantile', band=(0.5, 1.5)), 'fractions of the family'),
        (dict(calibration=tempfile.mkdtemp()), 'python -m ncalm.calibrate'),
    ]
    for fields, message in cases:
      with self.subTest(fields=fields), self.assertRaisesRegex(errors.UserError, message):
        startup.check(fresh_config(**fields))


if __name__ == '__main__':
  absltest.main()
