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

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from ncalm import checkpoint
from ncalm import cli
from ncalm import errors
from ncalm import files
from ncalm import hf_llama
from ncalm import workdir as workdir_lib

LAYER_GROUPS = {'attention': ('attn/query', 'attn/key', 'attn/value', 'attn/out'),
                'mlp': ('mlp/gate', 'mlp/up', 'mlp/down'),
                'norms': ('attn_norm/scale', 'mlp_norm/scale')}
GLOBAL_GROUPS = {'final_norm': 'final_norm/scale', 'embedding': 'embedding', 'head': 'head'}
REINIT_GROUPS = ('attention', 'mlp', 'norms', 'final_norm')
FREEZE_GROUPS = (*LAYER_GROUPS, *GLOBAL_GROUPS)
EMBEDDINGS = ('normal', 'framework', 'keep')
REPORT_FILE = 'transfer.json'
HF_PREFIX = 'hf:'   # init.from_run='hf:DIR': a Hugging Face Llama checkpoint (ncalm/hf_llama.py)


# ------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """The init section, parsed and checked against the model."""
  from_run: str
  from_step: int
  embedding: str
  reinit: tuple[str, ...]
  freeze: tuple[str, ...]
  layers: tuple[int, int]     # [start, stop) of the per-layer groups
  num_layers: int
  scan_layers: bool
  model: dict = dataclasses.field(default_factory=dict, compare=False)  # cfg.model, for hf:

  @property
  def from_hf(self) -> bool:
    return self.from_run.startswith(HF_PREFIX)

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


def plan(cfg: ml_collections.ConfigDict) -> Plan:
  """Parses `cfg.init`; refuses what cannot work (before anything is read or written)."""
  init, layers = cfg.init, cfg.model.num_layers
  if init.embedding not in EMBEDDINGS:
    raise errors.UserError(f'init.embedding={init.embedding!r}: use one of {list(EMBEDDINGS)}.')
  stop = init.layer_stop or layers
  if not 0 <= init.layer_start < stop <= layers:
    raise errors.UserError(
        f'init.layer_start={init.layer_start}, init.layer_stop={init.layer_stop}: the layer '
        f'range [{init.layer_start}, {stop}) is outside the model\'s {layers} layers; use '
        f'0 <= layer_start < layer_stop <= {layers} (layer_stop=0 means {layers}).')
  p = Plan(from_run=init.from_run, from_step=init.from_step, embedding=init.embedding,
           reinit=_groups(init.reinit, 'reinit', REINIT_GROUPS),
           freeze=_groups(init.freeze, 'freeze', FREEZE_GROUPS), layers=(init.layer_start, stop),
           num_layers=layers, scan_layers=cfg.model.scan_layers, model=cfg.model.to_dict())
  if p.from_hf and p.from_step:
    raise errors.UserError(f'init.from_step={p.from_step} with init.from_run={p.from_run!r}: a '
                           'Hugging Face checkpoint has no steps; set init.from_step=0.')
  if not p.from_run and (p.reinit or p.embedding != 'normal' or p.from_step):
    raise errors.UserError(
        'init.reinit, init.embedding and init.from_step describe a transfer, but init.from_run '
        'is empty: name the stage-1 workdir in init.from_run, or drop them (scratch).')
  partial = (p.layers != (0, layers))
  if p.freeze and partial and p.scan_layers and set(p.freeze) & set(LAYER_GROUPS):
    raise errors.UserError(
        f'init.freeze={init.freeze!r} over layers [{p.layers[0]}, {p.layers[1]}) of '
        f'{layers}: with model.scan_layers=True the layers share one stacked tensor per '
        'parameter, which is frozen whole or not at all. Set model.scan_layers=False '
        '(the stage-1 checkpoint converts) or freeze all layers.')
  return p


