"""Access to the published test vectors in ../shared/testdata (never regenerated)."""
import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS_PATH = os.environ.get('NCALM_VECTORS', os.path.join(
    _HERE, '..', '..', 'shared', 'testdata', 'nca_published_vectors.npz'))


def published_vectors() -> dict:
  if not os.path.exists(VECTORS_PATH):
    raise FileNotFoundError(
        f'Published test vectors not found at {VECTORS_PATH}: check out shared/ beside '
        'the repository or set NCALM_VECTORS to the .npz path.')
  with np.load(VECTORS_PATH) as data:
    return {k: data[k] for k in data.files}
