"""Hardware and speed in one place: device peaks, the targets of the dry run, the model's
FLOPs per token, a measured matmul rate (the CPU's stand-in for a peak), and MFU.

  * `peak_flops` looks up a device's dense bf16 peak (MaxText's table);
    `measured_matmul_flops` times a matmul and stands in for the peak on CPU.
  * `TARGETS`: the meshes `python -m ncalm.dryrun` plans for (devices, HBM, topology).
  * `flops_per_token` counts a training step's FLOPs per token; `mfu` divides by the peak.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from ncalm import model as model_lib

# Dense bf16 peak FLOP/s per device, keyed by lowercase substrings of
# `jax.Device.device_kind`. Looked up in this order, first match wins: the specific
# 'v5 lite' / 'v5e' / 'v5p' come before the bare 'tpu v5' (how JAX names a v5p chip),
# which is a substring of all of them.
PEAK_FLOPS_BF16: dict[str, float] = {
    'h100': 989e12,
    'h200': 989e12,
    'a100': 312e12,
    'tpu v4': 275e12,
    'v5 lite': 197e12,
    'v5e': 197e12,
    'v5p': 459e12,
    'tpu v5': 459e12,
    'v6 lite': 918e12,
    'v6e': 918e12,
}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str                # what --targets takes
  label: str               # what the table prints
  chip: str                # short name of the device
  device_kind: str         # as jax.Device.device_kind reads (peak FLOPs lookup)
  num_devices: int         # devices in the mesh; TPU v4/v5p: chips (megacore)
  hbm_gib: float           # memory per device
  devices_per_host: int
  topology: str = ''       # jax.experimental.topologies name, for the AOT compile
  megacore: bool = False   # one device per chip over two TensorCores
  note: str = ''


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target('h100x1', '1xH100-80GB', 'H100', 'NVIDIA H100 80GB HBM3', 1, 79.6, 8),
    Target('h100x8', '8xH100-80GB', 'H100', 'NVIDIA H100 80GB HBM3', 8, 79.6, 8),
    Target('h200x1', '1xH200-141GB', 'H200', 'NVIDIA H200', 1, 140.4, 8,
           note='143,771 MiB as nvidia-smi reads it; JAX takes 75% unless '
                'XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise'),
    Target('v4-32', 'TPU v4-32', 'v4', 'TPU v4', 16, 32, 4, 'v4:2x2x4', True,
           '32 TensorCores = 16 chips; a device is a chip (megacore)'),
    Target('v5e-16', 'TPU v5e-16', 'v5e', 'TPU v5 lite', 16, 16, 4, 'v5e:4x4', False,
           'v5e counts chips: 16 chips, one TensorCore each'),
    Target('v5e-256', 'TPU v5e-256', 'v5e', 'TPU v5 lite', 256, 16, 4, 'v5e:16x16', False,
           '256 chips'),
    Target('v5p-32', 'TPU v5p-32', 'v5p', 'TPU v5', 16, 95, 4, 'v5p:2x2x4', True,
           '32 TensorCores = 16 chips; a device is a chip (megacore)'),
    Target('v5p-128', 'TPU v5p-128', 'v5p', 'TPU v5', 64, 95, 4, 'v5p:4x4x4', True,
           '128 TensorCores = 64 chips; a device is a chip (megacore)'),
)}


def peak_flops(device_kind: str, override: float | None = None) -> float | None:
  """Peak FLOP/s of one device: `override` if > 0, else the table, else None (CPU)."""
  if override is not None and override > 0:
    return float(override)
  kind = device_kind.lower()
  for key, flops in PEAK_FLOPS_BF16.items():
    if key in kind:
      return flops
  return None


def measured_matmul_flops(n: int = 1024, dtype=jnp.float32, repeats: int = 3) -> float:
  """FLOP/s of a jitted n×n @ n×n on the default device: best of `repeats` after a warm-up."""
  if n < 1 or repeats < 1:
    raise ValueError(f'measured_matmul_flops: n={n} and repeats={repeats} must be >= 1.')
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), dtype)
  b = jax.random.normal(key_b, (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()  # compile and warm up
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / max(best, 1e-9)


def mfu(flops_per_token: float, tokens_per_second: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
  """Model FLOPs utilisation in [0, 1]; None when the peak is unknown."""
  if peak_per_device is None:
    return None
  if num_devices < 1 or not peak_per_device > 0:
    raise ValueError(f'mfu: num_devices={num_devices} must be >= 1 and '
                     f'peak_per_device={peak_per_device} > 0.')
  return flops_per_token * tokens_per_second / (num_devices * peak_per_device)



def flops_per_token(cfg: model_lib.ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 × matmul params (blocks + head) + attention scores."""
  matmul_params = cfg.num_layers * (4 * cfg.d_model ** 2 + 3 * cfg.d_model * cfg.mlp_dim)
  matmul_params += cfg.d_model * cfg.vocab_size
  attention = 12 * cfg.num_layers * cfg.d_model * seq_len  # QK^T and PV, fwd + bwd
  return 6 * matmul_params + attention
