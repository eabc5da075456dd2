"""ncalm's Transformer as Hugging Face's `LlamaForCausalLM`: tensor names, layouts, config.

ncalm and Llama compute the same function (docs/method.md §4): pre-norm RMSNorm blocks,
rotary embeddings in rotate-half form, SwiGLU, no biases, untied embedding and head. Only
the layouts differ. Per layer i, with E = d_model, H heads of size D, M = mlp_dim:

  ncalm (per-layer name)        shape        Hugging Face tensor                          shape
  layers_i/attn/query           [E, H, D]    model.layers.i.self_attn.q_proj.weight       [H·D, E]
  layers_i/attn/key, value      [E, H, D]    ... k_proj.weight, v_proj.weight             [H·D, E]
  layers_i/attn/out             [H, D, E]    ... o_proj.weight                            [E, H·D]
  layers_i/mlp/gate, up         [E, M]       model.layers.i.mlp.gate_proj/up_proj.weight  [M, E]
  layers_i/mlp/down             [M, E]       model.layers.i.mlp.down_proj.weight          [E, M]
  layers_i/attn_norm/scale      [E]          model.layers.i.input_layernorm.weight        [E]
  layers_i/mlp_norm/scale       [E]          model.layers.i.post_attention_layernorm.weight
  final_norm/scale              [E]          model.norm.weight
  embedding                     [V, E]       model.embed_tokens.weight                    [V, E]
  head                          [E, V]       lm_head.weight                               [V, E]

Every conversion is a reshape and a transpose: exact in both directions. Safetensors files
are read by ncalm/safetensors_io.py rather than through the `safetensors` package, whose
NumPy reader has no bfloat16, the dtype most published Llama checkpoints use.

A checkpoint is checked before it is used; each problem is one paragraph naming the file
and, where there is one, the tensor:
  * a safetensors file that is not whole (truncated; a header that does not parse or does
    not fit the file), a config.json or index that is not JSON, a shard the index names
    that is missing: `errors.UserError` (exit 2), found from the headers at start-up;
  * a tensor whose bytes differ from the SHA-256 that `write_safetensors` (so
    `python -m ncalm.export_hf`) puts in the header's `__metadata__` as `ncalm.sha256.NAME`:
    `errors.CheckpointError` (exit 4). Files written elsewhere carry none; they are read
    unchecked, but for
  * a tensor that holds NaN or Inf, which would train as a dead model: `errors.UserError`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import numpy as np

from ncalm import errors
from ncalm import model as model_lib
from ncalm import safetensors_io

CONFIG_FILE = 'config.json'

_LAYER = 'model.layers.{}.'
# per-layer ncalm name → (Hugging Face name after 'model.layers.i.', kind of conversion)
LAYER_TENSORS = {
    'attn/query': ('self_attn.q_proj.weight', 'in_heads'),
    'attn/key': ('self_attn.k_proj.weight', 'in_heads'),
    'attn/value': ('self_attn.v_proj.weight', 'in_heads'),
    'attn/out': ('self_attn.o_proj.weight', 'out_heads'),
    'mlp/gate': ('mlp.gate_proj.weight', 'transpose'),
    'mlp/up': ('mlp.up_proj.weight', 'transpose'),
    'mlp/down': ('mlp.down_proj.weight', 'transpose'),
    'attn_norm/scale': ('input_layernorm.weight', 'same'),
    'mlp_norm/scale': ('post_attention_layernorm.weight', 'same'),
}
GLOBAL_TENSORS = {
    'final_norm/scale': ('model.norm.weight', 'same'),
    'embedding': ('model.embed_tokens.weight', 'same'),
    'head': ('lm_head.weight', 'transpose'),
}


def hf_name(name: str) -> str:
  """The Hugging Face tensor of an ncalm per-layer parameter name."""
  if name in GLOBAL_TENSORS:
    return GLOBAL_TENSORS[name][0]
  layer, rest = name.split('/', 1)
  return _LAYER.format(int(layer[len('layers_'):])) + LAYER_TENSORS[rest][0]


def _kind(name: str) -> str:
  if name in GLOBAL_TENSORS:
    return GLOBAL_TENSORS[name][1]
  return LAYER_TENSORS[name.split('/', 1)[1]][1]


def to_hf(name: str, x: np.ndarray) -> np.ndarray:
  """ncalm layout → Hugging Face layout (a new contiguous array)."""
  kind = _kind(name)
  if kind == 'in_heads':             # [E, H, D] → [H·D, E]
    x = x.reshape(x.shape[0], -1).T
  elif kind == 'out_heads':          # [H, D, E] → [E, H·D]
    x = x.reshape(-1, x.shape[-1]).T
  elif kind == 'transpose':
    x = x.T
  return np.ascontiguousarray(x)


def from_hf(name: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Hugging Face layout → ncalm layout of `shape` (the inverse of `to_hf`)."""
  kind = _kind(name)
  if kind in ('in_heads', 'out_heads'):
    x = x.T.reshape(shape)
  elif kind == 'transpose':
    x = x.T
  return np.ascontiguousarray(x)


