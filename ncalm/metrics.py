"""Throughput and logging for the training loop: peak FLOPs, MFU, writers, progress line.

  * `peak_flops` looks up a device's dense bf16 peak (MaxText's table);
    `measured_matmul_flops` times a matmul and stands in for the peak on CPU.
  * `mfu` is model FLOPs utilisation from counted FLOPs per token.
  * `MetricsWriter` writes TensorBoard events and `metrics.jsonl` (one JSON object per
    logged step) on process 0 only; `truncate_after` drops the lines of a killed run
    past the checkpoint it resumes from, so the log stays exact across restarts.
  * `Progress` makes the one-line human summary (rates, ETA) logged every few steps.
  * `plot_curves` draws loss curves from `metrics.jsonl` into a PNG.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Mapping

import numpy as np

from ncalm import files
from ncalm import run_files


def _import_tensorboardx():
  """tensorboardX without PyTorch: its writer imports torch whenever torch is installed
  (2.5 s a process), only to accept torch tensors, which ncalm never passes."""
  hide_torch = 'torch' not in sys.modules
  if hide_torch:
    sys.modules['torch'] = None  # `import torch` raises ImportError
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  finally:
    if hide_torch:
      del sys.modules['torch']
  return tensorboardX, event_pb2


tensorboardX, event_pb2 = _import_tensorboardx()



# ------------------------------------------------------------------------ writers


def _parse_jsonl(path: str) -> list[tuple[str, dict]]:
  """(line, record) pairs; an unfinished last line (a killed write) is dropped."""
  with open(path) as f:
    text = f.read()
  lines = text.split('\n')
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      out.append((line, json.loads(line)))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:  # no trailing newline: the write was cut short
        break
      raise ValueError(f'{path}:{i + 1} is not a JSON object: {line[:80]!r}') from e
  return out


def read_jsonl(path: str) -> list[dict]:
  """Every record of a metrics.jsonl file, in order."""
  return [record for _, record in _parse_jsonl(path)]


class MetricsWriter:
  """TensorBoard events and metrics.jsonl under `workdir`; every method is a no-op if disabled.

  Pass `enabled=jax.process_index() == 0` so that only one process writes.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, run_files.METRICS)
    self._tb = None
    self._jsonl = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, run_files.TENSORBOARD))
      self._jsonl = open(self.jsonl_path, 'a')

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One TensorBoard scalar per entry and one JSON line {"step": step, **scalars}."""
    if not self.enabled:
      return
    step = int(step)
    values = {name: float(value) for name, value in scalars.items()}
    if 'step' in values:
      raise ValueError("MetricsWriter.write: 'step' is reserved; rename that scalar.")
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({'step': step, **values}) + '\n')
    self._jsonl.flush()
    self._tb.flush()

  def write_image(self, step: int, tag: str, image_uint8_HWC: np.ndarray) -> None:
    """One H×W×C (C = 1, 3 or 4) uint8 image to TensorBoard."""
    if not self.enabled:
      return
    image = np.asarray(image_uint8_HWC)
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
      raise ValueError(f'MetricsWriter.write_image({tag!r}): got {image.dtype} '
                       f'{image.shape}; pass a uint8 H×W×C array with C in (1, 3, 4).')
    self._tb.add_image(tag, image, int(step), dataformats='HWC')
    self._tb.flush()

  def truncate_after(self, step: int) -> None:
    """Keeps only the records with step <= `step`: call it when resuming from `step`.

    metrics.jsonl is rewritten atomically (`files.atomic_open`). TensorBoard's
    event files are append-only, so a restart marker is written instead: TensorBoard
    then drops the earlier run's events after `step`.
    """
    if not self.enabled:
      return
    self._jsonl.close()
    kept = [line for line, record in _parse_jsonl(self.jsonl_path)
            if record.get('step', -1) <= step]
    with files.atomic_open(self.jsonl_path) as f:
      f.write(''.join(line + '\n' for line in kept))
      f.flush()
      os.fsync(f.fileno())
    self._jsonl = open(self.jsonl_path, 'a')
    restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    self._tb.file_writer.add_event(event_pb2.Event(step=int(step) + 1, session_log=restart))
    self._tb.flush()

  def close(self) -> None:
    if not self.enabled or self._jsonl is None:
      return
    self._jsonl.close()
    self._tb.close()
    self._jsonl = None


# ----------------------------------------------------------------------- progress

# Scalars shown first, in this order, then any others alphabetically. 'train/' and
# 'perf/' prefixes are dropped from the displayed name; 'perf/' scalars other than mfu
# are left out (the line shows its own steps/s and tokens/s).
_LEADING = ('loss', 'eval/loss', 'lr', 'grad_norm', 'mfu')


def _display_name(name: str) -> str | None:
  if name.startswith('perf/') and name not in ('perf/mfu', 'perf/data_wait'):
    return None
  return name.removeprefix('train/').removeprefix('perf/')


def _format_scalar(name: str, value: float) -> str:
  leaf = name.rsplit('/', 1)[-1]
  if leaf in ('mfu', 'data_wait'):
    return f'{name} {100 * value:.1f}%'
  if leaf == 'lr':
    return f'{name} {value:.1e}'
  if leaf == 'loss':
    return f'{name} {value:.4f}'
  if leaf == 'grad_norm':
    return f'{name} {value:.3f}'
  return f'{name} {value:.4g}'


def _format_rate(x: float) -> str:
  if x >= 100:
    return f'{x:.0f}'
  if x >= 1:
    return f'{x:.2f}'
  return f'{x:.3g}'


def _format_count(x: float) -> str:
  """27_900 -> '27.9k', 1_234_567 -> '1.2M'."""
  for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if x >= scale:
      return f'{x / scale:.1f}{suffix}'
  return f'{x:.0f}'


def _format_duration(seconds: float) -> str:
  seconds = round(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
  """One-line progress summaries; rates are measured between successive `line` calls.

  The first interval starts at the first recorded step (call `update` after each step
  is fetched: the first one then closes after compilation), so a `line` made at that
  first step has no rate yet and shows 'ETA --'.
  """

  def __init__(self, total_steps: int, start_step: int, tokens_per_step: int,
               clock: Callable[[], float] = time.perf_counter):
    if total_steps < 1 or not 0 <= start_step <= total_steps or tokens_per_step < 0:
      raise ValueError(
          f'Progress: need total_steps={total_steps} >= 1, 0 <= start_step={start_step} '
          f'<= total_steps and tokens_per_step={tokens_per_step} >= 0.')
    self.total_steps = total_steps
    self.start_step = start_step
    self.tokens_per_step = tokens_per_step
    self._clock = clock
    self._latest: tuple[int, float] | None = None   # last (step, time) recorded
    self._mark: tuple[int, float] | None = None     # the one used by the last line
    self.steps_per_second: float | None = None

  def update(self, step: int) -> None:
    """Records that `step` is done now."""
    self._latest = (int(step), self._clock())
    if self._mark is None:
      self._mark = self._latest

  def restart(self, step: int) -> None:
    """Starts a new rate window at `step`, now: time spent outside training steps
    (evaluation, checkpoints) then does not count against steps/s."""
    self._latest = self._mark = (int(step), self._clock())

  def _rate(self) -> float | None:
    """Steps per second from the last `line` (or the first update) to the latest update."""
    if self._mark is None:
      return self.steps_per_second
    d_step = self._latest[0] - self._mark[0]
    d_time = self._latest[1] - self._mark[1]
    if d_step > 0 and d_time > 0:
      return d_step / d_time
    return self.steps_per_second

  def tokens_per_second(self) -> float | None:
    """Tokens per second over the interval the next `line` will report; None before any."""
    rate = self._rate()
    return None if rate is None else rate * self.tokens_per_step

  def line(self, step: int, scalars: Mapping[str, Any] | None = None) -> str:
    """E.g. 'step  120/5000 | loss 2.3412 | lr 2.4e-05 | 3.41 steps/s | 27.9k tokens/s |
    ETA 0:23:51' (one line); `step` is recorded as done now unless `update` already was."""
    if self._latest is None or self._latest[0] != step:
      self.update(step)
    self.steps_per_second = self._rate()
    self._mark = self._latest

    width = len(str(self.total_steps))
    parts = [f'step {step:>{width}}/{self.total_steps}']
    shown = {}
    for name, value in (scalars or {}).items():
      display = _display_name(name)
      if display is not None and value is not None:
        shown[display] = float(value)
    order = sorted(shown, key=lambda n: (_LEADING.index(n) if n in _LEADING
                                         else len(_LEADING), n))
    parts += [_format_scalar(name, shown[name]) for name in order]
    rate = self.steps_per_second
    if rate is None:
      parts += ['-- steps/s', '-- tokens/s', 'ETA --']
    else:
      remaining = max(self.total_steps - step, 0)
      parts += [f'{_format_rate(rate)} steps/s',
                f'{_format_count(rate * self.tokens_per_step)} tokens/s',
                f'ETA {_format_duration(remaining / rate)}']
    return ' | '.join(parts)


# ------------------------------------------------------------------------- plots


