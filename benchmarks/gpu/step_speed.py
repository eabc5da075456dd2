"""Part 2 (and the step half of part 3): the training step's speed, MFU and memory.

At each shape (`shapes.py`) five compiled steps share one training state and run
interleaved, so their ratios hold on a busy machine:
  * the paper's step: NCA data made inside it, attention dropout 0.1 (plain attention);
  * the same step fed the same kind of batch made beforehand (the in-step data's share);
  * the paper's step with the causal attention cut into 4 query blocks (skipping most of
    the masked upper triangle: faster on CPU; is it on this device?);
  * no dropout, plain attention;
  * no dropout, fused attention (`model.attention='fused'`: cuDNN on a GPU).
The first variant compiles alone (the compile time a run waits for), the others
together on threads. XLA's own memory figure for each executable is checked against the
device's limit before anything runs; if the dry run's batch would not fit, it is halved
(recorded as `batch_reduced_from`).
"""
from __future__ import annotations

import concurrent.futures
import copy
import time

import flax.linen as nn
import jax
import numpy as np

from ncalm import perf
from ncalm import sharding
from ncalm import startup
from ncalm import step as step_lib
from ncalm.data import feeds
from ncalm.tools import footprint

import shapes
import timing

# name → (model.attn_dropout, model.attention, model.attention_blocks, batch fed from
# outside the step). Blocks: 1 is what 'auto' (0) gives on accelerators; 4 skips most of
# the masked upper triangle, as on CPU.
VARIANTS = {
    'in step, dropout 0.1, plain': (0.1, 'plain', 1, False),
    'fed batch, dropout 0.1, plain': (0.1, 'plain', 1, True),
    'in step, dropout 0.1, plain, 4 query blocks': (0.1, 'plain', 4, False),
    'in step, no dropout, plain': (0.0, 'plain', 1, False),
    'in step, no dropout, fused': (0.0, 'fused', 1, False),
}
PAPER_VARIANT = 'in step, dropout 0.1, plain'


def _rule_keys(n: int, seed: int) -> np.ndarray:
  """Unfiltered rule keys: a rollout costs the same whatever the rule's band."""
  return np.asarray(jax.random.split(jax.random.PRNGKey(seed), n))


def _build(cfg, variant: str, state=None):
  """(setup, step function, its argument after the state) of one variant."""
  dropout, attention, blocks, fed = VARIANTS[variant]
  v = copy.deepcopy(cfg)
  v.model.update(attn_dropout=dropout, attention=attention, attention_blocks=blocks)
  run = feeds.build(v, (_rule_keys(v.data.num_train_rules, 1), _rule_keys(v.data.num_val_rules, 2)))
  setup = step_lib.create_setup(v, startup.check(v).model)
  source = jax.device_put(run.train_source, sharding.replicated(setup.mesh))
  if not fed:
    return setup, step_lib.make_train_step(setup), source
  make = jax.jit(lambda s, k: s.batch(k, v.global_batch),
                 out_shardings=sharding.batch_sharding(setup.mesh))
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    batch = make(source, jax.random.PRNGKey(3))
  return setup, step_lib.make_train_step_on_batch(setup), batch


def _compile(setup, fn, state, data, key):
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    return fn.lower(state, data, key)


