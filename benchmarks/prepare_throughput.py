"""prepare's end-to-end rate against the tokeniser's own batch-encode rate, on the same text.

    python benchmarks/prepare_throughput.py [--mb=12] [--repeats=2] [--tokenizer=SPEC]

The text is CPython's standard library (`**/*.py` without site-packages, test/, tests/ and
idlelib/), the first --mb MB of it in sorted order; the tokeniser is a byte-level BPE with
8,192 ids trained on that text (or --tokenizer). Measured in one run, interleaved, median of
--repeats:
  1. per core: `encode_batch` over ~1 MB batches of the documents already in memory, one
     thread (TOKENIZERS_PARALLELISM=false), against `prepare(..., workers=1)` in this process
     (read, decode, split, encode, serialise, write, metadata);
  2. all cores: `encode_batch` with the tokeniser's own threads, against `prepare(...,
     workers=0)` (one process per core).
The overhead is 1 - prepare MB/s / encode_batch MB/s (issue 8's target: <= 20% per core),
in wall time and in CPU time (this process's threads and its pool's processes: the CPU-time
figure holds on a machine that other work shares, the wall-time one needs it idle).
prepare's time is end to end (a pool's start-up included), after one untimed run that pays
the imports and fills the page cache.
"""
import os
import resource
import shutil
import statistics
import sysconfig
import tempfile
import time

from absl import app
from absl import flags

from ncalm.data import dataset
from ncalm.data import encode as encode_lib
from ncalm.data import inputs
from ncalm.data import prepare
from ncalm.data import tokenizers
from ncalm.tools import tokenizer as tokenizer_cli

_MB = flags.DEFINE_float('mb', 12, 'MB of standard-library source to prepare.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed repeats per variant (median kept).')
_TOKENIZER = flags.DEFINE_string('tokenizer', '', 'Tokeniser spec; empty: train a byte-level '
                                 'BPE with 8,192 ids on the text.')


def cpu_model() -> str:
  with open('/proc/cpuinfo', encoding='utf-8') as f:
    for line in f:
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  return 'unknown CPU'


def cpu_seconds() -> float:
  """CPU time of this process (all threads) and of its finished children (pool workers)."""
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.process_time() + children.ru_utime + children.ru_stime


def stdlib_files(megabytes: float) -> list[str]:
  root = sysconfig.get_path('stdlib')
  skip = {'site-packages', 'test', 'tests', 'idlelib'}
  paths, total = [], 0
  for path in inputs.resolve_inputs(os.path.join(root, '**', '*.py')):
    parts = os.path.relpath(path.path, root).split(os.sep)
    if skip & set(parts) or not path.size:
      continue
    paths.append(path.path)
    total += path.size
    if total >= megabytes * 1e6:
      break
  return paths


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix='prepare_throughput_')
  try:
    paths = stdlib_files(_MB.value)
    texts = [open(p, encoding='utf-8').read() for p in paths]
    megabytes = sum(len(t.encode('utf-8')) for t in texts) / 1e6
    spec = _TOKENIZER.value
    if not spec:
      spec = os.path.join(tmp, 'bpe.json')
      tokenizer_cli.train_bpe(paths, 8192, spec)
    tokenizer = tokenizers.load(spec)
    batches, batch, size = [], [], 0
    for text in texts:  # ~1 MB batches of whole documents, as prepare encodes them
      batch.append(text)
      size += len(text)
      if size >= inputs.CHUNK_BYTES:
        batches.append(batch)
        batch, size = [], 0
    batches.append(batch)
    workers = encode_lib.default_workers()

    def encode(parallel: bool):
      os.environ['TOKENIZERS_PARALLELISM'] = 'true' if parallel else 'false'
      for b in batches:
        tokenizer.encode_batch(b)

    def run_prepare(n: int):
      os.environ['TOKENIZERS_PARALLELISM'] = 'false'
      report = prepare.prepare(paths, spec, os.path.join(tmp, f'data_{n}'), workers=n,
                               overwrite=True)
      assert report.workers == n, report.workers

    # Untimed: imports (tensorflow_datasets, array_record), the page cache, the tokeniser.
    prepare.prepare(paths, spec, os.path.join(tmp, 'warm_up'), workers=1)
    runs = {'encode_batch, 1 thread': lambda: encode(False),
            'prepare, workers=1': lambda: run_prepare(1),
            f'encode_batch, {workers} threads': lambda: encode(True),
            f'prepare, workers={workers}': lambda: run_prepare(workers)}
    times = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    for _ in range(_REPEATS.value):
      for name, once in runs.items():
        start, start_cpu = time.perf_counter(), cpu_seconds()
        once()
        times[name].append(time.perf_counter() - start)
        cpu[name].append(cpu_seconds() - start_cpu)
    rates = {name: megabytes / statistics.median(t) for name, t in times.items()}
    cpu_rates = {name: megabytes / statistics.median(t) for name, t in cpu.items()}
    meta = dataset.read_meta(os.path.join(tmp, 'data_1'))
    print(f'{cpu_model()}, {workers} cores; {len(paths):,} files, {megabytes:.1f} MB; '
          f'tokenizer {"BPE 8,192 (trained here)" if not _TOKENIZER.value else spec}, '
          f'{meta["bytes_per_token"]:.2f} bytes per token; median of {_REPEATS.value}')
    print(f'{"":<28} wall MB/s   MB per CPU-second   (wall seconds)')
    for name, rate in rates.items():
      print(f'  {name:<26} {rate:9.2f}   {cpu_rates[name]:17.2f}   '
            f'({", ".join(f"{t:.1f}" for t in times[name])})')
    names = list(rates)
    for tok, prep, what in ((names[0], names[1], 'per core'), (names[2], names[3], 'all cores')):
      print(f'pipeline overhead {what}: {1 - rates[prep] / rates[tok]:.1%} in wall time, '
            f'{1 - cpu_rates[prep] / cpu_rates[tok]:.1%} in CPU time')
    print(f'prepare scaling, {workers} workers / 1: {rates[names[3]] / rates[names[1]]:.2f}x; '
          f'load average {os.getloadavg()[0]:.1f} at the end')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
