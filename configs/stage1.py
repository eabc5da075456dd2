"""Stage 1 of every arm of the paper's comparison (docs/method.md §5): one variant per arm.

    python -m ncalm.main --config=configs/stage1.py:ARM --workdir=/tmp/stage1_ARM

ARM (paper scale: the 1.6B model, 5,000 steps × 32 × 1,024 = 164M tokens, Adam lr 1e-4
warmed up over 5,000 steps, as configs/nca_164m.py):
  nca_50      NCA, rules in the 50%+ gzip band (the paper's best for web text and math)
  nca_30_40   NCA, rules in the 30–40% band (the paper's best for code)
  dyck        k-Dyck: 64 bracket types, depth <= 16, p(open) 0.5
  c4          English web text (C4), GPT-2 BPE: prepare it first and pass
              --config.data.text.path=$DATA/c4 (README, "Text")
  c4_10x      the same with 10x the tokens (50,000 steps, 1.6B tokens)

ARM_cpu: the same arm at the scale of a 2-core CPU, the one the CPU comparison of
configs/experiments/*.py:cpu uses: a 2-layer d_model-128 float32 model, 300 steps ×
8 × 512 tokens (1.2M; c4_10x_cpu 12M), Adam lr 3e-3 with warmup and cosine decay
(about 3 minutes each; c4_10x_cpu about 30). The NCA arms use a family this model does
learn in context (docs/transfer.md, "Which NCA a small model learns in context"): 8×8
grids, 2 states, one perceive channel — its gzip scores are lower than the 10-state
family's, so `nca_50_cpu` takes the family's richest rules (score > 0.1, about the top 15%)
and `nca_30_40_cpu` simpler ones (0.06–0.1). `c4_cpu` stands in for C4 with the King
James Bible (README, "Text": /tmp/ncalm_data/kjv, a 4,096-id BPE).

What to expect at CPU scale (measured over seeds 0–2, docs/transfer.md): `nca_50_cpu`
ends at eval loss 0.86–1.04 (unigram 2.7–2.8), its loss per frame falling from ~2.1 nats
at the first frame to 0.3–0.7 at the last, the probe at 98–100% of cells against 45–65% for
copying the previous frame; `nca_30_40_cpu` at 0.50–0.72, probe 76–96% against 65–82%.
Most of that fall is copying trajectories that have become periodic, not inferring the rule
(docs/transfer.md, "Which NCA a small model learns in context").
"""
import ml_collections

from ncalm import config_lib

ARMS = ('nca_50', 'nca_30_40', 'dyck', 'c4', 'c4_10x')


def get_config(variant: str = 'nca_50') -> ml_collections.ConfigDict:
  arm, cpu = (variant[:-4], True) if variant.endswith('_cpu') else (variant, False)
  if arm not in ARMS:
    raise ValueError(f'Unknown arm {variant!r} of stage1: use one of {ARMS}, '
                     'optionally with _cpu.')
  c = config_lib.base_config()      # every field, commented, with the paper's values
  c.train_steps = 5000              # 5,000 × 32 × 1,024 = 164M tokens
  c.global_batch = 32
  c.model.update(d_model=2048, num_layers=24, num_heads=32, mlp_dim=8192, dtype='bfloat16')
  c.optim.update(name='adam', lr=1e-4, schedule='warmup', warmup_steps=5000)
  if arm == 'nca_50':
    c.data.band = (0.5, 1.0)
  elif arm == 'nca_30_40':
    c.data.band = (0.3, 0.4)
  elif arm == 'dyck':
    c.data.source = 'dyck'          # data.dyck: 64 types, depth 16, p(open) 0.5 (defaults)
  else:                             # c4, c4_10x
    c.data.source = 'text'
    c.data.text.path = ''           # set on the command line: the prepared C4 DATA_DIR
    c.data.text.tokenizer = 'tiktoken:gpt2'  # stage 2's vocabulary: init.embedding=keep works
    c.evals.heldout.every = 1000
    c.checkpoint_every = 1000
  if arm == 'c4_10x':
    c.train_steps = 50_000          # 1.6B tokens; warmup still 5,000 steps, then constant
  if cpu:
    _cpu(c, arm)
  return c


def _cpu(c: ml_collections.ConfigDict, arm: str) -> None:
  """The CPU scale of an arm (module docstring)."""
  c.seq_len = 512
  c.global_batch = 8
  c.train_steps = 3000 if arm == 'c4_10x' else 300
  c.model.update(d_model=128, num_layers=2, num_heads=4, mlp_dim=512, dtype='float32',
                 remat='none', attn_dropout=0.0)
  c.optim.update(lr=3e-3, schedule='warmup_cosine', warmup_steps=30)
  c.evals.heldout.update(every=150, batches=4)
  c.evals.probe.update(every=150, sequences=8)
  c.checkpoint_every = 150
  c.data.num_train_rules = 2000     # a smaller bank: sampled in seconds
  c.data.num_val_rules = 200
  c.data.nca.update(grid=8, num_states=2, perceive_channels=1)  # learnable in context
  if arm == 'nca_50':
    c.data.band = (0.1, 1.0)        # this family's richest rules
  elif arm == 'nca_30_40':
    c.data.band = (0.06, 0.1)       # and simpler ones
  elif arm in ('c4', 'c4_10x'):
    c.data.text.path = '/tmp/ncalm_data/kjv'
    c.data.text.tokenizer = '/tmp/ncalm_data/kjv_bpe4096.json'
