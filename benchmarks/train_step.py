"""Training-step speed: the cost of making NCA data inside the step, and throughput.

    python benchmarks/train_step.py [--repeats=5]

1. In-step data cost, at the `configs/nca_164m.py:cpu` shapes: the jitted step that makes
   its NCA batch inside (the default) against the same step fed the same batch made
   beforehand; the ratio of step times, interleaved in one run.
2. Throughput at a small shared shape (4 layers, d_model 256, 4 heads, MLP 1024, sequence
   1024, batch 8, vocabulary 10,002, Adam, float32): tokens/s and achieved FLOP/s (6·N per
   token plus attention) as a fraction of this machine's measured float32 matmul rate,
   with and without attention dropout.
"""
import statistics
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax

from ncalm import perf
from ncalm import startup
from ncalm import step as step_lib
from ncalm.data import feeds

sys.path.insert(0, 'configs')
import nca_164m  # pylint: disable=g-import-not-at-top,wrong-import-position

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats per variant (median kept).')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/ncalm_bench', 'Holds the rule bank.')


def timed_steps(setup, step_fn, state, *args):
  """A closure timing one step (state threaded through; donated buffers respected)."""
  holder = {'state': state}

  def once():
    start = time.perf_counter()
    holder['state'], scalars = step_fn(holder['state'], *args)
    jax.block_until_ready(scalars)
    return time.perf_counter() - start

  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    once()  # compile
  return once


def interleave(runs, setup, repeats):
  times = {name: [] for name in runs}
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    for _ in range(repeats):
      for name, once in runs.items():
        times[name].append(once())
  return {name: statistics.median(t) for name, t in times.items()}


def data_cost(repeats: int) -> None:
  cfg = nca_164m.get_config('cpu')
  run = feeds.load(cfg, _WORKDIR.value)
  setup = step_lib.create_setup(cfg, startup.check(cfg).model)
  key = jax.random.PRNGKey(0)
  inside = step_lib.make_train_step(setup)
  fed = step_lib.make_train_step_on_batch(setup)
  data_key, _ = step_lib.step_keys(key, 0)
  batch = jax.jit(lambda s, k: s.batch(k, cfg.global_batch))(run.train_source, data_key)
  runs = {
      'data made in the step': timed_steps(setup, inside, step_lib.create_state(setup, key),
                                           run.train_source, key),
      'pre-made batch fed': timed_steps(setup, fed, step_lib.create_state(setup, key), batch, key),
  }
  t = interleave(runs, setup, repeats)
  for name, sec in t.items():
    print(f'  {name:>22}: {sec * 1e3:8.1f} ms/step')
  cost = t['data made in the step'] / t['pre-made batch fed'] - 1
  print(f'  cost of making the NCA batch inside the step: {cost:+.2%} (target <= 3%)')


def shaped_matmul_rate(m: int = 8192, k: int = 256, n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of one of the model's own GEMMs (tokens × d_model @ d_model × mlp)."""
  a, b = jax.numpy.ones((m, k)), jax.numpy.ones((k, n))
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * m * k * n / best


def throughput(repeats: int, peak: float) -> None:
  cfg = nca_164m.get_config('cpu')
  cfg.model.update(d_model=256, num_layers=4, num_heads=4, mlp_dim=1024, dtype='float32',
                   remat='none')
  cfg.global_batch = 8
  run = feeds.load(cfg, _WORKDIR.value)
  key = jax.random.PRNGKey(0)
  runs, setups = {}, {}
  for dropout in (0.1, 0.0):
    cfg.model.attn_dropout = dropout
    setup = step_lib.create_setup(cfg, startup.check(cfg).model)
    name = f'attention dropout {dropout}'
    runs[name] = timed_steps(setup, step_lib.make_train_step(setup),
                             step_lib.create_state(setup, key), run.train_source, key)
    setups[name] = setup
  t = interleave(runs, setup, repeats)
  flops = perf.flops_per_token(setup.model.cfg, cfg.seq_len)
  tokens = cfg.global_batch * cfg.seq_len
  print(f'  shape: 4 layers, d_model 256, 4 heads, MLP 1024, seq 1024, batch 8, vocab 10,002, '
        f'Adam, float32; {flops / 1e6:.1f} MFLOP per token')
  shaped = shaped_matmul_rate()
  print(f'  this model\'s own GEMM shape (8192×256 @ 256×1024) runs at {shaped / 1e9:.0f} GFLOP/s')
  for name, sec in t.items():
    achieved = flops * tokens / sec
    print(f'  {name:>22}: {sec * 1e3:8.1f} ms/step  {tokens / sec:8,.0f} tokens/s  '
          f'{achieved / 1e9:6.1f} GFLOP/s = {achieved / peak:.0%} of the 2048² matmul rate, '
          f'{achieved / shaped:.0%} of the same-shape GEMM rate')


def main(argv):
  del argv
  peak = perf.measured_matmul_flops(2048)
  print(f'devices: {jax.devices()}; measured f32 matmul rate {peak / 1e9:.0f} GFLOP/s')
  print('1. in-step NCA data cost (nca_164m:cpu shapes)')
  data_cost(_REPEATS.value)
  print('2. train-step throughput at the shared small shape')
  throughput(_REPEATS.value, peak)


if __name__ == '__main__':
  app.run(main)
