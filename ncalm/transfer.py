"""Stage 2 from stage 1: which parameters are kept, re-drawn, re-initialised or frozen.

`init.from_run` names a finished (or checkpointed) stage-1 workdir, or `hf:DIR`, a
Hugging Face Llama checkpoint (ncalm/hf_llama.py; `init.embedding='keep'` loads all of it).
As in the published code (docs/method.md §5), every transformer block and norm is kept,
the final norm too, and the input embedding and output head are drawn anew for the new
vocabulary. The ablations re-initialise or freeze module groups over a half-open layer
range:

  attention   attn/{query,key,value,out}   per layer
  mlp         mlp/{gate,up,down}           per layer
  norms       attn_norm, mlp_norm          per layer
  final_norm, embedding, head              (no layer; freeze only, or re-drawn)

Frozen parameters get no gradient, no update and no optimizer state (`optax.multi_transform`
with `set_to_zero`). The stage-1 run is only read: its checkpoints are restored straight
into this run's shardings, whatever mesh wrote them, and checked against their checksums;
stacked (scanned) and per-layer parameter layouts convert either way.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any
import zlib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ncalm import errors
from ncalm import files
from ncalm import hf_llama
from ncalm import param_names
from ncalm import run_params

LAYER_GROUPS = {'attention': ('attn/query', 'attn/key', 'attn/value', 'attn/out'),
                'mlp': ('mlp/gate', 'mlp/up', 'mlp/down'),
                'norms': ('attn_norm/scale', 'mlp_norm/scale')}
GLOBAL_GROUPS = {'final_norm': 'final_norm/scale', 'embedding': 'embedding', 'head': 'head'}
REINIT_GROUPS = ('attention', 'mlp', 'norms', 'final_norm')
FREEZE_GROUPS = (*LAYER_GROUPS, *GLOBAL_GROUPS)
EMBEDDINGS = ('normal', 'framework', 'keep')
KEPT = ('weights', 'statistics')
NORMS = ('kept', 'unit_rms')
NORM_NAMES = ('attn_norm/scale', 'mlp_norm/scale', 'final_norm/scale')
REPORT_FILE = 'transfer.json'
TRANSFER_KEY = 7    # fold_in of the init key for the 'framework' embedding and head draws
HF_PREFIX = 'hf:'   # init.from_run='hf:DIR': a Hugging Face Llama checkpoint (ncalm/hf_llama.py)


# -------------------------------------------------------------- the init spec


@dataclasses.dataclass(frozen=True)
class InitSpec:
  """The init section, parsed and checked against the model."""
  from_run: str
  from_step: int
  embedding: str
  kept: str                   # 'weights' | 'statistics' of stage 1's blocks and norms
  reinit: tuple[str, ...]
  freeze: tuple[str, ...]
  layers: tuple[int, int]     # [start, stop) of the per-layer groups
  num_layers: int
  scan_layers: bool
  warm_steps: int = 0         # the first steps train only the new embedding and head
  transferred_lr_scale: float = 1.0   # the kept parameters' lr × this
  norms: str = 'kept'         # 'kept' | 'unit_rms' (kept norm scales divided by their RMS)
  model: dict = dataclasses.field(default_factory=dict, compare=False)  # cfg.model, for hf:

  @property
  def from_hf(self) -> bool:
    return self.from_run.startswith(HF_PREFIX)

  @property
  def changes_fresh_init(self) -> bool:
    """Whether the run's first parameters differ from its own init (`initial_state`)."""
    return bool(self.from_run) or self.embedding == 'framework'

  def layer_mask(self) -> np.ndarray:
    """bool [num_layers]: the layers the per-layer groups act on."""
    mask = np.zeros(self.num_layers, bool)
    mask[self.layers[0]:self.layers[1]] = True
    return mask


def _groups(text: str, field: str, allowed) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(',') if n.strip())
  unknown = [n for n in names if n not in allowed]
  if unknown:
    raise errors.UserError(f'init.{field}={text!r}: unknown group(s) {unknown}; use a '
                           f'comma-separated list of {list(allowed)}.')
  return names


