"""ncalm's entry point: flags, config, distributed init, then one call into training.

    python -m ncalm.main --config=configs/nca_164m.py:cpu --workdir=/tmp/nca_cpu

Exit codes (`ncalm.errors`): 0 finished; 2 refused (config, flags, workdir), one
paragraph naming the field and the fix; 3 non-finite loss; 4 a checkpoint could not be
saved or none is intact; 75 stopped by SIGTERM after saving (rerun to resume); 1 a bug.
"""
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ncalm import cli
from ncalm import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and pictures go here; '
                               'an existing workdir is resumed.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() '
                                 '(multi-host TPU/GPU; on CPU pass the flags below).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU only; harmless elsewhere
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info('JAX process %d / %d, local devices %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
