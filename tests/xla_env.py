"""The environment of the suite's JAX processes (pytest itself and the runs it starts).

- A persistent compilation cache: the suite compiles the same tiny programs many times (each
  run of the loop makes new jitted functions); a hit costs milliseconds, a compile seconds.
  Entries are keyed by the program, the flags and the devices.
- LLVM at optimisation level 1 instead of XLA's default 2: compiling is most of the suite's
  time, and at O1 the model and NCA tests take 61% of their time at O2. The programs are the
  same HLO, so every property the suite checks holds as at O2, and the bit-exact checks
  against the published test vectors pass at both. (Level 0 is faster still but changes the
  last bit of the truncated-normal rule weights: tests/nca_test.py catches it.) To run the
  suite at XLA's default, set XLA_FLAGS=--xla_backend_optimization_level=2.
- jax.numpy rank promotion raises (`JAX_NUMPY_RANK_PROMOTION=raise`): adding a (3,) to a
  (2, 3) must be written as a broadcast, so a shape mistake fails instead of broadcasting
  silently.
"""
import os
import re
import tempfile

OPT_LEVEL_FLAG = '--xla_backend_optimization_level'
SUITE_OPT_LEVEL = 1
_DEVICE_COUNT = re.compile(r'--xla_force_host_platform_device_count=\S+')


def compilation_cache_env() -> dict[str, str]:
  """JAX's persistent compilation cache, kept between test runs; set
  JAX_COMPILATION_CACHE_DIR to choose the folder."""
  cache = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
      tempfile.gettempdir(), 'ncalm_test_jax_cache')
  return {'JAX_COMPILATION_CACHE_DIR': cache, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}


def strict_numpy_env() -> dict[str, str]:
  """jax.numpy refuses implicit rank promotion in the suite and the runs it starts."""
  return {'JAX_NUMPY_RANK_PROMOTION': 'raise'}


def xla_flags(device_count: int | None = 1) -> str:
  """XLA_FLAGS for a process with `device_count` host CPU devices (None: as this process
  has them): this process's flags, plus the suite's optimisation level unless one is set."""
  flags = os.environ.get('XLA_FLAGS', '')
  if device_count is not None:
    flags = _DEVICE_COUNT.sub('', flags)
  flags = flags.split()
  if not any(f.startswith(OPT_LEVEL_FLAG) for f in flags):
    flags.append(f'{OPT_LEVEL_FLAG}={SUITE_OPT_LEVEL}')
  if device_count is not None and device_count > 1:
    flags.append(f'--xla_force_host_platform_device_count={device_count}')
  return ' '.join(flags)


def child_env(device_count: int = 1) -> dict[str, str]:
  """The environment for a JAX process the suite starts: this one's, with the cache and
  `device_count` host CPU devices."""
  return {**os.environ, **compilation_cache_env(), **strict_numpy_env(), 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': xla_flags(device_count)}
