"""Writing with a model: one prefill of the prompts, then one token per step from a KV cache.

The pieces are pure functions to be jitted by their caller (`ncalm.sampler` for commands
and evaluators, the NCA probe inside its own jit):

* `prefill` runs left-padded prompts [B, P] through the model once, filling the first P
  slots of a cache (`model.init_cache`) and giving each row's next-token logits. Left
  padding puts every row's last prompt token in slot P-1, so all rows then write the same
  slot at each step; each token carries its own row's position (padding -1, never seen).
* `decode` extends rows one token per step inside `lax.while_loop` until a bound or until
  every row is done: a row stops on its own at a stop id or its own token limit.
* `grow` gives the cache more empty slots (the sampler grows it a segment at a time).
* `choose_rows` picks each row's token from logits: greedy at temperature 0, else a draw
  after the allowed-ids mask, temperature, top-k and top-p (in that order, as in Hugging
  Face's `generate`). Each row draws with its own key, fold_in(row key, token index), and a
  row key is a function of (seed, prompt index, sample index) only (`row_keys`): a sample
  does not depend on the batch it was decoded in, nor on how the batch is sharded.
* `decoding_config` and `unstacked`: the model and parameters to decode with (unrolled
  layers, each with its own cache buffer).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from ncalm import model as model_lib

NO_TOKEN = -1   # written after a row is done


def decoding_config(cfg: model_lib.ModelConfig) -> model_lib.ModelConfig:
  """The model config to decode with: no rematerialisation (nothing is differentiated),
  attention over the cache, and unrolled layers — each layer's cache is then its own buffer,
  written in place, where `nn.scan` would slice and restack all of them at every token
  (2.7× slower per token on CPU). Its parameters are `unstacked(params)`."""
  return model_lib.ModelConfig(**{**cfg.__dict__, 'remat': 'none', 'attention': 'plain',
                                  'scan_layers': False})


def unstacked(params: dict) -> dict:
  """A scanned model's parameters ('layers', stacked) as an unrolled one's ('layers_i');
  unrolled ones as they are. Jittable; each layer keeps the sharding of the stack."""
  if 'layers' not in params:
    return params
  count = jax.tree.leaves(params['layers'])[0].shape[0]
  out = {k: v for k, v in params.items() if k != 'layers'}
  out.update({f'layers_{i}': jax.tree.map(lambda x: x[i], params['layers'])  # pylint: disable=cell-var-from-loop
              for i in range(count)})
  return out


def row_keys(seed: int, prompt_index: jax.Array, sample_index: jax.Array) -> jax.Array:
  """The sampling key of each row [B, 2]: a function of (seed, prompt, sample) only."""
  root = jax.random.PRNGKey(seed)
  one = lambda p, s: jax.random.fold_in(jax.random.fold_in(root, p), s)
  return jax.vmap(one)(prompt_index, sample_index)


def _order_keys(x: jax.Array) -> jax.Array:
  """uint32 keys in the order of the float32 values (-inf lowest)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _largest_key_where(holds, rows: int) -> jax.Array:
  """uint32 [rows]: per row, the largest key k with holds(k) (true for small keys, false
  for large ones, and true at 0), by bisection: 32 steps of one pass over the vocabulary,
  instead of sorting it."""
  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2 + (hi > lo).astype(jnp.uint32)
    ok = holds(mid)
    return jnp.where(ok, mid, lo), jnp.where(ok | (hi <= lo), hi, mid - 1)
  lo, _ = jax.lax.fori_loop(0, 32, step, (jnp.zeros(rows, jnp.uint32),
                                          jnp.full(rows, 0xFFFFFFFF, jnp.uint32)))
  return lo


