"""`python -m ncalm.dryrun`: memory, time and compile check of a config on target meshes.

The code is in `ncalm.tools.dryrun`.
"""
from ncalm.tools import dryrun

if __name__ == '__main__':
  dryrun.command()