def trainable_mask(p: Plan, params) -> Any:
  """A pytree of bools like `params` (unboxed): False where the parameter is frozen."""
  def trainable(path, _):
    name = _name(path)
    for group in p.freeze:
      if group in GLOBAL_GROUPS and name == GLOBAL_GROUPS[group]:
        return False
      if group in LAYER_GROUPS:
        layer, rest = _split_layer(name)
        if rest in LAYER_GROUPS[group] and (layer is None or p.layers[0] <= layer < p.layers[1]):
          return False
    return True
  mask = jax.tree_util.tree_map_with_path(trainable, params)
  if not any(jax.tree.leaves(mask)):
    raise errors.UserError(
        f'init.freeze={",".join(p.freeze)!r} over layers [{p.layers[0]}, {p.layers[1]}) '
        'freezes every parameter: nothing would train. Leave at least one group out.')
  return mask


def freeze_optimizer(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """`tx` on the trainable parameters; frozen ones get zero updates and no state."""
  if all(jax.tree.leaves(mask)):
    return tx
  labels = jax.tree.map(lambda t: 'train' if t else 'frozen', mask)
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)


# ------------------------------------------------------------------ the names


def _name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _split_layer(name: str) -> tuple[int | None, str]:
  """'layers_3/attn/query' → (3, 'attn/query'); 'layers/attn/query' → (None, ...)."""
  head, _, rest = name.partition('/')
  if head == 'layers':
    return None, rest
  if head.startswith('layers_') and head[7:].isdigit():
    return int(head[7:]), rest
  return -1, name


def _flat(tree) -> dict[str, Any]:
  return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ----------------------------------------------------------- reading stage 1


@dataclasses.dataclass(frozen=True)
class RunRef:
  """A run's checkpoints to read, and the flags that named them (for the messages)."""
  run: str
  step: int = 0                     # 0 = the newest intact checkpoint
  field: str = 'init.from_run'
  step_field: str = 'init.from_step'


def _run_steps(ref: RunRef, workdir: str) -> list[int]:
  """The checkpoint steps of an ncalm workdir, newest first; refuses what is not one."""
  run, field = ref.run, ref.field
  if not os.path.isdir(run):
    raise errors.UserError(f'{field}={run!r} does not exist: name the workdir of a '
                           'training run (the --workdir it was trained with).')
  if workdir and os.path.realpath(run) == os.path.realpath(workdir):
    raise errors.UserError(f'{field}={run!r} is this run\'s own --workdir: stage 2 needs '
                           'its own workdir (a rerun of it resumes by itself).')
  if not os.path.exists(os.path.join(run, workdir_lib.RUN_CONFIG_NAME)):
    raise errors.UserError(
        f'{field}={run!r} is not an ncalm workdir (no {workdir_lib.RUN_CONFIG_NAME}): '
        'name the directory a `python -m ncalm.main ... --workdir=DIR` run wrote.')
  steps = checkpoint.finished_steps(run)
  if not steps:
    directory = os.path.join(run, checkpoint.CHECKPOINT_DIR)
    raise errors.UserError(
        f'{field}={run!r} has no finished checkpoint in {directory} (the run stopped before '
        'its first save): resume it with its own command until it saves one.')
  return steps


def _canonical(flat: dict[str, Any]) -> tuple[dict[str, Any], int]:
  """Per-layer names ('layers_i/...') for either layout: (items, number of layers).

  Values are whatever the dict holds (metadata or arrays); stacked entries become
  (value, i) pairs, to be sliced later."""
  out, count = {}, 0
  for name, value in flat.items():
    layer, rest = _split_layer(name)
    if layer is None:
      count = value.shape[0]
      for i in range(count):
        out[f'layers_{i}/{rest}'] = (value, i)
    else:
      if layer >= 0:
        count = max(count, layer + 1)
      out[name] = value
  return out, count


def _layer_shape(value) -> tuple[int, ...]:
  """The shape of one layer's tensor: a (stacked value, layer) pair drops the layer axis."""
  return tuple(value[0].shape[1:]) if isinstance(value, tuple) else tuple(value.shape)


