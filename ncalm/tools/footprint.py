"""What a config costs on a target mesh, from abstract shapes only (no allocation).

Parameters and optimizer state come from `jax.eval_shape` of `step_lib.init_state`, and their
per-device bytes from the config's logical-axis rules on the target's mesh (data × fsdp ×
tensor), leaf by leaf. Per device: params f32 + Adam mu, nu f32 + gradients f32 (sharded
like the params), the compute-dtype copy of the local weights (XLA hoists the casts out of
the layer scan), and activations of one micro-batch under the remat policy
(`activation_bytes`). Step time assumes the given MFU of the dense bf16 peak
(`perf.PEAK_FLOPS_BF16`) on the model FLOPs of `perf.flops_per_token`.
`estimate(cfg, target, mesh) -> Footprint` is the pure function behind a row of
`python -m ncalm.dryrun`.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ncalm import model as model_lib
from ncalm import optim
from ncalm import perf
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm.data import feeds
from ncalm.data import text
from ncalm.data import tokenizers

GIB = 2 ** 30
FIT_FRACTION = 0.9   # 'yes' up to 90% of HBM (runtime, fragmentation); 'tight' up to 100%
ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)   # a raw PRNG key, never made


# ------------------------------------------------------------------ abstract model


def model_config(cfg: ml_collections.ConfigDict,
                 backend: str | None = None) -> model_lib.ModelConfig:
  """The run's model config (`startup.model_config`), 'auto' resolved for `backend`."""
  return startup.model_config(cfg, feeds.abstract(cfg).train_source.vocab_size, backend)


def abstract_state(cfg: ml_collections.ConfigDict):
  """Boxed abstract TrainState (params and Adam state carry logical axis names)."""
  return _cached_state(model_config(cfg), cfg.seq_len, cfg.train_steps, cfg.optim.to_json())


@functools.lru_cache(maxsize=16)
def _cached_state(model_cfg: model_lib.ModelConfig, seq_len: int, train_steps: int,
                  optim_json: str):
  """eval_shape of `step_lib.init_state`, once per (model, optimizer): the only trace."""
  cfg = ml_collections.ConfigDict(dict(seq_len=seq_len, train_steps=train_steps,
                                       optim=json.loads(optim_json)))
  tx, _ = optim.make_optimizer(cfg.optim, train_steps)
  init = functools.partial(step_lib.init_state, model_lib.Transformer(model_cfg), tx, cfg)
  return jax.eval_shape(init, ABSTRACT_KEY)


def abstract_setup(cfg: ml_collections.ConfigDict, devices,
                   backend: str | None = None) -> step_lib.Setup:
  """`step_lib.create_setup` for the config's data (it touches no device, so it also works
  on compile-only TPU devices)."""
  return step_lib.create_setup(cfg, model_config(cfg, backend), devices)


# ------------------------------------------------------------------ memory per device


def mesh_axes(target: perf.Target, mesh: dict | None, cfg) -> dict[str, int]:
  """{'data', 'fsdp', 'tensor'} sizes on the target; `mesh` None = the config's mesh."""
  requested = cfg.mesh.to_dict() if mesh is None else dict(mesh)
  return dict(zip(sharding.MESH_AXES, sharding.mesh_shape(requested, target.num_devices)))


