"""Reading another run's parameters: an ncalm workdir's checkpoint, verified.

A run is named by a `RunRef` (its workdir, a step or 0 for the newest intact one, and the
flags that named them, for the messages). Its checkpoints are only read: the manager is
opened read-only, every restored tensor is checked against the checksum saved with it,
and a damaged checkpoint is named in one line and an older one tried (unless a step was
named). Stacked ('layers/...') and per-layer ('layers_i/...') layouts are both read, and
`canonical` puts either in per-layer names. Used by the transfer (stage 2 from stage 1)
and by `export_hf`; a Hugging Face checkpoint (`hf:DIR`) is read by `ncalm.hf_llama`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from ncalm import checkpoint
from ncalm import cli
from ncalm import errors
from ncalm import param_names
from ncalm import run_files


@dataclasses.dataclass(frozen=True)
class RunRef:
  """A run's checkpoints to read, and the flags that named them (for the messages)."""
  run: str
  step: int = 0                     # 0 = the newest intact checkpoint
  field: str = 'init.from_run'
  step_field: str = 'init.from_step'


def run_steps(ref: RunRef, workdir: str) -> list[int]:
  """The checkpoint steps of an ncalm workdir, newest first; refuses what is not one."""
  run, field = ref.run, ref.field
  if not os.path.isdir(run):
    raise errors.UserError(f'{field}={run!r} does not exist: name the workdir of a '
                           'training run (the --workdir it was trained with).')
  if workdir and os.path.realpath(run) == os.path.realpath(workdir):
    raise errors.UserError(f'{field}={run!r} is this run\'s own --workdir: stage 2 needs '
                           'its own workdir (a rerun of it resumes by itself).')
  if not os.path.exists(os.path.join(run, run_files.CONFIG)):
    raise errors.UserError(
        f'{field}={run!r} is not an ncalm workdir (no {run_files.CONFIG}): '
        'name the directory a `python -m ncalm.main ... --workdir=DIR` run wrote.')
  steps = checkpoint.finished_steps(run)
  if not steps:
    directory = os.path.join(run, run_files.CHECKPOINTS)
    raise errors.UserError(
        f'{field}={run!r} has no finished checkpoint in {directory} (the run stopped before '
        'its first save): resume it with its own command until it saves one.')
  return steps


def canonical(flat: dict[str, Any]) -> tuple[dict[str, Any], int]:
  """Per-layer names ('layers_i/...') for either layout: (items, number of layers).

  Values are whatever the dict holds (metadata or arrays); stacked entries become
  (value, i) pairs, to be sliced later."""
  out, count = {}, 0
  for name, value in flat.items():
    layer, rest = param_names.split_layer(name)
    if layer is None:
      count = value.shape[0]
      for i in range(count):
        out[f'layers_{i}/{rest}'] = (value, i)
    else:
      if layer >= 0:
        count = max(count, layer + 1)
      out[name] = value
  return out, count


def layer_shape(value) -> tuple[int, ...]:
  """The shape of one layer's tensor: a (stacked value, layer) pair drops the layer axis."""
  return tuple(value[0].shape[1:]) if isinstance(value, tuple) else tuple(value.shape)


def restore_target(meta_flat: dict[str, Any], specs: dict[str, tuple], mesh) -> dict:
  """The stage-1 params that stage 2 takes (names in `specs`, per layer), in stage-1
  layout, as ShapeDtypeStructs placed as stage 2 places the same parameter."""
  target = {}
  for name, meta in meta_flat.items():
    layer, rest = param_names.split_layer(name)
    per_layer = name if layer == -1 else f'layers_0/{rest}'
    if per_layer not in specs:
      continue
    spec = ((None,) if layer is None else ()) + specs[per_layer]
    target[name] = jax.ShapeDtypeStruct(
        meta.shape, meta.dtype,
        sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
  return target


def open_run(ref: RunRef, workdir: str = ''):
  """(read-only manager, steps to try newest first) of a run."""
  steps = run_steps(ref, workdir)
  if ref.step and ref.step not in steps:
    raise errors.UserError(f'{ref.step_field}={ref.step}: {ref.run!r} has checkpoints of '
                           f'steps {sorted(steps)}; name one of them or 0 (the newest).')
  directory = os.path.join(os.path.abspath(ref.run), run_files.CHECKPOINTS)
  manager = ocp.CheckpointManager(
      directory, item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                                'checksum': ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           enable_async_checkpointing=False))
  return manager, ([ref.step] if ref.step else steps)


