"""`python -m ncalm.render`: pictures of NCA trajectories by complexity band (`ncalm.tools.render`)."""
from ncalm.tools import render

if __name__ == '__main__':
  render.command()
