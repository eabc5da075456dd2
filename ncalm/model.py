"""A Llama-style decoder in Flax linen (docs/method.md §4).

RMSNorm, rotary position embeddings, SwiGLU MLP, no biases, dropout on attention
probabilities, untied input embedding and output head, N(0, 0.02) init. Parameters are
float32 and carry *logical* axis names (`embed`, `heads`, `mlp`, `vocab`, `layers`, ...);
`ncalm.sharding` maps them onto the mesh. Compute runs in `dtype` (bfloat16 by
default) and the logits come out in float32. Layers are stacked with `nn.scan` (one
compiled block) under a selectable remat policy.

Linen rather than NNX: its logical-partitioning metadata (`with_logical_partitioning`,
`get_partition_spec`, `logical_to_mesh_sharding`), `nn.scan` over layers and named
remat policies are the proven path in MaxText for sharded, scanned models, and its
parameters are a plain pytree that orbax and optax take as they are.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncalm import attention as attention_lib
from ncalm import errors

# Attention without dropout (evaluation, or model.attn_dropout=0): 'plain' is
# `causal_attention` below; 'dot_product' is jax.nn.dot_product_attention (cuDNN's fused
# kernel on GPU in bf16/fp16, see `dot_product_implementation`; XLA elsewhere); 'splash' is
# the Pallas splash-attention kernel (TPU; run in interpret mode on other backends, for
# tests). Training with dropout is always plain.
ATTENTION_KINDS = ('plain', 'dot_product', 'splash')

REMAT_POLICIES = {
    'none': None,  # no rematerialisation: keep every activation
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 10002
  d_model: int = 2048
  num_layers: int = 24
  num_heads: int = 32
  mlp_dim: int = 8192
  max_len: int = 1024
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  attn_dropout: float = 0.1
  init_std: float = 0.02
  dtype: str = 'bfloat16'      # compute dtype; params stay float32
  remat: str = 'none'          # one of REMAT_POLICIES
  scan_layers: bool = True
  scan_unroll: int = 1         # layers per scan iteration (num_layers = fully unrolled)
  attention: str = 'plain'     # where no dropout applies: one of ATTENTION_KINDS
  attention_blocks: int = 1    # causal query blocks of the plain attention (skip masked work)

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise errors.UserError(f'model.d_model={self.d_model} is not divisible by '
                             f'model.num_heads={self.num_heads}.')
    if (self.d_model // self.num_heads) % 2:
      raise errors.UserError('model.d_model / model.num_heads must be even for RoPE.')
    if not 1 <= self.scan_unroll <= self.num_layers:
      raise errors.UserError(f'model.scan_unroll={self.scan_unroll} must be in [1, '
                             f'model.num_layers={self.num_layers}] (0 in a config = auto).')
    if self.attention_blocks < 1 or self.max_len % self.attention_blocks:
      raise errors.UserError(f'model.attention_blocks={self.attention_blocks} must be >= 1 and '
                             f'divide seq_len={self.max_len} (0 in a config = auto).')
    if self.attention not in ATTENTION_KINDS:
      raise errors.UserError(f'attention={self.attention!r}: use one of {ATTENTION_KINDS}.')
    if self.attention == 'splash' and self.max_len % 128:
      raise errors.UserError(f'Splash attention needs seq_len divisible by 128, not '
                             f'{self.max_len}: set model.attention=plain or change seq_len.')
    if self.remat not in REMAT_POLICIES:
      raise errors.UserError(f'model.remat={self.remat!r}: use one of {list(REMAT_POLICIES)}.')

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _param(module: nn.Module, name: str, shape, axes, std: float):
  init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
  return module.param(name, init, shape, jnp.float32)


class RMSNorm(nn.Module):
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, ('norm',)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * jax.lax.broadcast_to_rank(scale, x.ndim)).astype(x.dtype)


def matmul(x: jax.Array, w: jax.Array, contract: int = 1, out_dtype=None) -> jax.Array:
  """x [..., *w.shape[:contract]] · w → [..., *w.shape[contract:]] as one 2-D matrix product.

  The leading axes of x (batch, length) and the contracted axes of w are merged first:
  XLA:CPU runs a 3-D einsum such as 'ble,ev->blv', and above all its gradients, 1.4–2×
  slower than the same product on 2-D operands (docs/benchmarks.md); on GPU/TPU the
  merge is free.
  """
  inner = math.prod(w.shape[:contract])
  lead, outer = x.shape[:x.ndim - contract], w.shape[contract:]
  out = jnp.matmul(x.reshape(-1, inner), w.reshape(inner, -1), preferred_element_type=out_dtype)
  return out.reshape(*lead, *outer)


def rotary(x_BLHD: jax.Array, theta: float, positions_BL: jax.Array | None = None) -> jax.Array:
  """Rotary position embedding (rotate-half form) over the last axis, at `positions_BL`
  (int32 [B, L]; default 0 .. L-1 for every row)."""
  length, dim = x_BLHD.shape[1], x_BLHD.shape[-1]
  freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  if positions_BL is None:
    angle = jnp.arange(length, dtype=jnp.float32)[:, None] * freq[None, :]   # L, D/2
    sin = jnp.sin(angle)[None, :, None, :]
    cos = jnp.cos(angle)[None, :, None, :]
  else:
    angle = positions_BL.astype(jnp.float32)[:, :, None] * freq[None, None, :]   # B, L, D/2
    sin = jnp.sin(angle)[:, :, None, :]
    cos = jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHD.dtype)


class Attention(nn.Module):
  """Self-attention; with `cache` the new keys and values are written at slot
  `cache_index` and the queries attend to the cache: the output is then (x, updated cache).
  The cache is this layer's {'key', 'value'} [B, H, S, D]: heads before slots, the layout
  in which both attention products read it without a transpose."""
  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLE, segment_ids_BL=None, positions_BL=None, key_positions_BS=None,
               cache_index=None, cache=None):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    shape, axes = (cfg.d_model, cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'head_dim')
    project = lambda name: matmul(x_BLE, _param(self, name, shape, axes, cfg.init_std).astype(dt))
    rope_positions = None if positions_BL is None else jnp.maximum(positions_BL, 0)
    q = rotary(project('query'), cfg.rope_theta, rope_positions)
    k = rotary(project('key'), cfg.rope_theta, rope_positions)
    v = project('value')
    q = nn.with_logical_constraint(q, ('act_batch', 'act_len', 'act_heads', None))
    dropout = not self.deterministic and cfg.attn_dropout > 0
    if cache is not None:
      write = lambda old, new_BTHD: nn.with_logical_constraint(
          jax.lax.dynamic_update_slice_in_dim(old, jnp.swapaxes(new_BTHD, 1, 2).astype(old.dtype),
                                              cache_index, axis=2), CACHE_AXES[1:])
      cache = {'key': write(cache['key'], k), 'value': write(cache['value'], v)}
      out = attention_lib.cached_attention(q, cache['key'].astype(dt),
                                           cache['value'].astype(dt), positions_BL,
                                           key_positions_BS, dt)
    elif cfg.attention == 'dot_product' and not dropout:
      mask = None if segment_ids_BL is None else (
          segment_ids_BL[:, None, :, None] == segment_ids_BL[:, None, None, :])
      kernel = attention_lib.dot_product_implementation(q, mask)
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                         implementation=kernel)
    elif cfg.attention == 'splash' and not dropout:
      out = attention_lib.splash_attention(q, k, v, segment_ids_BL)
    else:
      seed = jax.random.bits(self.make_rng('dropout'), (), jnp.uint32) if dropout else None
      blocks = cfg.attention_blocks if x_BLE.shape[1] % cfg.attention_blocks == 0 else 1
      out = attention_lib.causal_attention(q, k, v, seed, cfg.attn_dropout, blocks, dt,
                                           segment_ids_BL)
    w_out = _param(self, 'out', (cfg.num_heads, cfg.head_dim, cfg.d_model),
                   ('heads', 'head_dim', 'embed'), cfg.init_std)
    out = matmul(out, w_out.astype(dt), contract=2)
    return out if cache is None else (out, cache)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLE):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    w = lambda name, shape, axes: _param(self, name, shape, axes, cfg.init_std).astype(dt)
    gate = matmul(x_BLE, w('gate', (cfg.d_model, cfg.mlp_dim), ('embed', 'mlp')))
    up = matmul(x_BLE, w('up', (cfg.d_model, cfg.mlp_dim), ('embed', 'mlp')))
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ('act_batch', 'act_len', 'act_mlp'))
    return matmul(hidden, w('down', (cfg.mlp_dim, cfg.d_model), ('mlp', 'embed')))


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); returns (x, this
  layer's updated KV cache or None) so that `nn.scan` stacks the caches."""
  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLE, segment_ids_BL=None, positions_BL=None, key_positions_BS=None,
               cache_index=None, cache=None):
    attended = Attention(self.cfg, self.deterministic, name='attn')(
        RMSNorm(self.cfg.norm_eps, name='attn_norm')(x_BLE), segment_ids_BL, positions_BL,
        key_positions_BS, cache_index, cache)
    if cache is not None:
      attended, cache = attended
    x = x_BLE + attended
    x = x + Mlp(self.cfg, name='mlp')(RMSNorm(self.cfg.norm_eps, name='mlp_norm')(x))
    x = nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))
    return x, cache


