"""ncalm's training step beside the published PyTorch step, in one sitting, interleaved.

    python benchmarks/vs_published.py --peer_python=/opt/torchbench/bin/python \
        [--peer_script=../shared/bench/published_torch_step.py] [--rounds=3] [--steps=5]

The peer is the published stage-1 step rebuilt from transformers' Llama parts (float32,
attention dropout 0.1, Adam; see the script's docstring), run in its own environment
(`pip install "torch==2.13.*" "transformers==4.53.0"`) as a subprocess. Each round times
every ncalm variant (median of --steps steps after a compile) and then one peer run
(median of its own 5 steps), so drifts in the machine's speed hit both alike. The shape is
the shared small one: 4 layers, d_model 256, 4 heads, MLP 1024, sequence 1024, batch 8,
vocabulary 10,002. Prints the CPU model, a line per round and the ratio of medians.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'configs'))
import nca_164m  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as bench  # pylint: disable=g-import-not-at-top,wrong-import-position

from ncalm import startup
from ncalm import step as step_lib
from ncalm.data import feeds

_PEER_PYTHON = flags.DEFINE_string('peer_python', sys.executable,
                                   'Python with torch and transformers installed.')
_PEER_SCRIPT = flags.DEFINE_string(
    'peer_script', os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'bench',
                                'published_torch_step.py'), 'The published step script.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds (each: every ncalm variant, then the peer).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed ncalm steps per variant per round.')
_VARIANTS = flags.DEFINE_list('variants', ['as configured', 'no dropout', 'scanned',
                                           'one attention block'],
                              'ncalm variants to time (see VARIANTS).')

# name → changes to the shared-shape config. 'as configured' is what a user gets.
VARIANTS = {
    'as configured': {},
    'no dropout': {'attn_dropout': 0.0},
    'scanned': {'scan_unroll': 1},
    'one attention block': {'attention_blocks': 1},
    'fused attention, no dropout': {'attn_dropout': 0.0, 'attention': 'fused'},
    'unrolled python loop': {'scan_layers': False},
}


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def shared_shape_config():
  cfg = nca_164m.get_config('cpu')
  cfg.model.update(d_model=256, num_layers=4, num_heads=4, mlp_dim=1024, dtype='float32',
                   remat='none', attn_dropout=0.1)
  cfg.global_batch = 8
  return cfg


def peer_step() -> dict:
  out = subprocess.run([_PEER_PYTHON.value, _PEER_SCRIPT.value, '--reps', '5'],
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  workdir = tempfile.mkdtemp()
  base = shared_shape_config()
  run = feeds.load(base, workdir)
  key = jax.random.PRNGKey(0)
  runs, setup = {}, None
  for name in _VARIANTS.value:
    cfg = shared_shape_config()
    cfg.model.update(VARIANTS[name])
    setup = step_lib.create_setup(cfg, startup.check(cfg).model)
    runs[name] = bench.timed_steps(setup, step_lib.make_train_step(setup),
                                   step_lib.create_state(setup, key), run.train_source, key)
  tokens = base.global_batch * base.seq_len
  print(f'cpu: {cpu_model()} ({os.cpu_count()} cores); jax {jax.__version__}; '
        f'shape: 4 layers, d_model 256, 4 heads, MLP 1024, seq 1024, batch 8, vocab 10,002, '
        'float32, Adam', flush=True)
  rates = {name: [] for name in [*runs, 'published torch step']}
  for round_index in range(_ROUNDS.value):
    t = bench.interleave(runs, setup, _STEPS.value)
    for name, sec in t.items():
      rates[name].append(tokens / sec)
    peer = peer_step()
    rates['published torch step'].append(peer['tokens_per_s'])
    print(f'round {round_index + 1}: ' + '; '.join(
        f'{name} {values[-1]:,.0f} tokens/s' for name, values in rates.items()), flush=True)
  peer = statistics.median(rates['published torch step'])
  print(f'medians over {_ROUNDS.value} rounds:')
  for name, values in rates.items():
    rate = statistics.median(values)
    print(f'  {name:>22}: {rate:8,.0f} tokens/s  = {rate / peer:.2f}× the published step')


if __name__ == '__main__':
  app.run(main)
