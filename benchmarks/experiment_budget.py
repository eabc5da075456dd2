"""An experiment's step time on one accelerator by the dry run: every run's steps × the
footprint's estimated step seconds (FLOPs at --mfu of the device's peak; arithmetic on the
configs, nothing is timed), summed.

    python benchmarks/experiment_budget.py \
        --config=configs/experiments/code_controls.py:h200 [--device=h200x1] [--mfu=0.4]

Text runs are estimated on a stand-in source with --text_vocab ids, so no prepared corpus
is needed. Compiling and starting the runs comes on top.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from ncalm import experiment
from ncalm.tools import footprint

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config.')
_DEVICE = flags.DEFINE_string('device', 'h200x1', 'A footprint device name.')
_MFU = flags.DEFINE_float('mfu', 0.4, 'Assumed model FLOPs utilisation.')
_TEXT_VOCAB = flags.DEFINE_integer('text_vocab', 4096, "The text runs' tokeniser vocabulary.")


def main(argv):
  del argv
  total = 0.0
  for path, cfg in experiment.jobs(_CONFIG.value, '/w'):
    if cfg.data.source in ('text', 'finetune'):
      cfg.data.source = 'dyck'      # a stand-in of the same shapes and the tokeniser's vocab
      cfg.model.vocab_size = _TEXT_VOCAB.value
    estimate = footprint.estimate(cfg, _DEVICE.value, mfu=_MFU.value)
    seconds = cfg.train_steps * estimate.step_seconds
    total += seconds
    print(f'{path}: {cfg.train_steps} steps × {estimate.step_seconds:.3f} s = {seconds:.0f} s '
          f'(fits: {estimate.fits})')
  print(f'all runs: {total / 60:.1f} minutes of steps on {_DEVICE.value} at {_MFU.value:.0%} MFU')


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
