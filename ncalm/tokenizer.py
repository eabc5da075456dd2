"""`python -m ncalm.tokenizer train|info`: train a byte-level BPE offline, or describe a
tokeniser spec (`ncalm.tools.tokenizer`)."""
from ncalm.tools import tokenizer

if __name__ == '__main__':
  tokenizer.command()
