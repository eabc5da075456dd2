"""32-bit integer hashing on the device: counter-based bits for dropout, tensor digests.

`mix32` is murmur3's 32-bit finaliser: a bijection of uint32 in which every input bit
changes about half of the output bits. Applied to a counter (an element's position) xor
a seed, it gives well-spread bits at a few integer operations per element, which XLA
fuses into the surrounding elementwise work.
"""
import jax
import jax.numpy as jnp


def mix32(x: jax.Array) -> jax.Array:
  """murmur3's fmix32 on uint32 (wrapping arithmetic)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)
