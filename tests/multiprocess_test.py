"""Two JAX processes on loopback train exactly like one process with two devices.

`python -m ncalm.main` runs three ways on the tiny config, each in its own workdir:
two processes with one CPU device each (`--coordinator_address`, gloo collectives),
one process with two CPU devices (the same global mesh, data=2), and one process with one
device, all with fresh NCA rules chosen inside the step (data.rules='fresh'). The two-device
runs compile the same partitioned program and an all-reduce of two
values does not depend on the order, so their metrics and final params are bitwise equal;
the one-device run agrees to float tolerance.

    python -m pytest -q tests/multiprocess_test.py
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import jax
import numpy as np

from ncalm import checkpoint
from ncalm import metrics
from ncalm import startup
from ncalm import step as step_lib

import tiny_config
import xla_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, 'tests', 'tiny_config.py')
TIMEOUT_S = 600
# Fresh rules: each device chooses its rows' rules inside the step, and the held-out bank
# is sampled once and shared — the bank's own path is checked on 8 devices (sharded_test).
FRESH = ['--config.data.rules=fresh']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_main(workdir: str, log: str, local_devices: int, extra=()) -> subprocess.Popen:
  """`python -m ncalm.main` on the tiny config with `local_devices` CPU devices; its
  output goes to the file `log`."""
  env = xla_env.child_env(local_devices)
  cmd = [sys.executable, '-m', 'ncalm.main', f'--config={CONFIG}', f'--workdir={workdir}',
         *extra]
  with open(log, 'w') as f:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_all(procs: dict[str, subprocess.Popen]) -> dict[str, int]:
  """{name: exit code}; once one run fails or TIMEOUT_S pass, kills the rest (exit -9:
  a process whose partner died would otherwise wait for it)."""
  deadline = time.time() + TIMEOUT_S
  try:
    while time.time() < deadline:
      codes = [proc.poll() for proc in procs.values()]
      if None not in codes or any(code not in (None, 0) for code in codes):
        break
      time.sleep(0.2)
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return {name: proc.returncode for name, proc in procs.items()}


def comparable(rows: list[dict]) -> list[dict]:
  """Metric lines without timing-dependent fields."""
  return [{k: v for k, v in r.items() if not k.startswith('perf/')} for r in rows]


def assert_rows_close(got: list[dict], want: list[dict], rtol: float) -> None:
  """Same steps and fields; every value equal to rtol."""
  assert [sorted(r) for r in got] == [sorted(r) for r in want], (got, want)
  for g, w in zip(got, want):
    for key, value in w.items():
      np.testing.assert_allclose(g[key], value, rtol=rtol, atol=0,
                                 err_msg=f'step {w["step"]}: {key}')


def final_params(workdir: str):
  """(step, params) of the run's latest checkpoint, restored in this process."""
  cfg = tiny_config.get_config()
  setup = step_lib.create_setup(cfg, startup.check(cfg).model)
  state, step = checkpoint.load_latest(workdir, setup.cfg, setup)
  return step, jax.device_get(state.params)


class TwoProcessTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, root, ignore_errors=True)
    cls.workdirs = {name: os.path.join(root, name)
                    for name in ('two_processes', 'two_devices', 'one_device')}
    coordinator = [f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2']
    cls.logs = {name: os.path.join(root, f'{name}.log')
                for name in ('process_0', 'process_1', 'two_devices', 'one_device')}
    procs = {
        f'process_{i}': start_main(cls.workdirs['two_processes'], cls.logs[f'process_{i}'], 1,
                                   [*coordinator, f'--process_id={i}', *FRESH])
        for i in (0, 1)}
    procs['two_devices'] = start_main(cls.workdirs['two_devices'], cls.logs['two_devices'], 2,
                                      FRESH)
    procs['one_device'] = start_main(cls.workdirs['one_device'], cls.logs['one_device'], 1,
                                     FRESH)
    codes = wait_all(procs)
    cls.output = {}
    for name, log in cls.logs.items():
      with open(log) as f:
        cls.output[name] = f.read()
    if any(codes.values()):
      raise AssertionError('runs failed (-9: killed):\n' + '\n'.join(
          f'--- {name} (exit {code}):\n{cls.output[name][-6000:]}'
          for name, code in codes.items() if code != 0))
    cls.rows = {name: comparable(metrics.read_jsonl(os.path.join(w, 'metrics.jsonl')))
                for name, w in cls.workdirs.items()}

  def test_processes_form_one_two_device_mesh(self):
    device = r'\w+\(id=\d+\)'
    want = {
        'process_0': rf'JAX process 0 / 2, local devices \[{device}\]',
        'process_1': rf'JAX process 1 / 2, local devices \[{device}\]',
        'two_devices': rf'JAX process 0 / 1, local devices \[{device}, {device}\]',
        'one_device': rf'JAX process 0 / 1, local devices \[{device}\]',
    }
    for name, pattern in want.items():
      self.assertRegex(self.output[name], pattern)
    # The whole run happened: every step logged, evaluated at 3 and 6, checkpoints written.
    rows = self.rows['two_processes']
    self.assertEqual([r['step'] for r in rows if 'train/loss' in r], [1, 2, 3, 4, 5, 6])
    self.assertEqual([r['step'] for r in rows if 'eval/loss' in r], [3, 6])
    self.assertEqual(sorted(os.listdir(os.path.join(self.workdirs['two_processes'],
                                                    'checkpoints'))), ['3', '6'])

  def test_two_processes_equal_one_process_with_two_devices_exactly(self):
    self.assertEqual(self.rows['two_processes'], self.rows['two_devices'])

  def test_two_processes_match_one_device(self):
    assert_rows_close(self.rows['two_processes'], self.rows['one_device'], rtol=1e-5)

  def test_final_checkpoints_restore_bitwise_equal(self):
    step_a, params_a = final_params(self.workdirs['two_processes'])
    step_b, params_b = final_params(self.workdirs['two_devices'])
    self.assertEqual((step_a, step_b), (6, 6))
    self.assertEqual(jax.tree.structure(params_a), jax.tree.structure(params_b))
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)

  def test_comparisons_catch_the_smallest_difference(self):
    rows = self.rows['two_processes']
    last = max(i for i, r in enumerate(rows) if 'train/loss' in r)
    nudged = [dict(r) for r in rows]
    nudged[last]['train/loss'] = float(np.nextafter(rows[last]['train/loss'], np.inf))
    self.assertNotEqual(nudged, self.rows['two_devices'])   # one ulp off: not identical
    moved = [dict(r) for r in rows]
    moved[last]['train/loss'] *= 1 + 2e-5
    with self.assertRaises(AssertionError):
      assert_rows_close(moved, self.rows['one_device'], rtol=1e-5)
    _, params = final_params(self.workdirs['two_processes'])
    _, reference = final_params(self.workdirs['two_devices'])
    gate = np.array(params['layers']['mlp']['gate'])
    gate.flat[0] = np.nextafter(gate.flat[0], np.inf)
    with self.assertRaises(AssertionError):
      np.testing.assert_array_equal(gate, reference['layers']['mlp']['gate'])


class UnsharedWorkdirTest(absltest.TestCase):

  def test_processes_that_do_not_share_the_workdir_are_refused(self):
    root = self.create_tempdir().full_path
    coordinator = [f'--coordinator_address=127.0.0.1:{free_port()}', '--num_processes=2']
    logs = [os.path.join(root, f'process_{i}.log') for i in (0, 1)]
    procs = {i: start_main(os.path.join(root, f'own_{i}'), logs[i], 1,
                           [*coordinator, f'--process_id={i}']) for i in (0, 1)}
    self.addCleanup(lambda: [p.kill() for p in procs.values() if p.poll() is None])
    codes = {i: proc.wait(timeout=TIMEOUT_S) for i, proc in procs.items()}  # both refuse
    self.assertEqual(codes, {0: 2, 1: 2})
    for log in logs:
      with open(log) as f:
        self.assertRegex(' '.join(f.read().split()),
                         r"workdir '.*own_\d' is not shared: process\(es\) \[1\] of 2 "
                         r'do not see the file process 0')
    for i in (0, 1):   # refused before anything was written
      self.assertEqual(os.listdir(os.path.join(root, f'own_{i}')), [])


if __name__ == '__main__':
  absltest.main()