def hf_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The Hugging Face shape of an ncalm parameter of `shape`."""
  kind = _kind(name)
  if kind == 'in_heads':
    return (shape[1] * shape[2], shape[0])
  if kind == 'out_heads':
    return (shape[2], shape[0] * shape[1])
  if kind == 'transpose':
    return tuple(reversed(shape))
  return tuple(shape)


# ------------------------------------------------------------------------ config


def model_fields(model: dict) -> dict:
  """A config's model section with ModelConfig's defaults for the fields it leaves out
  (rope_theta, norm_eps, ...)."""
  defaults = {f.name: f.default for f in dataclasses.fields(model_lib.ModelConfig)}
  return {**defaults, **model}


def llama_config(model: dict, vocab_size: int, eot_id: int | None = None) -> dict:
  """config.json of `LlamaForCausalLM` for an ncalm model section (a dict of the config's
  `model` fields, plus max_len)."""
  model = model_fields(model)
  heads = model['num_heads']
  return {
      'architectures': ['LlamaForCausalLM'],
      'model_type': 'llama',
      'vocab_size': vocab_size,
      'hidden_size': model['d_model'],
      'intermediate_size': model['mlp_dim'],
      'num_hidden_layers': model['num_layers'],
      'num_attention_heads': heads,
      'num_key_value_heads': heads,          # ncalm has no grouped-query attention
      'head_dim': model['d_model'] // heads,
      'hidden_act': 'silu',
      'max_position_embeddings': model['max_len'],
      'rms_norm_eps': model['norm_eps'],
      'rope_theta': model['rope_theta'],     # transformers 4.x; 5.x reads rope_parameters
      'rope_parameters': {'rope_type': 'default', 'rope_theta': model['rope_theta']},
      'rope_scaling': None,
      'attention_bias': False,
      'mlp_bias': False,
      'attention_dropout': 0.0,
      'tie_word_embeddings': False,
      'initializer_range': model.get('init_std', 0.02),
      'bos_token_id': eot_id,
      'eos_token_id': eot_id,
      'pad_token_id': None,
      'torch_dtype': 'float32',
      'use_cache': True,
  }


def check_config(source: str, hf: dict, model: dict) -> None:
  """Refuses a Hugging Face config that ncalm's model cannot compute as written."""
  model = model_fields(model)
  def refuse(what: str, fix: str):
    raise errors.UserError(f'init.from_run={source!r}: {what}; {fix}.')

  if hf.get('model_type') not in ('llama', None):
    refuse(f'model_type is {hf.get("model_type")!r}', 'only Llama checkpoints load into ncalm')
  heads = hf.get('num_attention_heads')
  if heads != model['num_heads']:
    refuse(f'num_attention_heads={heads} there but model.num_heads={model["num_heads"]}',
           f'set model.num_heads={heads}')
  kv = hf.get('num_key_value_heads', heads)
  if kv != heads:
    refuse(f'num_key_value_heads={kv} (grouped-query attention)',
           'ncalm has one key/value head per query head, so it cannot load this model')
  for field, want in (('hidden_act', 'silu'), ('attention_bias', False), ('mlp_bias', False)):
    if hf.get(field, want) != want:
      refuse(f'{field}={hf.get(field)!r}', f'ncalm computes {field}={want!r} only')
  rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}
  if rope.get('rope_type', rope.get('type', 'default')) != 'default':
    refuse(f'rope scaling {rope}', 'ncalm computes plain rotary embeddings only')
  theta = rope.get('rope_theta', hf.get('rope_theta', 10_000.0))
  if float(theta) != float(model['rope_theta']):
    refuse(f'rope_theta={theta} there but model.rope_theta={model["rope_theta"]}',
           f'set model.rope_theta={theta}')
  eps = hf.get('rms_norm_eps', 1e-6)
  if float(eps) != float(model['norm_eps']):
    refuse(f'rms_norm_eps={eps} there but model.norm_eps={model["norm_eps"]}',
           f'set model.norm_eps={eps}')