def _check_shapes(stage1: dict[str, Any], stage2: dict[str, Any], p: Plan, run: str,
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
    got_shape, want_shape = _layer_shape(stage1[name]), _layer_shape(want)
    if got_shape != want_shape:
      hint = ('the vocabularies differ: keep init.embedding="normal" (re-drawn)'
              if name in ('embedding', 'head') else
              'set the model section (d_model, num_heads, mlp_dim) to the stage-1 run\'s')
      raise errors.UserError(
          f'init.from_run={run!r}: parameter {name!r} has shape {got_shape} there but '
          f'{want_shape} in this config; {hint}.')


def _restore_target(meta_flat: dict[str, Any], specs: dict[str, tuple], mesh) -> dict:
  """The stage-1 params that stage 2 takes (names in `specs`, per layer), in stage-1
  layout, as ShapeDtypeStructs placed as stage 2 places the same parameter."""
  target = {}
  for name, meta in meta_flat.items():
    layer, rest = _split_layer(name)
    per_layer = name if layer == -1 else f'layers_0/{rest}'
    if per_layer not in specs:
      continue
    spec = ((None,) if layer is None else ()) + specs[per_layer]
    target[name] = jax.ShapeDtypeStruct(
        meta.shape, meta.dtype,
        sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))
  return target


def nest(flat: dict[str, Any], separator: str = '/') -> dict:
  """{'a/b': x} → {'a': {'b': x}}."""
  tree: dict = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split(separator)
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _open(ref: RunRef, workdir: str = ''):
  """(read-only manager, steps to try newest first) of a run."""
  steps = _run_steps(ref, workdir)
  if ref.step and ref.step not in steps:
    raise errors.UserError(f'{ref.step_field}={ref.step}: {ref.run!r} has checkpoints of '
                           f'steps {sorted(steps)}; name one of them or 0 (the newest).')
  directory = os.path.join(os.path.abspath(ref.run), checkpoint.CHECKPOINT_DIR)
  manager = ocp.CheckpointManager(
      directory, item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                                'checksum': ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           enable_async_checkpointing=False))
  return manager, ([ref.step] if ref.step else steps)


def _params_metadata(manager, step: int, ref: RunRef) -> dict[str, Any]:
  """{name: shape/dtype metadata} of a checkpoint's parameters (nothing restored)."""
  meta = manager.item_metadata(step)['state']
  flat = {k[len('params/'):]: v for k, v in _flat(_tree_of(meta)).items()
          if k.startswith('params/')}
  if not flat:
    raise errors.UserError(f'{ref.field}={ref.run!r}: the checkpoint of step {step} holds no '
                           'model parameters: it is not an ncalm training state.')
  return flat


def _restore_newest(ref: RunRef, workdir: str, mesh, target_for) -> tuple[dict, int]:
  """({name: array}, step) of the newest intact checkpoint (or the named one): the params
  `target_for(params metadata)` asks for, checked against their checksums.

  Nothing is written to the run: its manager is opened read-only, and a damaged checkpoint
  is reported (and an older one used when no step was named), never moved."""
  manager, steps = _open(ref, workdir)
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


def _newest_metadata(ref: RunRef, manager, steps: list[int]) -> dict[str, Any]:
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
  return _restore_newest(ref, '', mesh, everything)


def check_stage1(p: Plan, stage2_params, workdir: str = '') -> None:
  """Start-up check of init.from_run against this config: the directory is a stage-1
  run with a checkpoint, and its parameters fit this model (shapes only; nothing read)."""
  if p.from_hf:
    hf_llama.match_llama(p.from_run, _wanted_shapes(p, stage2_params), p.model)
    return
  ref = RunRef(p.from_run, p.from_step)
  manager, steps = _open(ref, workdir)
  try:
    canon_meta, layers1 = _canonical(_newest_metadata(ref, manager, steps))
    _check_shapes(canon_meta, _canonical(_flat(stage2_params))[0], p, p.from_run, layers1)
  finally:
    manager.close()


