"""Checkpoints with orbax: verified saves and restores, failures that stop the run at once.

Each checkpoint is an orbax step directory with two items: `state` (the TrainState)
and `checksum` (a digest of every tensor, computed on the devices at save time). orbax
writes a step into a temporary directory and renames it when complete, and deletes old
steps only after a newer one is complete; a kill mid-save never leaves a checkpoint that
looks finished.

  * `save` starts an asynchronous save; `check` (called every step) raises
    `errors.CheckpointError` as soon as a background save has failed (a full disk,
    say), naming the step, the path, and the space needed and available.
  * `restore_latest` restores the newest checkpoint whose tensors match their checksum.
    A damaged one (flipped bytes, a truncated file) is reported by step and path and
    moved to `corrupt_checkpoints/` in the workdir, and the next older one is tried; if
    none is intact the run stops rather than start over.

The digest of a tensor is a sum, modulo 2**32, of a 32-bit mix of each element's bits
with its flat index: exact integer arithmetic, so it does not depend on how the tensor
is sharded or in which order the devices reduce.
"""
from __future__ import annotations

import functools
import os
import shutil

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ncalm import errors
from ncalm import files
from ncalm import hashing
from ncalm import param_names
from ncalm import run_files
from ncalm import sharding

ITEMS = ('state', 'checksum')


# ---------------------------------------------------------------------- digests


def _words(x: jax.Array) -> jax.Array:
  """The bits of x as uint32 (8-byte types gain a trailing axis of 2)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    unsigned = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f'no checksum for dtype {x.dtype}')


def tensor_digest(x: jax.Array) -> jax.Array:
  """uint32[2]: two independent sums over the elements of mix(bits ^ mix(flat index))."""
  u = _words(jnp.asarray(x))
  index = jnp.zeros(u.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(u.ndim)):  # flat index from iotas: no reshape of sharded dims
    index = index + jax.lax.broadcasted_iota(jnp.uint32, u.shape, axis) * jnp.uint32(stride)
    stride = (stride * u.shape[axis]) % 2**32
  h = hashing.mix32(u ^ hashing.mix32(index + jnp.uint32(0x9E3779B9)))
  return jnp.stack([jnp.sum(h, dtype=jnp.uint32),
                    jnp.sum(hashing.mix32(h + jnp.uint32(0x7F4A7C15)), dtype=jnp.uint32)])


@functools.lru_cache(maxsize=8)
def _digests_fn(mesh: jax.sharding.Mesh):
  return jax.jit(lambda xs: [tensor_digest(x) for x in xs],
                 out_shardings=sharding.replicated(mesh))


def state_digests(state, mesh: jax.sharding.Mesh) -> dict[str, str]:
  """{tensor path: 16 hex digits} of a (sharded) pytree; the same on every process."""
  digests = _digests_fn(mesh)(jax.tree.leaves(state))
  return {name: ''.join(f'{int(w):08x}' for w in np.asarray(d))
          for name, d in zip(param_names.flat(state), jax.device_get(digests))}


def nbytes(abstract_state) -> int:
  """Bytes of a state's tensors: about what one checkpoint takes on disk."""
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_state)))


# -------------------------------------------------------------------- the store


