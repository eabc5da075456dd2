"""The paper's comparison on web text (docs/method.md §5-7); as configs/experiments/code.py
(arms, seeds, layout, outputs), with stage 2 from configs/text_web.py and the ablations on
the 50%+ NCA arm (the paper's best for web text and math).

    python -m ncalm.experiment --config=configs/experiments/web.py:cpu --workdir=/tmp/exp_web

Paper scale needs --config.stage2.data.text.path=$DATA/... (README, "Text") and the C4
paths as in code.py. `cpu`: stage 2 as configs/text_web.py:cpu, evaluated every 25 steps.
At CPU scale the C4 stand-in (the King James Bible) is also web's stage-2 corpus, so
that arm there is in-domain, not a baseline. Not run in this project yet: the CPU comparison
that was run is code's (docs/transfer.md).

BIG-bench Lite (docs/evaluation.md), paper scale only: each arm's stage-2 model is
fine-tuned as published (configs/bigbench.py, the `stage3` of each arm) and evaluated with
--config.stage3.data.finetune.path=EVAL_DIR --config.stage3.evals.data=EVAL_DIR and
--config.stage3.train_steps=N (one epoch of the prepared split: the start-up check names N).
"""
import ml_collections

from ncalm import config_lib


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = config_lib.load_file(f'code.py{":" + variant if variant else ""}', __file__)
  c.stage2 = config_lib.load_file(f'../text_web.py{":cpu" if variant else ""}', __file__)
  c.evals = ()
  if not variant:                   # BIG-bench Lite: every stage-2 model fine-tuned, evaluated
    c.stage3 = config_lib.load_file('../bigbench.py', __file__)
    c.evals = ('bigbench',)
  if variant:
    c.stage2.evals.heldout.every = 25  # a fine curve: the step reaching scratch's final loss
    c.stage2.checkpoint_every = 100
  c.ablations = ml_collections.ConfigDict()  # name → stage 2 of `arm` with init.* changed
  for group in ('attention', 'mlp', 'norms'):
    c.ablations[f'nca_50_reinit_{group}'] = ml_collections.ConfigDict(
        dict(arm='nca_50', reinit=group))
  return c
