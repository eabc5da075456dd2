"""`python -m ncalm.export_hf`: a run's model as a Hugging Face Llama checkpoint.

The code is in `ncalm.tools.export_hf`.
"""
from ncalm.tools import export_hf

if __name__ == '__main__':
  export_hf.command()
