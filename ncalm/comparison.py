"""The comparison of arms: final perplexity, the step each arm reaches scratch's final
perplexity, the speed-up, compute, and any evaluators' numbers on the final checkpoints
(a column per metric, whatever the evaluator) — over seeds — as Markdown, CSV and PNGs; the
paired statistics fixed before the runs (docs/transfer.md): each arm's loss minus scratch's
on the same seed at fixed fractions of stage 2, with 95% t-intervals, and the onset of
in-context copying (the induction probe).

Inputs are plain: for each arm and seed, the stage-2 validation curve [(step, loss)], the
induction curve [(step, second-copy loss / first-copy loss)] when measured, and the run's
compute. The speed-up of an arm on a seed is T_scratch / T_arm, where T is the first step at
which a run's validation loss reaches scratch's final loss on the same seed (linear in loss
between evaluations; docs/method.md §7).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os

import numpy as np

from ncalm import files

Curve = list[tuple[int, float]]   # (stage-2 step, validation loss in nats)


@dataclasses.dataclass
class ArmResult:
  """One arm on one seed."""
  curve: Curve
  stage1_tokens: int = 0
  stage2_tokens: int = 0
  flops: float = 0.0           # training FLOPs of both stages (6·N·tokens + attention)
  diverged: bool = False
  induction: Curve = dataclasses.field(default_factory=list)  # (step, second / first copy)
  evals: dict[str, float] = dataclasses.field(default_factory=dict)  # final-checkpoint metrics


def crossing_step(curve: Curve, target: float) -> float | None:
  """First step at which the loss reaches `target`, interpolated linearly between
  evaluations; None if it never does."""
  previous = None
  for step, loss in curve:
    if loss <= target:
      if previous is None or previous[1] == loss:
        return float(step)
      (s0, l0) = previous
      return s0 + (step - s0) * (l0 - target) / (l0 - loss)
    previous = (step, loss)
  return None


def loss_at(curve: Curve, step: float) -> float | None:
  """The loss at `step`, linear between evaluations; None outside the curve."""
  for (s0, l0), (s1, l1) in zip(curve, curve[1:]):
    if s0 <= step <= s1:
      return l0 if s1 == s0 else l0 + (l1 - l0) * (step - s0) / (s1 - s0)
  return curve[0][1] if curve and curve[0][0] == step else None


# Two-sided 95% quantiles of Student's t by degrees of freedom (tested against scipy).
_T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912,
         7: 2.364624, 8: 2.306004, 9: 2.262157, 10: 2.228139, 11: 2.200985, 12: 2.178813,
         13: 2.160369, 14: 2.144787, 15: 2.131450, 16: 2.119905, 17: 2.109816, 18: 2.100922,
         19: 2.093024, 20: 2.085963, 25: 2.059539, 30: 2.042272, 40: 2.021075, 60: 2.000298,
         120: 1.979930}


def t975(df: int) -> float:
  """The 0.975 quantile of Student's t with `df` degrees of freedom (the nearest tabulated
  df at or below it; 1.96 beyond 120)."""
  if df < 1:
    raise ValueError(f'df={df}: a t-interval needs two or more values.')
  if df > 120:
    return 1.959964
  return _T975[max(d for d in _T975 if d <= df)]


def mean_interval(values: list[float]) -> tuple[float, float, float] | None:
  """(mean, low, high): the mean and its 95% t-interval (NaN bounds for one value); None
  for no values."""
  a = np.asarray(values, np.float64)
  if not len(a):
    return None
  if len(a) == 1:
    return float(a[0]), math.nan, math.nan
  half = t975(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
  return float(a.mean()), float(a.mean() - half), float(a.mean() + half)


FRACTIONS = (0.1, 0.25, 0.5, 1.0)   # of stage 2, where paired differences are reported
ONSET_RATIO = 0.5                   # induction onset: second-copy loss ≤ half the first's


@dataclasses.dataclass
class Paired:
  """An arm against the reference on the seeds both finished."""
  arm: str
  seeds: int
  differences: dict[float, tuple[float, float, float] | None]  # fraction → mean, 95% CI
  onset: tuple[float, float] | None                           # mean, std of onset step
  onset_reached: int
  final_ratio: float | None = None    # mean second/first copy loss at the last evaluation


def paired(results: dict[str, dict[int, ArmResult]], reference: str = 'scratch',
           fractions: tuple[float, ...] = FRACTIONS) -> list[Paired]:
  """Per arm (the reference included, for its onset): loss(arm) − loss(reference) on the
  same seed at each fraction of the reference's last step, as a mean and 95% t-interval
  over seeds; and the step at which the induction ratio falls to ONSET_RATIO."""
  ref = {s: r for s, r in results.get(reference, {}).items() if r.curve and not r.diverged}
  out = []
  for arm, by_seed in results.items():
    ok = {s: r for s, r in by_seed.items() if r.curve and not r.diverged}
    both = sorted(set(ok) & set(ref))
    differences = {}
    for fraction in fractions:
      diffs = []
      for seed in both:
        step = fraction * ref[seed].curve[-1][0]
        a, b = loss_at(ok[seed].curve, step), loss_at(ref[seed].curve, step)
        if a is not None and b is not None:
          diffs.append(a - b)
      differences[fraction] = mean_interval(diffs) if arm != reference else None
    onsets = [step for r in ok.values() if r.induction
              and (step := crossing_step(r.induction, ONSET_RATIO)) is not None]
    finals = [r.induction[-1][1] for r in ok.values() if r.induction]
    out.append(Paired(arm, len(both), differences, _mean_std(onsets) if onsets else None,
                      len(onsets), float(np.mean(finals)) if finals else None))
  return out


def paired_markdown(rows: list[Paired], reference: str = 'scratch') -> str:
  """The paired table: differences in nats (negative: the arm is ahead of scratch)."""
  fractions = list(rows[0].differences) if rows else list(FRACTIONS)
  header = ['arm', 'paired seeds'] + [f'Δ loss at {f:.0%} [95% CI]' for f in fractions] + [
      f'induction onset (step; second/first copy ≤ {ONSET_RATIO})',
      'second/first copy at the end']
  out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in rows:
    cells = []
    for f in fractions:
      d = r.differences.get(f)
      cells.append('reference' if r.arm == reference else '–' if d is None else
                   f'{d[0]:+.3f} (one seed)' if math.isnan(d[1]) else
                   f'{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]')
    onset = ('–' if r.onset is None else f'{r.onset[0]:.0f} ± {r.onset[1]:.0f}'
             + (f' ({r.onset_reached} seeds)' if r.onset_reached else ''))
    ratio = '–' if r.final_ratio is None else f'{r.final_ratio:.3f}'
    out.append('| ' + ' | '.join([r.arm, str(r.seeds), *cells, onset, ratio]) + ' |')
  return '\n'.join(out) + '\n'


def plot_paired(rows: list[Paired], png_path: str, reference: str = 'scratch') -> None:
  """The paired differences against the stage-2 fraction: one line per arm, 95% intervals
  as error bars, 0 (the reference) marked; below 0 the arm is ahead."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(9, 5.6), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.axhline(0, color='k', lw=1)
  arms = [r for r in rows if r.arm != reference]
  for index, r in enumerate(arms):
    points = [(f, d) for f, d in r.differences.items() if d is not None]
    if not points:
      continue
    offset = (index - (len(arms) - 1) / 2) * 0.006   # side by side at each fraction
    x = [f + offset for f, _ in points]
    mean = np.array([d[0] for _, d in points])
    half = np.array([0.0 if math.isnan(d[1]) else d[2] - d[0] for _, d in points])
    ax.errorbar(x, mean, yerr=half, marker='o', capsize=3, color=f'C{(index + 1) % 10}',
                label=f'{r.arm} (n={r.seeds})')
  ax.set_xlabel('fraction of stage 2')
  ax.set_ylabel(f'validation loss − {reference} (nats), same seed')
  ax.set_title('paired differences with 95% t-intervals (below 0: ahead of scratch)')
  ax.grid(True, alpha=0.3)
  if ax.lines:
    ax.legend(fontsize=8)
  fig.tight_layout()
  with files.atomic_path(png_path) as tmp:
    fig.savefig(tmp, format='png')


