"""Two JAX processes on loopback each read only their own rows of a text batch; their
union, assembled into one global array, is the batch one process reads alone.

The work runs in two child processes (this file run as `text_multiprocess_test.py --child
OUT_DIR DATA_DIR PROCESS_ID PORT`), one CPU device each, gloo collectives, mesh data=2.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile

import xla_env

CHILD_FLAG = '--child'
GLOBAL_BATCH = 6
SEQ_LEN = 32
STEPS = (0, 1, 7)

if __name__ == '__main__' and CHILD_FLAG in sys.argv:
  os.environ['XLA_FLAGS'] = xla_env.xla_flags(1)  # one device, before jax is imported
  os.environ['JAX_PLATFORMS'] = 'cpu'

from absl.testing import absltest  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from ncalm import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from ncalm.data import text  # pylint: disable=g-import-not-at-top,wrong-import-position

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position


def open_train_feed(data_dir: str) -> text.TextFeed:
  return text.open_feed(data_dir, 'train', SEQ_LEN, seed=0, shuffle=True)


def child_main(out_dir: str, data_dir: str, process_id: int, port: int) -> None:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(f'127.0.0.1:{port}', 2, process_id)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(dict(data=2), jax.devices())
  batch_sharding = sharding.batch_sharding(mesh)
  feed = open_train_feed(data_dir)
  first, count = text.local_rows(batch_sharding, GLOBAL_BATCH)
  result = {'first': first, 'count': count}
  for step in STEPS:
    rows = feed.read_rows(step * GLOBAL_BATCH + first, count)
    batch = text.to_global_batch(rows, batch_sharding, GLOBAL_BATCH)
    gathered = multihost_utils.process_allgather(batch.inputs, tiled=True)
    result[f'local_{step}'] = rows.tolist()
    result[f'global_inputs_{step}'] = np.asarray(gathered).tolist()
  with open(os.path.join(out_dir, f'process_{process_id}.json'), 'w') as f:
    json.dump(result, f)
  jax.distributed.shutdown()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class TwoProcessTextFeedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.data_dir = helpers.make_corpus(os.path.join(cls.tmp, 'corpus'))
    port = free_port()
    env = xla_env.child_env(1)
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), CHILD_FLAG, cls.tmp,
                               cls.data_dir, str(i), str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    for proc in procs:
      out, _ = proc.communicate(timeout=300)
      assert proc.returncode == 0, out[-5000:]
    cls.results = []
    for i in (0, 1):
      with open(os.path.join(cls.tmp, f'process_{i}.json')) as f:
        cls.results.append(json.load(f))

  def test_processes_read_disjoint_rows_whose_union_is_the_batch(self):
    ranges = [set(range(r['first'], r['first'] + r['count'])) for r in self.results]
    self.assertEqual(ranges[0] & ranges[1], set())
    self.assertEqual(ranges[0] | ranges[1], set(range(GLOBAL_BATCH)))
    alone = open_train_feed(self.data_dir)
    for step in STEPS:
      want = alone.read_rows(step * GLOBAL_BATCH, GLOBAL_BATCH)
      for r in self.results:
        np.testing.assert_array_equal(np.array(r[f'local_{step}']),
                                      want[r['first']:r['first'] + r['count']])
        # The global array both processes assembled is the one-process batch.
        np.testing.assert_array_equal(np.array(r[f'global_inputs_{step}']), want[:, :-1])


if __name__ == '__main__':
  if CHILD_FLAG in sys.argv:
    at = sys.argv.index(CHILD_FLAG)
    child_main(sys.argv[at + 1], sys.argv[at + 2], int(sys.argv[at + 3]), int(sys.argv[at + 4]))
  else:
    absltest.main()
