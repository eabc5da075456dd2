"""Writing files so that a kill never leaves a half-written one: temp, then rename.

`atomic_path(path)` yields a temporary path beside `path` (same directory, so the
rename is atomic on POSIX file systems) and renames it onto `path` only when the block
finishes without an exception; a stale temporary file left by a killed writer is simply
overwritten by the next one, and removed if the block fails.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ncalm import errors

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