def _mean_std(values: list[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


@dataclasses.dataclass
class Row:
  arm: str
  seeds: int
  final_loss: tuple[float, float] | None      # mean, std over seeds
  final_ppl: tuple[float, float] | None
  reach_step: tuple[float, float] | None      # mean, std over the seeds that reach it
  reached: int                                # seeds that reach scratch's final loss
  speedup: tuple[float, float, float] | None  # mean, min, max over reaching seeds
  stage1_tokens: int
  flops: float
  diverged: int
  evals: dict[str, tuple[float, float, int]] = dataclasses.field(default_factory=dict)
  # metric → (mean, std, seeds) of the evaluators run on the final checkpoints


def summarise(results: dict[str, dict[int, ArmResult]], reference: str = 'scratch') -> list[Row]:
  """One row per arm (in the order given) from {arm: {seed: ArmResult}}."""
  ref = results.get(reference, {})
  targets = {seed: r.curve[-1][1] for seed, r in ref.items() if r.curve and not r.diverged}
  ref_steps = {seed: crossing_step(ref[seed].curve, t) for seed, t in targets.items()}
  rows = []
  for arm, by_seed in results.items():
    ok = {s: r for s, r in by_seed.items() if r.curve and not r.diverged}
    finals = [r.curve[-1][1] for r in ok.values()]
    reach, speed = [], []
    for seed, r in ok.items():
      if seed not in targets:
        continue
      step = crossing_step(r.curve, targets[seed])
      if step is not None and step > 0:
        reach.append(step)
        speed.append(ref_steps[seed] / step)
    any_run = next(iter(by_seed.values()), None)
    rows.append(Row(
        arm=arm, seeds=len(by_seed),
        final_loss=_mean_std(finals) if finals else None,
        final_ppl=_mean_std([math.exp(f) for f in finals]) if finals else None,
        reach_step=_mean_std(reach) if reach else None, reached=len(reach),
        speedup=(float(np.mean(speed)), min(speed), max(speed)) if speed else None,
        stage1_tokens=any_run.stage1_tokens if any_run else 0,
        flops=float(np.mean([r.flops for r in by_seed.values()])) if by_seed else 0.0,
        diverged=sum(r.diverged for r in by_seed.values()),
        evals=_eval_summary(by_seed.values())))
  return rows


def _eval_summary(results) -> dict[str, tuple[float, float, int]]:
  """metric → (mean, std, seeds) over the seeds whose final checkpoint was evaluated."""
  values: dict[str, list[float]] = {}
  for r in results:
    for key, value in r.evals.items():
      values.setdefault(key, []).append(value)
  return {key: (*_mean_std(v), len(v)) for key, v in sorted(values.items())}


def eval_metrics(rows: list[Row]) -> list[str]:
  """Every evaluator metric of any row, sorted: the columns of the evaluation table."""
  return sorted({key for r in rows for key in r.evals})


def evals_markdown(rows: list[Row]) -> str:
  """The evaluators' numbers on the final checkpoints, mean ± std (seeds) per arm; '' when
  no arm was evaluated."""
  keys = eval_metrics(rows)
  if not keys:
    return ''
  out = ['| arm | ' + ' | '.join(keys) + ' |', '|' + '---|' * (len(keys) + 1)]
  for r in rows:
    cells = [f'{r.evals[k][0]:.4g} ± {r.evals[k][1]:.2g} ({r.evals[k][2]})' if k in r.evals
             else '–' for k in keys]
    out.append('| ' + ' | '.join([r.arm, *cells]) + ' |')
  return '\n'.join(out) + '\n'


def plot_evals(rows: list[Row], png_path: str) -> None:
  """One panel per evaluator metric: a bar per arm (mean, std as error bar)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  keys = eval_metrics(rows)
  fig = Figure(figsize=(3.2 * len(keys) + 1, 3.6), dpi=100)
  FigureCanvasAgg(fig)
  for i, key in enumerate(keys):
    ax = fig.add_subplot(1, len(keys), i + 1)
    arms = [r for r in rows if key in r.evals]
    ax.bar(range(len(arms)), [r.evals[key][0] for r in arms],
           yerr=[r.evals[key][1] for r in arms], color=[f'C{j % 10}' for j in range(len(arms))])
    ax.set_xticks(range(len(arms)), [r.arm for r in arms], rotation=45, ha='right')
    ax.set_title(key, fontsize=9)
  fig.tight_layout()
  with files.atomic_path(png_path) as tmp:
    fig.savefig(tmp, format='png')


HEADER = ('arm', 'seeds', 'final val loss', 'final val ppl', 'step reaching scratch final',
          'speed-up vs scratch', 'stage-1 tokens', 'total compute (PFLOP)')


def _pm(x, digits=3):
  return '–' if x is None else f'{x[0]:.{digits}f} ± {x[1]:.{digits}f}'


def markdown(rows: list[Row], reference: str = 'scratch') -> str:
  """A Markdown table; speed-ups as mean [min, max] over the seeds that reach the target."""
  out = ['| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
  for r in rows:
    if r.speedup is None:
      speed = 'not reached' if r.arm != reference else '1 (reference)'
    else:
      speed = f'{r.speedup[0]:.2f}× [{r.speedup[1]:.2f}, {r.speedup[2]:.2f}]'
      if r.reached < r.seeds:
        speed += f' ({r.reached}/{r.seeds} seeds reach it)'
    reach = '–' if r.reach_step is None else f'{r.reach_step[0]:.0f} ± {r.reach_step[1]:.0f}'
    seeds = f'{r.seeds}' + (f' ({r.diverged} diverged)' if r.diverged else '')
    out.append('| ' + ' | '.join((
        r.arm, seeds, _pm(r.final_loss), _pm(r.final_ppl), reach, speed,
        f'{r.stage1_tokens:,}', f'{r.flops / 1e15:.3f}')) + ' |')
  return '\n'.join(out) + '\n'


def csv_text(rows: list[Row]) -> str:
  buffer = io.StringIO()
  w = csv.writer(buffer)
  w.writerow(['arm', 'seeds', 'diverged', 'final_loss_mean', 'final_loss_std', 'final_ppl_mean',
              'final_ppl_std', 'reach_step_mean', 'reach_step_std', 'seeds_reaching',
              'speedup_mean', 'speedup_min', 'speedup_max', 'stage1_tokens', 'total_flops',
              *[f'{k}_{stat}' for k in eval_metrics(rows) for stat in ('mean', 'std', 'seeds')]])
  blank = lambda x, n: list(x) if x is not None else [''] * n
  for r in rows:
    w.writerow([r.arm, r.seeds, r.diverged, *blank(r.final_loss, 2), *blank(r.final_ppl, 2),
                *blank(r.reach_step, 2), r.reached, *blank(r.speedup, 3), r.stage1_tokens,
                f'{r.flops:.6g}',
                *[x for k in eval_metrics(rows) for x in r.evals.get(k, ('',) * 3)]])
  return buffer.getvalue()


def plot(results: dict[str, dict[int, ArmResult]], png_path: str, title: str,
         size: tuple[int, int] = (900, 560)) -> None:
  """Validation loss against stage-2 step: mean over seeds, a min–max band, one colour
  per arm; written atomically."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for index, (arm, by_seed) in enumerate(results.items()):
    curves = [r.curve for r in by_seed.values() if r.curve and not r.diverged]
    if not curves:
      continue
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    if not steps:
      continue
    values = np.array([[dict(c)[s] for s in steps] for c in curves])
    colour = f'C{index % 10}'
    ax.plot(steps, values.mean(0), color=colour, label=f'{arm} (n={len(curves)})')
    if len(curves) > 1:
      ax.fill_between(steps, values.min(0), values.max(0), color=colour, alpha=0.2)
  ax.set_xlabel('stage-2 step')
  ax.set_ylabel('validation loss (nats)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if ax.lines:
    ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
  with files.atomic_path(png_path) as tmp:
    fig.savefig(tmp, format='png')


def write(results: dict[str, dict[int, ArmResult]], out_prefix: str, title: str) -> list[Row]:
  """out_prefix.md, .csv, .png, _paired.png (and _evals.png); returns the rows."""
  rows = summarise(results)
  evals = evals_markdown(rows)
  pairs = paired(results)
  tables = [markdown(rows), paired_markdown(pairs)] + ([evals] if evals else [])
  for suffix, text in (('.md', '\n'.join(tables)), ('.csv', csv_text(rows))):
    with files.atomic_open(out_prefix + suffix) as f:
      f.write(text)
  plot(results, out_prefix + '.png', title)
  if len(pairs) > 1:
    plot_paired(pairs, out_prefix + '_paired.png')
  if evals:
    plot_evals(rows, out_prefix + '_evals.png')
  return rows
