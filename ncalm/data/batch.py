"""The one contract between every data source and the step: a Batch of token arrays."""
from __future__ import annotations

from typing import NamedTuple

import jax


class Batch(NamedTuple):
  inputs: jax.Array     # int32 [B, L] token ids
  targets: jax.Array    # int32 [B, L] the next token of each input
  loss_mask: jax.Array  # float32 [B, L] weight of each target (0 = not scored)
  segment_ids: jax.Array | None = None  # int32 [B, L]: attention stays in a segment (document)
