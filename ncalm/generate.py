"""`python -m ncalm.generate`: NCA data export to .npz / ArrayRecord (`ncalm.tools.export`)."""
from ncalm.tools import export

if __name__ == '__main__':
  export.command()
