"""`python -m ncalm.prepare_evals`: GSM8K, HumanEval and BIG-bench Lite into the one folder
the evaluators and fine-tuning items read (`ncalm.tools.prepare_evals`)."""
from ncalm.tools import prepare_evals

if __name__ == '__main__':
  prepare_evals.command()
