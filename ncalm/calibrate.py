"""`python -m ncalm.calibrate`: calibrate the device complexity score of a config's NCA family.

The code is in `ncalm.tools.calibrate`.
"""
from ncalm.tools import calibrate

if __name__ == '__main__':
  calibrate.command()
