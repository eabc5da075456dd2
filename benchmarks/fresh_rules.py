"""Fresh in-band rules inside the step against a bank: the overhead, and when it pays.

    python benchmarks/fresh_rules.py [--repeats=5] [--rules=2048]

For two run shapes — configs/stage1.py:nca_50_cpu (8×8, 2 states, band 10%+ of gzip, the
CPU model) and configs/nca_164m.py:cpu (the paper's 12×12, 10-state data, 50%+ band, a small
model) — in one run, interleaved:
  1. the train step with its NCA batch made inside, from a bank of rules (the default) and
     with a fresh in-band rule per sequence (data.rules='fresh', the fewest candidates that
     leave ≤ 1% of rows short: `calibration.candidates_needed`);
  2. the honest alternative to fresh rules: a bank of one rule per sequence, scored with
     gzip on the host before training — train_steps × global_batch / acceptance rules at
     the host rate measured here (`complexity.score_rules`);
  3. at the full configs/nca_164m.py (a 1.6B model no CPU runs), the fresh overhead
     projected: the candidates' simulation FLOPs over the step's training FLOPs (the dry
     run's 6·N + attention), times the measured CPU ratio of the model's FLOP rate to the
     simulation's.
"""
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
from gpu import timing  # benchmarks/gpu/timing.py: interleaved rounds, medians
import jax

from ncalm import config_lib
from ncalm import perf
from ncalm import startup
from ncalm import step as step_lib
from ncalm.data import calibration
from ncalm.data import complexity
from ncalm.data import feeds

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats per variant (median kept).')
_RULES = flags.DEFINE_integer('rules', 2048, 'Rules scored for the host rate.')

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = ('stage1.py:nca_50_cpu', 'nca_164m.py:cpu')
H200_STEP_S = 0.97   # nca_164m on one H200 (docs/benchmarks.md): 5,000 steps ≈ 1.35 h


def load(spec: str, rules: str):
  cfg = config_lib.load_file(os.path.join(HERE, '..', 'configs', spec), __file__)
  cfg.data.rules = rules
  if rules == 'fresh':
    band = feeds.run_band(cfg)
    cfg.data.candidates = calibration.candidates_needed(band.device_acceptance)
  return cfg


def step_closure(cfg):
  """(a closure timing one train step with the data made inside, the setup, the source)."""
  run = feeds.load(cfg, tempfile.mkdtemp())
  setup = step_lib.create_setup(cfg, startup.check(cfg).model)
  step = step_lib.make_train_step(setup)
  key = jax.random.PRNGKey(0)
  holder = {'state': step_lib.create_state(setup, key)}

  def once():
    start = time.perf_counter()
    holder['state'], scalars = step(holder['state'], run.train_source, key)
    jax.block_until_ready(scalars)
    return time.perf_counter() - start

  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    once()   # compile
  return once, setup, run.train_source


def host_rate(cfg, n: int) -> float:
  """rules/s of the host path (simulate, then gzip each rule) in cfg's family."""
  nca_cfg = feeds.nca_config(cfg)
  rk = jax.random.split(jax.random.PRNGKey(3), n)
  sk = jax.random.split(jax.random.PRNGKey(4), n)
  complexity.score_rules(rk[:complexity.DEFAULT_CHUNK], sk[:complexity.DEFAULT_CHUNK], nca_cfg)
  start = time.perf_counter()
  complexity.score_rules(rk, sk, nca_cfg)
  return n / (time.perf_counter() - start)


def hours(seconds: float) -> str:
  if seconds >= 3600:
    return f'{seconds / 3600:.2f} h'
  return f'{seconds / 60:.1f} min' if seconds >= 60 else f'{seconds:.1f} s'


def measure(spec: str, repeats: int, n: int) -> dict:
  bank, fresh = load(spec, 'bank'), load(spec, 'fresh')
  band = feeds.run_band(fresh)
  runs = {}
  for name, cfg in (('bank', bank), ('fresh', fresh)):
    runs[name], setup, source = step_closure(cfg)
    if name == 'fresh':
      selection = source.selection_flops_per_row
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    t = timing.interleave(runs, repeats)
  model_flops = perf.flops_per_token(startup.check(bank).model, bank.seq_len) * bank.seq_len
  rows = bank.global_batch
  extra = t['fresh'] - t['bank']
  rate = host_rate(bank, n)
  sequences = bank.train_steps * rows
  host_seconds = sequences / band.device_acceptance / rate
  print(f'{spec}: batch {rows} × {bank.seq_len} tokens, band {tuple(bank.data.band)} '
        f'({bank.data.band_units}) keeps {band.device_acceptance:.1%} → '
        f'{fresh.data.candidates} candidates × {source.candidate_steps} steps per sequence')
  print(f'  step with a bank {t["bank"] * 1e3:.1f} ms, with fresh rules {t["fresh"] * 1e3:.1f} ms:'
        f' overhead {extra / t["bank"]:+.1%}')
  print(f'  the run ({bank.train_steps} steps): fresh rules add {hours(bank.train_steps * extra)}'
        f' of step time; a bank of one rule per sequence ({sequences:,} rules kept, '
        f'{sequences / band.device_acceptance:,.0f} scored at {rate:,.0f} rules/s on the host) '
        f'costs {hours(host_seconds)} before training')
  return dict(model_rate=rows * model_flops / t['bank'],
              simulation_rate=rows * selection / extra if extra > 0 else float('inf'),
              host_rate=rate)


def project(measured: dict) -> None:
  cfg = load('nca_164m.py', 'fresh')
  source = startup.check(cfg).feeds.train_source
  model = perf.flops_per_token(startup.check(cfg).model, cfg.seq_len) * cfg.seq_len
  flop_share = source.selection_flops_per_row / model
  efficiency = measured['model_rate'] / measured['simulation_rate']
  overhead = flop_share * efficiency
  run_seconds = cfg.train_steps * H200_STEP_S
  sequences = cfg.train_steps * cfg.global_batch
  acceptance = feeds.run_band(cfg).device_acceptance
  host_seconds = sequences / acceptance / measured['host_rate']
  print(f'nca_164m.py (full): {source.selection_flops_per_row / 1e6:.1f} MFLOP of candidates '
        f'per sequence against {model / 1e9:,.0f} GFLOP of training = {flop_share:.2e}; the '
        f'CPU runs the model {efficiency:.1f}× faster per FLOP than the simulation, so fresh '
        f'rules cost about {overhead:.3%} of the step ({hours(overhead * run_seconds)} of the '
        f'{hours(run_seconds)} H200 run); the one-rule-per-sequence '
        f'bank: {sequences / acceptance:,.0f} rules scored, {hours(host_seconds)} of this '
        'CPU before training')


def main(argv):
  del argv
  print(f'devices: {jax.devices()}')
  measured = {}
  for spec in SHAPES:
    measured[spec] = measure(spec, _REPEATS.value, _RULES.value)
  project(measured['nca_164m.py:cpu'])


if __name__ == '__main__':
  sys.exit(app.run(main))
