"""The config schema, start-up validation, and the run's data (rule banks, sources).

`base_config()` lists every field a run understands, commented, with the published
stage-1 values; experiment files in configs/ start from it and change what they
change. Anything that cannot work fails here, at start-up, naming the field and the fix.
"""
from __future__ import annotations

import dataclasses
import os

from absl import logging
import jax
import ml_collections
import numpy as np

from ncalm import complexity
from ncalm import dyck
from ncalm import errors
from ncalm import files
from ncalm import model as model_lib
from ncalm import nca
from ncalm import sharding
from ncalm import sources
from ncalm import tokens

BANK_FILE = 'rule_bank.npz'


def base_config() -> ml_collections.ConfigDict:
  """Every field, with the paper's stage-1 values (SPEC §4-5)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, dropout and data keys all derive from it
  c.train_steps = 5000            # optimizer steps
  c.global_batch = 32             # sequences per optimizer step, over all devices
  c.grad_accum = 1                # micro-batches per step (global_batch divisible by it)
  c.seq_len = 1024                # model context; sequences hold seq_len + 1 tokens

  c.data = ml_collections.ConfigDict()
  c.data.source = 'nca'           # 'nca' (made in the step) | 'dyck' (made in the step)
  c.data.mode = 'fast'            # NCA rollout: 'fast' (same distribution) | 'reference' (bit-exact)
  c.data.band = (0.5, 1.0)        # gzip band of the rules; None = unfiltered
  c.data.num_train_rules = 16000  # rules in the training bank
  c.data.num_val_rules = 2000     # held-out rules for evaluation and the probe
  c.data.bank_seed = 0            # seed of the rule sampler (bank saved to the workdir)
  c.data.bank_mode = 'fast'       # rollout mode used to score candidate rules
  c.data.nca = ml_collections.ConfigDict()
  c.data.nca.grid = 12            # cells per side (torus)
  c.data.nca.num_states = 10      # states per cell
  c.data.nca.patch = 2            # patch side: one token per patch
  c.data.nca.tau = 1e-4           # softmax temperature of the update
  c.data.nca.identity_bias = 0.0  # bias towards keeping the current state
  c.data.nca.burn_in = 10         # steps dropped before recording
  c.data.nca.frames = 0           # recorded frames; 0 = just enough for seq_len + 1 tokens
  c.data.nca.padding = 'quirk'    # 'quirk' (published: state axis wrapped) | 'clean'
  c.data.dyck = ml_collections.ConfigDict()
  c.data.dyck.num_types = 64      # bracket types (Dyck baseline)
  c.data.dyck.max_depth = 16      # most brackets open at once
  c.data.dyck.p_open = 0.5        # probability of opening when free to choose
  c.data.dyck.shuffle = False     # shuffle-Dyck instead of k-Dyck

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0          # 0 = the source's vocabulary (10,002 for NCA)
  c.model.d_model = 2048          # residual width
  c.model.num_layers = 24         # transformer blocks
  c.model.num_heads = 32          # attention heads (head dim = d_model / num_heads)
  c.model.mlp_dim = 8192          # SwiGLU hidden width
  c.model.attn_dropout = 0.1      # dropout on attention probabilities (training only)
  c.model.dtype = 'bfloat16'      # compute dtype; params are float32, logits float32
  c.model.remat = 'full'          # 'none' | 'full' | 'dots' | 'dots_no_batch'
  c.model.scan_layers = True      # one compiled block scanned over layers (stacked params)
  c.model.scan_unroll = 0         # layers per scan iteration; 0 = auto: all of them on CPU
                                  # (faster there), 1 on GPU/TPU (compiles fast at 24 layers)
  c.model.attention = 'auto'      # where no dropout applies (attn_dropout=0, eval): 'plain',
                                  # 'fused' (splash kernel on TPU, cuDNN on GPU), or directly
                                  # 'dot_product' | 'splash'; auto = fused on GPU/TPU, plain
                                  # on CPU (faster there). Training with dropout is plain.
  c.model.attention_blocks = 0    # causal query blocks of plain attention, skipping masked
                                  # work; 0 = auto: 4 on CPU (~1.8x faster there), 1 elsewhere

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adam'           # 'adam' | 'adamw'
  c.optim.lr = 1e-4               # peak learning rate
  c.optim.b1 = 0.9                # Adam beta1
  c.optim.b2 = 0.999              # Adam beta2
  c.optim.eps = 1e-8              # Adam epsilon
  c.optim.weight_decay = 0.0      # decoupled weight decay (adamw only)
  c.optim.clip_norm = 0.0         # global-norm clipping; 0 = none
  c.optim.schedule = 'warmup'     # 'constant' | 'warmup' (published) | 'warmup_cosine'
  c.optim.warmup_steps = 5000     # linear warmup steps
  c.optim.final_lr = 0.0          # end of the cosine decay

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # data-parallel axis (-1 = all remaining devices)
  c.mesh.fsdp = 1                 # parameter-sharded data-parallel axis
  c.mesh.tensor = 1               # tensor-parallel axis (heads, mlp, vocab)
  # Logical axis → mesh axes, for weights (vocab, embed, heads, mlp, ...) and activations
  # (act_*); changing parallelism is an edit here, never in the model. () = these defaults.
  c.logical_axis_rules = sharding.LOGICAL_AXIS_RULES

  c.log_every = 10                # steps between metric lines (JSONL, TensorBoard, progress)
  c.eval_every = 500              # steps between evaluations on held-out rules
  c.eval_batches = 4              # held-out batches (of global_batch sequences) per eval
  c.probe_sequences = 16          # held-out sequences whose next frame is decoded greedily
  c.checkpoint_every = 500        # steps between checkpoints (and at the end, and on SIGTERM)
  c.keep_checkpoints = 3          # checkpoints kept in the workdir
  c.async_checkpoint = True       # write checkpoints in the background
  c.peak_flops = 0.0              # per-device peak FLOP/s for MFU; 0 = from the device table
  return c


def _paths(d, prefix=''):
  for key, value in d.items():
    path = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _paths(value, path + '.')
    else:
      yield path


def check_fields(cfg: ml_collections.ConfigDict) -> None:
  """Unknown fields are errors (a typo would otherwise be silently ignored)."""
  known = set(_paths(base_config()))
  unknown = sorted(set(_paths(cfg)) - known)
  if unknown:
    raise errors.UserError(f'Unknown config field(s) {unknown}: check the spelling against '
                           'ncalm/config_lib.py:base_config().')


POSITIVE_FIELDS = ('train_steps', 'global_batch', 'grad_accum', 'log_every', 'eval_every',
                   'eval_batches', 'checkpoint_every', 'keep_checkpoints',
                   'data.num_train_rules', 'data.num_val_rules')
DTYPES = ('float32', 'bfloat16', 'float16')


def _get(cfg, path):
  for part in path.split('.'):
    cfg = cfg[part]
  return cfg


def check_values(cfg: ml_collections.ConfigDict) -> None:
  """Counts that must be >= 1 and names that must be from a list."""
  for path in POSITIVE_FIELDS:
    value = _get(cfg, path)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise errors.UserError(f'{path}={value!r} must be an integer >= 1.')
  if cfg.seq_len < 2:
    raise errors.UserError(f'seq_len={cfg.seq_len} must be >= 2.')
  if cfg.probe_sequences < 0:
    raise errors.UserError(f'probe_sequences={cfg.probe_sequences} must be >= 0.')
  if cfg.model.dtype not in DTYPES:
    raise errors.UserError(f'model.dtype={cfg.model.dtype!r}: use one of {list(DTYPES)} '
                           '(parameters stay float32; this is the compute dtype).')


def nca_config(cfg: ml_collections.ConfigDict) -> nca.NCAConfig:
  n = cfg.data.nca
  base = nca.NCAConfig(grid=n.grid, num_states=n.num_states, patch=n.patch, tau=n.tau,
                       identity_bias=n.identity_bias, burn_in=n.burn_in, padding=n.padding)
  needed = tokens.frames_needed(cfg.seq_len, base)
  if n.frames and n.frames < needed:
    raise errors.UserError(
        f'data.nca.frames={n.frames} gives {n.frames * tokens.tokens_per_frame(base)} tokens, '
        f'but seq_len={cfg.seq_len} needs {cfg.seq_len + 1}: set frames >= {needed} or 0 (auto).')
  return base.replace(frames=n.frames or needed)


def dyck_config(cfg: ml_collections.ConfigDict) -> dyck.DyckConfig:
  d = cfg.data.dyck
  return dyck.DyckConfig(num_types=d.num_types, max_depth=d.max_depth, p_open=d.p_open,
                         shuffle=d.shuffle)


def model_config(cfg: ml_collections.ConfigDict, source_vocab: int) -> model_lib.ModelConfig:
  m = cfg.model
  vocab = m.vocab_size or source_vocab
  if vocab < source_vocab:
    raise errors.UserError(
        f'model.vocab_size={vocab} is too small for the data, whose largest token id is '
        f'{source_vocab - 1}: set model.vocab_size >= {source_vocab} (or 0 for automatic).')
  return model_lib.ModelConfig(
      vocab_size=vocab, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
      mlp_dim=m.mlp_dim, max_len=cfg.seq_len, attn_dropout=m.attn_dropout, dtype=m.dtype,
      remat=m.remat, scan_layers=m.scan_layers,
      scan_unroll=m.scan_unroll or default_scan_unroll(m.num_layers),
      attention=attention_kind(m.attention),
      attention_blocks=m.attention_blocks or default_attention_blocks(cfg.seq_len))


# What 'auto' (0) means per backend; measured in docs/benchmarks.md ("Training step against
# the published step"). On accelerators the unmeasured choice is the conservative one.


def default_scan_unroll(num_layers: int, backend: str | None = None) -> int:
  """Layers per scan iteration: all on CPU (faster), one on accelerators (fast compiles)."""
  return num_layers if (backend or jax.default_backend()) == 'cpu' else 1


def default_attention_blocks(seq_len: int, backend: str | None = None) -> int:
  """Causal query blocks: 4 on CPU where seq_len allows, 1 on accelerators."""
  cpu = (backend or jax.default_backend()) == 'cpu'
  return 4 if cpu and seq_len % 4 == 0 and seq_len >= 256 else 1


def attention_kind(choice: str, backend: str | None = None) -> str:
  """model.attention → ModelConfig.attention (used where no dropout applies).

  'fused' is the platform's fused attention: splash on TPU, jax.nn.dot_product_attention
  elsewhere (cuDNN on GPU); 'auto' is fused on accelerators and plain on CPU, where the
  plain path is faster; 'plain', 'dot_product' and 'splash' choose one directly.
  """
  choices = ('auto', 'fused', *model_lib.ATTENTION_KINDS)
  if choice not in choices:
    raise errors.UserError(f'model.attention={choice!r}: use one of {choices}.')
  backend = backend or jax.default_backend()
  if choice == 'auto':
    choice = 'plain' if backend == 'cpu' else 'fused'
  if choice == 'fused':
    return 'splash' if backend == 'tpu' else 'dot_product'
  return choice


def check_batch(cfg: ml_collections.ConfigDict, mesh) -> None:
  dp = sharding.data_parallel_size(mesh)
  if cfg.grad_accum < 1:
    raise errors.UserError(f'grad_accum={cfg.grad_accum} must be >= 1 (1 = no accumulation).')
  if cfg.global_batch % cfg.grad_accum:
    raise errors.UserError(f'global_batch={cfg.global_batch} is not divisible by '
                           f'grad_accum={cfg.grad_accum}.')
  micro = cfg.global_batch // cfg.grad_accum
  if micro % dp:
    raise errors.UserError(
        f'global_batch={cfg.global_batch} / grad_accum={cfg.grad_accum} = {micro} sequences '
        f'per micro-batch is not divisible by the {dp} data-parallel devices '
        f'(mesh data×fsdp): use a multiple of {dp}.')


@dataclasses.dataclass(frozen=True)
class Run:
  """The data of a run: training and held-out sources."""
  train_source: object
  val_source: object


def _make_sources(cfg, nca_cfg, bank) -> Run:
  if cfg.data.source == 'dyck':
    source = sources.DyckSource(dyck_config(cfg), cfg.seq_len)
    return Run(source, source)
  keys = (None, None) if bank is None else tuple(
      np.asarray(b.keys) for b in bank.split(cfg.data.num_val_rules))
  make = lambda k: sources.NCASource(nca_cfg, cfg.seq_len, cfg.data.mode, k)
  return Run(make(keys[0]), make(keys[1]))


def check_config(cfg: ml_collections.ConfigDict) -> Run:
  """Every check that needs no devices and writes nothing; returns bank-less sources.

  The sources it returns know their vocabulary and shapes but hold no rules yet
  (`load_run` adds the bank): enough to build the model and check the mesh.
  """
  check_fields(cfg)
  check_values(cfg)
  d = cfg.data
  if d.source not in ('nca', 'dyck'):
    raise errors.UserError(f"data.source={d.source!r}: use 'nca' or 'dyck'.")
  nca_cfg = None
  if d.source == 'nca':
    nca_cfg = nca_config(cfg)
    if d.band is not None:
      complexity.check_band(d.band)
    frames = cfg.seq_len // tokens.tokens_per_frame(nca_cfg)
    if cfg.probe_sequences and frames < 2:
      raise errors.UserError(
          f'seq_len={cfg.seq_len} holds {frames} whole frame(s) of '
          f'{tokens.tokens_per_frame(nca_cfg)} tokens: the next-frame probe needs two (one of '
          'context); raise seq_len or set probe_sequences=0.')
  run = _make_sources(cfg, nca_cfg, None)
  model_config(cfg, run.train_source.vocab_size)
  return run


def load_or_sample_bank(cfg: ml_collections.ConfigDict, workdir: str,
                        nca_cfg: nca.NCAConfig) -> complexity.RuleBank:
  """The run's rule bank: read from the workdir, or sampled and saved there once."""
  path = os.path.join(workdir, BANK_FILE)
  if os.path.exists(path):
    return complexity.RuleBank.load(path)
  d = cfg.data
  total = d.num_train_rules + d.num_val_rules
  band = tuple(d.band) if d.band else None
  logging.info('Sampling %d rules in band %s ...', total, band)
  bank = complexity.sample_rule_bank(jax.random.PRNGKey(d.bank_seed), total, band, nca_cfg,
                                     d.bank_mode)
  if jax.process_index() == 0:
    with files.atomic_path(path) as tmp:
      bank.save(tmp)
  return bank


def load_run(cfg: ml_collections.ConfigDict, workdir: str) -> Run:
  """The run's sources with their data: the rule bank is sampled (once) or read here."""
  if cfg.data.source != 'nca':
    return _make_sources(cfg, None, None)
  nca_cfg = nca_config(cfg)
  return _make_sources(cfg, nca_cfg, load_or_sample_bank(cfg, workdir, nca_cfg))


def prepare_run(cfg: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config, then builds the sources (sampling the rule bank if needed)."""
  check_config(cfg)
  os.makedirs(workdir, exist_ok=True)
  return load_run(cfg, workdir)
