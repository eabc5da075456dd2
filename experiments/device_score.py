"""How closely the device score (`ncalm.data.device_complexity.lz_score`) ranks NCA rules as
gzip does, per family; the numbers go to docs/transfer.md.

    python experiments/device_score.py [--rules=10000] [--out=device_score.png]

For each family (the paper's 12×12, 10-state rules in fast and reference mode; the small
8×8, 2-state family of the CPU stage 1): random rules, each scored by gzip on the host
(`complexity.score_rules`) and by lz_score on the device from the same trajectory. Prints
the Spearman rank correlation; for each band, the device band whose edges are the
device-score quantiles of gzip's edges (a calibration from these rules) and the share of
rules on which the two agree about membership; the throughput of both paths (simulation
included); and draws the scatter.
"""
import argparse
import time

import jax
import numpy as np
from scipy import stats

from ncalm import config_lib
from ncalm import viz
from ncalm.data import complexity
from ncalm.data import device_complexity
from ncalm.data import feeds
from ncalm.data import nca

CHUNK = 500
BANDS = {'12x12': ((0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 1.0)),
         'cpu': ((0.0, 0.06), (0.06, 0.1), (0.1, 1.0))}


def families():
  small = feeds.nca_config(config_lib.load_file('configs/stage1.py:nca_50_cpu'))
  return (('12x12, 10 states, fast', nca.NCAConfig(), 'fast', '12x12'),
          ('12x12, 10 states, reference', nca.NCAConfig(), 'reference', '12x12'),
          ('8x8, 2 states (cpu stage 1), fast', small, 'fast', 'cpu'))


def device_scores(rule_keys, sim_keys, cfg, mode):
  out = []
  for s in range(0, len(rule_keys), CHUNK):
    ids = complexity.score_ids(rule_keys[s:s + CHUNK], sim_keys[s:s + CHUNK], cfg, mode)
    out.append(np.asarray(device_complexity.lz_score(ids)))
  return np.concatenate(out)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rules', type=int, default=10000)
  parser.add_argument('--out', default='device_score.png')
  args = parser.parse_args()
  panels = []
  for name, cfg, mode, bands in families():
    n = args.rules if mode == 'fast' else args.rules // 5
    rule_keys = np.asarray(jax.random.split(jax.random.PRNGKey(1), n))
    sim_keys = np.asarray(jax.random.split(jax.random.PRNGKey(2), n))
    device_scores(rule_keys[:CHUNK], sim_keys[:CHUNK], cfg, mode)     # compile
    complexity.score_rules(rule_keys[:CHUNK], sim_keys[:CHUNK], cfg, mode, chunk=CHUNK)
    start = time.perf_counter()
    gzip = complexity.score_rules(rule_keys, sim_keys, cfg, mode, chunk=CHUNK)
    gzip_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    device = device_scores(rule_keys, sim_keys, cfg, mode)
    device_rate = n / (time.perf_counter() - start)
    rho = stats.spearmanr(gzip, device).correlation
    print(f'{name}: {n:,} rules, Spearman {rho:.4f}; gzip path {gzip_rate:,.0f} rules/s, '
          f'device path {device_rate:,.0f} rules/s')
    for low, high in BANDS[bands]:
      in_gzip = (gzip > low) & (gzip < high)
      edges = [np.quantile(device, np.mean(gzip <= e)) for e in (low, high)]
      above = device >= edges[0] if low == 0 else device > edges[0]   # a band from 0 keeps
      in_device = above & (device <= edges[1])                          # the simplest rules
      agree = np.mean(in_gzip == in_device)
      recall = np.mean(in_device[in_gzip]) if in_gzip.any() else float('nan')
      print(f'  band {low}-{high}: {in_gzip.mean():.1%} of rules; device edges '
            f'{edges[0]:.3f}-{edges[1]:.3f}; membership agrees on {agree:.2%} '
            f'(of the band: {recall:.2%})')
    panels.append((name, gzip, device))
  viz.save_png(args.out, scatter(panels))


def scatter(panels):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
  for ax, (name, gzip, device) in zip(axes, panels):
    ax.scatter(gzip, device, s=2, alpha=0.3)
    ax.set(title=name, xlabel='gzip score (host)', ylabel='lz_score (device)')
  fig.tight_layout()
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


if __name__ == '__main__':
  main()
