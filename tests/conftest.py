import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))  # test helpers: published_reference, testdata

# JAX's persistent compilation cache, for this process and the runs it starts: the suite
# compiles the same tiny programs many times (each run of the loop makes new jitted
# functions), and a hit costs milliseconds where a compile costs seconds. Set before any
# test module imports jax; entries are keyed by the program, the flags and the devices.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'ncalm_test_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
