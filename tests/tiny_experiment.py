"""The smallest experiment: scratch and one NCA arm over two seeds, one ablation.

    python -m ncalm.experiment --config=tests/tiny_experiment.py \
        --config.stage2.data.text.path=DATA_DIR --workdir=/tmp/tiny_experiment
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1)
  c.arms = ('scratch', 'nca')
  c.stage1 = ml_collections.ConfigDict()
  c.stage1.nca = config_lib.load_file('tiny_config.py', __file__)
  c.stage1.nca.train_steps = 3
  c.stage1.nca.evals.probe.sequences = 0
  c.stage2 = config_lib.load_file('tiny_config.py:text', __file__)
  c.stage2.evals.heldout.every = 2
  c.ablations = ml_collections.ConfigDict()
  c.ablations.nca_reinit_attention = ml_collections.ConfigDict(dict(arm='nca', reinit='attention'))
  c.contrasts = (('nca', 'nca_reinit_attention'),)   # written to WORKDIR/contrasts.md
  if variant == 'one_seed':         # for kill-and-resume
    c.seeds = (0,)
    c.ablations = ml_collections.ConfigDict()
    c.contrasts = ()
  elif variant == 'finetune':       # + stage 3 on GSM8K-format items, evaluated by gsm8k
    c.seeds = (0,)
    c.arms = ('scratch',)
    c.ablations = ml_collections.ConfigDict()
    c.contrasts = ()
    c.stage3 = config_lib.load_file('tiny_config.py:finetune', __file__)  # data.finetune.path=
    c.stage3.data.finetune.tokenizer = ''   # stage 2's
    c.stage3.init.embedding = 'keep'
    c.stage3.evals.gsm8k.update(problems=2, samples=2, shots=1, max_new_tokens=8)
    c.evals = ('gsm8k',)
  elif variant:
    raise ValueError(f'unknown variant {variant!r}')
  return c