# Logical axes of the KV cache's 'key' and 'value' [layers, B, H, S, D] (one array per
# layer without the first axis for unrolled layers): sharded like the activations (rows
# over the data-parallel axes, heads over tensor parallelism).
CACHE_AXES = ('layers', 'act_batch', 'act_heads', None, None)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> dict[str, jax.Array]:
  """An empty KV cache of `length` slots: {'key', 'value'} in the compute dtype — stacked
  [layers, B, H, S, D] for scanned layers (`nn.scan` scans it), a tuple of one [B, H, S, D]
  per layer for unrolled ones (each written in place: no slicing or stacking per token,
  the faster layout for decoding) — and 'position' int32 [B, S], -1 where a slot is empty."""
  shape = (batch, cfg.num_heads, length, cfg.head_dim)
  dtype = dtype or cfg.compute_dtype
  def zeros():   # new buffers for keys and values (a cache is donated from call to call)
    if cfg.scan_layers:
      return jnp.zeros((cfg.num_layers, *shape), dtype)
    return tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
  return {'key': zeros(), 'value': zeros(), 'position': jnp.full((batch, length), -1, jnp.int32)}


class Transformer(nn.Module):
  """tokens int32 [B, L] → logits float32 [B, L, vocab].

  With `logits_at` (int32 [B]) only those positions' logits are computed: [B, vocab].
  With `segment_ids_BL` (int32 [B, L]) attention stays inside each segment (document).

  Decoding: with `cache` (`init_cache`), `positions_BL` (each token's position in its own
  row, -1 for left padding) and `cache_index` (the slot of tokens[:, 0]), the tokens'
  keys and values are written into the cache and the call returns (logits, cache). The
  cache is an explicit pytree passed in and out, not Flax's 'cache' collection: the
  caller jits, shards and donates it like any other array, and `nn.scan` scans it over
  layers as an ordinary input and output.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, deterministic: bool = True, logits_at=None,
               segment_ids_BL=None, positions_BL=None, cache=None, cache_index=None):
    cfg = self.cfg
    embedding = _param(self, 'embedding', (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'),
                       cfg.init_std)
    x = jnp.take(embedding, tokens_BL, axis=0).astype(cfg.compute_dtype)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))
    key_positions = layers_cache = None
    if cache is not None:
      key_positions = jax.lax.dynamic_update_slice_in_dim(cache['position'], positions_BL,
                                                          cache_index, axis=1)
      layers_cache = {'key': cache['key'], 'value': cache['value']}
    args = (segment_ids_BL, positions_BL, key_positions, cache_index)
    block = Block
    if cfg.remat != 'none':
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                      'dropout': True},
                      in_axes=(nn.broadcast,) * len(args) + (0,), length=cfg.num_layers,
                      unroll=cfg.scan_unroll, metadata_params={nn.PARTITION_NAME: 'layers'})
      x, layers_cache = stack(cfg, deterministic, name='layers')(x, *args, layers_cache)
    else:
      layers = [None] * cfg.num_layers
      if cache is not None:   # one buffer per layer, each updated in place
        layers = [{'key': k, 'value': v} for k, v in zip(cache['key'], cache['value'])]
      for i in range(cfg.num_layers):
        x, layers[i] = block(cfg, deterministic, name=f'layers_{i}')(x, *args, layers[i])
      if cache is not None:
        layers_cache = {name: tuple(layer[name] for layer in layers) for name in layers[0]}
    x = RMSNorm(cfg.norm_eps, name='final_norm')(x)
    head = _param(self, 'head', (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'), cfg.init_std)
    if logits_at is not None:
      x_BE = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)[:, 0]
      logits = matmul(x_BE, head.astype(cfg.compute_dtype), out_dtype=jnp.float32)
    else:
      logits = matmul(x, head.astype(cfg.compute_dtype), out_dtype=jnp.float32)
      logits = nn.with_logical_constraint(logits, ('act_batch', 'act_len', 'act_vocab'))
    if cache is None:
      return logits
    return logits, dict(layers_cache, position=key_positions)


def count_params(cfg: ModelConfig) -> dict[str, int]:
  """Parameter counts: total, input embedding, and the rest (blocks, norms, head)."""
  e, m, layers = cfg.d_model, cfg.mlp_dim, cfg.num_layers
  per_block = 4 * e * e + 3 * e * m + 2 * e
  embedding = cfg.vocab_size * e
  blocks = layers * per_block
  head = e * cfg.vocab_size
  return dict(total=embedding + blocks + e + head, embedding=embedding, blocks=blocks,
              head=head, non_embedding=blocks + e + head)


