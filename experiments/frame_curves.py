"""Loss per frame index of NCA runs at their last evaluation: a Markdown table and a PNG.

    python experiments/frame_curves.py --out=docs/images/rule_search_frames.png RUN_DIR...

A model that infers each sequence's rule in context predicts later frames better than
early ones (the curve falls); one that only reads the sequence's state statistics is flat.
"""
import argparse
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ncalm import metrics
from ncalm import run_files


def last_eval(run_dir: str) -> dict:
  rows = [r for r in metrics.read_jsonl(os.path.join(run_dir, run_files.METRICS))
          if 'eval/loss' in r]
  return rows[-1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+')
  parser.add_argument('--out', required=True, help='PNG path')
  args = parser.parse_args()
  fig = Figure(figsize=(8, 5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  print('| run | step | eval loss | unigram | loss, frames 1–3 | loss, last 3 frames | '
        'probe cell acc. | copy baseline |')
  print('|---|---|---|---|---|---|---|---|')
  for run in args.runs:
    r = last_eval(run)
    keys = sorted(k for k in r if k.startswith('eval/loss_frame/'))
    frames = [int(k.rsplit('/', 1)[1]) for k in keys]
    losses = [r[k] for k in keys]
    name = os.path.basename(os.path.normpath(run))
    ax.plot(frames, losses, marker='o', markersize=3, label=name)
    mean = lambda xs: sum(xs) / len(xs)
    print(f'| {name} | {r["step"]} | {r["eval/loss"]:.3f} | {r["eval/unigram_loss"]:.3f} | '
          f'{mean(losses[:3]):.3f} | {mean(losses[-3:]):.3f} | '
          f'{r.get("probe/cell_accuracy", float("nan")):.3f} | '
          f'{r.get("probe/copy_baseline", float("nan")):.3f} |')
  ax.set_xlabel('frame index in the sequence')
  ax.set_ylabel('held-out loss (nats per token)')
  ax.set_title('loss per frame: falling = the rule is inferred in context')
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.out)


if __name__ == '__main__':
  main()
