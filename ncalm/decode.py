"""Writing with a model: one prefill of the prompts, then one token per step from a KV cache.

The pieces are pure functions to be jitted by their caller (`ncalm.sampler` for commands
and evaluators, the NCA probe inside its own jit):

* `prefill` runs left-padded prompts [B, P] through the model once, filling the first P
  slots of a cache (`model.init_cache`) and giving each row's next-token logits. Left
  padding puts every row's last prompt token in slot P-1, so all rows then write the same
  slot at each step; each token carries its own row's position (padding -1, never seen).
* `decode` extends rows one token per step inside `lax.while_loop` until a bound or until
  every row is done: a row stops on its own at a stop id or its own token limit.
* `choose` picks a token from logits: greedy at temperature 0, else a draw after the
  allowed-ids mask, temperature, top-k and top-p (in that order, as in Hugging Face's
  `generate`). Each row draws with its own key, fold_in(row key, token index), and a row
  key is a function of (seed, prompt index, sample index) only (`row_keys`): a sample does
  not depend on the batch it was decoded in, nor on how the batch is sharded.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from ncalm import model as model_lib

NO_TOKEN = -1   # written after a row is done


def decoding_config(cfg: model_lib.ModelConfig) -> model_lib.ModelConfig:
  """The model config to decode with: the same parameters, no rematerialisation (nothing
  is differentiated) and attention over the cache (`model.cached_attention`)."""
  return model_lib.ModelConfig(**{**cfg.__dict__, 'remat': 'none', 'attention': 'plain'})


def row_keys(seed: int, prompt_index: jax.Array, sample_index: jax.Array) -> jax.Array:
  """The sampling key of each row [B, 2]: a function of (seed, prompt, sample) only."""
  root = jax.random.PRNGKey(seed)
  one = lambda p, s: jax.random.fold_in(jax.random.fold_in(root, p), s)
  return jax.vmap(one)(prompt_index, sample_index)


def choose(logits_V: jax.Array, key: jax.Array, temperature, top_k, top_p,
           allowed_V: jax.Array) -> jax.Array:
  """One row's next token (int32 scalar) from its logits.

  temperature 0 is greedy (the first of equal maxima); top_k 0 and top_p 1 are off. Top-k
  keeps the k largest logits; top-p then keeps the smallest set of the largest
  probabilities whose mass reaches top_p (always at least one token). Disallowed ids
  are never chosen.
  """
  masked = jnp.where(allowed_V, logits_V, -jnp.inf)
  greedy = jnp.argmax(masked)
  scaled = masked / jnp.maximum(temperature, 1e-6)
  ordered = jnp.sort(scaled)[::-1]
  kth = ordered[jnp.clip(top_k, 1, ordered.shape[0]) - 1]
  scaled = jnp.where((top_k > 0) & (scaled < kth), -jnp.inf, scaled)
  ordered = jnp.where((top_k > 0) & (ordered < kth), -jnp.inf, ordered)
  probs = jax.nn.softmax(ordered)
  mass_before = jnp.cumsum(probs) - probs
  last_kept = ordered[jnp.sum(mass_before < top_p) - 1]
  scaled = jnp.where((top_p < 1) & (scaled < last_kept), -jnp.inf, scaled)
  drawn = jax.random.categorical(key, scaled)
  return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


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


def choose_rows(logits_BV, keys_B2, step, s: Settings) -> jax.Array:
  """int32 [B]: each row's token at its `step`-th new token."""
  one = lambda logits, key: choose(logits, jax.random.fold_in(key, step), s.temperature,
                                   s.top_k, s.top_p, s.allowed)
  return jax.vmap(one)(logits_BV, keys_B2)


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
  first = choose_rows(logits, keys_B2, 0, s)
  tokens = jnp.full((batch, new_tokens), NO_TOKEN, jnp.int32).at[:, 0].set(first)
  done = (limit_B <= 1) | jnp.isin(first, s.stop_ids)
  return State(cache, tokens, done, jnp.int32(1), lengths_B.astype(jnp.int32), limit_B,
               keys_B2)


def decode(model, params, state: State, until: jax.Array, s: Settings) -> State:
  """Extends every row that is not done, one token per step, until `until` new tokens
  are written or every row is done."""
  prompt_len = state.cache['position'].shape[1] - state.tokens.shape[1]

  def not_finished(st: State):
    return (st.step < until) & ~jnp.all(st.done)

  def one_token(st: State) -> State:
    previous = jax.lax.dynamic_index_in_dim(st.tokens, st.step - 1, axis=1)   # [B, 1]
    previous = jnp.maximum(previous, 0)   # a done row's token is ignored
    logits, cache = model.apply({'params': params}, previous,
                                positions_BL=st.next_position[:, None], cache=st.cache,
                                cache_index=prompt_len + st.step - 1,
                                logits_at=jnp.zeros_like(st.next_position))
    token = choose_rows(logits, st.keys, st.step, s)
    token = jnp.where(st.done, NO_TOKEN, token)
    tokens = jax.lax.dynamic_update_index_in_dim(st.tokens, token, st.step, axis=1)
    done = st.done | (st.step + 1 >= st.limit) | jnp.isin(token, s.stop_ids)
    return st.replace(cache=cache, tokens=tokens, done=done, step=st.step + 1,
                      next_position=st.next_position + 1)

  return jax.lax.while_loop(not_finished, one_token, state)


def greedy(model, params, prompts_BP: jax.Array, new_tokens: int,
           allowed_ids: int | None = None) -> jax.Array:
  """int32 [B, new_tokens]: greedy continuations of equal-length prompts (jittable)."""
  batch, length = prompts_BP.shape
  s = settings(model.cfg.vocab_size, allowed_ids=allowed_ids)
  limit = jnp.full((batch,), new_tokens, jnp.int32)
  keys = jnp.zeros((batch, 2), jnp.uint32)
  state = prefill(model, params, prompts_BP, jnp.full((batch,), length, jnp.int32),
                  length + new_tokens, new_tokens, limit, keys, s)
  return decode(model, params, state, jnp.int32(new_tokens), s).tokens
