"""Stage 1 of the paper: pre-pre-train a 1.6B Llama on 164M NCA tokens (docs/method.md §4-5).

    python -m ncalm.main --config=configs/nca_164m.py --workdir=/tmp/nca_164m

5,000 steps × 32 sequences × 1,024 tokens of 12×12 NCA from rules in the 50%+ gzip band
(16,000 training and 2,000 validation rules, drawn together then split); Adam at lr 1e-4
warmed up linearly over all 5,000 steps (the last checkpoint sits at peak lr), no weight
decay or clipping; bf16 compute, f32 params, full remat. Hardware: accelerators with
≥ 40 GB each — the model, its Adam state and the f32 gradients take ~25 GiB, ~48 GiB with
activations at batch 32 on one device (`python -m ncalm.dryrun --config=configs/nca_164m.py`
prints the per-device memory for H100 and TPU meshes); at 40% MFU one H100-80GB needs
about 1.2 h plus remat recomputation (~1.6 h), 8 H100s or a v5p-32 slice about 10 minutes.
Measured on one H200 (docs/benchmarks.md, "On one H200"): 0.97 s per step, 36% MFU, with
`--config.model.remat=dots_no_batch` (batch 32 in 71 GiB there), so about 1.35 h in all.
The whole run has not been made in this project yet, so there is no measured curve; expect
the loss to start at ln(10,002) ≈ 9.2, drop below `eval/unigram_loss` within the first few
hundred steps, and keep falling with the frame index inside each sequence as the model
infers the rule in context, with the probe's per-cell accuracy climbing past
`probe/copy_baseline`. The paper reports no stage-1 loss; its stage-2 numbers are in
docs/method.md §7.

    python -m ncalm.main --config=configs/nca_164m.py:cpu --workdir=/tmp/nca_cpu

`cpu`: the same data (12×12 NCA, 50%+ band, 1,024-token sequences, rules made inside the
step) and loop with a small float32 model (2 layers, d_model 128, no attention dropout) for
600 steps of batch 4, lr 3e-3 with a short warmup and cosine decay: about 9 minutes on a
2-core CPU. Expected (measured, README "Results"): the eval loss falls from 9.2 to 7.33
nats, well below `eval/unigram_loss` (8.57: predicting the token distribution alone) — the model
learns each sequence's own state distribution in context — and the probe's per-cell
accuracy rises from 0.21 to 0.26, above `probe/copy_baseline` (0.21). Learning the rules
themselves takes the big model and the full run.

`decay`: the published run with warmup (500 steps) then cosine decay to 0.
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = config_lib.base_config()      # every field, commented, with the paper's values
  c.train_steps = 5000              # 5,000 × 32 × 1,024 = 164M tokens
  c.global_batch = 32
  c.data.band = (0.5, 1.0)          # "50%+": best for web text and math
  c.model.update(d_model=2048, num_layers=24, num_heads=32, mlp_dim=8192, dtype='bfloat16')
  c.optim.update(name='adam', lr=1e-4, schedule='warmup', warmup_steps=5000)

  if variant == 'cpu':
    c.train_steps = 600             # 600 × 4 × 1,024 ≈ 2.5M tokens
    c.global_batch = 4              # small batches, more updates: what a tiny model needs
    c.data.num_train_rules = 2000   # a smaller bank: sampled in seconds
    c.data.num_val_rules = 200
    c.model.update(d_model=128, num_layers=2, num_heads=4, mlp_dim=512, dtype='float32',
                   remat='none', attn_dropout=0.0)  # as in the README's recorded run
    c.optim.update(lr=3e-3, schedule='warmup_cosine', warmup_steps=50)
    c.evals.heldout.update(every=200, batches=4)
    c.evals.probe.update(every=200, sequences=8)
    c.checkpoint_every = 200
  elif variant == 'decay':
    c.optim.update(schedule='warmup_cosine', warmup_steps=500)
  elif variant:
    raise ValueError(f'Unknown variant {variant!r} of nca_164m: use "", "cpu" or "decay".')
  return c