def measure_shape(name: str, target: perf.Target, smoke: bool) -> dict:
  cfg, chosen = shapes.config(name, target, smoke)
  key = jax.random.PRNGKey(0)
  limit = target.hbm_gib * footprint.GIB
  reduced_from = None
  while True:
    built = {v: _build(cfg, v) for v in VARIANTS}
    setup0 = built[PAPER_VARIANT][0]
    state = step_lib.create_state(setup0, key)
    lowered = {v: _compile(s, fn, state, data, key) for v, (s, fn, data) in built.items()}
    start = time.perf_counter()
    compiled = {PAPER_VARIANT: lowered[PAPER_VARIANT].compile()}
    compile_s = {PAPER_VARIANT: time.perf_counter() - start}
    need = timing.compiled_bytes(compiled[PAPER_VARIANT])
    if smoke or need is None or need <= limit or cfg.global_batch == 1:
      break
    reduced_from = reduced_from or cfg.global_batch
    cfg.global_batch //= 2
    jax.tree.map(lambda x: x.delete(), state)
  rest = [v for v in VARIANTS if v != PAPER_VARIANT]

  def compile_one(v):
    t0 = time.perf_counter()
    try:
      return v, lowered[v].compile(), time.perf_counter() - t0, None
    except Exception as e:  # pylint: disable=broad-except
      return v, None, time.perf_counter() - t0, f'{type(e).__name__}: {str(e)[:600]}'

  start = time.perf_counter()
  errors = {}
  with concurrent.futures.ThreadPoolExecutor(len(rest)) as pool:
    for v, c, s, error in pool.map(compile_one, rest):
      compile_s[v] = s
      if error:
        errors[v] = error
      else:
        compiled[v] = c
  together_s = time.perf_counter() - start

  steps = 1 if smoke else (2 if name == 'paper' else 10)
  rounds = 2 if smoke else 3
  holder = {'state': state}
  losses = {}

  def runner(v):
    _, _, data = built[v]
    def once():
      start = time.perf_counter()
      for _ in range(steps):
        holder['state'], scalars = compiled[v](holder['state'], data, key)
      losses[v] = float(jax.device_get(scalars['train/loss']))
      return (time.perf_counter() - start) / steps
    return once

  runs = {v: runner(v) for v in compiled}
  for once in runs.values():
    once()  # warm-up (autotuned kernels load, allocator grows)
  step_s = timing.interleave(runs, rounds)
  peak_bytes = timing.peak_device_bytes()
  jax.tree.map(lambda x: x.delete(), holder['state'])

  tokens = cfg.global_batch * cfg.seq_len
  flops = perf.flops_per_token(setup0.model.cfg, cfg.seq_len)
  peak = perf.peak_flops(jax.devices()[0].device_kind)
  variants = {v: dict(error=e, compile_s=compile_s[v]) for v, e in errors.items()}
  for v in compiled:
    rate = tokens / step_s[v]
    variants[v] = dict(step_s=step_s[v], tokens_per_s=rate,
                       mfu=perf.mfu(flops, rate, 1, peak), compile_s=compile_s[v],
                       xla_bytes=timing.compiled_bytes(compiled[v]),
                       cudnn_attention=timing.uses_cudnn_attention(compiled[v]),
                       loss=losses[v], loss_finite=bool(np.isfinite(losses[v])))
  ratio = lambda a, b: step_s[a] / step_s[b] if a in step_s and b in step_s else None
  fed_over_inside = ratio('fed batch, dropout 0.1, plain', PAPER_VARIANT)
  dropout = ratio(PAPER_VARIANT, 'in step, no dropout, plain')
  m = setup0.model.cfg
  return dict(
      shape=dict(layers=m.num_layers, d_model=m.d_model, heads=m.num_heads, mlp=m.mlp_dim,
                 seq_len=cfg.seq_len, vocab=m.vocab_size, dtype=m.dtype, remat=m.remat,
                 batch=cfg.global_batch, params=chosen['params']),
      dry_run=chosen, batch_reduced_from=reduced_from,
      flops_per_token=flops, peak_flops=peak, steps_per_timing=steps, rounds=rounds,
      variants=variants,
      compile_note=f'{PAPER_VARIANT!r} compiled alone; the other {len(rest)} together on '
                   f'threads in {together_s:.1f} s',
      peak_bytes=peak_bytes, predicted_bytes=chosen['predicted_bytes']['total'],
      data_share=None if fed_over_inside is None else 1 - fed_over_inside,
      fused_speedup=ratio('in step, no dropout, plain', 'in step, no dropout, fused'),
      dropout_cost=None if dropout is None else dropout - 1,
      blocks_speedup=ratio(PAPER_VARIANT, 'in step, dropout 0.1, plain, 4 query blocks'),
      errors=errors)


def run(smoke: bool) -> dict:
  """Both shapes, the small one first (its peak memory is then its own); --smoke measures
  the paper's code path at a tiny shape only."""
  target = shapes.device_target(smoke)
  names = ('paper',) if smoke else ('gpt2_small', 'paper')
  measured = {name: measure_shape(name, target, smoke) for name in names}
  return dict(target=dict(label=target.label, hbm_gib=target.hbm_gib), shapes=measured,
              errors=[f'{name}: {v}: {e}' for name, s in measured.items()
                      for v, e in s['errors'].items()])