def top_k_top_p(scaled_BV: jax.Array, top_k, top_p) -> jax.Array:
  """Logits with all but the top-k, then all but the top-p nucleus, set to -inf.

  Top-k keeps the k largest values; top-p then keeps, of what is left, every token whose
  strictly more likely tokens hold less than top_p of the mass: the smallest nucleus whose
  mass reaches top_p (ties are kept together). Thresholds are found by bisection over the
  values' order keys, not by sorting the vocabulary (a sort per token is most of a CPU
  decoding step)."""
  rows = scaled_BV.shape[0]
  keys = _order_keys(scaled_BV)
  k = jnp.where(top_k > 0, top_k, scaled_BV.shape[1]).astype(jnp.int32)
  count_at_least = lambda key: jnp.sum(keys >= key[:, None], axis=1) >= k
  kth = _largest_key_where(count_at_least, rows)
  scaled_BV = jnp.where(keys >= kth[:, None], scaled_BV, -jnp.inf)
  probs = jax.nn.softmax(scaled_BV, axis=-1)
  mass_above = lambda key: jnp.sum(jnp.where(keys > key[:, None], probs, 0.0), axis=1) >= top_p
  below_nucleus = _largest_key_where(mass_above, rows)
  keep = (top_p >= 1) | (keys > below_nucleus[:, None])
  return jnp.where(keep, scaled_BV, -jnp.inf)


@flax.struct.dataclass
class Settings:
  """How to choose tokens, as traced values (changing them does not recompile)."""
  temperature: jax.Array   # float32 scalar; 0 = greedy
  top_k: jax.Array         # int32 scalar; 0 = off
  top_p: jax.Array         # float32 scalar; 1 = off
  allowed: jax.Array       # bool [V]: ids that may be chosen
  stop_ids: jax.Array      # int32 [K]: ids that end a row (padded with NO_TOKEN)


def settings(vocab_size: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             allowed_ids: int | None = None, stop_ids=()) -> Settings:
  """Settings choosing among ids < allowed_ids (default all)."""
  allowed = jnp.arange(vocab_size) < (vocab_size if allowed_ids is None else allowed_ids)
  stops = jnp.asarray(list(stop_ids) or [NO_TOKEN], jnp.int32)
  return Settings(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), allowed,
                  stops)


def step_keys(keys_B2: jax.Array, step) -> jax.Array:
  """Each row's key for its `step`-th new token: fold_in(row key, step)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B2, step)


def choose_rows(logits_BV, keys_B2, s: Settings) -> jax.Array:
  """int32 [B]: each row's token, drawn with its key (`step_keys`).

  Temperature 0 is greedy (the first of equal maxima); top_k 0 and top_p 1 are off;
  disallowed ids are never chosen. The
  branches are taken for the whole batch (`lax.cond` on the settings), so greedy decoding
  pays for no draw and sampling without top-k/top-p for no threshold search.
  """
  masked = jnp.where(s.allowed, logits_BV, -jnp.inf)

  def draw(masked):
    scaled = masked / s.temperature
    scaled = jax.lax.cond((s.top_k > 0) | (s.top_p < 1),
                          lambda x: top_k_top_p(x, s.top_k, s.top_p), lambda x: x, scaled)
    return jax.vmap(jax.random.categorical)(keys_B2, scaled).astype(jnp.int32)

  return jax.lax.cond(s.temperature > 0, draw, first_max, masked)


def first_max(x_BV: jax.Array) -> jax.Array:
  """int32 [B]: argmax over the last axis (the first of equal maxima), as a max and a min:
  XLA:CPU runs these 3× faster than argmax's paired reduction."""
  top = jnp.max(x_BV, axis=-1, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, x_BV.shape, 1)
  return jnp.min(jnp.where(x_BV == top, index, x_BV.shape[-1]), axis=-1).astype(jnp.int32)


def choose(logits_V: jax.Array, key: jax.Array, temperature=0.0, top_k=0, top_p=1.0,
           allowed_V: jax.Array | None = None) -> jax.Array:
  """One row's next token (int32 scalar): `choose_rows` of a single row drawing with
  `key` (for tests and one-off use)."""
  s = Settings(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
               jnp.ones_like(logits_V, bool) if allowed_V is None else allowed_V,
               jnp.asarray([NO_TOKEN], jnp.int32))
  return choose_rows(logits_V[None], key[None], s)[0]


@flax.struct.dataclass
class State:
  """A batch being decoded: the cache, the tokens so far [B, N] and which rows are done."""
  cache: Any
  tokens: jax.Array       # int32 [B, N]; NO_TOKEN after a row is done
  done: jax.Array         # bool [B]
  step: jax.Array         # int32 scalar: new tokens written so far (the same for every row)
  next_position: jax.Array  # int32 [B]: the position of each row's next token
  limit: jax.Array        # int32 [B]: each row's number of new tokens at most
  keys: jax.Array         # [B, 2]: each row's sampling key
  prompt_len: int = flax.struct.field(pytree_node=False, default=0)  # P: new token i is in
  # cache slot P + i


