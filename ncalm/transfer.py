"""Stage 2 from stage 1: which parameters are kept, re-drawn, re-initialised or frozen.

`init.from_run` names a finished (or checkpointed) stage-1 workdir, or `hf:DIR`, a
Hugging Face Llama checkpoint (ncalm/hf_llama.py; `init.embedding='keep'` loads all of it).
As in the published code (docs/method.md §5), every transformer block and norm is kept,
the final norm too, and the input embedding and output head are drawn anew for the new
vocabulary. The ablations re-initialise or freeze module groups over a half-open layer
range (the groups, and what the init section means: ncalm/init_section.py).

Frozen parameters get no gradient, no update and no optimizer state (`optax.multi_transform`
with `set_to_zero`). The stage-1 run is only read: its checkpoints are restored straight
into this run's shardings, whatever mesh wrote them, and checked against their checksums;
stacked (scanned) and per-layer parameter layouts convert either way.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import errors
from ncalm import files
from ncalm import hf_llama
from ncalm import init_section
from ncalm import param_names
from ncalm import run_params

REPORT_FILE = 'transfer.json'
TRANSFER_KEY = 7    # fold_in of the init key for the 'framework' embedding and head draws


# ----------------------------------------------------------- reading stage 1


def _check_shapes(stage1: dict[str, Any], stage2: dict[str, Any], p: init_section.InitSpec,
                  run: str, layers1: int) -> None:
  """Every parameter that stage 2 takes from stage 1 must have its shape."""
  if layers1 != p.num_layers:
    raise errors.UserError(
        f'init.from_run={run!r} has {layers1} layers but model.num_layers={p.num_layers}: '
        'the blocks are kept, so the stage-2 model must have the stage-1 model\'s layers.')
  for name, want in sorted(stage2.items()):
    if name in ('embedding', 'head') and p.embedding != 'keep':
      continue
    if name not in stage1:
      raise errors.UserError(f'init.from_run={run!r} has no parameter {name!r}: it was not '
                             'trained by this model family.')
    got_shape, want_shape = run_params.layer_shape(stage1[name]), run_params.layer_shape(want)
    if got_shape != want_shape:
      hint = ('the vocabularies differ: keep init.embedding="normal" (re-drawn)'
              if name in ('embedding', 'head') else
              'set the model section (d_model, num_heads, mlp_dim) to the stage-1 run\'s')
      raise errors.UserError(
          f'init.from_run={run!r}: parameter {name!r} has shape {got_shape} there but '
          f'{want_shape} in this config; {hint}.')


def check_stage1(p: init_section.InitSpec, stage2_params, workdir: str = '') -> None:
  """Start-up check of init.from_run against this config: the directory is a stage-1
  run with a checkpoint, and its parameters fit this model (shapes only; nothing read)."""
  if p.from_hf:
    hf_llama.match_llama(p.from_run, _wanted_shapes(p, stage2_params), p.model)
    return
  ref = run_params.RunRef(p.from_run, p.from_step)
  manager, steps = run_params.open_run(ref, workdir)
  try:
    canon_meta, layers1 = run_params.canonical(run_params.newest_metadata(ref, manager, steps))
    stage2_canon = run_params.canonical(param_names.flat(stage2_params))[0]
    _check_shapes(canon_meta, stage2_canon, p, p.from_run, layers1)
  finally:
    manager.close()


def read_stage1(p: init_section.InitSpec, stage2_params, mesh,
                workdir: str = '') -> tuple[dict, int]:
  """({stage-1 name: array}, step) of what stage 2 takes, in the stage-1 layout (stacked
  or per layer), each placed as stage 2 places that parameter.

  The stage-1 run is only read (`run_params.restore_newest`). From `hf:DIR` the tensors come per
  layer, step 0."""
  stage2_canon, _ = run_params.canonical(param_names.flat(stage2_params))
  specs = {}  # per-layer name → stage 2's partition spec of one layer's tensor
  for n in _wanted_shapes(p, stage2_params):
    value = stage2_canon[n]
    stacked = isinstance(value, tuple)
    spec = tuple((value[0] if stacked else value).sharding.spec)[1 if stacked else 0:]
    specs[n] = spec + (None,) * (len(run_params.layer_shape(value)) - len(spec))
  if p.from_hf:
    arrays = hf_llama.read_llama(p.from_run, _wanted_shapes(p, stage2_params), p.model)
    return {n: run_params.placed(x, mesh, specs[n]) for n, x in arrays.items()}, 0

  def target_for(meta_flat):
    canon_meta, layers1 = run_params.canonical(meta_flat)
    _check_shapes(canon_meta, stage2_canon, p, p.from_run, layers1)
    return run_params.restore_target(meta_flat, specs, mesh)
  return run_params.restore_newest(run_params.RunRef(p.from_run, p.from_step), workdir, mesh,
                                   target_for)


def _wanted_shapes(p: init_section.InitSpec, stage2_params) -> dict[str, tuple[int, ...]]:
  """{per-layer name: shape of one layer's tensor} of what stage 2 takes from its source."""
  stage2_canon = run_params.canonical(param_names.flat(stage2_params))[0]
  return {n: run_params.layer_shape(v) for n, v in stage2_canon.items()
          if n not in ('embedding', 'head') or p.embedding == 'keep'}


# ---------------------------------------------------------------- the new state


def framework_init(key: jax.Array, name: str, shape, dtype) -> jax.Array:
  """The published code's PyTorch defaults: nn.Embedding N(0, 1); nn.Linear's
  Kaiming-uniform(a=√5) weight, U(±1/√fan_in) with fan_in = d_model."""
  if name == 'embedding':
    return jax.random.normal(key, shape, dtype)
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _stage1_value(stage1: dict[str, jax.Array], name: str) -> jax.Array:
  """Stage 1's tensor for a stage-2 name, in either layout ('layers/x' is stacked)."""
  if name in stage1:
    return stage1[name]
  layer, rest = param_names.split_layer(name)
  if layer is None:   # stacked in stage 2, per layer in stage 1
    count = sum(1 for n in stage1 if n.startswith('layers_') and n.split('/', 1)[1] == rest)
    return jnp.stack([stage1[f'layers_{i}/{rest}'] for i in range(count)])
  return stage1[f'layers/{rest}'][layer]   # per layer in stage 2, stacked in stage 1


def matched_statistics(fresh: jax.Array, stage1: jax.Array, stacked: bool,
                       key: jax.Array) -> jax.Array:
  """`fresh` moved to stage 1's mean and std, per layer (per slice of axis 0 when
  `stacked`): mean1 + std1 · (fresh − mean0) / std0. A constant fresh layer (a norm's
  ones: std0 = 0) is replaced by a standard normal draw from `key` first."""
  axes = tuple(range(1 if stacked else 0, fresh.ndim))
  stats = lambda x: (x.mean(axis=axes, keepdims=True), x.std(axis=axes, keepdims=True))
  base = jnp.where(stats(fresh)[1] > 0, fresh, jax.random.normal(key, fresh.shape, fresh.dtype))
  mean0, std0 = stats(base)
  mean1, std1 = stats(stage1.astype(fresh.dtype))
  return mean1 + std1 * (base - mean0) / std0


def build_params(p: init_section.InitSpec, fresh, stage1: dict[str, jax.Array] | None,
                 key: jax.Array):
  """The stage-2 parameters from fresh ones (this run's init) and stage 1's (either layout;
  None for scratch), assembled in one jitted function straight into the fresh parameters'
  shardings (no eager op on arrays that span hosts).

  Returns (params, {name: 'kept' | 'statistics' | 'new' | 'reinit' | 'mixed' | 'own'});
  'mixed' marks a stacked tensor with some layers kept and some re-initialised, 'own' a
  scratch run's own init, 'statistics' init.kept='statistics'."""
  layer_mask = p.layer_mask()
  how = {}

  def keep(name, fresh_value, stage1, key):
    if p.kept == 'weights':
      how[name] = 'kept'
      value = _stage1_value(stage1, name)
      if p.norms == 'unit_rms' and param_names.split_layer(name)[1] in init_section.NORM_NAMES:
        stacked = param_names.split_layer(name)[0] is None
        axes = tuple(range(1 if stacked else 0, value.ndim))
        value = value / jnp.sqrt(jnp.mean(jnp.square(value), axis=axes, keepdims=True))
      return value
    how[name] = 'statistics'
    stacked = param_names.split_layer(name)[0] is None   # 'layers/...': [num_layers, ...]
    sub = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
    return matched_statistics(fresh_value, _stage1_value(stage1, name), stacked, sub)

  def pick(path, fresh_value, stage1, key):
    name = param_names.leaf_name(path)
    if name in ('embedding', 'head'):
      if p.embedding == 'keep':
        how[name] = 'kept'
        return stage1[name]
      how[name] = 'new'
      if p.embedding == 'framework':
        sub = jax.random.fold_in(key, 0 if name == 'embedding' else 1)
        return framework_init(sub, name, fresh_value.shape, fresh_value.dtype)
      return fresh_value
    if stage1 is None:
      how[name] = 'own'
      return fresh_value
    layer, rest = param_names.split_layer(name)
    layer_groups, global_groups = init_section.LAYER_GROUPS, init_section.GLOBAL_GROUPS
    reinit = any((g in layer_groups and rest in layer_groups[g])
                 or (g in global_groups and name == global_groups[g]) for g in p.reinit)
    if not reinit or (layer is not None and layer >= 0 and not layer_mask[layer]):
      return keep(name, fresh_value, stage1, key)
    if layer is None and not layer_mask.all():  # stacked: [num_layers, ...], some layers
      how[name] = 'mixed'
      select = jnp.asarray(layer_mask).reshape((-1,) + (1,) * (fresh_value.ndim - 1))
      kept = keep(name, fresh_value, stage1, key)
      how[name] = 'mixed'
      return jnp.where(select, fresh_value, kept)
    how[name] = 'reinit'
    return fresh_value

  def assemble(fresh, stage1, key):
    return jax.tree_util.tree_map_with_path(lambda path, v: pick(path, v, stage1, key), fresh)

  shardings = jax.tree.map(lambda x: x.sharding, fresh)
  params = jax.jit(assemble, out_shardings=shardings)(fresh, stage1, key)
  return params, how


def report(p: init_section.InitSpec, params, how: dict[str, str], mask, step: int) -> dict:
  """What was kept, re-initialised, re-drawn and frozen, with parameter counts."""
  sizes = {name: int(np.prod(x.shape)) for name, x in param_names.flat(params).items()}
  frozen = {name for name, t in param_names.flat(mask).items() if not t}
  count = lambda names: int(sum(sizes[n] for n in names))
  by = lambda kind: sorted(n for n, k in how.items() if k == kind)
  return dict(
      from_run=source_name(p.from_run), from_step=step, embedding=p.embedding,
      kept_as=p.kept, reinit=list(p.reinit), freeze=list(p.freeze), layers=list(p.layers),
      kept=by('kept'), statistics=by('statistics'), new=by('new'), reinitialised=by('reinit'),
      mixed=by('mixed'), frozen=sorted(frozen),
      counts=dict(total=count(sizes), kept=count(by('kept')),
                  statistics=count(by('statistics')), new=count(by('new')),
                  reinitialised=count(by('reinit')), mixed=count(by('mixed')),
                  frozen=count(frozen), trainable=count(set(sizes) - frozen)))


def source_name(run: str) -> str:
  """init.from_run as an absolute path, keeping its 'hf:' prefix."""
  if run.startswith(init_section.HF_PREFIX):
    return init_section.HF_PREFIX + os.path.abspath(run[len(init_section.HF_PREFIX):])
  return os.path.abspath(run)


def summary_line(r: dict) -> str:
  c = r['counts']
  layers = (f' over layers [{r["layers"][0]}, {r["layers"][1]})'
            if (r['reinit'] or r['freeze']) else '')
  source = r['from_run'] if r['from_run'].startswith(init_section.HF_PREFIX) else (
      f'{r["from_run"]} step {r["from_step"]}')
  kept = (f'kept {c["kept"]:,} parameters ({len(r["kept"])} tensors)' if not c['statistics']
          else f'matched {c["statistics"]:,} parameters ({len(r["statistics"])} tensors) to '
               'the mean and std of stage 1\'s')
  return (f'Stage 2 from {source}: {kept}, new embedding and head {c["new"]:,} '
          f'({r["embedding"]}), re-initialised {c["reinitialised"] + c["mixed"]:,} '
          f'({",".join(r["reinit"]) or "none"}{layers if r["reinit"] else ""}), frozen '
          f'{c["frozen"]:,} ({",".join(r["freeze"]) or "none"}{layers if r["freeze"] else ""}); '
          f'{c["trainable"]:,} of {c["total"]:,} train.')


def write_report(workdir: str, r: dict) -> None:
  if jax.process_index() == 0:
    with files.atomic_open(os.path.join(workdir, REPORT_FILE)) as f:
      json.dump(r, f, indent=1)


# ------------------------------------------------------------- the one entry


def initial_state(setup, make_fresh, rng: jax.Array, workdir: str):
  """The first state of a stage-2 run, from `make_fresh()` (this run's own initial state,
  of which only the parameters are kept): stage 1's blocks and norms (or their statistics),
  new embedding and head, the init ablations of `setup.init_spec`, and a fresh optimizer
  state; the report is logged and written to the workdir. Without init.from_run (scratch
  with init.embedding='framework'), the run's own init with that embedding and head."""
  fresh = make_fresh()
  spec, state_type, step0 = setup.init_spec, type(fresh), fresh.step
  fresh_params = fresh.params
  del fresh   # its optimizer state is not kept
  key = jax.random.fold_in(rng, TRANSFER_KEY)
  if not spec.from_run:   # scratch with the published (framework) embedding and head
    params, _ = build_params(spec, fresh_params, None, key)
    logging.info('Scratch, with the %s embedding and head.', spec.embedding)
    opt_state = jax.jit(setup.tx.init, out_shardings=setup.state_shardings.opt_state)(params)
    return state_type(step=step0, params=params, opt_state=opt_state)
  stage1, step = read_stage1(spec, fresh_params, setup.mesh, workdir)
  params, how = build_params(spec, fresh_params, stage1, key)
  del fresh_params, stage1
  opt_state = jax.jit(setup.tx.init, out_shardings=setup.state_shardings.opt_state)(params)
  mask = setup.trainable if setup.trainable is not None else jax.tree.map(lambda _: True, params)
  r = report(spec, params, how, mask, step)
  logging.info('%s', summary_line(r))
  write_report(workdir, r)
  return state_type(step=step0, params=params, opt_state=opt_state)