def _leaves(tree) -> list[tuple[str, object]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


class Shard(NamedTuple):
  path: str          # keystr of the TrainState leaf, e.g. ".params['head']"
  shape: tuple       # global shape
  dtype: object
  logical: tuple     # logical axis names per dim
  splits: tuple      # devices each dim is split over (product of its mesh axes' sizes)
  shard: tuple       # per-device shape (ceil: an uneven split pads)


def state_shards(cfg: ml_collections.ConfigDict, sizes: dict[str, int]) -> list[Shard]:
  """Every TrainState leaf as laid out by the config's logical-axis rules on an
  `AbstractMesh` of `sizes` (no devices needed)."""
  boxed = abstract_state(cfg)
  rules = sharding.rules_from_config(cfg.logical_axis_rules)
  mesh = jax.sharding.AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES),
                                   sharding.MESH_AXES)
  shards = []
  for (path, value), (_, spec) in zip(_leaves(nn.meta.unbox(boxed)),
                                      _leaves(nn.get_partition_spec(boxed)), strict=True):
    mesh_spec = tuple(nn.logical_to_mesh_axes(tuple(spec), rules))
    mesh_spec += (None,) * (value.ndim - len(mesh_spec))
    splits = tuple(math.prod(mesh.shape[a] for a in
                             (() if axes is None else (axes,) if isinstance(axes, str) else axes))
                   for axes in mesh_spec)
    shards.append(Shard(path, value.shape, value.dtype, tuple(spec) + (None,) * (
        value.ndim - len(spec)), splits, tuple(-(-d // k) for d, k in zip(value.shape, splits))))
  return shards


def torus_layout_ok(target: perf.Target, sizes: dict[str, int]) -> bool:
  """Whether `jax.make_mesh` (hence `sharding.make_mesh`) can lay the mesh on the target's
  TPU torus: from the last mesh axis back, each axis > 1 must be the product of a subset
  of the torus axes still free (JAX's rule without allow_split_physical_axes)."""
  if not target.topology:
    return True   # GPUs: any reshape of the device list
  free = [int(n) for n in target.topology.split(':')[1].split('x')]
  for size in reversed([sizes[a] for a in sharding.MESH_AXES]):
    if size == 1:
      continue
    subsets = (c for n in range(len(free), 0, -1)
               for c in itertools.combinations(range(len(free)), n))
    chosen = next((c for c in subsets if math.prod(free[i] for i in c) == size), None)
    if chosen is None:
      return False
    free = [0 if i in chosen else n for i, n in enumerate(free)]
  return True


def activation_bytes(m: model_lib.ModelConfig, batch: int, seq_len: int,
                     tensor: int = 1) -> dict[str, int]:
  """Activation memory of one micro-batch's forward + backward on one device.

  B = per-device micro-batch, L = seq_len, E = d_model, N = layers, c = bytes of the
  compute dtype; Hl, Ml, Vl, El = heads, mlp, vocab, E split over `tensor`.
    layer_input = B·L·E·c                        a block's input (all that full remat saves)
    attention   = B·Hl·L²·(4 + 4 + c + 1)        f32 scores, f32 probs, dropped probs, mask
    mlp         = 3·B·L·Ml·c                     gate, up, silu(gate)·up
    other       = B·L·(3E + 6El)·c               norm outputs, residual, q k v, rotated q k, out
    working     = attention + mlp + other        one block's forward, kept for its backward
    saved/layer = none: working; full: layer_input;
                  dots: layer_input + B·L·(2E + 4El + 2Ml)·c + B·Hl·L²·c;
                  dots_no_batch: layer_input + B·L·(2E + 3El + 2Ml)·c
    logits      = 3·B·L·Vl·4                     f32 logits, log-softmax, their gradient
    total       = N·saved/layer + (working, recomputed, if remat) + logits + layer_input
  """
  b, length, e, c = batch, seq_len, m.d_model, jnp.dtype(m.dtype).itemsize
  split = lambda n: -(-n // tensor)
  heads, mlp, vocab, e_local = (split(m.num_heads), split(m.mlp_dim), split(m.vocab_size),
                                split(e))
  dropout = c + 1 if m.attn_dropout > 0 else 0
  layer_input = b * length * e * c
  attention = b * heads * length * length * (4 + 4 + dropout)
  mlp_hidden = 3 * b * length * mlp * c
  other = b * length * (3 * e + 6 * e_local) * c
  working = attention + mlp_hidden + other
  saved = {
      'none': working,
      'full': layer_input,
      'dots': (layer_input + b * length * (2 * e + 4 * e_local + 2 * mlp) * c
               + b * heads * length * length * c),
      'dots_no_batch': layer_input + b * length * (2 * e + 3 * e_local + 2 * mlp) * c,
  }[m.remat]
  terms = dict(saved_layers=m.num_layers * saved,
               recomputed_block=0 if m.remat == 'none' else working,
               logits=3 * b * length * vocab * 4,
               embedded=layer_input)
  terms['total'] = sum(terms.values())
  return terms


# ------------------------------------------------------------------ the estimate


@dataclasses.dataclass(frozen=True)
class DeviceMemory:
  """Bytes per device of one training step (the table's params .. total columns)."""
  params: int            # f32 parameters, as the logical-axis rules shard them
  opt_state: int         # Adam mu, nu (f32, sharded like the params), counts, step counter
  grads: int             # f32 gradients, sharded like the params; x2 with grad_accum > 1
  weights_compute: int   # compute-dtype copy of the local weights (+ one gathered block
                         # and its f32 grads under fsdp); 0 when computing in f32
  activations: int       # one micro-batch's forward + backward (`activation_bytes` total)
  total: int             # the sum of the five above


@dataclasses.dataclass(frozen=True)
class Footprint:
  """What a config costs per device on one target with one mesh (`estimate`)."""
  # The target and the mesh.
  target: str                        # perf.Target.name, what --targets takes
  label: str                         # perf.Target.label, what the table prints
  num_devices: int                   # devices in the mesh
  hosts: int                         # num_devices / devices_per_host, at least 1
  mesh: dict[str, int]               # {'data', 'fsdp', 'tensor'}: sizes, -1 resolved
  # The model and the run.
  param_counts: dict[str, int]       # model.count_params (total, embedding, blocks, head,
                                     # non_embedding) + leaves: the sum over eval_shape
  flops_per_token: float             # perf.flops_per_token (remat recompute not counted)
  tokens_per_step: int               # global_batch x seq_len
  train_steps: int
  micro_batch_per_device: int        # sequences per device per micro-batch (at least 1)
  vocab_size: int                    # the model's (a 'use' row may have padded it)
  remat: str                         # the model's remat policy
  compute_dtype: str                 # the model's compute dtype, e.g. 'bfloat16'
  # Memory per device.
  memory: DeviceMemory               # bytes per device, by kind
  activation_terms: dict[str, int]   # `activation_bytes`: its terms and total
  leaf_param_bytes: dict[str, int]   # bytes per device of each '.params...' leaf (keystr)
  hbm_bytes: int                     # the target's memory per device
  hbm_fraction: float                # memory.total / hbm_bytes
  fits: str                          # 'yes' (<= FIT_FRACTION), 'tight' (<= 1) or 'no'
  # Time.
  mfu: float                         # model FLOPs utilisation assumed
  peak_flops: float | None           # dense bf16 peak per device; None if unknown
  step_seconds: float                # at `mfu` of the peak, every device computing; nan
                                     # without a peak
  hours: float                       # step_seconds x train_steps
  problems: tuple[str, ...]          # why the mesh cannot run the config; () if it can


def estimate(cfg: ml_collections.ConfigDict, target: perf.Target | str,
             mesh: dict | None = None, mfu: float = 0.4) -> Footprint:
  """What `cfg` costs per device on `target` with `mesh` (None = the config's mesh).

  Pure: abstract shapes and arithmetic only. `problems` lists why the mesh cannot run
  the config (batch or parameter dims not divisible, or a mesh `jax.make_mesh` cannot lay
  on the TPU torus); the numbers are given regardless.
  """
  target = perf.TARGETS[target] if isinstance(target, str) else target
  m = model_config(cfg)
  sizes = mesh_axes(target, mesh, cfg)
  shards = state_shards(cfg, sizes)
  local = {s.path: math.prod(s.shard) * jnp.dtype(s.dtype).itemsize for s in shards}
  leaf_param_bytes = {p: n for p, n in local.items() if p.startswith('.params')}
  params = sum(leaf_param_bytes.values())
  opt_state = sum(local.values()) - params   # Adam mu, nu, counts (and the step counter)
  grads = params * (2 if cfg.grad_accum > 1 else 1)   # + the accumulator when accumulating

  counts = model_lib.count_params(m)
  counts['leaves'] = sum(math.prod(s.shape) for s in shards if s.path.startswith('.params'))

  c = m.compute_dtype.itemsize
  weights_compute = params * c // 4 if c < 4 else 0     # the cast copy of the local weights
  if sizes['fsdp'] > 1:   # one block's gathered weights (fwd, bwd) and its unsharded f32 grads
    block = counts['blocks'] // m.num_layers // sizes['tensor']
    weights_compute += block * (2 * c + 4)

  dp = sizes['data'] * sizes['fsdp']
  micro = cfg.global_batch // cfg.grad_accum
  problems = [p for p in [sharding.batch_problem(cfg.global_batch, cfg.grad_accum, dp)] if p]
  problems += sharding.split_problems(abstract_state(cfg), sizes,
                                      sharding.rules_from_config(cfg.logical_axis_rules))
  if not torus_layout_ok(target, sizes):
    problems.append(f'jax.make_mesh cannot lay data x fsdp x tensor = {sizes["data"]} x '
                    f'{sizes["fsdp"]} x {sizes["tensor"]} on the {target.topology} torus '
                    '(each axis must be a product of whole torus axes)')
  batch_local = max(1, -(-micro // dp))
  acts = activation_bytes(m, batch_local, cfg.seq_len, sizes['tensor'])

  total = params + opt_state + grads + weights_compute + acts['total']
  hbm = int(target.hbm_gib * GIB)
  flops = perf.flops_per_token(m, cfg.seq_len)
  tokens = cfg.global_batch * cfg.seq_len
  peak = perf.peak_flops(target.device_kind)
  step_s = flops * tokens / (target.num_devices * peak * mfu) if peak else math.nan
  fraction = total / hbm
  return Footprint(
      target=target.name, label=target.label, num_devices=target.num_devices,
      hosts=max(1, target.num_devices // target.devices_per_host), mesh=sizes,
      param_counts=counts, flops_per_token=flops, tokens_per_step=tokens,
      train_steps=cfg.train_steps, micro_batch_per_device=batch_local,
      vocab_size=m.vocab_size, remat=m.remat, compute_dtype=m.dtype,
      memory=DeviceMemory(params=params, opt_state=opt_state, grads=grads,
                          weights_compute=weights_compute, activations=acts['total'],
                          total=total),
      activation_terms=acts, leaf_param_bytes=leaf_param_bytes,
      hbm_bytes=hbm, hbm_fraction=fraction,
      fits='yes' if fraction <= FIT_FRACTION else 'tight' if fraction <= 1 else 'no',
      mfu=mfu, peak_flops=peak, step_seconds=step_s,
      hours=step_s * cfg.train_steps / 3600, problems=tuple(problems))


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _search(cfg, target, mfu) -> tuple[Footprint | None, str]:
  why = ''
  for tensor in _divisors(target.num_devices):
    for fsdp in _divisors(target.num_devices // tensor):
      p = estimate(cfg, target, dict(data=-1, fsdp=fsdp, tensor=tensor), mfu)
      if not p.problems and p.fits == 'yes':
        return p, ''
      if not why and not any('micro-batch' in q for q in p.problems):
        why = (f'data={p.mesh["data"]} fsdp={fsdp} tensor={tensor}: '   # the first one
               + ('; '.join(p.problems) or f'needs {p.hbm_fraction:.0%} of HBM'))
  return None, why or 'the batch does not split over any data x fsdp of these devices'


def recommend(cfg: ml_collections.ConfigDict, target: perf.Target | str,
              mfu: float = 0.4) -> tuple[Footprint | None, str]:
  """(footprint, note) of the runnable mesh that fits (≤ FIT_FRACTION of HBM) with the least
  model parallelism: smallest tensor, then smallest fsdp, the rest data. If none does,
  the search is repeated with the vocabulary padded to a multiple of 128 (the note says
  so); (None, why) if that fails too."""
  target = perf.TARGETS[target] if isinstance(target, str) else target
  found, why = _search(cfg, target, mfu)
  vocab = model_config(cfg).vocab_size
  if found or vocab % text.VOCAB_MULTIPLE == 0:
    return found, why
  padded = copy.deepcopy(cfg)
  padded.model.vocab_size = tokenizers.padded_vocab_size(vocab, text.VOCAB_MULTIPLE)
  found, _ = _search(padded, target, mfu)
  if found:
    return found, (f'with model.vocab_size={padded.model.vocab_size} (padded to a multiple '
                   f'of 128; none fits with {vocab}: {why})')
  return None, why


def target_rows(cfg: ml_collections.ConfigDict, target: perf.Target | str,
                mfu: float = 0.4) -> list[tuple[str, Footprint | None, str]]:
  """(row, footprint, note): 'config' (the config's mesh), 'fsdp' (all devices on fsdp) and,
  when the config's mesh cannot run or does not fit, 'use' (the recommended mesh)."""
  target = perf.TARGETS[target] if isinstance(target, str) else target
  own = estimate(cfg, target, None, mfu)
  rows = [('config', own, ''),
          ('fsdp', estimate(cfg, target, dict(fsdp=target.num_devices), mfu), '')]
  if own.problems or own.fits != 'yes':
    rows.append(('use', *recommend(cfg, target, mfu)))
  return rows
