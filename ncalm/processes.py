"""Processes of this host: whether one still runs (locks and leftovers name their owner's pid)."""
from __future__ import annotations

import os


def start_time_of(pid: int) -> str | None:
  """The kernel's start time of a process (tells a reused pid apart), where /proc has it."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def alive(pid: int, start_time: str | None = None) -> bool:
  """Whether process `pid` of this host still runs (not a zombie; with `start_time`, not a
  new process that reuses the pid)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:
    with open(f'/proc/{pid}/stat') as f:
      if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
        return False  # exited, not yet reaped
  except (OSError, IndexError):
    pass
  now = start_time_of(pid)
  return start_time is None or now is None or now == start_time
