"""Grids ⇄ tokens: 2×2-patch ids, delimiters, sequence layout, loss mask (docs/method.md §2).

A frame of G×G cells with S states becomes (G/P)² patch ids in raster order of the
patches; inside a patch the cells are read row-major, least significant first:
id = Σ_j cell_j · S^j, so ids run 0 .. S^(P²)-1. Each frame is wrapped in
start-of-frame (S^(P²)) and end-of-frame (S^(P²)+1) tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ncalm.data.nca import NCAConfig


def patches_per_frame(cfg: NCAConfig) -> int:
  return (cfg.grid // cfg.patch) ** 2


def tokens_per_frame(cfg: NCAConfig) -> int:
  return patches_per_frame(cfg) + 2


def start_of_frame(cfg: NCAConfig) -> int:
  return cfg.num_states ** (cfg.patch * cfg.patch)


def end_of_frame(cfg: NCAConfig) -> int:
  return start_of_frame(cfg) + 1


def vocab_size(cfg: NCAConfig) -> int:
  """Number of distinct token ids: all patch ids plus the two delimiters."""
  return start_of_frame(cfg) + 2


def _place_values(cfg: NCAConfig) -> jnp.ndarray:
  return jnp.asarray(cfg.num_states ** np.arange(cfg.patch * cfg.patch), jnp.int32)


def encode_frames(frames_THW: jnp.ndarray, cfg: NCAConfig) -> jnp.ndarray:
  """...×G×G cell states → ...×(G/P)² patch ids (int32); any leading axes."""
  *lead, g, _ = frames_THW.shape
  n, p = g // cfg.patch, cfg.patch
  x = frames_THW.astype(jnp.int32).reshape(*lead, n, p, n, p)
  x = jnp.swapaxes(x, -3, -2).reshape(*lead, n * n, p * p)
  return x @ _place_values(cfg)


def decode_frames(ids_TN: jnp.ndarray, cfg: NCAConfig) -> jnp.ndarray:
  """...×(G/P)² patch ids → ...×G×G cell states (int32): the inverse of encode."""
  *lead, _ = ids_TN.shape
  n, p = cfg.grid // cfg.patch, cfg.patch
  cells = (ids_TN[..., None] // jax.lax.broadcast_to_rank(_place_values(cfg), ids_TN.ndim + 1)
           ) % cfg.num_states
  cells = cells.reshape(*lead, n, n, p, p)
  return jnp.swapaxes(cells, -3, -2).reshape(*lead, cfg.grid, cfg.grid).astype(jnp.int32)


def frames_to_tokens(frames_THW: jnp.ndarray, cfg: NCAConfig) -> jnp.ndarray:
  """...×T×G×G → ...×T·(patches+2): each frame wrapped in its delimiters."""
  ids = encode_frames(frames_THW, cfg)
  lead = ids.shape[:-1]
  sof = jnp.full((*lead, 1), start_of_frame(cfg), jnp.int32)
  eof = jnp.full((*lead, 1), end_of_frame(cfg), jnp.int32)
  framed = jnp.concatenate([sof, ids, eof], axis=-1)
  return framed.reshape(*lead[:-1], -1)


def tokens_to_frames(tokens_L: jnp.ndarray, cfg: NCAConfig) -> jnp.ndarray:
  """...×T·(patches+2) tokens (whole frames) → ...×T×G×G; delimiters are dropped."""
  *lead, length = tokens_L.shape
  tpf = tokens_per_frame(cfg)
  if length % tpf:
    raise ValueError(f'{length} tokens is not a whole number of {tpf}-token frames.')
  framed = tokens_L.reshape(*lead, length // tpf, tpf)
  return decode_frames(framed[..., 1:-1], cfg)


def strip_delimiters(tokens_L: np.ndarray, cfg: NCAConfig) -> np.ndarray:
  """Patch ids only (the delimiters removed), as the gzip score reads them."""
  *lead, length = tokens_L.shape
  framed = tokens_L.reshape(*lead, length // tokens_per_frame(cfg), tokens_per_frame(cfg))
  return framed[..., 1:-1].reshape(*lead, -1)


def frames_needed(seq_len: int, cfg: NCAConfig) -> int:
  """Frames whose tokens cover seq_len inputs plus one shifted target."""
  return -(-(seq_len + 1) // tokens_per_frame(cfg))


def inputs_and_targets(tokens_L: jnp.ndarray, seq_len: int):
  """Model inputs tokens[:seq_len] and next-token targets tokens[1:seq_len+1]."""
  if tokens_L.shape[-1] < seq_len + 1:
    raise ValueError(f'seq_len={seq_len} needs {seq_len + 1} tokens per sequence, '
                     f'got {tokens_L.shape[-1]}: simulate more frames.')
  return tokens_L[..., :seq_len], tokens_L[..., 1:seq_len + 1]


def loss_mask(seq_len: int, cfg: NCAConfig) -> jnp.ndarray:
  """Weights (float32, seq_len) of the shifted targets: the whole first frame is
  context, not scored (its tokens_per_frame-1 targets); every later target counts."""
  return (jnp.arange(seq_len) >= tokens_per_frame(cfg) - 1).astype(jnp.float32)
