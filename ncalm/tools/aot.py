"""The real train step through JAX's ahead-of-time API, from abstract inputs only.

`lower_train_step` lowers `step_lib.make_train_step` on this host's devices (optionally
compiling it for this host, to time the compile); `compile_for_tpu` compiles it for a TPU
topology on this CPU through libtpu (`find_libtpu`, `tpu_devices`): XLA's own per-device
memory, or its out-of-memory message. Nothing is allocated. `python -m ncalm.dryrun`
reports both (its "Lowering:" and "AOT" lines) next to `footprint.estimate`'s table.
"""
from __future__ import annotations

import copy
import os
import resource
import time

import flax.linen as nn
import jax
import ml_collections

from ncalm import perf
from ncalm import sharding
from ncalm import step as step_lib
from ncalm.data import feeds
from ncalm.tools import footprint


def _with_mesh(cfg: ml_collections.ConfigDict, mesh: dict) -> ml_collections.ConfigDict:
  cfg = copy.deepcopy(cfg)
  cfg.mesh.update({a: int(mesh.get(a, 1)) for a in sharding.MESH_AXES})
  return cfg


def _lower(setup: step_lib.Setup, cfg: ml_collections.ConfigDict):
  step = step_lib.make_train_step(setup)
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    return step.lower(setup.abstract_state, feeds.abstract(cfg).train_source,
                      footprint.ABSTRACT_KEY)


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / footprint.GIB  # Linux: KiB


def lower_train_step(cfg: ml_collections.ConfigDict, devices=None,
                     compile_step: bool = False) -> dict:
  """Lowers the real `step_lib.make_train_step` on this host's devices with abstract state,
  source and key: the full-size model traces and shards, and nothing is allocated.
  Uses the config's mesh if it fits the local devices, else data-parallel over them.
  With `compile_step`, also compiles it for this host (`compile_seconds`): how long the
  first step waits, and how the layer loop (`model.scan_unroll`) changes that."""
  devices = list(devices if devices is not None else jax.devices())
  try:
    sharding.mesh_shape(cfg.mesh.to_dict(), len(devices))
  except ValueError:
    cfg = _with_mesh(cfg, dict(data=len(devices)))
  start = time.perf_counter()
  setup = footprint.abstract_setup(cfg, devices)
  lowered = _lower(setup, cfg)
  seconds = time.perf_counter() - start
  compile_seconds = None
  if compile_step:
    start = time.perf_counter()
    lowered.compile()
    compile_seconds = time.perf_counter() - start
  return dict(seconds=seconds, compile_seconds=compile_seconds, mesh=dict(setup.mesh.shape),
              scan_unroll=setup.model.cfg.scan_unroll,
              platform=devices[0].platform, stablehlo_chars=len(lowered.as_text()),
              peak_rss_gib=_peak_rss_gib())


class AotUnavailable(RuntimeError):
  """Compiling for a TPU topology is not possible here; the message says why."""


def find_libtpu(path: str = '') -> str:
  """libtpu.so from `path` (file or folder), $TPU_LIBRARY_PATH or the `libtpu` package."""
  tried = []
  for candidate in (path, os.environ.get('TPU_LIBRARY_PATH', '')):
    if not candidate:
      continue
    for file in (candidate, os.path.join(candidate, 'libtpu.so'),
                 os.path.join(candidate, 'libtpu', 'libtpu.so')):
      if os.path.isfile(file):
        return file
    tried.append(candidate)
  try:
    import libtpu  # pylint: disable=g-import-not-at-top
    return libtpu.get_library_path()
  except ImportError:
    pass
  raise AotUnavailable(
      'no libtpu: ' + (f'nothing at {tried}, ' if tried else '') + 'TPU_LIBRARY_PATH unset '
      'and the `libtpu` package not installed. JAX compiles for TPU only through libtpu; '
      f'jax {jax.__version__} pairs with libtpu 0.0.42 (jax[tpu]). Without installing it '
      "here: pip download 'libtpu==0.0.42.*' --no-deps -d /tmp/libtpu && python -m zipfile "
      '-e /tmp/libtpu/libtpu-*.whl /tmp/libtpu/x, then --libtpu=/tmp/libtpu/x')


def tpu_devices(target: perf.Target, libtpu: str = ''):
  """Compile-only devices of the target's TPU topology (needs libtpu, not a TPU)."""
  if not target.topology:
    raise AotUnavailable(f'{target.label} is not a TPU: no topology to compile for.')
  library = find_libtpu(libtpu)
  jax.devices()   # the default (CPU) backend first: the TPU plugin serves compile-only devices
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  previous = os.environ.get('TPU_LIBRARY_PATH')
  os.environ['TPU_LIBRARY_PATH'] = library
  try:
    kwargs = dict(chip_config_name='megacore') if target.megacore else {}
    devices = topologies.get_topology_desc(target.topology, 'tpu', **kwargs).devices
  except Exception as e:  # pylint: disable=broad-except
    raise AotUnavailable(f'get_topology_desc({target.topology!r}) with {library} failed: '
                         f'{type(e).__name__}: {e}') from e
  finally:
    if previous is None:
      os.environ.pop('TPU_LIBRARY_PATH', None)
    else:
      os.environ['TPU_LIBRARY_PATH'] = previous
  if len(devices) != target.num_devices:
    raise AotUnavailable(f'{target.topology} has {len(devices)} devices, expected '
                         f'{target.num_devices}.')
  return devices


def compile_for_tpu(cfg: ml_collections.ConfigDict, target: perf.Target | str,
                    mesh: dict | None = None, libtpu: str = '') -> dict:
  """Compiles the real train step ahead of time for the target's TPU topology on this
  CPU; XLA's per-device memory, or `oom` with XLA's message if it does not fit.
  Raises AotUnavailable (with the reason) when there is no libtpu."""
  target = perf.TARGETS[target] if isinstance(target, str) else target
  devices = tpu_devices(target, libtpu)
  cfg = _with_mesh(cfg, footprint.mesh_axes(target, mesh, cfg))
  start = time.perf_counter()
  setup = footprint.abstract_setup(cfg, devices, backend='tpu')  # 'auto' as on a TPU
  lowered = _lower(setup, cfg)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    message = str(e)
    if 'RESOURCE_EXHAUSTED' not in message and 'memory' not in message.lower():
      raise
    return dict(mesh=dict(setup.mesh.shape), oom=message.strip().splitlines()[0][:300],
                seconds=time.perf_counter() - start)
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  return dict(mesh=dict(setup.mesh.shape), oom='', seconds=time.perf_counter() - start,
              argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
              alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
              code_bytes=mem.generated_code_size_in_bytes, total_bytes=total,
              peak_rss_gib=_peak_rss_gib())
