"""NCA data engine throughput: fast vs reference mode, rule scoring, and the bounds.

    python benchmarks/nca_throughput.py [--batch=256] [--repeats=5] [--rules=4096]

Everything is measured in one run, interleaved, so ratios hold on a noisy machine:
  1. tokens/s of a whole batch (rules from keys → rollout → tokens), fast vs reference;
  2. rules/s of the complexity scorer (simulate + tokenise + gzip), and gzip alone;
  3. the bounds: rule-network FLOPs per token against this machine's measured f32
     matmul rate, and the sampling-free (argmax) rollout as the ceiling for a sampler;
  4. rules/s scored on the device (simulate + tokenise + `device_complexity.lz_score`, all
     jitted) against the host gzip path (`complexity.score_rules`), for the 12×12, 10-state
     family and the 8×8, 2-state CPU family (`--only_scoring` runs this part alone).
"""
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ncalm.data import complexity
from ncalm.data import device_complexity
from ncalm.data import device_sources
from ncalm.data import nca
from ncalm.data import nca_tokens

_BATCH = flags.DEFINE_integer('batch', 256, 'Sequences per batch.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats per variant (median kept).')
_RULES = flags.DEFINE_integer('rules', 4096, 'Rules scored for the scoring rate.')
_ONLY_SCORING = flags.DEFINE_bool('only_scoring', False, 'Only part 4: device vs host scoring.')
CPU_FAMILY = nca.NCAConfig(grid=8, num_states=2, perceive_channels=1)  # stage1.py:nca_50_cpu


def timed(fn, *args):
  jax.block_until_ready(fn(*args))  # compile and warm up
  def once():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start
  return once


def interleave(runs: dict, repeats: int) -> dict:
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, once in runs.items():
      times[name].append(once())
  return {name: statistics.median(t) for name, t in times.items()}


def argmax_rollout(rule_keys, sim_keys, cfg):
  """The fast rollout without sampling: the next state is the argmax of the logits."""
  def one(rule_key, sim_key):
    rule = nca.fuse_rule(nca.rule_params(rule_key, cfg), cfg)
    def step(state, _):
      return jnp.argmax(nca.fast_logits(rule, state, cfg), -1).astype(jnp.int32), state
    _, states = jax.lax.scan(step, nca.fast_initial_state(sim_key, cfg), None, cfg.steps)
    return states[cfg.burn_in:]
  return nca_tokens.frames_to_tokens(jax.vmap(one)(rule_keys, sim_keys), cfg)


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  once = timed(f, a)
  return 2 * n**3 / min(once() for _ in range(repeats))


def network_flops_per_cell(cfg: nca.NCAConfig) -> dict:
  """Multiply-adds ×2 per cell update: as published (convs) and as fused here."""
  p, h, s = cfg.perceive_channels, cfg.hidden_channels, cfg.num_states
  published = 2 * (9 * cfg.input_channels * p + p * h + h * s)
  fused = 9 * h + 2 * h * s  # nine table rows summed, then the output layer
  return dict(published=published, fused=fused)


def scoring_rates(cfg: nca.NCAConfig, n: int, repeats: int) -> dict:
  """rules/s: the device score (one jitted function of the keys) and the host gzip path."""
  rk = jax.random.split(jax.random.PRNGKey(3), n)
  sk = jax.random.split(jax.random.PRNGKey(4), n)
  device = jax.jit(lambda r, s: device_complexity.lz_score(
      complexity.score_ids(r, s, cfg, 'fast')))
  host = lambda r, s: complexity.score_rules(r, s, cfg, 'fast')
  t = interleave({'device': timed(device, rk, sk), 'host gzip': timed(host, rk, sk)}, repeats)
  return {name: n / sec for name, sec in t.items()}


def score_rates(repeats: int) -> None:
  n = _RULES.value
  print(f'4. rules scored per second ({n:,} rules, simulate 10+10 steps + tokenise + score)')
  for name, cfg in (('12×12, 10 states', nca.NCAConfig()), ('8×8, 2 states', CPU_FAMILY)):
    rate = scoring_rates(cfg, n, repeats)
    print(f'  {name}: device lz_score {rate["device"]:,.0f} rules/s, host gzip '
          f'{rate["host gzip"]:,.0f} rules/s: device / host = '
          f'{rate["device"] / rate["host gzip"]:.1f}×')


def main(argv):
  del argv
  if _ONLY_SCORING.value:
    score_rates(_REPEATS.value)
    return
  cfg = nca.NCAConfig()
  b = _BATCH.value
  rule_keys = jax.random.split(jax.random.PRNGKey(1), b)
  sim_keys = jax.random.split(jax.random.PRNGKey(2), b)
  seq_tokens = cfg.frames * nca_tokens.tokens_per_frame(cfg)
  batch_tokens = b * seq_tokens
  print(f'devices: {jax.devices()}  batch: {b} sequences × {cfg.frames} frames '
        f'= {batch_tokens:,} tokens')

  make = {mode: jax.jit(device_sources.NCASource(cfg, seq_len=seq_tokens - 1, mode=mode).sequences)
          for mode in nca.MODES}
  runs = {mode: timed(make[mode], rule_keys, sim_keys) for mode in nca.MODES}
  runs['argmax'] = timed(jax.jit(lambda r, s: argmax_rollout(r, s, cfg)), rule_keys, sim_keys)
  t = interleave(runs, _REPEATS.value)
  rate = {name: batch_tokens / sec for name, sec in t.items()}
  for name in runs:
    print(f'  {name:>9}: {t[name] * 1e3:7.1f} ms/batch  {rate[name] / 1e6:6.2f} M tokens/s')
  print(f'  fast / reference = {rate["fast"] / rate["reference"]:.1f}×;  '
        f'fast / argmax ceiling = {rate["fast"] / rate["argmax"]:.0%}')

  n = _RULES.value
  rk = jax.random.split(jax.random.PRNGKey(3), n)
  sk = jax.random.split(jax.random.PRNGKey(4), n)
  complexity.score_rules(rk[:complexity.DEFAULT_CHUNK], sk[:complexity.DEFAULT_CHUNK], cfg)
  start = time.perf_counter()
  complexity.score_rules(rk, sk, cfg, 'fast')
  scoring = n / (time.perf_counter() - start)
  ids = np.asarray(complexity.score_ids(rk[:1024], sk[:1024], cfg, 'fast'))
  start = time.perf_counter()
  for row in ids:
    complexity.gzip_score(row)
  gzip_rate = len(ids) / (time.perf_counter() - start)
  print(f'rule scoring (fast: simulate + tokenise + gzip): {scoring:,.0f} rules/s; '
        f'gzip alone {gzip_rate:,.0f} rules/s')

  flops = network_flops_per_cell(cfg)
  cells_per_token = cfg.steps * cfg.grid**2 / seq_tokens
  peak = matmul_rate()
  print(f'bound: {peak / 1e9:.0f} GFLOP/s f32 matmul; rule network per token: '
        f'{flops["published"] * cells_per_token:.0f} FLOPs as published, '
        f'{flops["fused"] * cells_per_token:.0f} fused')
  for name in ('published', 'fused'):
    ceiling = peak / (flops[name] * cells_per_token)
    print(f'  {name} network at the matmul rate: {ceiling / 1e6:,.0f} M tokens/s '
          f'(fast mode reaches {rate["fast"] / ceiling:.1%})')
  score_rates(_REPEATS.value)


if __name__ == '__main__':
  app.run(main)