# --------------------------------------------------------------------- reading


@contextlib.contextmanager
def _about(source: str):
  """Names `init.from_run` in the file-level errors raised inside (once)."""
  try:
    yield
  except errors.UserError as e:
    if str(e).startswith('init.from_run='):
      raise
    raise type(e)(f'init.from_run={source!r}: {e}') from None


def match_llama(source: str, want: dict[str, tuple[int, ...]], model: dict):
  """(tensor files, {ncalm name: Hugging Face tensor}, tied) for the names in `want` (their
  ncalm shapes) in the checkpoint `hf:DIR`, from its config and file headers alone; refuses
  a config or a tensor that does not match, naming the tensor and both shapes."""
  model = model_fields(model)
  directory = source[len('hf:'):]
  if not os.path.isdir(directory):
    raise errors.UserError(f'init.from_run={source!r}: {directory!r} is not a directory; name a '
                           'Hugging Face checkpoint directory after "hf:".')
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise errors.UserError(f'init.from_run={source!r} has no {CONFIG_FILE}: name a Hugging '
                           'Face checkpoint directory.')
  with _about(source):
    hf_config = safetensors_io.read_json(config_path, safetensors_io.RECOPY)
    check_config(source, hf_config, model)
    files = safetensors_io.tensor_files(directory)
    got = safetensors_io.shapes(files)
  layers = hf_config.get('num_hidden_layers')
  if layers != model['num_layers']:
    raise errors.UserError(
        f'init.from_run={source!r} has {layers} layers but model.num_layers='
        f'{model["num_layers"]}: set model.num_layers={layers}.')
  tied = hf_config.get('tie_word_embeddings', False) and 'lm_head.weight' not in got
  tensor_of = {}
  for name, shape in sorted(want.items()):
    tensor = 'model.embed_tokens.weight' if (name == 'head' and tied) else hf_name(name)
    expected = tuple(reversed(shape)) if (name == 'head' and tied) else hf_shape(name, shape)
    if tensor not in got:
      raise errors.UserError(f'init.from_run={source!r} has no tensor {tensor!r} (for ncalm\'s '
                             f'{name}): it is not a Llama checkpoint of this layout.')
    if got[tensor] != expected:
      raise errors.UserError(
          f'init.from_run={source!r}: tensor {tensor!r} has shape {got[tensor]} there but this '
          f'config needs {expected}; set the model section (d_model, mlp_dim; model.vocab_size '
          'for the embedding and head) to the checkpoint\'s, or, for the embedding and head, '
          'keep init.embedding="normal" to draw them anew.')
    tensor_of[name] = tensor
  return files, tensor_of, tied


def read_llama(source: str, want: dict[str, tuple[int, ...]], model: dict) -> dict[str, np.ndarray]:
  """{ncalm per-layer name: float32 array} for the names in `want` (`match_llama` checks)."""
  files, tensor_of, tied = match_llama(source, want, model)
  out = {}
  for path in sorted(set(files[t] for t in tensor_of.values())):
    names = [t for t in set(tensor_of.values()) if files[t] == path]
    with _about(source):
      arrays = safetensors_io.read_safetensors(path, names)
    for name, tensor in tensor_of.items():
      if tensor in arrays:
        x = arrays[tensor].astype(np.float32)
        tied_head = name == 'head' and tied   # the embedding [V, E] read as the head [E, V]
        out[name] = np.ascontiguousarray(x.T) if tied_head else from_hf(name, x, want[name])
  return out


def export_tensors(params: dict[str, Any]) -> dict[str, np.ndarray]:
  """{Hugging Face name: float32 array} of ncalm params given by per-layer names."""
  return {hf_name(name): to_hf(name, np.asarray(x, np.float32)) for name, x in params.items()}
