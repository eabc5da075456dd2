"""Evaluation: held-out loss (every source) and the NCA next-frame probe."""
