"""Attention kernels of `ncalm.model`: causal softmax attention with counter-hash dropout,
attention over a KV cache (decoding), and the choice of jax's fused kernels on GPU and the
Pallas splash kernel on TPU.

Shapes: q, k, v are [batch, length, heads, head_dim] (BLHD); scores are [B, H, Q, K].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncalm import hashing


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


def cached_attention(q_BTHD, k_BHSD, v_BHSD, positions_BT, key_positions_BS, dtype):
  """softmax(q·k/√d)·v of new queries against a KV cache [B, H, S, D]: a query at position
  p sees the slots holding positions 0 .. p of its own row (empty and padding slots hold
  -1). Returns [B, T, H, D]."""
  q_BHTD = jnp.swapaxes(q_BTHD, 1, 2)
  scores = jnp.einsum('bhqd,bhkd->bhqk', q_BHTD, k_BHSD).astype(jnp.float32)
  scores = scores / jnp.sqrt(q_BTHD.shape[-1])
  keys, queries = key_positions_BS[:, None, None, :], positions_BT[:, None, :, None]
  visible = (keys >= 0) & (keys <= queries)
  probs = jax.nn.softmax(jnp.where(visible, scores, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.swapaxes(jnp.einsum('bhqk,bhkd->bhqd', probs.astype(dtype), v_BHSD), 1, 2)


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
