"""Sampling on a data-parallel mesh of 8 host CPU devices gives exactly the samples of one
device (float32): greedy and drawn, prompts of mixed lengths, the cache sharded by rows.

The 8-device half runs in a child process (this file run as `decode_sharded_test.py
--child OUT_DIR`, XLA_FLAGS set before jax is imported) and writes its samples to OUT_DIR.

    python -m pytest -q tests/decode_sharded_test.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import xla_env

CHILD_FLAG = '--child'
DEVICE_COUNT = 8
if __name__ == '__main__' and CHILD_FLAG in sys.argv:
  os.environ['XLA_FLAGS'] = xla_env.xla_flags(DEVICE_COUNT)  # before jax is imported

from absl.testing import absltest  # pylint: disable=g-import-not-at-top
import flax.linen as nn
import jax
import jax.numpy as jnp

from ncalm import model as model_lib
from ncalm import sampler as sampler_lib
from ncalm import sharding

CFG = model_lib.ModelConfig(vocab_size=48, d_model=32, num_layers=2, num_heads=4, mlp_dim=64,
                            max_len=32, dtype='float32', attn_dropout=0.0)
PROMPTS = ([5, 9, 1, 30, 2, 7, 7], [3], [11, 12, 13, 14], [8, 8, 8, 8, 8, 8, 8, 8, 8, 1, 2],
           [40, 41], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18])
REQUESTS = {'greedy': sampler_lib.Request(max_new_tokens=10, num_samples=2),
            'drawn': sampler_lib.Request(max_new_tokens=10, num_samples=3, temperature=0.9,
                                         top_k=20, top_p=0.95, seed=7)}


def samples(data_parallel: int) -> dict[str, list]:
  """{request name: [[tokens of each sample] of each prompt]} on a data=`data_parallel` mesh."""
  mesh = sharding.make_mesh({'data': data_parallel}, jax.devices()[:data_parallel])
  rules = sharding.LOGICAL_AXIS_RULES
  model = model_lib.Transformer(CFG)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    shardings = sharding.logical_shardings(abstract, mesh, rules)['params']
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, jnp.zeros((1, 8), jnp.int32))),
                     out_shardings={'params': shardings})(jax.random.PRNGKey(0))['params']
  params = jax.tree.map(lambda x: x * 20 if x.ndim > 1 else x, params)   # decisive argmax
  sampler = sampler_lib.Sampler(CFG, mesh, rules, batch_size=8, allowed_ids=45)
  return {name: [[list(c.tokens) for c in row]
                 for row in sampler.generate(params, PROMPTS, request)]
          for name, request in REQUESTS.items()}


class ShardedSamplingTest(absltest.TestCase):

  def test_eight_data_parallel_devices_give_the_samples_of_one(self):
    out_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, out_dir, ignore_errors=True)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), CHILD_FLAG, out_dir],
                          env=xla_env.child_env(DEVICE_COUNT), capture_output=True, text=True,
                          timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stdout[-5000:] + proc.stderr[-5000:])
    with open(os.path.join(out_dir, 'samples.json')) as f:
      sharded = json.load(f)
    single = samples(1)
    self.assertEqual(sharded, single)
    self.assertNotEqual(single['drawn'][0][0], single['drawn'][0][1])


if __name__ == '__main__':
  if CHILD_FLAG in sys.argv:
    assert jax.device_count() == DEVICE_COUNT, jax.devices()
    with open(os.path.join(sys.argv[sys.argv.index(CHILD_FLAG) + 1], 'samples.json'), 'w') as f:
      json.dump(samples(DEVICE_COUNT), f)
  else:
    absltest.main()
