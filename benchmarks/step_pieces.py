"""Where the training step's time goes, piece by piece, and what 2-D matmuls are worth.

    python benchmarks/step_pieces.py [--repeats=5]

At the shared small shape (batch 8 × sequence 1024 tokens, d_model 256, 4 heads, MLP 1024,
vocabulary 10,002, float32), times the forward and backward pass of each piece of the step
alone (median of --repeats after a compile):
1. the model's pieces as configured on CPU: head + cross-entropy, one SwiGLU MLP, one
   attention layer (projections, RoPE, 4 causal query blocks, hash dropout 0.1);
2. each matmul-bound piece written as 3-D einsums (how the model was first written) beside
   the same piece through `ncalm.model.matmul` (leading axes merged, one 2-D product),
   interleaved, with the ratio.
"""
import statistics
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ncalm import model as model_lib

_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed repeats per piece (median kept).')

B, L, E, H, F, V = 8, 1024, 256, 4, 1024, 10002
D = E // H
CFG = model_lib.ModelConfig(vocab_size=V, d_model=E, num_layers=4, num_heads=H, mlp_dim=F,
                            max_len=L, dtype='float32', attn_dropout=0.1, scan_unroll=4,
                            attention_blocks=4)


def timer(fn, *args):
  """A closure timing one call of jit(value_and_grad(fn)) over all of `args`."""
  step = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))
  jax.block_until_ready(step(*args))  # compile

  def once():
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    return time.perf_counter() - start
  return once


def interleaved(runs: dict, repeats: int) -> dict[str, float]:
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, once in runs.items():
      times[name].append(once())
  return {name: statistics.median(t) for name, t in times.items()}


def main(argv):
  del argv
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 16))
  normal = lambda *shape: jax.random.normal(next(keys), shape) * 0.05
  x, targets = normal(B, L, E), jax.random.randint(next(keys), (B, L), 0, V)
  head, gate, up, down = normal(E, V), normal(E, F), normal(E, F), normal(F, E)
  w_qkv, w_out = normal(E, H, D), normal(H, D, E)

  def head_ce(matmul):
    return lambda x, w: optax.softmax_cross_entropy_with_integer_labels(
        matmul(x, w), targets).sum()

  def mlp(matmul):
    return lambda x, g, u, d: matmul(jax.nn.silu(matmul(x, g)) * matmul(x, u), d).sum()

  def projections(matmul_in, matmul_out):
    return lambda x, wi, wo: matmul_out(jnp.sin(matmul_in(x, wi)), wo).sum()

  einsum = lambda spec: lambda a, b: jnp.einsum(spec, a, b)
  flat = model_lib.matmul
  attention = model_lib.Attention(CFG, deterministic=False)
  attention_params = nn.meta.unbox(attention.init({'params': next(keys), 'dropout': next(keys)},
                                                  x)['params'])
  dropout_key = next(keys)
  pieces = {
      'head + cross-entropy': timer(head_ce(flat), x, head),
      'one MLP': timer(mlp(flat), x, gate, up, down),
      'one attention layer': timer(
          lambda p, x: attention.apply({'params': p}, x, rngs={'dropout': dropout_key}).sum(),
          attention_params, x),
  }
  print(f'devices: {jax.devices()}; shape B {B} × L {L}, d_model {E}, {H} heads, MLP {F}, '
        f'vocab {V:,}, float32; forward + backward, median of {_REPEATS.value}')
  print('1. the step\'s pieces as the model runs them')
  for name, sec in interleaved(pieces, _REPEATS.value).items():
    print(f'  {name:>22}: {sec:6.3f} s')
  print('2. 3-D einsums against one 2-D matmul (ncalm.model.matmul)')
  pairs = {
      'head + cross-entropy': (timer(head_ce(einsum('ble,ev->blv')), x, head),
                               timer(head_ce(flat), x, head)),
      'one MLP': (timer(mlp(einsum('ble,ef->blf')), x, gate, up, down),
                  timer(mlp(flat), x, gate, up, down)),
      'Q and out projections': (
          timer(projections(einsum('ble,ehd->blhd'), einsum('blhd,hde->ble')), x, w_qkv, w_out),
          timer(projections(flat, lambda a, w: flat(a, w, contract=2)), x, w_qkv, w_out)),
  }
  runs = {(name, form): once for name, (a, b) in pairs.items()
          for form, once in (('3-D', a), ('2-D', b))}
  t = interleaved(runs, _REPEATS.value)
  for name in pairs:
    three, two = t[(name, '3-D')], t[(name, '2-D')]
    print(f'  {name:>22}: 3-D einsum {three:6.3f} s, 2-D matmul {two:6.3f} s '
          f'({three / two:.2f}× faster)')


if __name__ == '__main__':
  app.run(main)
