"""`python -m ncalm.render`: pictures of NCA trajectories by complexity band.

The code is in `ncalm.tools.render`.
"""
from ncalm.tools import render

if __name__ == '__main__':
  render.command()
