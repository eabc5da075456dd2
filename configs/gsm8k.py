"""Stage 3 on GSM8K (docs/evaluation.md): a math run fine-tuned on solved problems, then
evaluated 3-shot with 32 samples per problem.

    python -m ncalm.prepare_evals --out=$DATA/evals --gsm8k=PATH/gsm8k
    python -m ncalm.main --config=configs/gsm8k.py --workdir=/tmp/gsm8k \
        --config.init.from_run=/tmp/text_math --config.data.finetune.path=$DATA/evals \
        --config.evals.data=$DATA/evals

As published (docs/method.md §6): 10 epochs over the 7,473 training problems at lr 1e-5,
batch 512, warm-up 10%, clipping 1; each row five random solved problems, then the target,
the questions unscored. The model is the math run's (configs/text_math.py), its embedding
kept (same tokeniser). The start-up check names train_steps for the epochs if the items
that fit the context differ from 7,473 (with GPT-2 BPE at 1,024 tokens, all fit: 146 steps).
Expected: the paper's pass@1 is 3.82 from scratch, 4.36 after NCA pre-pre-training
(1.6B model, docs/method.md §7).

    python -m ncalm.main --config=configs/gsm8k.py:cpu1024 --workdir=/tmp/gsm8k_cpu \
        --config.init.from_run=/tmp/exp_math1024/seed_0/scratch/stage2 \
        --config.data.finetune.path=/tmp/evals --config.evals.data=/tmp/evals

`cpu1024`: from a `text_math.py:cpu1024` run (above: the math experiment's scratch arm); one
epoch at 4 rows a step (1,869 steps), lr 1e-4, evaluated on the first 100 test problems
with 8 samples each. At this scale the model cannot do arithmetic word problems: expect
pass@1 near 0 (measured: README, "Reasoning"); the point is the pipeline.
"""
import ml_collections

from ncalm import config_lib

GSM8K_TRAIN = 7473   # problems in GSM8K's train split


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'cpu1024'):
    raise ValueError(f'Unknown variant {variant!r} of gsm8k: use "" or "cpu1024".')
  c = config_lib.load_file(f'text_math.py{":" + variant if variant else ""}', __file__)
  c.data.source = 'finetune'
  c.data.text.update(path='', tokenizer='')   # not read: the items come from data.finetune
  c.data.finetune.update(
      path='',                      # set on the command line: EVAL_DIR (ncalm.prepare_evals)
      task='gsm8k', tokenizer='',   # '' = the tokeniser of the run init.from_run names
      min_shots=5, max_shots=5)     # five solved problems before each target
  c.init.update(from_run='', embedding='keep')  # from_run: the math run, on the command line
  c.evals.data = ''                 # set on the command line: EVAL_DIR
  c.evals.gsm8k.update(problems=1319, every=1_000_000)  # all test problems, at the end
  c.evals.heldout.update(every=1_000_000, batches=4)
  if variant == 'cpu1024':
    c.data.finetune.epochs = 1.0
    c.train_steps = 1869            # ceil(1 × 7,473 / 4)
    c.optim.update(lr=1e-4, warmup_steps=187, clip_norm=1.0)
    c.evals.gsm8k.update(problems=100, samples=8, batch_size=32)
    c.checkpoint_every = 500
  else:
    c.data.finetune.epochs = 10.0
    c.train_steps = 146             # ceil(10 × 7,473 / 512)
    c.optim.update(lr=1e-5, warmup_steps=15, clip_norm=1.0)
  return c
