"""The config schema: every field a run understands, and the checks of the fields alone.

`base_config()` lists every field, commented, with the published stage-1 values;
experiment files in configs/ start from it and change what they change. What a field
means for the data, the model or an evaluator is decided where that lives
(`ncalm.startup` gathers the start-up checks); here only names and plain values.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

import ml_collections

from ncalm import errors
from ncalm import param_names
from ncalm import sharding


def base_config() -> ml_collections.ConfigDict:
  """Every field, with the paper's stage-1 values (docs/method.md §4-5)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, dropout and data keys all derive from it
  c.train_steps = 5000            # optimizer steps
  c.global_batch = 32             # sequences per optimizer step, over all devices
  c.grad_accum = 1                # micro-batches per step (global_batch divisible by it)
  c.seq_len = 1024                # model context; sequences hold seq_len + 1 tokens

  c.data = ml_collections.ConfigDict()
  c.data.source = 'nca'           # 'nca' | 'dyck' (made in the step) | 'text' | 'finetune'
                                  # (read by the host; finetune: a benchmark's solved examples)
  c.data.mode = 'fast'            # NCA rollout: 'fast' (same distribution) |
                                  # 'reference' (bit-exact)
  c.data.band = (0.5, 1.0)        # complexity band of the rules (units below); None = unfiltered
  c.data.band_units = 'gzip'      # 'gzip': data.band in gzip ratios (the paper's bands) |
                                  # 'quantile': fractions of the family's own rules, from its
                                  # calibration ((0.85, 1.0) = its richest 15%)
  c.data.rules = 'bank'           # 'bank': rules sampled once on the host (gzip), drawn per
                                  # sequence | 'fresh': a new rule per sequence, the best of
                                  # data.candidates scored by the device score inside the step
  c.data.candidates = 16          # fresh: candidate rules simulated per sequence; a sequence
                                  # none of them fits is unscored (metric data/short_rows)
  c.data.calibration = 'configs/calibration'  # folder of the device score's calibrations
                                  # (python -m ncalm.calibrate), for fresh rules and quantiles
  c.data.num_train_rules = 16000  # rules in the training bank (bank rules only)
  c.data.num_val_rules = 2000     # held-out rules for evaluation and the probe (a bank, also
                                  # with fresh rules; fresh candidates never take one of them)
  c.data.bank_seed = 0            # seed of the rule sampler (bank saved to the workdir)
  c.data.bank_mode = 'fast'       # rollout mode used to score candidate rules
  c.data.reject_periodic = False  # also reject rules whose trajectory over the training
                                  # window repeats a frame (fixed points, cycles, translations)
  c.data.shuffle = ''             # the shuffled-NCA control: 'frames' (each sequence's frames
                                  # in a random order) or 'patches' (each frame's patches at
                                  # random places): the same tokens, without the dynamics
  c.data.nca = ml_collections.ConfigDict()
  c.data.nca.grid = 12            # cells per side (torus)
  c.data.nca.num_states = 10      # states per cell
  c.data.nca.patch = 2            # patch side: one token per patch
  c.data.nca.tau = 1e-4           # softmax temperature of the update
  c.data.nca.perceive_channels = 4  # outputs of the rule's 3×3 conv (fewer: simpler rules)
  c.data.nca.hidden_channels = 16  # width of the rule's hidden 1×1 conv (ReLU after it)
  c.data.nca.identity_bias = 0.0  # bias towards keeping the current state
  c.data.nca.burn_in = 10         # steps dropped before recording
  c.data.nca.frames = 0           # recorded frames; 0 = just enough for seq_len + 1 tokens
  c.data.nca.padding = 'quirk'    # 'quirk' (published: state axis wrapped) | 'clean'
  c.data.dyck = ml_collections.ConfigDict()
  c.data.dyck.num_types = 64      # bracket types (Dyck baseline)
  c.data.dyck.max_depth = 16      # most brackets open at once
  c.data.dyck.p_open = 0.5        # probability of opening when free to choose
  c.data.dyck.shuffle = False     # shuffle-Dyck instead of k-Dyck
  c.data.text = ml_collections.ConfigDict()
  c.data.text.path = ''           # DATA_DIR made by `python -m ncalm.prepare` (data.source=text)
  c.data.text.tokenizer = ''      # tokeniser spec the run expects; '' = the dataset's own
  c.data.text.shuffle = True      # shuffle training windows (per epoch, from the seed)
  c.data.text.prefetch = 2        # steps of host rows prepared ahead in a background thread
  c.data.text.document_masking = False  # attention stays inside each document (segment
                                  # ids); off = the paper's windows, attention crosses them
  c.data.finetune = ml_collections.ConfigDict()   # fine-tuning on a benchmark's solved examples
  c.data.finetune.path = ''       # EVAL_DIR made by `python -m ncalm.prepare_evals`
  c.data.finetune.task = 'gsm8k'  # 'gsm8k' (train; held out: test) | 'bigbench_lite'
                                  # (train; held out: validation)
  c.data.finetune.tokenizer = ''  # tokeniser spec; '' = that of the text run init.from_run
  c.data.finetune.min_shots = 5   # solved examples before each target: uniform in
  c.data.finetune.max_shots = 5   # [min_shots, max_shots] (GSM8K 5-5, BIG-bench 0-3)
  c.data.finetune.epochs = 0.0    # > 0: passes over the items; train_steps must then be
                                  # ceil(epochs · items / global_batch) (the error names it)

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
                                  # work; 0 = auto: 4 on CPU and GPU (faster on both), 1 on TPU

  c.init = ml_collections.ConfigDict()  # where the parameters start (ncalm/transfer.py)
  c.init.from_run = ''            # stage-1 workdir to start from, or 'hf:DIR' (a Hugging Face
                                  # Llama checkpoint; with embedding='keep' to load all of it);
                                  # '' = from scratch. The run's own checkpoint always wins
                                  # (a rerun resumes itself)
  c.init.from_step = 0            # its checkpoint step; 0 = the newest intact one
  c.init.embedding = 'normal'     # new embedding and head: 'normal' (N(0, 0.02)), 'framework'
                                  # (published code: PyTorch's N(0,1) / Kaiming-uniform; also
                                  # for scratch, to compare like for like), or 'keep' (stage
                                  # 1's own; same vocabulary only)
  c.init.kept = 'weights'         # what stage 2 takes of stage 1's blocks and norms: 'weights'
                                  # (published), or 'statistics': this run's own draws moved
                                  # to each layer's mean and std of stage 1's tensor (the
                                  # weight-statistics control)
  c.init.reinit = ''              # groups re-drawn after loading, comma-separated: attention,
                                  # mlp, norms (per layer), final_norm
  c.init.freeze = ''              # groups frozen (no update, no optimizer state): those, and
                                  # embedding, head
  c.init.layer_start = 0          # per-layer groups act on layers [layer_start, layer_stop)
  c.init.layer_stop = 0           # 0 = num_layers
  # Transfer practice the paper does not use (each an arm of code_controls.py, none default):
  c.init.warm_steps = 0           # the first steps train only the new embedding and head
  c.init.transferred_lr_scale = 1.0  # the kept parameters' learning rate × this, throughout
  c.init.norms = 'kept'           # kept norms: 'kept' as trained, or 'unit_rms' (each layer's
                                  # scale vector divided by its RMS: the pattern, not the size)

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
  # Evaluators (ncalm/eval/): each runs every `every` steps and at the last step, on the
  # sources it suits (the probe on NCA only); their settings are not part of a run's identity.
  c.evals = ml_collections.ConfigDict()
  c.evals.data = ''               # EVAL_DIR of the reasoning benchmarks (GSM8K, HumanEval,
                                  # BIG-bench Lite) made by `python -m ncalm.prepare_evals`
  c.evals.heldout = ml_collections.ConfigDict()
  c.evals.heldout.every = 500     # steps between held-out loss evaluations
  c.evals.heldout.batches = 4     # held-out batches (of global_batch sequences) per evaluation
  c.evals.probe = ml_collections.ConfigDict()
  c.evals.probe.every = 500       # steps between next-frame probes (NCA)
  c.evals.probe.sequences = 16    # held-out sequences whose next frame is decoded greedily;
                                  # 0 turns the probe off
  c.evals.induction = ml_collections.ConfigDict()
  c.evals.induction.every = 500   # steps between induction probes (text)
  c.evals.induction.sequences = 0  # rows of random tokens shown twice; 0 = off
  c.evals.induction.length = 64   # tokens in each copy (two copies fit in seq_len + 1)
  c.evals.humaneval = ml_collections.ConfigDict()   # text (code) runs; docs/evaluation.md
  c.evals.humaneval.every = 500   # steps between HumanEval evaluations
  c.evals.humaneval.problems = 0  # the first N of the 164 problems; 0 = off
  c.evals.humaneval.samples = 64  # samples per problem (pass@1, @10, @samples)
  c.evals.humaneval.temperature = 0.4  # as published
  c.evals.humaneval.top_p = 0.95
  c.evals.humaneval.max_new_tokens = 500  # and at most context − prompt
  c.evals.humaneval.seed = 0      # sampling seed
  c.evals.humaneval.batch_size = 64  # rows decoded at once
  c.evals.humaneval.timeout_seconds = 10.0  # per sample in the sandbox (wall clock)
  c.evals.humaneval.unsandboxed = False  # run samples without bubblewrap (at your own risk)
  c.evals.gsm8k = ml_collections.ConfigDict()   # fine-tuned math runs; docs/evaluation.md
  c.evals.gsm8k.every = 500       # steps between GSM8K evaluations
  c.evals.gsm8k.problems = 0      # the first N of the 1,319 test problems; 0 = off
  c.evals.gsm8k.samples = 32      # samples per problem (pass@1, @8, @samples)
  c.evals.gsm8k.shots = 3         # solved examples before each problem
  c.evals.gsm8k.shots_from = 'train'  # 'train' | 'test' (published; the problem excluded)
  c.evals.gsm8k.temperature = 0.6  # as published
  c.evals.gsm8k.top_p = 1.0
  c.evals.gsm8k.max_new_tokens = 250  # and at most context − prompt; end-of-text stops
  c.evals.gsm8k.seed = 0          # shots and sampling seed
  c.evals.gsm8k.batch_size = 32   # rows decoded at once
  c.evals.bigbench = ml_collections.ConfigDict()   # fine-tuned web-text runs
  c.evals.bigbench.every = 500    # steps between BIG-bench Lite evaluations
  c.evals.bigbench.examples = 0   # held-out examples per task (published: 350); 0 = off
  c.evals.bigbench.mode = 'generate'  # 'generate' (exact match, pass@k) | 'loglik' (the
                                  # most likely choice) | 'both'
  c.evals.bigbench.samples = 64   # samples per example (pass@1, @2, @samples)
  c.evals.bigbench.shots = 2      # the task's first training examples, before each example
  c.evals.bigbench.temperature = 0.4  # as published
  c.evals.bigbench.top_p = 0.95
  c.evals.bigbench.max_new_tokens = 35
  c.evals.bigbench.seed = 0       # sampling seed
  c.evals.bigbench.batch_size = 64  # rows decoded (or choices scored) at once
  c.checkpoint_every = 500        # steps between checkpoints (and at the end, and on SIGTERM)
  c.keep_checkpoints = 3          # checkpoints kept in the workdir
  c.async_checkpoint = True       # write checkpoints in the background
  c.peak_flops = 0.0              # per-device peak FLOP/s for MFU; 0 = from the device table
  return c


