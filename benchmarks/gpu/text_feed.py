"""Part 4: does the grain text feed keep up with the GPT-2-small step on this device?

A corpus is made from the standard library's Python files (every machine has them),
tokenised as raw bytes (`bytes`: no tokeniser to train or download) by `ncalm.prepare`,
and the real loop (`train.train_and_evaluate`: the Prefetcher, the jitted step, the
progress line with MFU, an evaluation and a checkpoint at the end) trains the
GPT-2-small shape on it. Recorded: the share of each logged stretch the loop waited for
data (`perf/data_wait`), the loop's tokens/s and MFU, and the feed's own tokens/s (one
step's rows read and assembled on one thread, as the Prefetcher does) beside the step's.
The byte vocabulary (257 ids, padded to 384) makes the step cheaper than with GPT-2's
50,304, so the feed faces a faster consumer than in the paper's runs.
"""
from __future__ import annotations

import json
import os
import statistics
import sysconfig
import tempfile
import time

import jax

from ncalm import run_files
from ncalm import sharding
from ncalm import startup
from ncalm import train
from ncalm.data import dataset
from ncalm.data import prepare
from ncalm.data import text

import shapes

TOKENIZER = 'bytes'


def corpus(out_dir: str, smoke: bool) -> dict:
  stdlib = sysconfig.get_path('stdlib')
  inputs = os.path.join(stdlib, 'email', '*.py') if smoke else os.path.join(stdlib, '**', '*.py')
  start = time.perf_counter()
  report = prepare.prepare(inputs, TOKENIZER, out_dir, validation_fraction=0.2 if smoke
                           else 0.01, workers=1 if smoke else 0)
  meta = dataset.read_meta(out_dir)
  return dict(inputs=inputs, seconds=time.perf_counter() - start,
              train_tokens=meta['splits']['train']['tokens'],
              documents=meta['splits']['train']['documents'],
              report=str(report)[:300])


def config(data_dir: str, target, smoke: bool):
  c = shapes.base_config('gpt2_small', smoke)
  c.data.source = 'text'
  c.data.text.path = data_dir
  c.data.text.tokenizer = TOKENIZER
  c.model.vocab_size = 0            # the tokeniser's, padded
  c.seq_len = 64 if smoke else 1024
  chosen = shapes.choose(c, target, smoke)
  c.train_steps = 6 if smoke else 80
  c.log_every = 2 if smoke else 10
  c.evals.heldout.update(every=c.train_steps, batches=1)
  c.checkpoint_every = c.train_steps
  c.optim.update(lr=3e-4, warmup_steps=c.train_steps)
  return c, chosen


def feed_rate(cfg, data_dir: str, steps: int) -> float:
  """Tokens/s of the host making one step's global batch, as the Prefetcher does."""
  feed = text.open_feed(data_dir, 'train', cfg.seq_len, cfg.seed, True, TOKENIZER)
  mesh = sharding.make_mesh(cfg.mesh.to_dict())
  batch_sharding = sharding.batch_sharding(mesh)
  times = []
  for step in range(steps):
    start = time.perf_counter()
    rows = feed.read_rows(step * cfg.global_batch, cfg.global_batch)
    jax.block_until_ready(text.to_global_batch(rows, batch_sharding, cfg.global_batch))
    times.append(time.perf_counter() - start)
  return cfg.global_batch * cfg.seq_len / statistics.median(times)


def run(smoke: bool) -> dict:
  target = shapes.device_target(smoke)
  root = tempfile.mkdtemp(prefix='ncalm_gpu_text_')
  data_dir = os.path.join(root, 'stdlib_bytes')
  made = corpus(data_dir, smoke)
  cfg, chosen = config(data_dir, target, smoke)
  startup.check(cfg)
  workdir = os.path.join(root, 'run')
  start = time.perf_counter()
  train.train_and_evaluate(cfg, workdir)
  loop_s = time.perf_counter() - start
  with open(os.path.join(workdir, run_files.METRICS)) as f:
    rows = [json.loads(line) for line in f]
  logged = [r for r in rows if 'perf/data_wait' in r][1:]   # the first stretch holds the compile
  wait = [r['perf/data_wait'] for r in logged]
  rate = [r['perf/tokens_per_s'] for r in logged if 'perf/tokens_per_s' in r]
  mfu = [r['perf/mfu'] for r in logged if 'perf/mfu' in r]
  step_rate = statistics.median(rate) if rate else None
  host_rate = feed_rate(cfg, data_dir, 4 if smoke else 10)
  final = [r for r in rows if 'eval/loss' in r]
  return dict(corpus=made, batch=cfg.global_batch, seq_len=cfg.seq_len, remat=chosen['remat'],
              steps=cfg.train_steps, loop_seconds=loop_s,
              data_wait_by_stretch=wait, data_wait_max=max(wait) if wait else None,
              loop_tokens_per_s=step_rate, loop_mfu=statistics.median(mfu) if mfu else None,
              feed_tokens_per_s=host_rate,
              feed_over_step=host_rate / step_rate if step_rate else None,
              eval_loss=final[-1]['eval/loss'] if final else None)
