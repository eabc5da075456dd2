"""One attention layer, forward and backward, with its queries cut into causal blocks.

    python benchmarks/attention_blocks.py [--blocks=1,2,4,8] [--repeats=5]

Times `ncalm.attention.causal_attention` (scores, causal mask, softmax, counter-hash dropout
0.1, values) under `jax.value_and_grad` at the shared small shape's attention: batch 8,
4 heads, sequence 1024, head dim 64, float32. Every block count computes the same function
(the loss is printed to show it); block i skips the keys after its last query.
"""
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from ncalm import attention as attention_lib

_BLOCKS = flags.DEFINE_list('blocks', ['1', '2', '4', '8'], 'Query block counts to time.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per block count (median kept).')


def main(argv):
  del argv
  b, h, length, d = 8, 4, 1024, 64
  q, k, v = (jax.random.normal(key, (b, length, h, d))
             for key in jax.random.split(jax.random.PRNGKey(0), 3))
  seed = jnp.uint32(3)
  for blocks in map(int, _BLOCKS.value):
    loss = lambda q, k, v, n=blocks: jnp.sum(
        attention_lib.causal_attention(q, k, v, seed, 0.1, n, jnp.float32) ** 2)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    value, _ = jax.block_until_ready(step(q, k, v))
    times = []
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(step(q, k, v))
      times.append(time.perf_counter() - start)
    print(f'{blocks} block(s): {statistics.median(times):.3f} s per forward+backward '
          f'(loss {float(value):.2f})', flush=True)


if __name__ == '__main__':
  app.run(main)
