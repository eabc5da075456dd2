"""Continuations of token prompts from a model's parameters, batched, on the run's mesh.

`Sampler(model_cfg, mesh, rules)` compiles `ncalm.decode`'s prefill and decode once per
(batch, prompt bucket, cache length) and reuses them; `generate(params, prompts, request)`
returns `request.num_samples` completions of every prompt, from `params` as trained (in
the run's shardings):

* Rows (prompt × sample) are decoded `batch_size` at a time, rows split over the
  data-parallel devices, the cache sharded like the activations. A row's sample is a
  function of (seed, prompt index, sample index) only, so it does not depend on the batch
  size or the number of devices.
* Prompts are left-padded to a power-of-two bucket, so prompts of nearby lengths share one
  compilation. Attention reads the whole cache at every step, so the cache starts with room
  for `SEGMENT` new tokens and grows a segment at a time (one compilation per size): a step
  costs what the tokens so far need, within a segment.
* A prompt plus its new tokens never runs past the model's context: a row's new tokens
  are capped at (context − prompt length), as the published evaluations do, and
  `Completion.capped` says so. A prompt that leaves no room (length ≥ context) is
  refused (`fits` tells the caller beforehand: a command errs, an evaluator skips and
  counts it).
* The model decodes with unrolled layers (`decode.decoding_config`): a scanned run's
  parameters are split per layer at each `generate` (a second copy of them meanwhile).
* Stop ids end a row on the device; stop strings (which can span tokens) are looked for
  on the host after every chunk of `STOP_STRING_CHUNK` tokens, and the text is cut before
  the first one. Each row stops on its own.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ncalm import decode
from ncalm import errors
from ncalm import model as model_lib
from ncalm import sharding

STOP_STRING_CHUNK = 32   # new tokens between two looks for stop strings
SEGMENT = 128            # new tokens per segment: the cache grows by this many slots
SMALLEST_BUCKET = 16     # prompts are padded to a power of two at least this long


@dataclasses.dataclass(frozen=True)
class Request:
  """What to generate; `check` names the flag of a value that cannot work."""
  max_new_tokens: int = 128
  num_samples: int = 1
  temperature: float = 0.0     # 0 = greedy
  top_k: int = 0               # 0 = off
  top_p: float = 1.0           # 1 = off
  seed: int = 0
  stop_ids: tuple[int, ...] = ()
  stop_strings: tuple[str, ...] = ()

  def check(self) -> None:
    problems = [
        (self.temperature < 0, f'--temperature={self.temperature} is negative: use 0 for '
         'greedy decoding or a positive temperature to sample.'),
        (not 0 < self.top_p <= 1, f'--top_p={self.top_p} is outside (0, 1]: use 1 to keep '
         'every token, or the probability mass of the nucleus to sample from.'),
        (self.top_k < 0, f'--top_k={self.top_k} is negative: use 0 to keep every token, '
         'or the number of most likely tokens to sample from.'),
        (self.num_samples < 1, f'--num_samples={self.num_samples} must be at least 1.'),
        (self.max_new_tokens < 1, f'--max_new_tokens={self.max_new_tokens} must be at '
         'least 1.'),
    ]
    for bad, message in problems:
      if bad:
        raise errors.UserError(message)


@dataclasses.dataclass(frozen=True)
class Completion:
  prompt_index: int
  sample_index: int
  tokens: tuple[int, ...]   # the new tokens, up to and including a stop id
  text: str | None          # detokenised, cut before a stop string or stop id
  finish: str               # 'stop_id', 'stop_string' or 'length'
  capped: bool              # new tokens were capped at (context − prompt length)


def bucket(length: int, context: int) -> int:
  """The padded prompt length: the next power of two ≥ SMALLEST_BUCKET, at most context."""
  return min(max(SMALLEST_BUCKET, 1 << (length - 1).bit_length()), context)


class Sampler:
  """Generates from a model's parameters on `mesh`."""

  def __init__(self, model_cfg: model_lib.ModelConfig, mesh: jax.sharding.Mesh,
               rules, batch_size: int = 32, allowed_ids: int | None = None,
               detokenize: Callable[[Sequence[int]], str] | None = None,
               segment: int = SEGMENT):
    self.model = model_lib.Transformer(decode.decoding_config(model_cfg))
    self.context = model_cfg.max_len
    self.mesh, self.rules = mesh, rules
    data_parallel = sharding.data_parallel_size(mesh)
    self.batch_size = -(-batch_size // data_parallel) * data_parallel
    self.allowed_ids, self.detokenize, self.segment = allowed_ids, detokenize, segment
    self._prefill = jax.jit(functools.partial(decode.prefill, self.model),
                            static_argnames=('cache_len', 'new_tokens'))
    self._decode = jax.jit(functools.partial(decode.decode, self.model), donate_argnums=(1,))
    self._grow = jax.jit(decode.grow, static_argnames=('slots',))
    self._unstacked = jax.jit(decode.unstacked)

  def fits(self, prompt_length: int) -> bool:
    """Whether a prompt leaves room for at least one new token in the context."""
    return 0 < prompt_length < self.context

  def generate(self, params, prompts: Sequence[Sequence[int]], request: Request
               ) -> list[list[Completion]]:
    """request.num_samples completions of each prompt, in order."""
    params = self._unstacked(params)
    request.check()
    for i, prompt in enumerate(prompts):
      if not self.fits(len(prompt)):
        raise ValueError(f'prompt {i} has {len(prompt)} tokens; the context holds '
                         f'{self.context} (check Sampler.fits first)')
    if request.stop_strings and self.detokenize is None:
      raise ValueError('stop strings need a detokenize function')
    rows = [(p, s) for p in range(len(prompts)) for s in range(request.num_samples)]
    padded = bucket(max(len(p) for p in prompts), self.context)
    new_tokens = min(request.max_new_tokens, self.context - min(len(p) for p in prompts))
    s = decode.settings(self.model.cfg.vocab_size, request.temperature, request.top_k,
                        request.top_p, self.allowed_ids, request.stop_ids)
    out = [[None] * request.num_samples for _ in prompts]
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      chunk = chunk + [chunk[-1]] * (self.batch_size - len(chunk))   # filler rows
      for (p, sample), completion in zip(chunk, self._batch(params, prompts, chunk, padded,
                                                            new_tokens, request, s)):
        out[p][sample] = completion
    return out

  def _batch(self, params, prompts, rows, padded: int, new_tokens: int, request: Request,
             s: decode.Settings) -> list[Completion]:
    tokens = np.zeros((len(rows), padded), np.int32)
    lengths = np.array([len(prompts[p]) for p, _ in rows], np.int32)
    for i, (p, _) in enumerate(rows):
      tokens[i, padded - lengths[i]:] = prompts[p]
    wanted = request.max_new_tokens
    limit = np.minimum(wanted, self.context - lengths).astype(np.int32)
    batch = sharding.batch_sharding(self.mesh)
    put = lambda x: jax.device_put(jnp.asarray(x), batch)
    keys = decode.row_keys(request.seed, jnp.asarray([p for p, _ in rows]),
                           jnp.asarray([smp for _, smp in rows]))
    room = min(new_tokens, self.segment)   # new tokens the cache has slots for
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      state = self._prefill(params, put(tokens), put(lengths), cache_len=padded + room,
                            new_tokens=new_tokens, limit_B=put(limit), keys_B2=put(keys), s=s)
      step = 1
      cut = [None] * len(rows)
      while step < new_tokens:
        if step >= room:
          grown = min(new_tokens, room + self.segment)
          state, room = self._grow(state, slots=grown - room), grown
        until = min(room, step + STOP_STRING_CHUNK) if request.stop_strings else room
        state = self._decode(params, state, jnp.int32(until), s)
        step = int(state.step)
        done = np.asarray(state.done)
        if done.all():
          break
        if request.stop_strings:
          done, cut = self._stop_strings(np.asarray(state.tokens), done, cut, request)
          state = state.replace(done=put(done))
          if done.all():
            break
    written = np.asarray(state.tokens)
    return [self._completion(p, smp, written[i], cut[i], limit[i] < wanted, request)
            for i, (p, smp) in enumerate(rows)]

  def _stop_strings(self, tokens, done, cut, request: Request):
    """Marks done the rows whose text holds a stop string; cut[i] = where the text ends."""
    done, cut = done.copy(), list(cut)
    for i in np.flatnonzero(~done):
      text = self.detokenize(_until_done(tokens[i], request.stop_ids))
      ends = [text.find(stop) for stop in request.stop_strings if stop in text]
      if ends:
        done[i], cut[i] = True, min(ends)
    return done, cut

  def _completion(self, prompt_index, sample_index, row, cut, capped, request: Request):
    new = _until_done(row, ())
    stopped_by_id = bool(new) and new[-1] in request.stop_ids
    text = None
    if self.detokenize is not None:
      text = self.detokenize(new[:-1] if stopped_by_id else new)
      if cut is None:
        ends = [text.find(stop) for stop in request.stop_strings if stop in text]
        cut = min(ends) if ends else None
      text = text if cut is None else text[:cut]
    finish = 'stop_string' if cut is not None else 'stop_id' if stopped_by_id else 'length'
    return Completion(prompt_index, sample_index, tuple(new), text, finish, bool(capped))


def _until_done(row: np.ndarray, stop_ids) -> list[int]:
  """A row's new tokens up to the first NO_TOKEN (and without a final stop id)."""
  tokens = row.tolist()
  if decode.NO_TOKEN in tokens:
    tokens = tokens[:tokens.index(decode.NO_TOKEN)]
  if tokens and tokens[-1] in stop_ids:
    tokens = tokens[:-1]
  return tokens
