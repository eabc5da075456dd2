"""Checkpoints with orbax: save (async), resume from the workdir, close cleanly.

orbax writes each checkpoint into a temporary directory and renames it when complete,
so a kill mid-save never leaves a checkpoint that restores half-written state; the
latest *complete* step is what a restart resumes from.
"""
from __future__ import annotations

import os

from absl import logging
import ml_collections
import orbax.checkpoint as ocp


def make_manager(workdir: str, cfg: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=cfg.keep_checkpoints, create=True,
      enable_async_checkpointing=cfg.async_checkpoint)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  manager.save(step, args=ocp.args.StandardSave(state), force=True)


def restore_latest(manager: ocp.CheckpointManager, setup):
  """The latest complete checkpoint, restored into the run's shardings, or None."""
  step = manager.latest_step()
  if step is None:
    return None
  logging.info('Restoring checkpoint of step %d.', step)
  return manager.restore(step, args=ocp.args.StandardRestore(setup.abstract_state))


def wait_and_close(manager: ocp.CheckpointManager) -> None:
  """Blocks until background saves are on disk; always call before exiting."""
  manager.wait_until_finished()
  manager.close()
