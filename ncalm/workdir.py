"""A run's workdir: writable, used by one run at a time, and bound to one experiment.

  * `check_writable` fails at start-up, before any work, if the workdir cannot be made
    or written; `check_shared`, in a multi-host run, if the hosts do not all see it.
  * `Lock` lets one run use a workdir at a time: `.ncalm.lock` is created exclusively
    at start (by process 0, on storage every host sees) and removed at exit. A lock
    left by a process that died on this host is recognised and taken over with a
    warning; a live one (or one from another host) is an error naming its owner.
  * `check_identity` remembers what the workdir was made for: `run_config.json` holds
    the config and the fields that decide the run's data and state (`IDENTITY_FIELDS`).
    A later run that differs in any of them is refused, naming each field and both
    values; other changes (more steps, logging and eval cadence, the optimizer's
    hyperparameters, the mesh) are allowed and logged.
  * `warn_if_short_of_space` warns when the disk cannot hold the configured checkpoints.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
import time

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from ncalm import config_lib
from ncalm import errors
from ncalm import files
from ncalm import processes
from ncalm import run_files

# Files whose presence means the workdir already holds a run.
RUN_ARTIFACTS = (run_files.CHECKPOINTS, run_files.RULE_BANK, run_files.METRICS)

# Config fields (a path, or a prefix ending in '.') that decide the data a run sees or
# the shape and meaning of its state. `model.remat`, `scan_unroll`, `attention` and
# `attention_blocks` change how the same function is computed, not what it is.
IDENTITY_FIELDS = ('seed', 'seq_len', 'global_batch', 'data.', 'model.', 'optim.name',
                   'init.')
HARMLESS_FIELDS = ('model.remat', 'model.scan_unroll', 'model.attention',
                   'model.attention_blocks')
# Identity keys that are fingerprints of content the config names by path.
CONTENT_PREFIX = 'content.'
# Config fields that cannot change what a finished run recorded (its curve, its result):
# how often it logged and saved, how it was computed, where.
BOOKKEEPING_FIELDS = HARMLESS_FIELDS + ('log_every', 'checkpoint_every', 'keep_checkpoints',
                                        'peak_flops', 'data.text.prefetch', 'mesh.',
                                        'logical_axis_rules')


def check_writable(workdir: str) -> None:
  """Creates the workdir if needed and proves a file can be written there."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise errors.UserError(
        f'workdir {workdir!r} cannot be written ({e.strerror or e}): choose a --workdir '
        'this user can create and write, or fix its permissions.') from None


def check_shared(workdir: str) -> None:
  """In a multi-process run, proves that every process sees the same workdir: process 0
  writes a file named by a token all processes share, and each looks for it. A workdir on
  each host's own disk would give each host its own checkpoints, and a resume that differs
  per host."""
  if jax.process_count() == 1:
    return
  token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.randint(2**31 - 1))))
  probe = os.path.join(workdir, f'.shared_check.{token}')
  if jax.process_index() == 0:
    with open(probe, 'w') as f:
      f.write(socket.gethostname())
  multihost_utils.sync_global_devices('ncalm_shared_check_written')
  seen = multihost_utils.process_allgather(np.int32(os.path.exists(probe)))
  multihost_utils.sync_global_devices('ncalm_shared_check_read')
  if jax.process_index() == 0:
    os.remove(probe)
  blind = [i for i, s in enumerate(np.asarray(seen).reshape(-1)) if not s]
  if blind:
    raise errors.UserError(
        f'workdir {workdir!r} is not shared: process(es) {blind} of {jax.process_count()} do not '
        f'see the file process 0 '
        f'({socket.gethostname() if jax.process_index() == 0 else "another host"}) '
        'wrote there. A multi-host run needs a --workdir on storage every host sees: a bucket '
        'mounted on every host (gcsfuse) or an NFS share (launch/README.md).')


# ---------------------------------------------------------------------- the lock