def _params_metadata(manager, step: int, ref: RunRef) -> dict[str, Any]:
  """{name: shape/dtype metadata} of a checkpoint's parameters (nothing restored)."""
  meta = manager.item_metadata(step)['state']
  flat = {k[len('params/'):]: v for k, v in param_names.flat(_tree_of(meta)).items()
          if k.startswith('params/')}
  if not flat:
    raise errors.UserError(f'{ref.field}={ref.run!r}: the checkpoint of step {step} holds no '
                           'model parameters: it is not an ncalm training state.')
  return flat


def restore_newest(ref: RunRef, workdir: str, mesh, target_for) -> tuple[dict, int]:
  """({name: array}, step) of the newest intact checkpoint (or the named one): the params
  `target_for(params metadata)` asks for, checked against their checksums.

  Nothing is written to the run: its manager is opened read-only, and a damaged checkpoint
  is reported (and an older one used when no step was named), never moved."""
  manager, steps = open_run(ref, workdir)
  try:
    for step in steps:
      try:
        meta = _params_metadata(manager, step, ref)
      except errors.UserError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        _reject(ref, manager, step, steps, e)
        continue
      target = target_for(meta)   # a shape that does not fit is the config's: it propagates
      try:
        return _restore_verified(manager, step, target, mesh), step
      except Exception as e:  # pylint: disable=broad-except
        _reject(ref, manager, step, steps, e)
  finally:
    manager.close()
  raise _none_intact(ref, steps)


def _reject(ref: RunRef, manager, step: int, steps: list[int], error: Exception) -> None:
  """A damaged checkpoint: one line, then the next older one is tried; a step named by the
  user is not replaced by another (one paragraph)."""
  why = f'{type(error).__name__}: {cli.first_line(error)[:300]}'
  if ref.step:
    raise errors.CheckpointError(
        f'{ref.field}={ref.run!r}: the checkpoint of step {step} cannot be used ({why}). Name '
        f'another {ref.step_field} (it has {sorted(steps)}) or 0 for the newest intact one.')
  logging.error('Checkpoint of step %d in %s cannot be used (%s); trying an older one.',
                step, manager.directory, why)


def _none_intact(ref: RunRef, steps: list[int]) -> errors.CheckpointError:
  return errors.CheckpointError(
      f'{ref.field}={ref.run!r}: none of its checkpoints (steps {steps}) is intact (each is '
      'named above with what is wrong with it); nothing was changed there. Restore the files '
      'from a backup, or run that stage again.')


def newest_metadata(ref: RunRef, manager, steps: list[int]) -> dict[str, Any]:
  """The parameter metadata of the newest checkpoint whose metadata reads (older ones are
  tried as a restore would)."""
  for step in steps:
    try:
      return _params_metadata(manager, step, ref)
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      _reject(ref, manager, step, steps, e)
  raise _none_intact(ref, steps)


def read_run_params(ref: RunRef, mesh) -> tuple[dict[str, jax.Array], int]:
  """({name: array}, step): every parameter of a run's checkpoint, replicated on `mesh`, in
  the layout it was saved in (for tools: export)."""
  def everything(meta_flat):
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return {n: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated)
            for n, m in meta_flat.items()}
  return restore_newest(ref, '', mesh, everything)


def placed(x: np.ndarray, mesh, spec: tuple) -> jax.Array:
  """A host array placed on the mesh; each process puts only its own shards."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _tree_of(meta):
  return meta.tree if hasattr(meta, 'tree') else meta


def _restore_verified(manager, step: int, target: dict, mesh) -> dict[str, jax.Array]:
  """Restores the target's params from `step` and checks them against the saved digests."""
  item = {'params': param_names.nest(target)}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=item,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                   partial_restore=True),
      checksum=ocp.args.JsonRestore()))
  want = restored.checksum['tensors']
  got = checkpoint.state_digests({'params': restored.state['params']}, mesh)
  bad = sorted(k for k in got if want.get(k) != got[k])
  if bad:
    raise ValueError(f'{len(bad)} tensor(s) differ from the checksum saved with them: '
                     f'{", ".join(bad[:4])}')
  return {k[len('params/'):]: v for k, v in param_names.flat(restored.state).items()}


