"""`python -m ncalm.prepare`: tokenise a text corpus into an ArrayRecord dataset
(`ncalm.tools.prepare`)."""
from ncalm.tools import prepare

if __name__ == '__main__':
  prepare.command()