class Lock:
  """An exclusive lock file in the workdir; use as a context manager."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, run_files.LOCK)
    self.enabled = enabled
    self.owner = dict(pid=os.getpid(), host=socket.gethostname(),
                      start_time=processes.start_time_of(os.getpid()),
                      started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                      command=' '.join(sys.argv))
    self.held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump(self.owner, f)
    return True

  def _read(self) -> dict | None:
    for _ in range(20):  # the owner may be between creating and writing the file
      try:
        with open(self.path) as f:
          return json.load(f)
      except FileNotFoundError:
        return None
      except (json.JSONDecodeError, OSError):
        time.sleep(0.05)
    return {}

  def acquire(self) -> None:
    if not self.enabled:
      return
    for _ in range(5):
      if self._create():
        self.held = True
        return
      holder = self._read()
      if holder is None:
        continue  # released meanwhile: try again
      same_host = holder.get('host') == self.owner['host']
      if same_host and isinstance(holder.get('pid'), int) and not processes.alive(
          holder['pid'], holder.get('start_time')):
        if self._take_over(holder):
          return
        continue
      who = (f'process {holder.get("pid", "?")} on {holder.get("host", "?")}, started '
             f'{holder.get("started", "?")} ({holder.get("command", "?")})')
      advice = ('stop it or wait for it to finish, or give this run another --workdir' if
                same_host else 'if that process is gone (its host died), delete the lock file; '
                'otherwise stop it or give this run another --workdir')
      raise errors.UserError(
          f'workdir {os.path.dirname(self.path)!r} is in use by {who}: one run per workdir '
          f'(lock {self.path}). To continue: {advice}.')
    raise errors.UserError(f'could not take the lock {self.path}: other runs keep taking it.')

  def _take_over(self, stale: dict) -> bool:
    """Replaces a dead process's lock; a guard file makes two takers on one host take turns."""
    with open(self.path + '.guard', 'w') as guard:
      fcntl.flock(guard, fcntl.LOCK_EX)
      try:
        if self._read() != stale:
          return False  # someone else took it over first
        os.remove(self.path)
        if not self._create():
          return False
      finally:
        fcntl.flock(guard, fcntl.LOCK_UN)
    logging.warning('Took over the lock %s left by process %s on %s (started %s), which is no '
                    'longer running.', self.path, stale.get('pid'), stale.get('host'),
                    stale.get('started'))
    self.held = True
    return True

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    with contextlib.suppress(OSError):
      if self._read() == self.owner:
        os.remove(self.path)
    with contextlib.suppress(OSError):
      os.remove(self.path + '.guard')

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()


# ------------------------------------------------------------------ the identity


def _plain(cfg: ml_collections.ConfigDict) -> dict:
  """The config as JSON values (tuples become lists), flattened to dotted paths."""
  return config_lib.flatten(json.loads(json.dumps(cfg.to_dict(), default=str)))


def _is_identity(path: str) -> bool:
  if path in HARMLESS_FIELDS:
    return False
  return any(path == f or (f.endswith('.') and path.startswith(f)) for f in IDENTITY_FIELDS)


def identity(cfg: ml_collections.ConfigDict) -> dict:
  """The fields that decide the data and the state of a run, as dotted paths."""
  return {k: v for k, v in _plain(cfg).items() if _is_identity(k)}


def _show(value) -> str:
  return json.dumps(value)


def made_by_a_run(workdir: str) -> list[str]:
  """The files in `workdir` that a run made (an empty checkpoints/ does not count)."""
  found = []
  for name in RUN_ARTIFACTS:
    path = os.path.join(workdir, name)
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
      found.append(name)
  return found


def check_identity(workdir: str, cfg: ml_collections.ConfigDict, write: bool = True,
                   content: dict[str, str] | None = None) -> None:
  """Refuses a config that would change the data or state of the run in `workdir`.

  The first run writes `run_config.json`; later runs compare against it. `write=False`
  on processes other than 0 (they only compare). `content` holds fingerprints of what the
  config only names by path (a prepared dataset, `CONTENT_PREFIX` + a name → its digest):
  a dataset prepared again in place is refused like a changed field. A workdir made before
  fingerprints were recorded takes them on its next run.
  """
  path = os.path.join(workdir, run_files.CONFIG)
  now = _plain(cfg)
  content = {f'{CONTENT_PREFIX}{k}': v for k, v in (content or {}).items()}
  found = made_by_a_run(workdir)
  if not os.path.exists(path) or not found:  # new, or nothing made yet (e.g. a failed start)
    if found:
      raise errors.UserError(
          f'workdir {workdir!r} holds {", ".join(found)} but no {run_files.CONFIG}, so what it '
          'was made for cannot be checked (an older ncalm, or files put there by hand): give '
          'this run a new --workdir, or move those files away.')
    if write:
      with files.atomic_open(path) as f:
        json.dump(dict(identity={**identity(cfg), **content}, config=now), f, indent=1,
                  sort_keys=True)
    return
  saved = read_run_config(workdir)
  before, after = saved['identity'], {**identity(cfg), **content}
  # A field newer than the workdir counts as unchanged while it keeps its default value;
  # a fingerprint the workdir predates is taken on.
  defaults = identity(config_lib.base_config())
  differ = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                  and not (k not in before and after.get(k) == defaults.get(k))
                  and not (k not in before and k.startswith(CONTENT_PREFIX)))
  moved = [k for k in differ if k.startswith(CONTENT_PREFIX) and k in after]
  if moved:
    shown = '; '.join(f'{k.removeprefix(CONTENT_PREFIX)}: {before[k]} in the workdir, '
                      f'{after[k]} now' for k in moved)
    raise errors.UserError(
        f'workdir {workdir!r} was made with other data than its config now names, although '
        f'the paths are the same (content fingerprints: {shown}): the dataset was prepared '
        'again in place since this run started, so resuming would train and evaluate on '
        'different data. Point the config at the data the run was made with, or give this '
        'run a new --workdir.')
  if differ:
    shown = '; '.join(f'{k}: {_show(before.get(k, "(absent)"))} in the workdir, '
                      f'{_show(after.get(k, "(absent)"))} now' for k in differ)
    raise errors.UserError(
        f'workdir {workdir!r} was made for another experiment, and these fields change its '
        f'data or state: {shown}. Use a new --workdir for the new config, or set the fields '
        f'back (the workdir\'s config is in {path}).')
  plain_defaults = _plain(config_lib.base_config())   # a field newer than the workdir at
  changed = sorted(k for k in set(saved['config']) | set(now)   # its default is no change
                   if saved['config'].get(k) != now.get(k)
                   and not (k not in saved['config'] and now.get(k) == plain_defaults.get(k)))
  if changed:
    logging.warning('Config changes since this workdir was last run (allowed: they change '
                    'neither its data nor its state): %s', '; '.join(
                        f'{k}: {_show(saved["config"].get(k))} → {_show(now.get(k))}'
                        for k in changed))
  if (changed or set(after) - set(before)) and write:
    with files.atomic_open(path) as f:
      json.dump(dict(identity={**after, **before}, config=now), f, indent=1, sort_keys=True)