def grow(state: State, slots: int) -> State:
  """The state with `slots` more empty cache slots at the end (jittable; `slots` static).

  Attention reads every slot of the cache at every step, so a decode loop pays for the
  cache it carries, not for the tokens in it: `ncalm.sampler` starts with room for a
  segment of new tokens and grows the cache a segment at a time."""
  pad = lambda x, axis, value: jnp.pad(x, [(0, slots if a == axis else 0)
                                           for a in range(x.ndim)], constant_values=value)
  cache = dict(state.cache)
  for name in ('key', 'value'):
    cache[name] = jax.tree.map(lambda x: pad(x, x.ndim - 2, 0), cache[name])
  cache['position'] = pad(cache['position'], 1, -1)
  return state.replace(cache=cache)


def prefill(model, params, prompts_BP: jax.Array, lengths_B: jax.Array, cache_len: int,
            new_tokens: int, limit_B: jax.Array, keys_B2: jax.Array, s: Settings) -> State:
  """Runs left-padded prompts (row b's `lengths_B[b]` tokens end in column P-1) through
  the model into a fresh cache of `cache_len` slots and chooses each row's first token."""
  batch, length = prompts_BP.shape
  positions = jnp.arange(length)[None, :] - (length - lengths_B)[:, None]
  positions = jnp.where(positions >= 0, positions, -1).astype(jnp.int32)
  cache = model_lib.init_cache(model.cfg, batch, cache_len)
  logits, cache = model.apply({'params': params}, prompts_BP, positions_BL=positions,
                              cache=cache, cache_index=0,
                              logits_at=jnp.full((batch,), length - 1))
  first = choose_rows(logits, step_keys(keys_B2, 0), s)
  tokens = jnp.full((batch, new_tokens), NO_TOKEN, jnp.int32).at[:, 0].set(first)
  done = (limit_B <= 1) | jnp.isin(first, s.stop_ids)
  return State(cache, tokens, done, jnp.int32(1), lengths_B.astype(jnp.int32), limit_B,
               keys_B2, length)


def decode(model, params, state: State, until: jax.Array, s: Settings) -> State:
  """Extends every row that is not done, one token per step, until `until` new tokens
  are written or every row is done (`until` at most the new tokens the cache has room for:
  its slots less the prompt's)."""
  prompt_len = state.prompt_len

  def not_finished(st: State):
    return (st.step < until) & ~jnp.all(st.done)

  def one_token(st: State) -> State:
    previous = jax.lax.dynamic_index_in_dim(st.tokens, st.step - 1, axis=1)   # [B, 1]
    previous = jnp.maximum(previous, 0)   # a done row's token is ignored
    logits, cache = model.apply({'params': params}, previous,
                                positions_BL=st.next_position[:, None], cache=st.cache,
                                cache_index=prompt_len + st.step - 1,
                                logits_at=jnp.zeros_like(st.next_position))
    token = choose_rows(logits, step_keys(st.keys, st.step), s)
    token = jnp.where(st.done, NO_TOKEN, token)
    tokens = jax.lax.dynamic_update_index_in_dim(st.tokens, token, st.step, axis=1)
    done = st.done | (st.step + 1 >= st.limit) | jnp.isin(token, s.stop_ids)
    return st.replace(cache=cache, tokens=tokens, done=done, step=st.step + 1,
                      next_position=st.next_position + 1)

  return jax.lax.while_loop(not_finished, one_token, state)


def greedy(model, params, prompts_BP: jax.Array, new_tokens: int,
           allowed_ids: int | None = None) -> jax.Array:
  """int32 [B, new_tokens]: greedy continuations of equal-length prompts (jittable);
  `model` is of `decoding_config`, `params` as trained (unstacked here)."""
  params = unstacked(params)
  batch, length = prompts_BP.shape
  s = settings(model.cfg.vocab_size, allowed_ids=allowed_ids)
  limit = jnp.full((batch,), new_tokens, jnp.int32)
  keys = jnp.zeros((batch, 2), jnp.uint32)
  state = prefill(model, params, prompts_BP, jnp.full((batch,), length, jnp.int32),
                  length + new_tokens, new_tokens, limit, keys, s)
  return decode(model, params, state, jnp.int32(new_tokens), s).tokens
