"""What a config's `init` section means, checked: where the parameters start (scratch,
a stage-1 run or `hf:DIR`), which module groups are re-initialised or frozen over which
layers, what is kept of stage 1 (its weights or their statistics), and how the kept
parameters are trained (a warm phase, a learning-rate scale). `parse(cfg)` gives the
`InitSpec` every other part reads (`ncalm.transfer` builds the first state from it; the
step's optimizer takes its masks and learning-rate groups).

  attention   attn/{query,key,value,out}   per layer
  mlp         mlp/{gate,up,down}           per layer
  norms       attn_norm, mlp_norm          per layer
  final_norm, embedding, head              (no layer; freeze only, or re-drawn)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ncalm import errors
from ncalm import param_names

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
HF_PREFIX = 'hf:'   # init.from_run='hf:DIR': a Hugging Face Llama checkpoint (ncalm/hf_llama.py)


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


def parse(cfg: ml_collections.ConfigDict) -> InitSpec:
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
