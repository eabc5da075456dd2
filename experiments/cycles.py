"""How many NCA trajectories of a run's rule bank have entered a cycle by each frame.

    python experiments/cycles.py RUN_DIR...

A trajectory is in a cycle at frame t when frame t equals an earlier frame; from then on a
model can predict it by copying one period back, without knowing the rule. On small tori a
pattern that translates one cell per step comes back after `grid` steps, so a falling loss
per frame on such data can be copying rather than rule inference (docs/transfer.md).
"""
import argparse
import json
import os

import jax
import numpy as np

from ncalm import run_files
from ncalm.data import complexity
from ncalm.data import nca

SEQUENCES = 200


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+')
  parser.add_argument('--frames', type=int, default=29)
  args = parser.parse_args()
  print('| run | in a cycle by frame 2 | 4 | 7 | 8 | 16 | 28 | most common periods |')
  print('|---|---|---|---|---|---|---|---|')
  for run in args.runs:
    with open(os.path.join(run, run_files.CONFIG)) as f:
      config = json.load(f)['config']
    fields = {k.split('.')[-1]: v for k, v in config.items() if k.startswith('data.nca.')}
    cfg = nca.NCAConfig(**{**fields, 'frames': args.frames})
    bank = complexity.RuleBank.load(os.path.join(run, run_files.RULE_BANK))
    keys = bank.keys[-SEQUENCES:]
    sims = jax.random.split(jax.random.PRNGKey(5), len(keys))
    frames = np.asarray(nca.rollout(keys, sims, cfg, 'fast')).reshape(len(keys), args.frames, -1)
    entered, periods = [], []
    for seq in frames:
      found = next(((t, p) for t in range(1, args.frames) for p in range(1, t + 1)
                    if np.array_equal(seq[t], seq[t - p])), (args.frames, 0))
      entered.append(found[0])
      periods.append(found[1])
    entered = np.array(entered)
    share = lambda t: f'{np.mean(entered <= t):.0%}'
    counts = np.bincount([p for p in periods if p])
    common = ', '.join(f'{p} ({c})'
                       for p, c in sorted(enumerate(counts), key=lambda x: -x[1])[:3] if c)
    print(f'| {os.path.basename(os.path.normpath(run))} | {share(2)} | {share(4)} | {share(7)} | '
          f'{share(8)} | {share(16)} | {share(28)} | {common} |')


if __name__ == '__main__':
  main()
