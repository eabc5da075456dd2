"""`python -m ncalm.evaluate`: a run's checkpoint measured by evaluators named on the
command line.

The code is in `ncalm.tools.evaluate`.
"""
from ncalm.tools import evaluate

if __name__ == '__main__':
  evaluate.command()
