"""The smallest config that exercises the whole loop: tests run the real entry point on it.

    python -m ncalm.main --config=tests/tiny_config.py --workdir=/tmp/tiny
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = config_lib.base_config()
  c.train_steps = 6
  c.global_batch = 4
  c.seq_len = 76                    # two whole 38-token frames (+ 1 target)
  c.data.num_train_rules = 8
  c.data.num_val_rules = 4
  c.model.update(d_model=32, num_layers=2, num_heads=4, mlp_dim=64, dtype='float32',
                 remat='none')
  c.optim.update(lr=1e-2, schedule='warmup', warmup_steps=2)
  c.log_every = 1
  c.evals.heldout.update(every=3, batches=1)
  c.evals.probe.update(every=3, sequences=2)
  c.checkpoint_every = 3
  if variant == 'dyck':
    c.data.source = 'dyck'
    c.data.dyck.update(num_types=4, max_depth=4)
  elif variant == 'long':           # for kill-and-resume: time to kill mid-run
    c.train_steps = 40
    c.checkpoint_every = 5
    c.evals.heldout.every = c.evals.probe.every = 20
  elif variant in ('text', 'text_long'):  # --config.data.text.path=DATA_DIR (a prepared corpus)
    c.data.source = 'text'
    c.seq_len = 64
    c.evals.heldout.batches = 2
    if variant == 'text_long':
      c.train_steps = 40
      c.checkpoint_every = 5
      c.evals.heldout.every = 20
  elif variant == 'finetune':       # --config.data.finetune.path=EVAL_DIR (helpers.make_eval_data)
    c.data.source = 'finetune'
    c.seq_len = 128
    c.data.finetune.update(tokenizer='bytes', min_shots=0, max_shots=2)
    c.evals.heldout.batches = 1
  elif variant:
    raise ValueError(f'unknown variant {variant!r}')
  return c
