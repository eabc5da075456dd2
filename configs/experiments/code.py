"""The paper's comparison on code (docs/method.md §5-7): which stage 1 makes code come soonest.

    python -m ncalm.experiment --config=configs/experiments/code.py:cpu --workdir=/tmp/exp_code

Arms (rows): scratch (no stage 1), NCA in the 30–40% band (the paper's best for code) and
the 50%+ band, Dyck, C4 and C4 with 10x the tokens, each through stage 1
(configs/stage1.py) and then the same stage 2 (configs/text_code.py: CodeParrot, AdamW lr
2e-4, 24k steps at paper scale), over `seeds`. Ablations on the 30–40% NCA arm: its stage-2
run with the attention, the MLP or the block norms of every layer re-initialised. Writes
WORKDIR/comparison.{md,csv,png} and WORKDIR/ablations.{md,csv,png}; rerun to resume.

Paper scale ('' variant) needs the corpora prepared (README, "Text") and their paths:
    --config.stage2.data.text.path=$DATA/codeparrot \
    --config.stage1.c4.data.text.path=$DATA/c4 --config.stage1.c4_10x.data.text.path=$DATA/c4
and about 6 × 3 × (1.2 h + 50 h) of one H100 at 40% MFU — a cluster job (README, "Launch").
The paper reports 1.92 (scratch) / 1.84 (NCA) final perplexity and NCA reaching scratch's
final perplexity 1.62× sooner.

`cpu`: everything at the scale of a 2-core CPU — stage 1 as configs/stage1.py:ARM_cpu
(2 layers, d_model 128; 1.2M tokens; 12M for c4_10x), stage 2 as
configs/text_code.py:cpu (CPython's standard library, a 4,096-id BPE, 300 steps of
8 × 256 tokens, evaluated every 25 steps), seeds 0, 1, 2: about 45 minutes a seed
without c4_10x, 30 more with it. What it showed is in docs/transfer.md.

HumanEval (docs/evaluation.md) measures every arm's final stage-2 model: pass@1, @10, @64
columns, with the problems from --config.stage2.evals.data=EVAL_DIR. `cpu1024`: the
reasoning pipeline end to end at CPU scale — scratch and nca_50, seed 0, stage 2 as
configs/text_code.py:cpu1024, HumanEval with 16 samples a problem (README, "Reasoning").
"""
import ml_collections

from ncalm import config_lib

ARMS = ('scratch', 'nca_30_40', 'nca_50', 'dyck', 'c4', 'c4_10x')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'cpu', 'cpu1024'):
    raise ValueError(f'Unknown variant {variant!r} of experiments/code: use "", "cpu" or '
                     '"cpu1024".')
  suffix = '_cpu' if variant else ''
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)               # every arm runs each seed (model init, rules, data order)
  c.arms = ARMS                     # table rows, in order; 'scratch' has no stage 1
  c.stage1 = ml_collections.ConfigDict()  # arm → its stage-1 run config
  for arm in ARMS[1:]:
    c.stage1[arm] = config_lib.load_file(f'../stage1.py:{arm}{suffix}', __file__)
  c.stage2 = config_lib.load_file(f'../text_code.py{":" + variant if variant else ""}',
                                  __file__)
  if variant:
    c.stage2.evals.heldout.every = 25  # a fine curve: the step reaching scratch's final loss
    c.stage2.checkpoint_every = 100
  # HumanEval on every arm's final stage-2 model (docs/evaluation.md), as published; its
  # problems come from --config.stage2.evals.data=EVAL_DIR (python -m ncalm.prepare_evals).
  c.evals = ('humaneval',)
  c.stage2.evals.humaneval.update(problems=164, every=1_000_000)
  if variant == 'cpu1024':          # the reasoning pipeline end to end at CPU scale
    c.seeds = (0,)
    c.arms = ('scratch', 'nca_50')
    c.stage2.evals.humaneval.update(samples=16, batch_size=64)
  elif variant:
    c.evals = ()                    # the cpu comparison's context (256) fits no problem
    c.stage2.evals.humaneval.problems = 0
  c.ablations = ml_collections.ConfigDict()  # name → stage 2 of `arm` with init.* changed
  for group in ('attention', 'mlp', 'norms'):
    c.ablations[f'nca_30_40_reinit_{group}'] = ml_collections.ConfigDict(
        dict(arm='nca_30_40', reinit=group))
  if variant == 'cpu1024':
    c.ablations = ml_collections.ConfigDict()
  return c
