"""Timing helpers of the GPU check: interleaved rounds, medians, compiled memory."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def interleave(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
  """Median seconds of each run over `rounds` rounds, the runs alternating in each round."""
  times = {name: [] for name in runs}
  for _ in range(rounds):
    for name, once in runs.items():
      times[name].append(once())
  return {name: statistics.median(t) for name, t in times.items()}


def seconds(fn: Callable, *args, repeats: int = 1) -> float:
  """Wall seconds of `repeats` calls of fn(*args), blocking on the last result."""
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - start


def compiled_bytes(compiled) -> int | None:
  """XLA's peak for one call of a compiled executable: arguments + outputs − aliased + temps."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def peak_device_bytes() -> int | None:
  """The allocator's peak on device 0 so far (None where the backend keeps no statistics)."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats else stats.get('peak_bytes_in_use')


def uses_cudnn_attention(compiled) -> bool:
  """Whether a compiled executable calls cuDNN's fused attention (its custom call)."""
  text = compiled.as_text() or ''
  return '__cudnn$fmha' in text or 'cudnn$fmha' in text
