import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # test helpers: published_reference, testdata

import xla_env  # pylint: disable=g-import-not-at-top,wrong-import-position

# Set before any test module imports jax; the runs the tests start inherit them.
for _name, _value in {**xla_env.compilation_cache_env(), **xla_env.strict_numpy_env()}.items():
  os.environ.setdefault(_name, _value)
os.environ['XLA_FLAGS'] = xla_env.xla_flags(device_count=None)
