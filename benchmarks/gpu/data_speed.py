"""Part 3: the NCA data on this device — generation and rule scoring.

  * tokens/s of whole batches (rules from keys → rollout → tokens) in fast and reference
    mode, interleaved;
  * rule scoring: the device part alone (simulate + tokenise, `complexity.score_ids`), host
    gzip on one thread, on a thread per core and on a process per core, and
    `complexity.score_rules` end to end as the rule-bank sampler runs it.
The in-step data's share of the training step is measured beside the steps (part 2).
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time

import jax
import numpy as np

from ncalm.data import complexity
from ncalm.data import device_sources
from ncalm.data import nca
from ncalm.data import nca_tokens

import timing


def generation(batch: int, rounds: int) -> dict:
  cfg = nca.NCAConfig()
  seq_tokens = cfg.frames * nca_tokens.tokens_per_frame(cfg)
  rule_keys = jax.random.split(jax.random.PRNGKey(1), batch)
  sim_keys = jax.random.split(jax.random.PRNGKey(2), batch)
  runs = {}
  for mode in nca.MODES:
    make = jax.jit(device_sources.NCASource(cfg, seq_len=seq_tokens - 1, mode=mode).sequences)
    jax.block_until_ready(make(rule_keys, sim_keys))  # compile
    runs[mode] = lambda make=make: timing.seconds(make, rule_keys, sim_keys)
  t = timing.interleave(runs, rounds)
  rate = {mode: batch * seq_tokens / sec for mode, sec in t.items()}
  return dict(batch=batch, tokens_per_sequence=seq_tokens,
              **{f'{mode}_tokens_per_s': r for mode, r in rate.items()},
              fast_over_reference=rate['fast'] / rate['reference'])


def scoring(rules: int) -> dict:
  cfg = nca.NCAConfig()
  chunk = min(rules, complexity.DEFAULT_CHUNK)
  rk = jax.random.split(jax.random.PRNGKey(3), rules)
  sk = jax.random.split(jax.random.PRNGKey(4), rules)
  jax.block_until_ready(complexity.score_ids(rk[:chunk], sk[:chunk], cfg, 'fast'))  # compile
  start = time.perf_counter()
  chunks = [complexity.score_ids(rk[i:i + chunk], sk[i:i + chunk], cfg, 'fast')
            for i in range(0, rules, chunk)]
  ids = np.concatenate([np.asarray(c) for c in chunks])
  device_rate = rules / (time.perf_counter() - start)

  start = time.perf_counter()
  one = [complexity.gzip_score(row) for row in ids]
  gzip_one = rules / (time.perf_counter() - start)
  workers = os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    start = time.perf_counter()
    many = list(pool.map(complexity.gzip_score, ids))
    gzip_many = rules / (time.perf_counter() - start)
  assert many == one
  # Processes (spawned: this one holds the device) scale where threads do not: the 1,440-
  # byte buffers are too small for zlib's GIL release to pay.
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    list(pool.map(complexity.gzip_score, ids[:workers], chunksize=1))  # workers started
    start = time.perf_counter()
    spawned = list(pool.map(complexity.gzip_score, ids, chunksize=max(1, rules // workers // 4)))
    gzip_processes = rules / (time.perf_counter() - start)
  assert spawned == one

  start = time.perf_counter()
  complexity.score_rules(rk, sk, cfg, 'fast', chunk=chunk)
  end_to_end = rules / (time.perf_counter() - start)
  return dict(rules=rules, device_rules_per_s=device_rate, gzip_one_thread_rules_per_s=gzip_one,
              gzip_threads=workers, gzip_all_threads_rules_per_s=gzip_many,
              gzip_all_processes_rules_per_s=gzip_processes,
              score_rules_rules_per_s=end_to_end)


def run(smoke: bool) -> dict:
  return dict(generation=generation(16 if smoke else 4096, 2 if smoke else 5),
              scoring=scoring(64 if smoke else 16384))
