"""Writing files so that a kill never leaves a half-written one: temp, then rename.

`atomic_path(path)` yields a temporary path beside `path` (same directory, so the
rename is atomic on POSIX file systems) and renames it onto `path` only when the block
finishes without an exception; a stale temporary file left by a killed writer is simply
overwritten by the next one, and removed if the block fails.

A folder is written the same way, by whoever owns its rules (`ncalm.data.prepare` for a
dataset, `ncalm.tools.export_hf` for an export): into a sibling folder `PATH{tag}HOST-PID`
(`sibling`; `-RANDOM` after it when each call needs its own), made with `claim_sibling`, then
renamed onto PATH (one rename, which replaces nothing or an empty folder). The name says
whose it is, so a folder a killed writer left is told apart from one a live writer is
filling (`siblings`, `sibling_owner`, `left_by_dead_process`).
"""
from __future__ import annotations

import contextlib
import glob
import os
import socket
from typing import Iterator

from ncalm import errors
from ncalm import processes

TMP_SUFFIX = '.tmp'


def tmp_path_for(path: str) -> str:
  """The temporary name of `path`; keeps its extension last (tools that sniff it still work)."""
  root, ext = os.path.splitext(path)
  return f'{root}{TMP_SUFFIX}{ext}'


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """`with atomic_path(p) as tmp: write(tmp)` → p appears complete, or not at all."""
  tmp = tmp_path_for(path)
  if os.path.lexists(tmp):
    os.remove(tmp)  # left by a killed writer
  try:
    yield tmp
  except BaseException:
    if os.path.lexists(tmp):
      os.remove(tmp)
    raise
  os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **kwargs):
  """`open()` for writing through `atomic_path`."""
  with atomic_path(path) as tmp:
    with open(tmp, mode, **kwargs) as f:
      yield f


def sibling(path: str, tag: str, unique: bool = False) -> str:
  """`{path}{tag}HOST-PID`, or with `unique` `{path}{tag}HOST-PID-RANDOM` (new at each call):
  a folder name beside `path` (so renaming it onto `path` is atomic) that names its owner.
  `tag` (e.g. '.tmp-') holds no glob characters."""
  name = f'{path}{tag}{socket.gethostname()}-{os.getpid()}'
  return f'{name}-{os.urandom(4).hex()}' if unique else name


def siblings(path: str, tag: str) -> list[str]:
  """The `sibling(path, tag)` names there are, of every process and host, sorted."""
  return sorted(glob.glob(glob.escape(path) + tag + '*'))


def sibling_owner(found: str, path: str, tag: str, unique: bool = False) -> tuple[str, str]:
  """(host, pid) as `found`, one of `siblings(path, tag)`, spells them (a name not made by
  `sibling` may give a pid that is not a number)."""
  rest = found[len(path + tag):]
  if unique:
    host, pid, _ = (rest.rsplit('-', 2) + ['', ''])[:3]
    return host, pid
  host, _, pid = rest.rpartition('-')
  return host, pid


def left_by_dead_process(found: str, path: str, tag: str, unique: bool = False) -> bool:
  """Whether `found`, one of `siblings(path, tag)`, belongs to a process of this host that no
  longer runs (so nobody will finish or remove it)."""
  host, pid = sibling_owner(found, path, tag, unique)
  return host == socket.gethostname() and pid.isdigit() and not processes.alive(int(pid))


def claim_sibling(path: str, tag: str, unique: bool = False) -> str:
  """Makes the folder `sibling(path, tag, unique)`, new and empty (FileExistsError if it is
  there), and returns its name: this process's place to write what becomes `path`."""
  folder = sibling(path, tag, unique)
  os.makedirs(folder)
  return folder


def check_can_create(path: str, flag: str = '--out') -> None:
  """Refuses a `path` this user could not create: its nearest existing ancestor must be a
  folder this user may write in (missing folders below it are made when writing)."""
  folder = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  if not os.path.isdir(folder):
    raise errors.UserError(f'{flag}={path!r} cannot be made: {folder!r} is a file, not a '
                           'folder. Give a path elsewhere.')
  if not os.access(folder, os.W_OK | os.X_OK):
    raise errors.UserError(f'{flag}={path!r} cannot be made: this user may not write in '
                           f'{folder!r}. Give a path in a folder you can write.')


def human_bytes(n: float) -> str:
  """`n` bytes as people read them: 512 B, 1.5 KB, 3.2 GB."""
  for unit in ('B', 'KB', 'MB', 'GB', 'TB'):
    if abs(n) < 1024 or unit == 'TB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024
  return f'{n:.1f} TB'
