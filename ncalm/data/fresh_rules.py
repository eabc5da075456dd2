"""NCA with a fresh in-band rule for every sequence, chosen on the device inside the step.

A bank (`device_sources.NCASource` with rule keys) is sampled once on the host: gzip scores
every candidate, and the run draws its rules from those kept. `FreshNCASource` instead gives
each sequence `candidates` new rules from the step's key, simulates all of them from the
sequence's own initial state for burn_in + SCORE_FRAMES steps, scores each on those frames
with `device_complexity.lz_score` and keeps the first whose score lies in the band's device
edges (`ncalm.data.calibration`: gzip's band, rank-matched). The chosen rule's simulation
then goes on to the sequence's length, so the sequence is exactly what a bank run would make
from that rule and simulation key. A candidate that is one of the held-out rules (the fixed
bank held-out evaluation and the probe use) is never kept, so training and held-out rules are
disjoint by construction; with `reject_periodic`, every candidate is simulated over the whole
window and one whose frames repeat (`device_complexity.periodicity`) is not kept either.

A sequence none of whose candidates qualifies is a *short row*: it holds its first
candidate's trajectory but every one of its targets has loss weight 0, so it teaches nothing
and no out-of-band rule is trained on. The step reports `data/short_rows` (per batch) and
`data/accepted_fraction` (the share of candidates in the band). Everything is a pure function
of the keys, so a batch is a pure function of (seed, step) as for a bank.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ncalm import errors
from ncalm.data import complexity
from ncalm.data import device_complexity
from ncalm.data import device_sources
from ncalm.data import nca
from ncalm.data import nca_tokens


@dataclasses.dataclass(frozen=True)
class FreshNCASource(device_sources.NCASource):
  """NCA sequences, each from its own new rule in the band (module docstring)."""
  held_out_keys: jax.Array | None = None   # uint32 [N, 2]: rules never used for training
  band: tuple[float, float] = (-math.inf, math.inf)   # keep lz_score in (low, high]
  candidates: int = 16                     # candidate rules per sequence
  reject_periodic: bool = False            # also drop candidates whose frames repeat

  def __post_init__(self):
    super().__post_init__()
    if self.mode != 'fast':
      raise errors.UserError(f"data.mode={self.mode!r}: fresh rules (data.rules='fresh') are "
                             "simulated in fast mode; set data.mode='fast' (the same rules in "
                             "distribution), or data.rules='bank' for reference mode.")
    if self.candidates < 1:
      raise errors.UserError(f'data.candidates={self.candidates} must be >= 1.')

  @property
  def window_cfg(self) -> nca.NCAConfig:
    """The simulation of every candidate: at least the SCORE_FRAMES frames scored."""
    sim = self.sim_cfg
    return sim.replace(frames=max(sim.frames, complexity.SCORE_FRAMES))

  @property
  def candidate_steps(self) -> int:
    """Steps each candidate is simulated before the choice."""
    cfg = self.window_cfg
    return cfg.steps if self.reject_periodic else cfg.burn_in + complexity.SCORE_FRAMES

  @property
  def selection_flops_per_row(self) -> float:
    """The candidates' simulation for one sequence (their fusing and scoring are small)."""
    return float(self.candidates * self.candidate_steps * nca.step_flops(self.window_cfg))

  def row_keys(self, key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """(candidate rule keys [B, candidates, 2], simulation keys [B, 2])."""
    rule_key, sim_key = jax.random.split(key)
    candidates = jax.random.split(rule_key, batch_size * self.candidates)
    return (candidates.reshape(batch_size, self.candidates, -1),
            jax.random.split(sim_key, batch_size))

  def rows(self, row_keys) -> jax.Array:
    return self.rows_and_stats(row_keys)[0]

  def rows_and_stats(self, row_keys) -> tuple[jax.Array, dict]:
    candidate_keys, sim_keys = row_keys
    frames, chosen, kept, accepted = jax.vmap(self.choose)(candidate_keys, sim_keys)
    rows = self.tokens(frames, sim_keys)[:, :self.seq_len + 1]
    return rows, dict(kept=kept, accepted=accepted, rule_keys=chosen)

  def unigram_log_probs(self, key: jax.Array, batch_size: int = 256):
    """The token distribution of the band, from the held-out rules (a bank in the same band)
    when there are some: the same estimate at 1/candidates of the simulation."""
    if self.held_out_keys is None:
      return super().unigram_log_probs(key, batch_size)
    bank = device_sources.NCASource(self.cfg, self.seq_len, self.mode, self.held_out_keys,
                                    self.shuffle)
    return bank.unigram_log_probs(key, batch_size)

  def batch_metrics(self, stats: dict) -> dict:
    return {'data/accepted_fraction': jnp.mean(stats['accepted']) / self.candidates,
            'data/short_rows': jnp.sum(~stats['kept']).astype(jnp.float32)}

  def choose(self, candidate_keys: jax.Array, sim_key: jax.Array):
    """One sequence: (frames × H × W of the chosen rule, its key, kept, candidates in band)."""
    cfg = self.window_cfg
    step_keys = jax.random.split(sim_key, cfg.steps)
    start = nca.fast_initial_state(sim_key, cfg)
    rules = jax.vmap(lambda k: nca.fuse_rule(nca.rule_params(k, cfg), cfg))(candidate_keys)
    first_steps = self.candidate_steps
    ends, states = jax.vmap(_simulate, in_axes=(0, None, None, None))(
        rules, start, step_keys[:first_steps], cfg)
    scored = states[:, cfg.burn_in:cfg.burn_in + complexity.SCORE_FRAMES]
    ids = jax.vmap(lambda f: nca_tokens.encode_frames(f[None], cfg).reshape(-1))(scored)
    scores = jax.vmap(device_complexity.lz_ratio)(ids)
    ok = (scores > self.band[0]) & (scores <= self.band[1])
    if self.held_out_keys is not None:
      held = jnp.asarray(self.held_out_keys)
      ok &= ~jnp.any(jnp.all(candidate_keys[:, None, :] == held[None, :, :], -1), -1)
    if self.reject_periodic:
      window = states[:, cfg.burn_in:cfg.burn_in + self.sim_cfg.frames]
      first_repeat, _ = jax.vmap(device_complexity.periodicity)(window)
      ok &= first_repeat == window.shape[1]
    choice = jnp.argmax(ok)
    frames = states[choice]
    if first_steps < cfg.steps:           # the chosen rule goes on to the sequence's end
      rule = jax.tree.map(lambda x: x[choice], rules)
      _, rest = _simulate(rule, ends[choice], step_keys[first_steps:], cfg)
      frames = jnp.concatenate([frames, rest])
    frames = frames[cfg.burn_in:cfg.burn_in + self.sim_cfg.frames]
    return frames, candidate_keys[choice], jnp.any(ok), jnp.sum(ok)


def _simulate(rule: nca.FusedRule, state: jax.Array, step_keys: jax.Array,
              cfg: nca.NCAConfig) -> tuple[jax.Array, jax.Array]:
  """(final state, the state before each step) of `rule` from `state`, one key a step —
  the steps of `nca.fast_rollout`, from any point of a trajectory."""
  def step(s, key):
    return nca.fast_step(rule, s, key, cfg), s
  return jax.lax.scan(step, state, step_keys)


jax.tree_util.register_dataclass(
    FreshNCASource, data_fields=['rule_keys', 'held_out_keys'],
    meta_fields=['cfg', 'seq_len', 'mode', 'shuffle', 'band', 'candidates', 'reject_periodic'])