def read_stage1(p: Plan, stage2_params, mesh, workdir: str = '') -> tuple[dict, int]:
  """({stage-1 name: array}, step) of what stage 2 takes, in the stage-1 layout (stacked
  or per layer), each placed as stage 2 places that parameter.

  The stage-1 run is only read (`_restore_newest`). From `hf:DIR` the tensors come per
  layer, step 0."""
  stage2_canon, _ = _canonical(_flat(stage2_params))
  specs = {}  # per-layer name → stage 2's partition spec of one layer's tensor
  for n in _wanted_shapes(p, stage2_params):
    value = stage2_canon[n]
    stacked = isinstance(value, tuple)
    spec = tuple((value[0] if stacked else value).sharding.spec)[1 if stacked else 0:]
    specs[n] = spec + (None,) * (len(_layer_shape(value)) - len(spec))
  if p.from_hf:
    arrays = hf_llama.read_llama(p.from_run, _wanted_shapes(p, stage2_params), p.model)
    return {n: _placed(x, mesh, specs[n]) for n, x in arrays.items()}, 0

  def target_for(meta_flat):
    canon_meta, layers1 = _canonical(meta_flat)
    _check_shapes(canon_meta, stage2_canon, p, p.from_run, layers1)
    return _restore_target(meta_flat, specs, mesh)
  return _restore_newest(RunRef(p.from_run, p.from_step), workdir, mesh, target_for)


def _wanted_shapes(p: Plan, stage2_params) -> dict[str, tuple[int, ...]]:
  """{per-layer name: shape of one layer's tensor} of what stage 2 takes from its source."""
  return {n: _layer_shape(v) for n, v in _canonical(_flat(stage2_params))[0].items()
          if n not in ('embedding', 'head') or p.embedding == 'keep'}


def _placed(x: np.ndarray, mesh, spec: tuple) -> jax.Array:
  """A host array placed on the mesh; each process puts only its own shards."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _tree_of(meta):
  return meta.tree if hasattr(meta, 'tree') else meta


def _restore_verified(manager, step: int, target: dict, mesh) -> dict[str, jax.Array]:
  """Restores the target's params from `step` and checks them against the saved digests."""
  item = {'params': nest(target)}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                   partial_restore=True),
      checksum=ocp.args.JsonRestore()))
  want = restored.checksum['tensors']
  got = checkpoint.state_digests({'params': restored.state['params']}, mesh)
  bad = sorted(k for k in got if want.get(k) != got[k])
  if bad:
    raise ValueError(f'{len(bad)} tensor(s) differ from the checksum saved with them: '
                     f'{", ".join(bad[:4])}')
  return {k[len('params/'):]: v for k, v in _flat(restored.state).items()}


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
  layer, rest = _split_layer(name)
  if layer is None:   # stacked in stage 2, per layer in stage 1
    count = sum(1 for n in stage1 if n.startswith('layers_') and n.split('/', 1)[1] == rest)
    return jnp.stack([stage1[f'layers_{i}/{rest}'] for i in range(count)])
  return stage1[f'layers/{rest}'][layer]   # per layer in stage 2, stacked in stage 1


