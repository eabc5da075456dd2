"""Stage 3 on BIG-bench Lite (docs/evaluation.md): a web-text run fine-tuned on the tasks'
training examples, then evaluated with two shots and 64 samples per example.

    python -m ncalm.prepare_evals --out=$DATA/evals --bigbench=PATH/BIG-bench
    python -m ncalm.main --config=configs/bigbench.py --workdir=/tmp/bigbench \
        --config.init.from_run=/tmp/text_web --config.data.finetune.path=$DATA/evals \
        --config.evals.data=$DATA/evals --config.train_steps=N

As published (docs/method.md §6): one epoch at lr 5e-6, each row 0 to 3 solved examples
then the target (answer and end-of-text scored); the model is the web run's
(configs/text_web.py), its embedding kept. How many steps one epoch is depends on the
prepared split: the first start refuses with the exact train_steps to give. Evaluation:
up to 350 held-out examples a task, pass@2 chance-normalised and macro-averaged (the
paper: 20.91 from scratch, 26.51 after NCA pre-pre-training, on its own split). The task
files are not on this project's machines: this config has not been run here.
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'cpu1024'):
    raise ValueError(f'Unknown variant {variant!r} of bigbench: use "" or "cpu1024".')
  c = config_lib.load_file(f'text_web.py{":" + variant if variant else ""}', __file__)
  c.data.source = 'finetune'
  c.data.text.update(path='', tokenizer='')   # not read: the items come from data.finetune
  c.data.finetune.update(
      path='',                      # set on the command line: EVAL_DIR (ncalm.prepare_evals)
      task='bigbench_lite', tokenizer='',   # '' = the tokeniser of init.from_run's run
      min_shots=0, max_shots=3,     # 0-3 solved examples before each target
      epochs=1.0)                   # train_steps must match: the start-up check names it
  c.init.update(from_run='', embedding='keep')  # from_run: the web run, on the command line
  c.optim.update(lr=5e-6, clip_norm=1.0)
  c.evals.data = ''                 # set on the command line: EVAL_DIR
  c.evals.bigbench.update(examples=350, every=1_000_000)   # at the end
  c.evals.heldout.update(every=1_000_000, batches=4)
  if variant == 'cpu1024':
    c.optim.update(lr=1e-4)
    c.evals.bigbench.update(examples=50, samples=8)
  return c
