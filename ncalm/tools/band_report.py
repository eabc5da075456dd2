"""`python -m ncalm.band_report`: the band-by-domain figure across band experiments.

    python -m ncalm.band_report --experiment=code=/tmp/bands_code_cpu \
        --experiment='code, fresh rules=/tmp/bands_code_cpu_fresh' --out=/tmp/bands

Each `--experiment=LABEL=WORKDIR` is a finished (or partly finished) `ncalm.experiment` of a
band config (configs/experiments/bands.py): a scratch arm and one arm per complexity band. For
every experiment and band it takes the band's stage-2 validation loss minus scratch's on the
same seed, at `--fraction` of stage 2 (1.0: the end), as a mean with a 95% t-interval over
seeds; and, to say whether the bands can be told apart, each band minus the experiment's best
band, paired the same way. Writes OUT.md (the tables), OUT.csv (one row per experiment and
band) and OUT.png (one line per experiment across the bands, intervals as error bars).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

from absl import flags
import ml_collections
import numpy as np

from ncalm import cli
from ncalm import comparison
from ncalm import errors
from ncalm import experiment
from ncalm import files

Interval = tuple[float, float, float] | None   # mean, 95% low, high (NaN bounds: one seed)


@dataclasses.dataclass
class BandRow:
  """One band of one experiment."""
  experiment: str
  band: str
  seeds: int                 # seeds paired with scratch
  vs_scratch: Interval       # loss(band) − loss(scratch), nats
  vs_best: Interval          # loss(band) − loss(the experiment's best band), nats
  best: bool = False         # the band with the lowest mean loss against scratch


def parse_experiment(spec: str) -> tuple[str, str]:
  """'LABEL=WORKDIR' → (label, workdir), checked."""
  label, sep, workdir = spec.rpartition('=')
  if not sep or not label or not workdir:
    raise errors.UserError(f'--experiment={spec!r}: give LABEL=WORKDIR, e.g. '
                           'code=/tmp/bands_code_cpu.')
  if not os.path.exists(os.path.join(workdir, experiment.CONFIG_FILE)):
    raise errors.UserError(
        f'--experiment={spec!r}: {workdir} holds no {experiment.CONFIG_FILE}; give the '
        '--workdir of a `python -m ncalm.experiment --config=configs/experiments/bands.py:...` '
        'run.')
  return label, workdir


def load_experiment(workdir: str) -> ml_collections.ConfigDict:
  """The experiment config its last start recorded."""
  with open(os.path.join(workdir, experiment.CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def _at(results: dict, reference: str, fraction: float) -> dict[str, tuple[int, Interval]]:
  rows = comparison.paired(results, reference=reference, fractions=(fraction,))
  return {r.arm: (r.seeds, r.differences[fraction]) for r in rows if r.arm != reference}


def band_rows(label: str, exp, workdir: str, fraction: float = 1.0) -> list[BandRow]:
  """Every band of one experiment against scratch and against its best band."""
  results, _ = experiment.collect(exp, workdir)
  bands = [a for a in experiment.arms_of(exp) if a != experiment.SCRATCH and a in results]
  vs_scratch = _at(results, experiment.SCRATCH, fraction)
  ranked = [b for b in bands if vs_scratch.get(b, (0, None))[1] is not None]
  best = min(ranked, key=lambda b: vs_scratch[b][1][0]) if ranked else None
  vs_best = _at({b: results[b] for b in bands}, best, fraction) if best else {}
  out = []
  for band in bands:
    seeds, interval = vs_scratch.get(band, (0, None))
    out.append(BandRow(label, band, seeds, interval, vs_best.get(band, (0, None))[1],
                       best=band == best))
  return out


def _cell(d: Interval) -> str:
  if d is None:
    return '–'
  if math.isnan(d[1]):
    return f'{d[0]:+.3f} (one seed)'
  return f'{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]'


def markdown(rows: list[BandRow], fraction: float) -> str:
  """The cross-domain table (bands × experiments) and one detail table per experiment."""
  labels = list(dict.fromkeys(r.experiment for r in rows))
  bands = list(dict.fromkeys(r.band for r in rows))
  by = {(r.experiment, r.band): r for r in rows}
  where = 'the end of stage 2' if fraction == 1 else f'{fraction:.0%} of stage 2'
  out = [f'Validation loss minus scratch\'s on the same seed at {where} (nats; below 0: the '
         'band is ahead of scratch), mean [95% t-interval] over seeds.', '',
         '| band | ' + ' | '.join(labels) + ' |', '|' + '---|' * (len(labels) + 1)]
  for band in bands:
    cells = [_cell(by[(lab, band)].vs_scratch) if (lab, band) in by else '–' for lab in labels]
    out.append(f'| {band} | ' + ' | '.join(cells) + ' |')
  for label in labels:
    mine = [r for r in rows if r.experiment == label]
    out += ['', f'**{label}**: each band against scratch and against the best band '
            '(an interval that holds 0 cannot tell that band from the best).', '',
            '| band | paired seeds | − scratch | − best band |', '|---|---|---|---|']
    out += [f'| {r.band} | {r.seeds} | {_cell(r.vs_scratch)} | '
            f'{"best" if r.best else _cell(r.vs_best)} |' for r in mine]
  return '\n'.join(out) + '\n'


def csv_text(rows: list[BandRow]) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator='\n')
  writer.writerow(['experiment', 'band', 'seeds', 'best', 'vs_scratch_mean', 'vs_scratch_low',
                   'vs_scratch_high', 'vs_best_mean', 'vs_best_low', 'vs_best_high'])
  for r in rows:
    nums = [x for d in (r.vs_scratch, r.vs_best) for x in (d or (math.nan,) * 3)]
    writer.writerow([r.experiment, r.band, r.seeds, int(r.best), *[f'{x:.6g}' for x in nums]])
  return buf.getvalue()


def plot(rows: list[BandRow], png_path: str, fraction: float) -> None:
  """Loss relative to scratch by band, one line per experiment, 95% intervals as bars."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  bands = list(dict.fromkeys(r.band for r in rows))
  labels = list(dict.fromkeys(r.experiment for r in rows))
  fig = Figure(figsize=(8, 5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.axhline(0, color='k', lw=1, label='scratch')
  for index, label in enumerate(labels):
    points = [(bands.index(r.band), r) for r in rows
              if r.experiment == label and r.vs_scratch is not None]
    if not points:
      continue
    offset = (index - (len(labels) - 1) / 2) * 0.08
    x = np.array([i for i, _ in points]) + offset
    mean = np.array([r.vs_scratch[0] for _, r in points])
    half = np.array([0.0 if math.isnan(r.vs_scratch[1]) else r.vs_scratch[2] - r.vs_scratch[0]
                     for _, r in points])
    seeds = max(r.seeds for _, r in points)
    ax.errorbar(x, mean, yerr=half, marker='o', capsize=4, color=f'C{index}',
                label=f'{label} (n={seeds})')
  ax.set_xticks(range(len(bands)), bands)
  ax.set_xlabel('complexity band of the stage-1 rules')
  where = 'end of stage 2' if fraction == 1 else f'{fraction:.0%} of stage 2'
  ax.set_ylabel(f'validation loss − scratch (nats) at {where}')
  ax.set_title('band by domain: paired with scratch per seed, 95% t-intervals')
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  with files.atomic_path(png_path) as tmp:
    fig.savefig(tmp, format='png')


def write(specs: list[str], out_prefix: str, fraction: float = 1.0) -> list[BandRow]:
  """Reads every experiment and writes OUT.{md,csv,png}; returns the rows."""
  if not 0 < fraction <= 1:
    raise errors.UserError(f'--fraction={fraction}: give a fraction of stage 2 in (0, 1].')
  rows = []
  for spec in specs:
    label, workdir = parse_experiment(spec)
    rows += band_rows(label, load_experiment(workdir), workdir, fraction)
  if not any(r.vs_scratch for r in rows):
    raise errors.UserError(f'No band of {specs} has finished a seed with its scratch run yet: '
                           'let the experiments run (the same command continues them).')
  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  with files.atomic_open(out_prefix + '.md') as f:
    f.write(markdown(rows, fraction))
  with files.atomic_open(out_prefix + '.csv') as f:
    f.write(csv_text(rows))
  plot(rows, out_prefix + '.png', fraction)
  return rows


def command() -> None:
  experiments = flags.DEFINE_multi_string(
      'experiment', None, 'LABEL=WORKDIR of a band experiment; repeat for each domain or arm '
      'kind.')
  out = flags.DEFINE_string('out', None, 'Prefix of the report: OUT.md, OUT.csv, OUT.png.')
  fraction = flags.DEFINE_float('fraction', 1.0, 'Where in stage 2 to compare (1: the end).')
  flags.mark_flags_as_required(['experiment', 'out'])

  def main(argv):
    del argv
    write(experiments.value, out.value, fraction.value)
    print(open(out.value + '.md').read())

  cli.run(main)