def load_file(spec: str, relative_to: str = '') -> ml_collections.ConfigDict:
  """The config of 'path/to/file.py[:variant]', as `--config=` would load it; a relative
  path is taken from the directory of `relative_to` (an experiment file's __file__)."""
  path, _, variant = spec.partition(':')
  if relative_to and not os.path.isabs(path):
    path = os.path.join(os.path.dirname(os.path.abspath(relative_to)), path)
  name = 'ncalm_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  if module_spec is None or not os.path.exists(path):
    raise errors.UserError(f'config file {path!r} (from {spec!r}) does not exist.')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def flatten(d: Any, prefix: str = '') -> dict[str, Any]:
  """A (Config)dict as {dotted path: value}: the one flattening of configs in ncalm."""
  out = {}
  for key, value in d.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{dotted path: value} back into nested dicts."""
  return param_names.nest(flat, '.')


# Fields that moved: old path → the paths that hold its value now. A workdir's saved
# config is read through it (`upgrade`), and a command line naming the old path is told.
MOVED_FIELDS = {'eval_every': ('evals.heldout.every', 'evals.probe.every'),
                'eval_batches': ('evals.heldout.batches',),
                'probe_sequences': ('evals.probe.sequences',)}


def upgrade(flat: dict[str, Any]) -> dict[str, Any]:
  """A flattened config written by an older ncalm, with moved fields at their new paths."""
  out = {k: v for k, v in flat.items() if k not in MOVED_FIELDS}
  for old, new in MOVED_FIELDS.items():
    if old in flat:
      out.update({path: flat[old] for path in new if path not in flat})
  return out


def check_fields(cfg: ml_collections.ConfigDict) -> None:
  """Unknown fields are errors (a typo would otherwise be silently ignored)."""
  unknown = sorted(set(flatten(cfg)) - set(flatten(base_config())))
  moved = [f'{k} is now {" and ".join(MOVED_FIELDS[k])}' for k in unknown if k in MOVED_FIELDS]
  if moved:
    raise errors.UserError(f'Config field(s) moved: {"; ".join(moved)} (the evaluators have '
                           'a section each under evals). Set the new field(s) instead.')
  if unknown:
    raise errors.UserError(f'Unknown config field(s) {unknown}: check the spelling against '
                           'ncalm/config_lib.py:base_config().')


POSITIVE_FIELDS = ('train_steps', 'global_batch', 'grad_accum', 'log_every',
                   'evals.heldout.every', 'evals.heldout.batches', 'evals.probe.every',
                   'evals.induction.every',
                   'checkpoint_every', 'keep_checkpoints',
                   'data.num_train_rules', 'data.num_val_rules', 'data.candidates')
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
  if cfg.evals.probe.sequences < 0:
    raise errors.UserError(f'evals.probe.sequences={cfg.evals.probe.sequences} must be >= 0 '
                           '(0 turns the probe off).')
  if cfg.model.dtype not in DTYPES:
    raise errors.UserError(f'model.dtype={cfg.model.dtype!r}: use one of {list(DTYPES)} '
                           '(parameters stay float32; this is the compute dtype).')
