"""`python -m ncalm.main ARGS` with a full disk at the save of step 6 (OSError ENOSPC raised
from orbax's commit of that checkpoint): what a user sees when the disk fills mid-run."""
import errno
import os
import runpy
import sys

from orbax.checkpoint._src.path import atomicity

_finalize = atomicity.AtomicRenameTemporaryPath.finalize


async def _disk_full_at_step_6(self, *args, **kwargs):
  if os.path.basename(str(self.get_final())) == '6':
    raise OSError(errno.ENOSPC, 'No space left on device')
  return await _finalize(self, *args, **kwargs)


if __name__ == '__main__':
  atomicity.AtomicRenameTemporaryPath.finalize = _disk_full_at_step_6
  sys.argv = [os.path.join(os.path.dirname(__file__), '..', 'ncalm', 'main.py'), *sys.argv[1:]]
  runpy.run_module('ncalm.main', run_name='__main__')
