"""The paper's comparison on math (docs/method.md §5-7); as configs/experiments/code.py
(arms, seeds, layout, outputs), with stage 2 from configs/text_math.py and the ablations on
the 50%+ NCA arm (the paper's best for web text and math).

    python -m ncalm.experiment --config=configs/experiments/math.py:cpu --workdir=/tmp/exp_math

Paper scale needs --config.stage2.data.text.path=$DATA/... (README, "Text") and the C4
paths as in code.py. `cpu`: stage 2 as configs/text_math.py:cpu, evaluated every 25 steps.
Not run in this project yet: the CPU comparison that was run is code's (docs/transfer.md).

GSM8K (docs/evaluation.md): each arm's stage-2 model is fine-tuned as published
(configs/gsm8k.py, the `stage3` of each arm) and evaluated 3-shot; give the prepared folder
with --config.stage3.data.finetune.path=EVAL_DIR --config.stage3.evals.data=EVAL_DIR.
`cpu1024`: that pipeline end to end at CPU scale — scratch and nca_50, seed 0, stage 2 as
configs/text_math.py:cpu1024, stage 3 as configs/gsm8k.py:cpu1024 (README, "Reasoning").
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = config_lib.load_file(f'code.py{":" + variant if variant else ""}', __file__)
  c.stage2 = config_lib.load_file(f'../text_math.py{":" + variant if variant else ""}',
                                  __file__)
  if variant:
    c.stage2.evals.heldout.every = 25  # a fine curve: the step reaching scratch's final loss
    c.stage2.checkpoint_every = 100
  c.evals = ()
  if variant != 'cpu':              # GSM8K: every stage-2 model fine-tuned, then evaluated
    c.stage3 = config_lib.load_file(f'../gsm8k.py{":" + variant if variant else ""}',
                                    __file__)
    c.evals = ('gsm8k',)
  c.ablations = ml_collections.ConfigDict()  # name → stage 2 of `arm` with init.* changed
  for group in ('attention', 'mlp', 'norms'):
    c.ablations[f'nca_50_reinit_{group}'] = ml_collections.ConfigDict(
        dict(arm='nca_50', reinit=group))
  if variant == 'cpu1024':
    c.ablations = ml_collections.ConfigDict()
  return c
