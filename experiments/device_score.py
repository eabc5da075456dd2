"""How closely the device score (`ncalm.data.device_complexity.lz_score`) ranks NCA rules as
gzip does, per family, and how well calibrated bands agree; the numbers go to docs/transfer.md.

    python experiments/device_score.py [--rules=10000] [--out=device_score.png]

For each family (the paper's 12×12, 10-state rules in fast and reference mode; 12×12 with 4
states; the 8×8, 2-state family of the CPU stage 1; the 16×16, 2-state family of the
aperiodic arm): random rules, each scored by gzip on the host (`complexity.score_rules`) and
by lz_score on the device from the same trajectory. Prints the Spearman rank correlation;
for each band, its device edges from the family's calibration — the committed one in
configs/calibration when there is one (made from other rules: an out-of-sample check),
else one made from these rules — and, as the filters compare (`calibration.agreement`), the
share of rules on which gzip's band and the device band agree and the share of the device
band's rules inside gzip's; the throughput of both paths (simulation included); and draws
the scatter.
"""
import argparse
import time

import jax
import numpy as np
from scipy import stats

from ncalm import config_lib
from ncalm import errors
from ncalm import viz
from ncalm.data import calibration
from ncalm.data import complexity
from ncalm.data import device_complexity
from ncalm.data import feeds
from ncalm.data import nca

CHUNK = 500
PAPER = tuple(((low, high), 'gzip') for low, high in ((0.2, 0.3), (0.3, 0.4), (0.4, 0.5),
                                                       (0.5, 1.0)))
QUARTERS = tuple(((low, high), 'quantile') for low, high in ((0.7, 0.775), (0.775, 0.85),
                                                            (0.85, 0.925), (0.925, 1.0)))


def families():
  small = feeds.nca_config(config_lib.load_file('configs/stage1.py:nca_50_cpu'))
  return (('12x12, 10 states, fast', nca.NCAConfig(), 'fast', PAPER),
          ('12x12, 10 states, reference', nca.NCAConfig(), 'reference', PAPER),
          ('12x12, 4 states, fast', nca.NCAConfig(num_states=4), 'fast', PAPER),
          ('8x8, 2 states (cpu stage 1), fast', small, 'fast',
           (((0.1, 1.0), 'gzip'),) + QUARTERS),
          ('16x16, 2 states (aperiodic arm), fast', small.replace(grid=16), 'fast', QUARTERS))


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
    n = args.rules
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
    try:
      cal, source = calibration.load('configs/calibration', cfg), 'committed'
    except errors.UserError:
      cal, source = calibration.calibrate(cfg, n, 1, scored=(gzip, device)), 'these rules'
    for band, units in bands:
      agree, precision = calibration.agreement(cal, band, units, gzip, device)
      low, high = cal.device_band(band, units)
      glow, ghigh = cal.gzip_band(band, units)
      print(f'  band {band} ({units}): gzip {glow:.3f}-{ghigh:.3f}, lz ({low:.3f}, {high:.3f}] '
            f'(calibration: {source}); membership agrees on {agree:.1%}, ' +
            ('the device band is empty' if np.isnan(precision) else
             f'{precision:.1%} of the device band in gzip\'s'))
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