def build_params(p: Plan, fresh, stage1: dict[str, jax.Array], key: jax.Array):
  """The stage-2 parameters from fresh ones (this run's init) and stage 1's (either layout),
  assembled in one jitted function straight into the fresh parameters' shardings (no
  eager op on arrays that span hosts).

  Returns (params, {name: 'kept' | 'new' | 'reinit' | 'mixed'}); 'mixed' marks a stacked
  tensor with some layers kept and some re-initialised."""
  layer_mask = p.layer_mask()
  how = {}

  def pick(path, fresh_value, stage1, key):
    name = _name(path)
    if name in ('embedding', 'head'):
      if p.embedding == 'keep':
        how[name] = 'kept'
        return stage1[name]
      how[name] = 'new'
      if p.embedding == 'framework':
        sub = jax.random.fold_in(key, 0 if name == 'embedding' else 1)
        return framework_init(sub, name, fresh_value.shape, fresh_value.dtype)
      return fresh_value
    layer, rest = _split_layer(name)
    reinit = any((g in LAYER_GROUPS and rest in LAYER_GROUPS[g])
                 or (g in GLOBAL_GROUPS and name == GLOBAL_GROUPS[g]) for g in p.reinit)
    if not reinit or (layer is not None and layer >= 0 and not layer_mask[layer]):
      how[name] = 'kept'
      return _stage1_value(stage1, name)
    if layer is None and not layer_mask.all():  # stacked: [num_layers, ...], some layers
      how[name] = 'mixed'
      select = jnp.asarray(layer_mask).reshape((-1,) + (1,) * (fresh_value.ndim - 1))
      return jnp.where(select, fresh_value, _stage1_value(stage1, name))
    how[name] = 'reinit'
    return fresh_value

  def assemble(fresh, stage1, key):
    return jax.tree_util.tree_map_with_path(lambda path, v: pick(path, v, stage1, key), fresh)

  shardings = jax.tree.map(lambda x: x.sharding, fresh)
  params = jax.jit(assemble, out_shardings=shardings)(fresh, stage1, key)
  return params, how


def report(p: Plan, params, how: dict[str, str], mask, step: int) -> dict:
  """What was kept, re-initialised, re-drawn and frozen, with parameter counts."""
  sizes = {name: int(np.prod(x.shape)) for name, x in _flat(params).items()}
  frozen = {name for name, t in _flat(mask).items() if not t}
  count = lambda names: int(sum(sizes[n] for n in names))
  by = lambda kind: sorted(n for n, k in how.items() if k == kind)
  return dict(
      from_run=source_name(p.from_run), from_step=step, embedding=p.embedding,
      reinit=list(p.reinit), freeze=list(p.freeze), layers=list(p.layers),
      kept=by('kept'), new=by('new'), reinitialised=by('reinit'), mixed=by('mixed'),
      frozen=sorted(frozen),
      counts=dict(total=count(sizes), kept=count(by('kept')), new=count(by('new')),
                  reinitialised=count(by('reinit')), mixed=count(by('mixed')),
                  frozen=count(frozen), trainable=count(set(sizes) - frozen)))


def source_name(run: str) -> str:
  """init.from_run as an absolute path, keeping its 'hf:' prefix."""
  if run.startswith(HF_PREFIX):
    return HF_PREFIX + os.path.abspath(run[len(HF_PREFIX):])
  return os.path.abspath(run)


def summary_line(r: dict) -> str:
  c = r['counts']
  layers = f' over layers [{r["layers"][0]}, {r["layers"][1]})' if (r['reinit'] or r['freeze']) else ''
  source = r['from_run'] if r['from_run'].startswith(HF_PREFIX) else (
      f'{r["from_run"]} step {r["from_step"]}')
  return (f'Stage 2 from {source}: kept {c["kept"]:,} parameters '
          f'({len(r["kept"])} tensors), new embedding and head {c["new"]:,} '
          f'({r["embedding"]}), re-initialised {c["reinitialised"] + c["mixed"]:,} '
          f'({",".join(r["reinit"]) or "none"}{layers if r["reinit"] else ""}), frozen '
          f'{c["frozen"]:,} ({",".join(r["freeze"]) or "none"}{layers if r["freeze"] else ""}); '
          f'{c["trainable"]:,} of {c["total"]:,} train.')


def write_report(workdir: str, r: dict) -> None:
  if jax.process_index() == 0:
    with files.atomic_open(os.path.join(workdir, REPORT_FILE)) as f:
      json.dump(r, f, indent=1)
