"""What a run's workdir holds, by name: the one home of these names (readers of a workdir —
resume, transfer, export_hf, the experiment's tables — use them too).

    run_config.json        the config and identity of the run (`ncalm.workdir`)
    .ncalm.lock            held while a run uses the workdir
    checkpoints/           orbax step folders (`ncalm.checkpoint`)
    corrupt_checkpoints/   checkpoints that failed verification, moved aside
    rule_bank.npz          the NCA rules of the run, sampled once (`ncalm.data.feeds`)
    metrics.jsonl          one JSON line per log or evaluation (`ncalm.metrics`)
    tensorboard/           the same scalars and the pictures, for TensorBoard
    loss_curves.png        train and eval loss against step, drawn at the end
    TAG/step_NNNNNNN.png   an evaluator's pictures (e.g. probe/), one per evaluation
    eval/STEP/             `python -m ncalm.evaluate` of a checkpoint: report.json, pictures
"""
CONFIG = 'run_config.json'
LOCK = '.ncalm.lock'
CHECKPOINTS = 'checkpoints'
CORRUPT_CHECKPOINTS = 'corrupt_checkpoints'
RULE_BANK = 'rule_bank.npz'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
LOSS_CURVES = 'loss_curves.png'
EVAL = 'eval'


def picture(tag: str, step: int) -> str:
  """Where an evaluator's picture `tag` (e.g. 'probe/next_frame') of `step` is saved,
  relative to the workdir: its evaluator's folder, one file per step."""
  return f'{tag.split("/")[0]}/step_{step:07d}.png'
