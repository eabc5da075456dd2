"""Stage 2 on code, from scratch (docs/method.md §5): CodeParrot, GPT-2 BPE, the 1.6B model.

    python -m ncalm.prepare --input=... --tokenizer=tiktoken:gpt2 --out=$DATA/codeparrot
    python -m ncalm.main --config=configs/text_code.py \
        --config.data.text.path=$DATA/codeparrot --workdir=/tmp/text_code

24k steps × 512 windows × 1,024 tokens (12.6B tokens); AdamW lr 2e-4, no weight decay,
750 warmup steps then cosine to 0, gradient clipping 1.0; bf16 compute, full remat. The
paper's final validation perplexity here is 1.92 from scratch and 1.84 after NCA
pre-pre-training (docs/method.md §7); transfer from a stage 1: docs/transfer.md.
Needs the corpus prepared first (README, "Text"): nothing is downloaded at run time.

    python -m ncalm.main --config=configs/text_code.py:cpu --workdir=/tmp/text_code_cpu

`cpu`: the same loop on a corpus every machine has — CPython's standard library — with a
byte-level BPE of 4,096 ids trained on it and a small float32 model (2 layers, d_model
128), 300 steps of 8 × 256 tokens. Prepare it first (~1 min on 2 cores):

    python -m ncalm.tokenizer train \
        --input="$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/**/*.py" \
        --vocab_size=4096 --out=/tmp/ncalm_data/stdlib_bpe4096.json
    python -m ncalm.prepare \
        --input="$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/**/*.py" \
        --tokenizer=/tmp/ncalm_data/stdlib_bpe4096.json --out=/tmp/ncalm_data/stdlib_code

Expected (measured, README "Text"): the validation loss falls far below the corpus's
unigram entropy within the run.

`cpu1024`: the cpu model with the published 1,024-token context (4 windows a step), where the
reasoning evaluations' prompts fit unchanged (HumanEval's; GSM8K's shots: configs/gsm8k.py).
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = config_lib.base_config()      # every field, commented
  c.data.source = 'text'
  c.data.text.path = ''             # set on the command line: the prepared DATA_DIR
  c.data.text.tokenizer = 'tiktoken:gpt2'  # the paper's GPT-2 BPE (50,257 ids → 50,304)
  c.train_steps = 24_000            # 24k × 512 × 1,024 = 12.6B tokens
  c.global_batch = 512
  c.model.update(d_model=2048, num_layers=24, num_heads=32, mlp_dim=8192, dtype='bfloat16')
  c.optim.update(name='adamw', lr=2e-4, weight_decay=0.0, clip_norm=1.0,
                 schedule='warmup_cosine', warmup_steps=750, final_lr=0.0)
  c.grad_accum = 16                 # 32 sequences per micro-batch
  c.evals.heldout.update(every=1000, batches=8)
  c.checkpoint_every = 1000

  if variant == 'cpu':
    c.data.text.path = '/tmp/ncalm_data/stdlib_code'
    c.data.text.tokenizer = '/tmp/ncalm_data/stdlib_bpe4096.json'
    c.seq_len = 256
    c.train_steps = 300
    c.global_batch = 8
    c.grad_accum = 1
    c.model.update(d_model=128, num_layers=2, num_heads=4, mlp_dim=512, dtype='float32',
                   remat='none', attn_dropout=0.0)
    c.optim.update(lr=3e-3, warmup_steps=30)
    c.log_every = 10
    c.evals.heldout.update(every=100, batches=8)
    c.checkpoint_every = 100
  elif variant == 'cpu1024':        # the cpu model with the published 1,024-token context,
    c = get_config('cpu')           # where the reasoning prompts fit unchanged
    c.seq_len = 1024
    c.global_batch = 4              # 4,096 tokens per step (the cpu variant: 2,048)
  elif variant:
    raise ValueError(f'Unknown variant {variant!r} of text_code: use "", "cpu" or "cpu1024".')
  return c
