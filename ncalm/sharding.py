"""The device mesh and the table that maps logical axis names onto it.

Weights and activations in `ncalm.model` carry logical names; `LOGICAL_AXIS_RULES`
(overridable from the config) maps each onto mesh axes (`data`, `fsdp`, `tensor`), so
changing the parallelism is a config edit, never a model edit.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from ncalm import errors

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')   # the batch is split over both data-parallel axes

# logical name → mesh axes (None: replicated). Parameters first, then activations.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('head_dim', None),
    ('mlp', 'tensor'),
    ('norm', None),
    ('layers', None),
    ('act_batch', BATCH_AXES),
    ('act_len', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
)


def mesh_shape(requested: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Mesh axis sizes in MESH_AXES order; one axis may be -1 (all remaining devices)."""
  unknown = set(requested) - set(MESH_AXES)
  if unknown:
    raise errors.UserError(f'mesh has unknown axes {sorted(unknown)}: use {MESH_AXES}.')
  sizes = [int(requested.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise errors.UserError(f'mesh={requested}: at most one axis may be -1.')
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if known <= 0 or num_devices % known:
      raise errors.UserError(f'mesh={requested}: {num_devices} devices do not divide into the '
                             f'fixed axes (product {known}).')
    sizes[sizes.index(-1)] = num_devices // known
  if any(s < 1 for s in sizes) or int(np.prod(sizes)) != num_devices:
    raise errors.UserError(f'mesh={requested} has {int(np.prod(sizes))} slots but there are '
                           f'{num_devices} devices: make data×fsdp×tensor equal the device count '
                           '(or set one axis to -1).')
  return tuple(sizes)


def make_mesh(requested: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(requested, len(devices))
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(table) -> tuple[tuple[str, Any], ...]:
  """Rules as a tuple of (name, axes); `table` is None (defaults) or a sequence of pairs."""
  if not table:
    return LOGICAL_AXIS_RULES
  return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in table)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a pytree of boxed (logically partitioned) abstract values."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of [B, ...] arrays: rows split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def batch_problem(global_batch: int, grad_accum: int, data_parallel: int) -> str | None:
  """Why `global_batch` cannot run as `grad_accum` micro-batches over `data_parallel`
  devices, with the fix; None when it can."""
  if grad_accum < 1:
    return f'grad_accum={grad_accum} must be >= 1 (1 = no accumulation).'
  if global_batch % grad_accum:
    return f'global_batch={global_batch} is not divisible by grad_accum={grad_accum}.'
  micro = global_batch // grad_accum
  if micro % data_parallel:
    return (f'global_batch={global_batch} / grad_accum={grad_accum} = {micro} sequences per '
            f'micro-batch is not divisible by the {data_parallel} data-parallel devices '
            f'(mesh data×fsdp): use a multiple of {data_parallel}.')
  return None


def split_problems(boxed_abstract_tree, axis_sizes: dict[str, int], rules) -> list[str]:
  """One line, with its fix, per (dimension, logical axis, split) of the tree that does not
  divide evenly over its mesh axes of `axis_sizes` (e.g. {'data': 2, 'fsdp': 4, ...})."""
  logical = nn.get_partition_spec(boxed_abstract_tree)
  shapes = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed_abstract_tree))[0]
  specs = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
  problems = {}
  for (path, leaf), names in zip(shapes, specs, strict=True):
    for dim, name, axes in zip(leaf.shape, names, nn.logical_to_mesh_axes(names, rules)):
      axes = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
      size = int(np.prod([axis_sizes[a] for a in axes]))
      if dim % size and (dim, name, size) not in problems:
        padded = -(-dim // size) * size
        hint = f'model.vocab_size={padded}' if name == 'vocab' else f'a {name} size of {padded}'
        problems[dim, name, size] = (
            f'{jax.tree_util.keystr(path)}: its {name!r} dimension ({dim}) does not split over '
            f'mesh axes {axes} of size {size}. Change config.mesh, map {name!r} to other axes '
            f'in config.logical_axis_rules, or use {hint}.')
  return list(problems.values())


def check_divisible(boxed_abstract_tree, mesh: Mesh, rules) -> None:
  """Every sharded dimension must split evenly over its mesh axes, or a clear error."""
  problems = split_problems(boxed_abstract_tree, dict(mesh.shape), rules)
  if problems:
    raise errors.UserError(' '.join(problems))
