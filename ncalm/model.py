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

from ncalm import errors
from ncalm import hashing

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


def rotary(x_BLHD: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (rotate-half form) over the last axis."""
  length, dim = x_BLHD.shape[1], x_BLHD.shape[-1]
  freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle = jnp.arange(length, dtype=jnp.float32)[:, None] * freq[None, :]   # L, D/2
  sin = jnp.sin(angle)[None, :, None, :]
  cos = jnp.cos(angle)[None, :, None, :]
  x1, x2 = jnp.split(x_BLHD.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BLHD.dtype)


def dropout_keep(seed: jax.Array, shape_BHQK: tuple[int, ...], rate: float,
                 query_offset: int = 0, key_stride: int | None = None) -> jax.Array:
  """bool [B, H, Q, K]: which attention probabilities survive dropout at `rate`.

  A counter-based hash of (seed, batch row, head, query, key position): each element
  is a pure function of its global position, so the mask is the same however the batch
  is sharded or the queries are blocked (`query_offset`, and `key_stride` = the full
  key length, place a block), and XLA fuses it into the softmax instead of drawing 32
  bits per element from threefry. `seed` is a uint32 scalar, new per layer, micro-batch
  and step.
  """
  _, heads, _, keys = shape_BHQK
  stride = key_stride or keys
  iota = lambda axis: jax.lax.broadcasted_iota(jnp.uint32, shape_BHQK, axis)
  row_head = hashing.mix32(seed ^ hashing.mix32(
      iota(0) * jnp.uint32(heads) + iota(1) + jnp.uint32(0x9E3779B9)))
  position = (iota(2) + jnp.uint32(query_offset)) * jnp.uint32(stride) + iota(3)
  bits = hashing.mix32(row_head ^ position)
  return bits >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))


def causal_attention(q_BLHD, k_BLHD, v_BLHD, dropout_seed, rate: float, blocks: int, dtype,
                     segment_ids_BL=None):
  """softmax(q·k/√d, causal) · v, with attention-probability dropout if `dropout_seed`.

  With `segment_ids_BL` a query attends only to keys of its own segment (document).

  With `blocks` > 1 the queries are cut into that many blocks and block i attends only to
  the keys it can see (0 .. its last query), which skips most of the masked upper
  triangle: ~(blocks+1)/(2·blocks) of the score work. The result, dropout bits included,
  is the same for any number of blocks.
  """
  length, head_dim = q_BLHD.shape[1], q_BLHD.shape[-1]
  size = length // blocks
  outs = []
  for i in range(blocks):
    end = (i + 1) * size
    q = q_BLHD[:, i * size:end]
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k_BLHD[:, :end]).astype(jnp.float32)
    scores = scores / jnp.sqrt(head_dim)
    causal = (jnp.arange(i * size, end)[:, None] >= jnp.arange(end)[None, :])[None, None]
    if segment_ids_BL is not None:
      same = segment_ids_BL[:, i * size:end, None] == segment_ids_BL[:, None, :end]
      causal = causal & same[:, None]     # [B, 1, Q, K]
    probs = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(jnp.float32).min), axis=-1)
    if dropout_seed is not None:
      keep = dropout_keep(dropout_seed, probs.shape, rate, query_offset=i * size,
                          key_stride=length)
      probs = jnp.where(keep, probs / (1.0 - rate), 0.0)
    outs.append(jnp.einsum('bhqk,bkhd->bqhd', probs.astype(dtype), v_BLHD[:, :end]))
  return outs[0] if blocks == 1 else jnp.concatenate(outs, axis=1)


def _platform() -> str:
  """The platform the current computation is placed on: the mesh's devices, else the
  default backend ('cpu', 'gpu', 'tpu')."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def dot_product_implementation(q_BLHD: jax.Array, mask) -> str | None:
  """`implementation` for jax.nn.dot_product_attention: 'cudnn' (the fused flash kernel) on
  a GPU for bf16/fp16 inputs without a document mask, else None (XLA's composition).

  None never picks cuDNN by itself (jax's default is XLA), so it is asked for by name;
  cuDNN takes only half-precision inputs and head dims up to 128, multiples of 8.
  """
  head_dim = q_BLHD.shape[-1]
  if (_platform() in ('gpu', 'cuda') and mask is None
      and q_BLHD.dtype in (jnp.bfloat16, jnp.float16) and head_dim <= 128 and head_dim % 8 == 0):
    return 'cudnn'
  return None


def _splash_kernel(heads: int, length: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
  block = min(512, length)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  mask = splash.MultiHeadMask([splash.CausalMask((length, length))] * heads)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                interpret=interpret)


def splash_attention(q_BLHD, k_BLHD, v_BLHD, segment_ids_BL=None):
  """Causal softmax(q·k/√d)·v by the Pallas splash kernel, one call per device's shard.

  The kernel sees one sequence [heads, length, head_dim]: it is vmapped over the batch
  and, under a mesh, run inside shard_map over the batch and head shardings of the
  activations (it cannot be partitioned by the compiler). Off TPU it runs interpreted.
  """
  head_dim = q_BLHD.shape[-1]
  mesh = jax.sharding.get_abstract_mesh()
  interpret = _platform() != 'tpu'

  def local(q, k, v, segments):
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # pylint: disable=g-import-not-at-top
    kernel = _splash_kernel(q.shape[2], q.shape[1], interpret)
    to_bhld = lambda x: jnp.swapaxes(x, 1, 2)
    one = lambda q, k, v, s: kernel(q, k, v, segment_ids=None if s is None else
                                    splash.SegmentIds(q=s, kv=s))
    out = jax.vmap(one)(to_bhld(q / jnp.sqrt(head_dim).astype(q.dtype)), to_bhld(k),
                        to_bhld(v), segments)
    return to_bhld(out)

  if mesh.empty:
    return local(q_BLHD, k_BLHD, v_BLHD, segment_ids_BL)
  spec = nn.logical_to_mesh_axes(('act_batch', 'act_len', 'act_heads', None))
  segment_spec = None if segment_ids_BL is None else jax.sharding.PartitionSpec(spec[0], None)
  return jax.shard_map(local, in_specs=(spec, spec, spec, segment_spec), out_specs=spec,
                       check_vma=False)(q_BLHD, k_BLHD, v_BLHD, segment_ids_BL)


class Attention(nn.Module):
  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLE, segment_ids_BL=None):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    shape, axes = (cfg.d_model, cfg.num_heads, cfg.head_dim), ('embed', 'heads', 'head_dim')
    project = lambda name: matmul(x_BLE, _param(self, name, shape, axes, cfg.init_std).astype(dt))
    q = rotary(project('query'), cfg.rope_theta)
    k = rotary(project('key'), cfg.rope_theta)
    v = project('value')
    q = nn.with_logical_constraint(q, ('act_batch', 'act_len', 'act_heads', None))
    dropout = not self.deterministic and cfg.attn_dropout > 0
    if cfg.attention == 'dot_product' and not dropout:
      mask = None if segment_ids_BL is None else (
          segment_ids_BL[:, None, :, None] == segment_ids_BL[:, None, None, :])
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                         implementation=dot_product_implementation(q, mask))
    elif cfg.attention == 'splash' and not dropout:
      out = splash_attention(q, k, v, segment_ids_BL)
    else:
      seed = jax.random.bits(self.make_rng('dropout'), (), jnp.uint32) if dropout else None
      blocks = cfg.attention_blocks if x_BLE.shape[1] % cfg.attention_blocks == 0 else 1
      out = causal_attention(q, k, v, seed, cfg.attn_dropout, blocks, dt, segment_ids_BL)
    w_out = _param(self, 'out', (cfg.num_heads, cfg.head_dim, cfg.d_model),
                   ('heads', 'head_dim', 'embed'), cfg.init_std)
    return matmul(out, w_out.astype(dt), contract=2)


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
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLE, segment_ids_BL=None):
    x = x_BLE + Attention(self.cfg, self.deterministic, name='attn')(
        RMSNorm(self.cfg.norm_eps, name='attn_norm')(x_BLE), segment_ids_BL)
    x = x + Mlp(self.cfg, name='mlp')(RMSNorm(self.cfg.norm_eps, name='mlp_norm')(x))
    x = nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))
    return x, None


