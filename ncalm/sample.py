"""`python -m ncalm.sample`: continuations from a run's checkpoint.

The code is in `ncalm.tools.sample`.
"""
from ncalm.tools import sample

if __name__ == '__main__':
  sample.command()
