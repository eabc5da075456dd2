"""Samples on 8 data-parallel devices against 1 device, in float32 and in bfloat16.

    python benchmarks/decode_devices.py [--prompts=32 --new=64]

One process with 8 host CPU devices (XLA_FLAGS set here, before jax is imported) decodes
the same prompts on a data=1 and a data=8 mesh with the `:cpu` text model's dimensions
(random weights ×20), greedily and by sampling (temperature 1, top-p 0.95), and prints the
share of new tokens that agree and of rows identical to the end. float32 is exact
(tests/decode_sharded_test.py asserts it); bfloat16 is what this measures.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from ncalm import model as model_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ncalm import sampler as sampler_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from ncalm import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position

_PROMPTS = flags.DEFINE_integer('prompts', 32, 'Prompts (two samples each).')
_NEW = flags.DEFINE_integer('new', 64, 'New tokens per sample.')


def samples(dtype: str, data_parallel: int, request: sampler_lib.Request,
            prompts: list[list[int]]) -> np.ndarray:
  cfg = model_lib.ModelConfig(vocab_size=4096, d_model=128, num_layers=2, num_heads=4,
                              mlp_dim=512, max_len=256, dtype=dtype, attn_dropout=0.0)
  params = nn.meta.unbox(model_lib.Transformer(cfg).init(jax.random.PRNGKey(0),
                                                         jnp.zeros((1, 8), jnp.int32)))
  params = jax.tree.map(lambda x: x * 20 if x.ndim > 1 else x, params['params'])
  mesh = sharding.make_mesh({'data': data_parallel}, jax.devices()[:data_parallel])
  sampler = sampler_lib.Sampler(cfg, mesh, sharding.LOGICAL_AXIS_RULES, 16)
  out = sampler.generate(params, prompts, request)
  return np.array([c.tokens for row in out for c in row])


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 4096, rng.integers(4, 60)).tolist() for _ in range(_PROMPTS.value)]
  requests = {'greedy': sampler_lib.Request(max_new_tokens=_NEW.value, num_samples=2),
              'sampled': sampler_lib.Request(max_new_tokens=_NEW.value, num_samples=2,
                                             temperature=1.0, top_p=0.95, seed=1)}
  print(f'{len(prompts)} prompts × 2 samples × {_NEW.value} new tokens, 1 against 8 devices')
  for dtype in ('float32', 'bfloat16'):
    for name, request in requests.items():
      one, eight = samples(dtype, 1, request, prompts), samples(dtype, 8, request, prompts)
      rows = np.all(one == eight, axis=1)
      print(f'{dtype:9s} {name:8s} tokens agreeing {np.mean(one == eight):7.2%}   rows '
            f'identical {rows.sum()}/{len(rows)}')


if __name__ == '__main__':
  app.run(main)