def _is_bookkeeping(path: str) -> bool:
  return any(path == f or (f.endswith('.') and path.startswith(f)) for f in BOOKKEEPING_FIELDS)


def check_finished_run(workdir: str, cfg: ml_collections.ConfigDict,
                       content: dict[str, str] | None = None) -> None:
  """Refuses `cfg` for a finished run in `workdir` that is reused as it is (an experiment
  skips it) unless the run was made with it: every field that could change what the run
  recorded must match (all but `BOOKKEEPING_FIELDS`: more steps would be another run), and
  so must the content fingerprints of its data."""
  saved = read_run_config(workdir)
  now = _plain(cfg)
  defaults = _plain(config_lib.base_config())   # a field newer than the run, at its default,
  fields = sorted(k for k in set(saved['config']) | set(now)   # is how the run was made
                  if saved['config'].get(k) != now.get(k) and not _is_bookkeeping(k)
                  and not (k not in saved['config'] and now.get(k) == defaults.get(k)))
  content = {f'{CONTENT_PREFIX}{k}': v for k, v in (content or {}).items()}
  fields += sorted(k for k, v in content.items()
                   if k in saved['identity'] and saved['identity'][k] != v)
  if fields:
    shown = '; '.join(f'{k}: {_show(saved["identity"].get(k, saved["config"].get(k, "(absent)")))}'
                      f' in the run, {_show(now.get(k, content.get(k, "(absent)")))} now'
                      for k in fields)
    raise errors.UserError(
        f'{workdir!r} holds a finished run made with another config, which would be reused '
        f'as it is: {shown}. Set those fields back, or give the experiment a new --workdir '
        '(changes that only add runs — seeds, arms, ablations — need neither).')


def read_run_config(workdir: str) -> dict:
  """{'identity': ..., 'config': ...} of `run_config.json`, or one paragraph if it is
  damaged (a truncated write by hand, a full disk before atomic writes)."""
  path = os.path.join(workdir, run_files.CONFIG)
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict) or not {'identity', 'config'} <= set(saved):
      raise ValueError('it lacks "identity" or "config"')
  except (OSError, ValueError) as e:
    raise errors.UserError(
        f'{path} cannot be read ({e}), so what workdir {workdir!r} was made for cannot be '
        'checked: restore it from a copy, or give this run a new --workdir.') from None
  # A workdir of an older ncalm names moved fields by their old paths.
  return dict(saved, config=config_lib.upgrade(saved['config']))


# ------------------------------------------------------------------ disk space


def _directory_bytes(path: str) -> int:
  total = 0
  for root, _, names in os.walk(path):
    for name in names:
      with contextlib.suppress(OSError):
        total += os.path.getsize(os.path.join(root, name))
  return total


def warn_if_short_of_space(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Warns when free space cannot hold `keep` checkpoints (plus the one being written)."""
  existing = _directory_bytes(os.path.join(workdir, run_files.CHECKPOINTS))
  needed = max(0, (keep + 1) * checkpoint_bytes - existing)
  free = shutil.disk_usage(workdir).free
  if free < needed:
    logging.warning(
        'The disk of %s has %s free, but keeping %d checkpoints of ~%s each needs about %s '
        'more: saves will fail when it fills (the run then stops, keeping the last good '
        'checkpoint). Free space, lower keep_checkpoints, or use a bigger disk.', workdir,
        files.human_bytes(free), keep, files.human_bytes(checkpoint_bytes),
        files.human_bytes(needed))