def init_spec(cfg: ml_collections.ConfigDict) -> InitSpec:
  """Parses `cfg.init`; refuses what cannot work (before anything is read or written)."""
  init, layers = cfg.init, cfg.model.num_layers
  if init.embedding not in EMBEDDINGS:
    raise errors.UserError(f'init.embedding={init.embedding!r}: use one of {list(EMBEDDINGS)}.')
  if init.kept not in KEPT:
    raise errors.UserError(f'init.kept={init.kept!r}: use one of {list(KEPT)}.')
  if init.norms not in NORMS:
    raise errors.UserError(f'init.norms={init.norms!r}: use one of {list(NORMS)}.')
  if not 0 <= init.warm_steps < cfg.train_steps:
    raise errors.UserError(f'init.warm_steps={init.warm_steps}: use 0 (none) up to '
                           f'train_steps - 1 = {cfg.train_steps - 1}.')
  if init.transferred_lr_scale < 0:
    raise errors.UserError(f'init.transferred_lr_scale={init.transferred_lr_scale} must be >= 0 '
                           '(1 = the run\'s learning rate, 0 = the kept parameters stay).')
  stop = init.layer_stop or layers
  if not 0 <= init.layer_start < stop <= layers:
    raise errors.UserError(
        f'init.layer_start={init.layer_start}, init.layer_stop={init.layer_stop}: the layer '
        f'range [{init.layer_start}, {stop}) is outside the model\'s {layers} layers; use '
        f'0 <= layer_start < layer_stop <= {layers} (layer_stop=0 means {layers}).')
  p = InitSpec(from_run=init.from_run, from_step=init.from_step, embedding=init.embedding,
           kept=init.kept, warm_steps=init.warm_steps,
           transferred_lr_scale=init.transferred_lr_scale, norms=init.norms,
           reinit=_groups(init.reinit, 'reinit', REINIT_GROUPS),
           freeze=_groups(init.freeze, 'freeze', FREEZE_GROUPS), layers=(init.layer_start, stop),
           num_layers=layers, scan_layers=cfg.model.scan_layers, model=cfg.model.to_dict())
  if p.from_hf and p.from_step:
    raise errors.UserError(f'init.from_step={p.from_step} with init.from_run={p.from_run!r}: a '
                           'Hugging Face checkpoint has no steps; set init.from_step=0.')
  if not p.from_run and (p.reinit or p.embedding == 'keep' or p.from_step
                         or p.kept != 'weights' or p.warm_steps or p.norms != 'kept'
                         or p.transferred_lr_scale != 1.0):
    raise errors.UserError(
        'init.reinit, init.embedding=keep, init.kept, init.warm_steps, '
        'init.transferred_lr_scale, init.norms and init.from_step describe a transfer, but '
        'init.from_run is empty: name the stage-1 workdir in init.from_run, or drop them '
        '(scratch; init.embedding=framework alone is allowed there).')
  if p.warm_steps and p.embedding == 'keep':
    raise errors.UserError(
        f'init.warm_steps={p.warm_steps} trains only the new embedding and head first, but '
        'init.embedding="keep" makes none new: set init.warm_steps=0 or re-draw them.')
  partial = (p.layers != (0, layers))
  if p.freeze and partial and p.scan_layers and set(p.freeze) & set(LAYER_GROUPS):
    raise errors.UserError(
        f'init.freeze={init.freeze!r} over layers [{p.layers[0]}, {p.layers[1]}) of '
        f'{layers}: with model.scan_layers=True the layers share one stacked tensor per '
        'parameter, which is frozen whole or not at all. Set model.scan_layers=False '
        '(the stage-1 checkpoint converts) or freeze all layers.')
  return p


def trainable_mask(p: InitSpec, params) -> Any:
  """A pytree of bools like `params` (unboxed): False where the parameter is frozen."""
  def trainable(path, _):
    name = param_names.leaf_name(path)
    for group in p.freeze:
      if group in GLOBAL_GROUPS and name == GLOBAL_GROUPS[group]:
        return False
      if group in LAYER_GROUPS:
        layer, rest = param_names.split_layer(name)
        if rest in LAYER_GROUPS[group] and (layer is None or p.layers[0] <= layer < p.layers[1]):
          return False
    return True
  mask = jax.tree_util.tree_map_with_path(trainable, params)
  if not any(jax.tree.leaves(mask)):
    raise errors.UserError(
        f'init.freeze={",".join(p.freeze)!r} over layers [{p.layers[0]}, {p.layers[1]}) '
        'freezes every parameter: nothing would train. Leave at least one group out.')
  return mask


def lr_factors(p: InitSpec) -> dict[str, Any] | None:
  """{group: factor(step)} of the learning rate for `optim.make_optimizer`: the new
  embedding and head at the run's rate; the kept parameters at 0 for init.warm_steps steps,
  then × init.transferred_lr_scale. None when neither is asked for."""
  if not p.from_run or (not p.warm_steps and p.transferred_lr_scale == 1.0):
    return None
  warm, scale = p.warm_steps, p.transferred_lr_scale
  return {'new': lambda step: 1.0,
          'kept': lambda step: jnp.where(step >= warm, scale, 0.0)}


def lr_groups(p: InitSpec, params) -> Any:
  """A pytree like `params` (unboxed) of 'new' (the re-drawn embedding and head) and
  'kept' (everything else, re-initialised ablation groups included)."""
  def group(path, _):
    name = param_names.leaf_name(path)
    return 'new' if name in ('embedding', 'head') and p.embedding != 'keep' else 'kept'
  return jax.tree_util.tree_map_with_path(group, params)


def freeze_optimizer(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """`tx` on the trainable parameters; frozen ones get zero updates and no state."""
  if all(jax.tree.leaves(mask)):
    return tx
  labels = jax.tree.map(lambda t: 'train' if t else 'frozen', mask)
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)


# ----------------------------------------------------------- reading stage 1


def _check_shapes(stage1: dict[str, Any], stage2: dict[str, Any], p: InitSpec, run: str,
                  layers1: int) -> None:
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


def check_stage1(p: InitSpec, stage2_params, workdir: str = '') -> None:
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


def read_stage1(p: InitSpec, stage2_params, mesh, workdir: str = '') -> tuple[dict, int]:
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


def _wanted_shapes(p: InitSpec, stage2_params) -> dict[str, tuple[int, ...]]:
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


def build_params(p: InitSpec, fresh, stage1: dict[str, jax.Array] | None, key: jax.Array):
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
      if p.norms == 'unit_rms' and param_names.split_layer(name)[1] in NORM_NAMES:
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
    reinit = any((g in LAYER_GROUPS and rest in LAYER_GROUPS[g])
                 or (g in GLOBAL_GROUPS and name == GLOBAL_GROUPS[g]) for g in p.reinit)
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


def report(p: InitSpec, params, how: dict[str, str], mask, step: int) -> dict:
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
  if run.startswith(HF_PREFIX):
    return HF_PREFIX + os.path.abspath(run[len(HF_PREFIX):])
  return os.path.abspath(run)


def summary_line(r: dict) -> str:
  c = r['counts']
  layers = (f' over layers [{r["layers"][0]}, {r["layers"][1]})'
            if (r['reinit'] or r['freeze']) else '')
  source = r['from_run'] if r['from_run'].startswith(HF_PREFIX) else (
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
