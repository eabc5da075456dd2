"""The text feed against the step it feeds: host tokens/s beside the step's tokens/s.

    python benchmarks/text_feed.py [--config=configs/text_code.py:cpu] [--repeats=5]

Needs the config's corpus prepared (see the config's docstring). Interleaved, median of
--repeats: (1) the host making one step's rows of the training split (the Prefetcher's
work, in this thread: windows from the ArrayRecord records, shuffled by grain) and
assembling the global batch; (2) one jitted training step on such a batch. Prints both
rates and their ratio (target: the feed ≥ 10× the step). The share of the step the loop
actually waited for data is `perf/data_wait` in a run's metrics.jsonl.
"""
import os
import platform
import statistics
import tempfile
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
from ml_collections import config_flags

from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm.data import feeds
from ncalm.data import text

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), '..', 'configs', 'text_code.py:cpu'),
    'A text config whose corpus is prepared.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats (median kept).')


def cpu_model() -> str:
  with open('/proc/cpuinfo') as f:
    for line in f:
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  return platform.processor()


def main(argv):
  del argv
  cfg = _CONFIG.value
  run = feeds.load(cfg, tempfile.mkdtemp())
  setup = step_lib.create_setup(cfg, startup.check(cfg).model)
  batch_sharding = sharding.batch_sharding(setup.mesh)
  state = step_lib.create_state(setup, jax.random.PRNGKey(0))
  step_fn = step_lib.make_train_step_on_batch(setup)
  key = jax.random.PRNGKey(1)
  tokens = cfg.global_batch * cfg.seq_len
  feed_times, step_times = [], []
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    batch = text.to_global_batch(run.train_source.read_rows(0, cfg.global_batch),
                                 batch_sharding, cfg.global_batch)
    state, scalars = step_fn(state, batch, key)  # compile
    jax.block_until_ready(scalars)
    for repeat in range(_REPEATS.value):
      start = time.perf_counter()
      rows = run.train_source.read_rows((repeat + 1) * cfg.global_batch, cfg.global_batch)
      batch = text.to_global_batch(rows, batch_sharding, cfg.global_batch)
      jax.block_until_ready(batch)
      feed_times.append(time.perf_counter() - start)
      start = time.perf_counter()
      state, scalars = step_fn(state, batch, key)
      jax.block_until_ready(scalars)
      step_times.append(time.perf_counter() - start)
  feed_rate = tokens / statistics.median(feed_times)
  step_rate = tokens / statistics.median(step_times)
  print(f'cpu: {cpu_model()} ({os.cpu_count()} cores); jax {jax.__version__}; config '
        f'{flags.FLAGS["config"].config_filename}: batch {cfg.global_batch} × seq {cfg.seq_len}, '
        f'{run.train_source.meta["tokenizer"]}')
  print(f'  feed (one step\'s rows + global batch, one thread): {feed_rate:12,.0f} tokens/s')
  print(f'  training step on that batch:                         {step_rate:12,.0f} tokens/s')
  print(f'  feed ÷ step: {feed_rate / step_rate:.1f}× (target >= 10×)')


if __name__ == '__main__':
  app.run(main)
