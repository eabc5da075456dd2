"""The unbiased pass@k estimator (Chen et al., 2021): of n samples of which c pass, the
chance that at least one of k drawn without replacement passes, 1 − C(n−c, k) / C(n, k),
computed as a product (no large binomials). An item with no samples (skipped) has no
pass@k: it is counted apart, never as solved."""
from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """1 − C(n−c, k)/C(n, k) for n samples, c correct; k ≤ n."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f'pass@{k} of {c} correct among {n} samples: need 0 ≤ c ≤ n, 1 ≤ k ≤ n')
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(correct: list[int], n: int, ks) -> dict[int, float]:
  """{k: mean over items of pass@k} for items with `correct[i]` of n samples right, for
  each k ≤ n of `ks`; {} when there are no items."""
  if not correct:
    return {}
  return {k: float(np.mean([pass_at_k(n, c, k) for c in correct])) for k in ks if k <= n}
