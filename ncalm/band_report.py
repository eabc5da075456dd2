"""`python -m ncalm.band_report`: the band-by-domain figure across band experiments.

The code is in `ncalm.tools.band_report`.
"""
from ncalm.tools import band_report

if __name__ == '__main__':
  band_report.command()