class Transformer(nn.Module):
  """tokens int32 [B, L] → logits float32 [B, L, vocab].

  With `logits_at` (int32 [B]) only those positions' logits are computed: [B, vocab].
  With `segment_ids_BL` (int32 [B, L]) attention stays inside each segment (document).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL, deterministic: bool = True, logits_at=None,
               segment_ids_BL=None):
    cfg = self.cfg
    embedding = _param(self, 'embedding', (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'),
                       cfg.init_std)
    x = jnp.take(embedding, tokens_BL, axis=0).astype(cfg.compute_dtype)
    x = nn.with_logical_constraint(x, ('act_batch', 'act_len', 'act_embed'))
    block = Block
    if cfg.remat != 'none':
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                      'dropout': True},
                      in_axes=nn.broadcast, length=cfg.num_layers, unroll=cfg.scan_unroll,
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x, _ = stack(cfg, deterministic, name='layers')(x, segment_ids_BL)
    else:
      for i in range(cfg.num_layers):
        x, _ = block(cfg, deterministic, name=f'layers_{i}')(x, segment_ids_BL)
    x = RMSNorm(cfg.norm_eps, name='final_norm')(x)
    head = _param(self, 'head', (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'), cfg.init_std)
    if logits_at is not None:
      x_BE = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)[:, 0]
      return matmul(x_BE, head.astype(cfg.compute_dtype), out_dtype=jnp.float32)
    logits = matmul(x, head.astype(cfg.compute_dtype), out_dtype=jnp.float32)
    return nn.with_logical_constraint(logits, ('act_batch', 'act_len', 'act_vocab'))


def count_params(cfg: ModelConfig) -> dict[str, int]:
  """Parameter counts: total, input embedding, and the rest (blocks, norms, head)."""
  e, m, layers = cfg.d_model, cfg.mlp_dim, cfg.num_layers
  per_block = 4 * e * e + 3 * e * m + 2 * e
  embedding = cfg.vocab_size * e
  blocks = layers * per_block
  head = e * cfg.vocab_size
  return dict(total=embedding + blocks + e + head, embedding=embedding, blocks=blocks,
              head=head, non_embedding=blocks + e + head)