class Checkpoints:
  """The run's checkpoints under `workdir/checkpoints`; call `close` before exiting."""

  def __init__(self, workdir: str, cfg: ml_collections.ConfigDict, abstract_state,
               mesh: jax.sharding.Mesh):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, run_files.CHECKPOINTS)
    self.abstract_state = abstract_state
    self.mesh = mesh
    self.bytes = nbytes(abstract_state)
    self.pending: int | None = None   # step of a save that may still be in the background
    self.last_good: int | None = None
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=cfg.async_checkpoint)
    self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  # ------------------------------------------------------------------- saving

  def save(self, step: int, state) -> None:
    """Starts saving `state` as `step` (in the background if async).

    The previous save is waited for first (orbax would wait too), so that its failure is
    reported as its own.
    """
    if self.pending is not None:
      self._wait()
    digests = state_digests(state, self.mesh)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              checksum=ocp.args.JsonSave({'step': step, 'tensors': digests}))
    try:
      self.manager.save(step, args=args, force=True)
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from None
    self.pending = step
    self.check()

  def check(self) -> None:
    """Raises CheckpointError if a finished background save failed; cheap otherwise."""
    if self.pending is None or self.manager.is_saving_in_progress():
      return
    self._wait()

  def _wait(self) -> None:
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_failed(step, e) from None
    if step is not None:
      self.last_good = step

  def _save_failed(self, step: int, error: Exception) -> errors.CheckpointError:
    os.makedirs(self.directory, exist_ok=True)
    free = shutil.disk_usage(self.directory).free
    kept = (f'the last good checkpoint (step {self.last_good}) is kept'
            if self.last_good is not None else 'no earlier checkpoint was saved by this run')
    reason = f'{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error) else ""}'
    return errors.CheckpointError(
        f'saving the checkpoint of step {step} to {self.path(step)} failed ({reason}); '
        f'stopping now. A checkpoint needs about {files.human_bytes(self.bytes)}; '
        f'{files.human_bytes(free)} is free there. {kept.capitalize()}: free space '
        '(or lower keep_checkpoints) and rerun the same command to resume from it.')

  def close(self) -> None:
    """Waits for background saves; raises CheckpointError if the last one failed."""
    try:
      self._wait()
    finally:
      self.manager.close()

  # ---------------------------------------------------------------- restoring

  def _restore(self, step: int):
    args = ocp.args.Composite(state=ocp.args.StandardRestore(self.abstract_state),
                              checksum=ocp.args.JsonRestore())
    restored = self.manager.restore(step, args=args)
    want = restored.checksum['tensors']
    got = state_digests(restored.state, self.mesh)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    if bad:
      raise ValueError(f'{len(bad)} tensor(s) differ from the checksum saved with them: '
                       f'{", ".join(bad[:4])}{", ..." if len(bad) > 4 else ""}')
    return restored.state

  def restore_latest(self):
    """(state, step) of the newest intact checkpoint, or None if there is none at all."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      try:
        state = self._restore(step)
      except Exception as e:  # pylint: disable=broad-except
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ''
        logging.error('The checkpoint of step %d at %s is damaged and cannot be used (%s: %s).',
                      step, self.path(step), type(e).__name__, first)
        damaged.append(step)
        continue
      if damaged:
        self._set_aside(damaged)
        logging.warning('Resuming from the newest intact checkpoint, step %d; the damaged '
                        'one(s) of step(s) %s were moved to %s.', step, damaged,
                        os.path.join(self.workdir, run_files.CORRUPT_CHECKPOINTS))
      self.last_good = step
      return state, step
    if damaged:
      raise errors.CheckpointError(
          f'none of the checkpoints in {self.directory} (steps {damaged}) can be restored '
          '(each is damaged: see the errors above). Nothing was changed. To start the run '
          'over from step 0, move that directory away; to keep the run, restore the files '
          'from a backup.')
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves damaged steps out of orbax's sight (kept for inspection, never deleted)."""
    multihost_utils.sync_global_devices('ncalm_checkpoint_set_aside_start')
    if jax.process_index() == 0:
      target = os.path.join(self.workdir, run_files.CORRUPT_CHECKPOINTS)
      os.makedirs(target, exist_ok=True)
      for step in steps:
        dest = os.path.join(target, str(step))
        suffix = 1
        while os.path.exists(dest):
          dest, suffix = os.path.join(target, f'{step}.{suffix}'), suffix + 1
        shutil.move(self.path(step), dest)
    multihost_utils.sync_global_devices('ncalm_checkpoint_set_aside_done')
    self.manager.reload()


def finished_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps of a workdir, newest first, read from the directory
  alone (orbax renames a step into place only once it is complete)."""
  directory = os.path.join(workdir, run_files.CHECKPOINTS)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted((int(d) for d in names if d.isdigit()), reverse=True)


def has_checkpoints(workdir: str) -> bool:
  return bool(finished_steps(workdir))


def load_latest(workdir: str, cfg: ml_collections.ConfigDict, setup):
  """(state, step) of a run's newest intact checkpoint, or None: for tools and tests."""
  store = Checkpoints(workdir, cfg, setup.abstract_state, setup.mesh)
  try:
    return store.restore_latest()
  finally:
    store.close()
