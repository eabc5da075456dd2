"""Nothing lost, nothing silently wrong: workdir identity and lock, checkpoint checksums
and fallback, failed saves, start-up checks before any work, one-paragraph errors."""
import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np
from orbax.checkpoint._src.path import atomicity

from ncalm import checkpoint
from ncalm import errors
from ncalm import metrics
from ncalm import run_files
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm import workdir as workdir_lib

import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'tests', 'tiny_config.py')


def steps_on_disk(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())


def tiny(eval_every: int | None = None, **changes):
  """The tiny config with `changes`; `eval_every` sets every evaluator's cadence."""
  cfg = tiny_config.get_config()
  cfg.update(changes)
  if eval_every is not None:
    cfg.evals.heldout.every = cfg.evals.probe.every = eval_every
  return cfg


class StartupChecksTest(absltest.TestCase):
  """Every config check runs before the workdir is created, let alone written."""

  def test_bad_values_are_refused_before_anything_is_written(self):
    cases = [
        (lambda c: c.update(log_every=0), 'log_every=0 must be an integer >= 1'),
        (lambda c: c.update(checkpoint_every=0), 'checkpoint_every'),
        (lambda c: c.evals.heldout.update(every=0), 'evals.heldout.every'),
        (lambda c: c.update(train_steps=0), 'train_steps=0 must be an integer >= 1'),
        (lambda c: c.update(grad_accum=0), 'grad_accum=0 must be an integer >= 1'),
        (lambda c: c.model.update(dtype='float17'), "model.dtype='float17'"),
        (lambda c: c.update(grad_accum=3), 'global_batch=4 is not divisible by grad_accum=3'),
        (lambda c: c.mesh.update(data=2), 'mesh'),
        (lambda c: c.model.update(num_heads=3), 'model.d_model=32 is not divisible'),
        (lambda c: c.data.update(band=(0.7, 0.2)), 'band'),
        (lambda c: c.update(seq_len=40), 'seq_len=40 holds 1 whole frame'),
        (lambda c: c.optim.update(name='sgd'), 'optim.name'),
    ]
    for change, message in cases:
      workdir = os.path.join(self.create_tempdir().full_path, 'run')
      cfg = tiny()
      change(cfg)
      with self.assertRaisesRegex(errors.UserError, message, msg=message):
        train.train_and_evaluate(cfg, workdir)
      self.assertFalse(os.path.exists(workdir), message)

  def test_unwritable_workdir_is_refused_with_its_path(self):
    parent = self.create_tempfile('a_file').full_path
    with self.assertRaisesRegex(errors.UserError, r"workdir '.*a_file/run' cannot be written"):
      train.train_and_evaluate(tiny(), os.path.join(parent, 'run'))


class WorkdirIdentityTest(absltest.TestCase):
  """A workdir remembers the config it was made for."""

  def setUp(self):
    super().setUp()
    self.workdir = self.create_tempdir().full_path

  def test_first_run_writes_the_identity_and_same_config_passes(self):
    cfg = tiny()
    workdir_lib.check_identity(self.workdir, cfg)
    saved = json.load(open(os.path.join(self.workdir, run_files.CONFIG)))
    self.assertEqual(saved['identity']['data.band'], [0.5, 1.0])
    self.assertNotIn('train_steps', saved['identity'])
    workdir_lib.check_identity(self.workdir, tiny())  # no error

  def test_data_and_model_changes_are_refused_naming_each_field(self):
    workdir_lib.check_identity(self.workdir, tiny())
    open(os.path.join(self.workdir, 'rule_bank.npz'), 'wb').close()
    cfg = tiny()
    cfg.data.update(band=(0.2, 0.3), num_train_rules=100)
    cfg.model.update(d_model=64)
    with self.assertRaises(errors.UserError) as caught:
      workdir_lib.check_identity(self.workdir, cfg)
    message = str(caught.exception)
    for field in ('data.band: [0.5, 1.0] in the workdir, [0.2, 0.3] now',
                  'data.num_train_rules: 8 in the workdir, 100 now',
                  'model.d_model: 32 in the workdir, 64 now', 'new --workdir'):
      self.assertIn(field, message)
    for field in ('seed', 'seq_len', 'global_batch', 'optim.name', 'model.num_layers'):
      self.assertTrue(workdir_lib._is_identity(field), field)

  def test_harmless_changes_are_allowed_and_recorded(self):
    workdir_lib.check_identity(self.workdir, tiny())
    os.makedirs(os.path.join(self.workdir, 'checkpoints', '3'))
    cfg = tiny(train_steps=60, log_every=5, eval_every=7, checkpoint_every=9)
    cfg.optim.update(lr=1e-3)
    cfg.model.update(remat='full')
    cfg.mesh.update(data=1)
    with self.assertLogs('absl', 'WARNING') as logs:
      workdir_lib.check_identity(self.workdir, cfg)
    self.assertIn('train_steps: 6 → 60', logs.output[0])
    saved = json.load(open(os.path.join(self.workdir, run_files.CONFIG)))
    self.assertEqual(saved['config']['train_steps'], 60)

  def test_data_prepared_again_in_place_is_refused(self):
    workdir_lib.check_identity(self.workdir, tiny(), content={'dataset': 'aaa'})
    open(os.path.join(self.workdir, 'metrics.jsonl'), 'w').close()
    workdir_lib.check_identity(self.workdir, tiny(), content={'dataset': 'aaa'})  # same data
    with self.assertRaisesRegex(errors.UserError, r'\(content fingerprints: dataset: aaa in '
                                r'the workdir, bbb now\): the dataset was prepared again'):
      workdir_lib.check_identity(self.workdir, tiny(), content={'dataset': 'bbb'})

  def test_a_workdir_older_than_fingerprints_takes_them_on(self):
    workdir_lib.check_identity(self.workdir, tiny())
    open(os.path.join(self.workdir, 'metrics.jsonl'), 'w').close()
    workdir_lib.check_identity(self.workdir, tiny(), content={'dataset': 'aaa'})
    saved = json.load(open(os.path.join(self.workdir, run_files.CONFIG)))
    self.assertEqual(saved['identity']['content.dataset'], 'aaa')
    with self.assertRaisesRegex(errors.UserError, 'prepared again in place'):
      workdir_lib.check_identity(self.workdir, tiny(), content={'dataset': 'bbb'})

  def test_damaged_run_config_is_one_paragraph(self):
    workdir_lib.check_identity(self.workdir, tiny())
    open(os.path.join(self.workdir, 'metrics.jsonl'), 'w').close()
    path = os.path.join(self.workdir, run_files.CONFIG)
    with open(path, 'r+') as f:
      f.truncate(20)
    with self.assertRaisesRegex(errors.UserError, r'run_config.json cannot be read \(.*\), so '
                                'what workdir .* was made for cannot be checked'):
      workdir_lib.check_identity(self.workdir, tiny())

  def test_workdir_with_nothing_made_yet_takes_the_new_config(self):
    workdir_lib.check_identity(self.workdir, tiny())  # then, say, the band had no rules
    cfg = tiny()
    cfg.data.update(band=(0.2, 0.3))
    workdir_lib.check_identity(self.workdir, cfg)
    saved = json.load(open(os.path.join(self.workdir, run_files.CONFIG)))
    self.assertEqual(saved['identity']['data.band'], [0.2, 0.3])

  def test_workdir_with_data_but_no_identity_is_refused(self):
    open(os.path.join(self.workdir, 'rule_bank.npz'), 'wb').close()
    with self.assertRaisesRegex(errors.UserError, 'rule_bank.npz but no run_config.json'):
      workdir_lib.check_identity(self.workdir, tiny())

  def test_refused_run_leaves_the_bank_untouched(self):
    train.train_and_evaluate(tiny(train_steps=1, eval_every=1), self.workdir)
    bank = os.path.join(self.workdir, 'rule_bank.npz')
    before = open(bank, 'rb').read()
    cfg = tiny(train_steps=2)
    cfg.data.update(band=(0.2, 0.3), num_train_rules=100)
    with self.assertRaisesRegex(errors.UserError, 'data.band'):
      train.train_and_evaluate(cfg, self.workdir)
    self.assertEqual(open(bank, 'rb').read(), before)
    self.assertFalse(os.path.exists(os.path.join(self.workdir, run_files.LOCK)))


class TwoRunsTest(absltest.TestCase):

  def test_second_run_on_a_busy_workdir_is_refused_and_the_first_is_intact(self):
    workdir = self.create_tempdir().full_path
    cmd = [sys.executable, '-m', 'ncalm.main', f'--config={TINY}:long', f'--workdir={workdir}']
    first = subprocess.Popen([*cmd, '--config.train_steps=100000'], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while (not os.path.exists(os.path.join(workdir, 'checkpoints', '5'))
           and time.time() < deadline and first.poll() is None):
      time.sleep(0.05)
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=300)
    self.assertEqual(second.returncode, errors.EXIT_USER_ERROR, second.stderr)
    self.assertIn(f'is in use by process {first.pid}', ' '.join(second.stderr.split()))
    self.assertEqual(first.returncode, errors.EXIT_INTERRUPTED, out)
    self.assertIn('ncalm.main: stopped: SIGTERM at step', out)
    steps = [r['step'] for r in metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
             if 'train/loss' in r]
    self.assertEqual(steps, list(range(1, steps[-1] + 1)))  # every step once, none lost
    self.assertFalse(os.path.exists(os.path.join(workdir, run_files.LOCK)))


class LockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = self.create_tempdir().full_path

  def test_second_lock_is_refused_naming_the_owner_then_released(self):
    with workdir_lib.Lock(self.workdir):
      with self.assertRaisesRegex(errors.UserError, rf'in use by process {os.getpid()} on '):
        workdir_lib.Lock(self.workdir).acquire()
    self.assertFalse(os.path.exists(os.path.join(self.workdir, run_files.LOCK)))
    with workdir_lib.Lock(self.workdir):  # free again
      pass

  def test_lock_of_a_dead_process_is_taken_over_with_a_warning(self):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = dict(pid=dead.pid, host=workdir_lib.socket.gethostname(), start_time=None,
                 started='yesterday', command='python -m ncalm.main ...')
    path = os.path.join(self.workdir, run_files.LOCK)
    with open(path, 'w') as f:
      json.dump(stale, f)
    with self.assertLogs('absl', 'WARNING') as logs:
      lock = workdir_lib.Lock(self.workdir)
      lock.acquire()
    self.assertIn(f'left by process {dead.pid}', logs.output[0])
    self.assertEqual(json.load(open(path))['pid'], os.getpid())
    lock.release()

  def test_lock_from_another_host_is_refused_with_how_to_clear_it(self):
    path = os.path.join(self.workdir, run_files.LOCK)
    with open(path, 'w') as f:
      json.dump(dict(pid=1, host='elsewhere', started='now', command='x'), f)
    with self.assertRaisesRegex(errors.UserError, 'on elsewhere.*delete the lock file'):
      workdir_lib.Lock(self.workdir).acquire()


class DigestTest(absltest.TestCase):

  def test_digest_sees_every_bit_and_position_and_ignores_sharding(self):
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    base = np.asarray(checkpoint.tensor_digest(x))
    flipped = x.copy()
    flipped.view(np.uint32)[2, 3] ^= 1
    swapped = x.copy()
    swapped[0, [0, 1]] = swapped[0, [1, 0]]
    for other in (flipped, swapped):
      self.assertFalse(np.array_equal(np.asarray(checkpoint.tensor_digest(other)), base))
    mesh = jax.make_mesh((1,), ('data',))
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P('data')))
    np.testing.assert_array_equal(checkpoint.tensor_digest(sharded), base)
    for dtype in (np.int32, np.float16, np.int8, np.bool_):  # every bit of narrow types too
      y = (x % 2).astype(dtype)
      z = y.copy()
      z.view(np.uint8)[1, 2] ^= 1
      self.assertFalse(np.array_equal(checkpoint.tensor_digest(y), checkpoint.tensor_digest(z)),
                       dtype)


class CheckpointFaultTest(absltest.TestCase):
  """Faults on the save path and in checkpoints on disk, with a real tiny run."""

  def test_failed_background_save_stops_the_run_and_keeps_the_last_good_one(self):
    workdir = self.create_tempdir().full_path
    cfg = tiny(train_steps=12, eval_every=12)
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def disk_full_at_step_6(self, *args, **kwargs):
      if os.path.basename(str(self.get_final())) == '6':
        raise OSError(errno.ENOSPC, 'No space left on device')
      return await finalize(self, *args, **kwargs)

    with mock.patch.object(atomicity.AtomicRenameTemporaryPath, 'finalize',
                           disk_full_at_step_6):
      with self.assertRaises(errors.CheckpointError) as caught:
        train.train_and_evaluate(cfg, workdir)
    message = str(caught.exception)
    self.assertRegex(message, r'checkpoint of step 6 to .*checkpoints/6 failed \(OSError: '
                     r'\[Errno 28\] No space left on device\)')
    self.assertRegex(message, r'needs about [\d.]+ MB; [\d.]+ [KMGT]?B is free there\. '
                     r'The last good checkpoint \(step 3\) is kept')
    self.assertEqual(caught.exception.exit_code, errors.EXIT_CHECKPOINT)
    self.assertEqual(steps_on_disk(workdir), [3])
    rows = metrics.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    # Stopped at the first step that saw the failure, at the latest when the next save began.
    self.assertLessEqual(max(r['step'] for r in rows), 9)
    # The same command resumes from step 3 and finishes.
    train.train_and_evaluate(cfg, workdir)
    self.assertEqual(steps_on_disk(workdir), [6, 9, 12])

  def test_nan_right_after_a_resume_points_at_the_checkpoint(self):
    workdir = self.create_tempdir().full_path
    train.train_and_evaluate(tiny(train_steps=3), workdir)
    cfg = tiny(train_steps=20, checkpoint_every=1)
    cfg.optim.update(lr=1e6)
    with self.assertRaisesRegex(errors.NonFiniteLoss,
                                r'resumed \d+ step\(s\) earlier from the checkpoint of step 3 '
                                r'\(.*checkpoints/3\), which may be at fault'):
      train.train_and_evaluate(cfg, workdir)

  def test_disk_space_warning_at_start(self):
    workdir = self.create_tempdir().full_path
    usage = shutil.disk_usage(workdir)._replace(free=1000)
    with mock.patch.object(workdir_lib.shutil, 'disk_usage', return_value=usage):
      with self.assertLogs('absl', 'WARNING') as logs:
        workdir_lib.warn_if_short_of_space(workdir, checkpoint_bytes=10**6, keep=3)
    self.assertIn('has 1000 B free, but keeping 3 checkpoints of ~976.6 KB', logs.output[0])


class CorruptCheckpointTest(absltest.TestCase):
  """Damaged checkpoints of a real run: detected, reported, skipped for an intact one."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = absltest.get_default_test_tmpdir()
    cls.cfg = tiny(train_steps=9)
    cls.reference = os.path.join(cls.root, 'reference')
    shutil.rmtree(cls.reference, ignore_errors=True)
    train.train_and_evaluate(cls.cfg, cls.reference)
    cls.want = jax.device_get(load(cls.reference, cls.cfg)[0].params)

  def _copy(self, name):
    workdir = os.path.join(self.create_tempdir().full_path, name)
    shutil.copytree(self.reference, workdir)
    return workdir

  def _damage(self, workdir, step, how):
    data = glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'state', '**', 'd', '*'),
                     recursive=True)
    target = max(data, key=os.path.getsize)
    raw = bytearray(open(target, 'rb').read())
    if how == 'flip':
      middle = len(raw) // 2
      raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])
    else:
      raw = raw[:len(raw) // 3]
    with open(target, 'wb') as f:
      f.write(raw)

  def test_damaged_newest_falls_back_and_ends_equal_to_the_intact_run(self):
    for how in ('flip', 'truncate'):
      workdir = self._copy(how)
      self._damage(workdir, 9, how)
      with self.assertLogs('absl', 'WARNING') as logs:
        train.train_and_evaluate(self.cfg, workdir)
      text = '\n'.join(logs.output)
      self.assertRegex(text, r'checkpoint of step 9 at .*checkpoints/9 is damaged', how)
      self.assertIn('Resuming from the newest intact checkpoint, step 6', text)
      self.assertEqual(steps_on_disk(workdir), [3, 6, 9])
      self.assertTrue(os.path.isdir(os.path.join(workdir, 'corrupt_checkpoints', '9')))
      state, step = load(workdir, self.cfg)
      self.assertEqual(step, 9)
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), self.want)

  def test_no_intact_checkpoint_stops_without_touching_them(self):
    workdir = self._copy('all_bad')
    for step in steps_on_disk(workdir):
      self._damage(workdir, step, 'flip')
    with self.assertRaisesRegex(errors.CheckpointError,
                                r'none of the checkpoints .* \(steps \[9, 6, 3\]\) '
                                r'can be restored'):
      train.train_and_evaluate(self.cfg, workdir)
    self.assertEqual(steps_on_disk(workdir), [3, 6, 9])
    self.assertFalse(os.path.exists(os.path.join(workdir, 'corrupt_checkpoints')))

  def test_train_steps_below_the_checkpoint_is_refused(self):
    workdir = self._copy('shorter')
    with self.assertRaisesRegex(errors.UserError,
                                'train_steps=4 is below the step of the workdir.s latest '
                                r'checkpoint \(9,'):
      train.train_and_evaluate(tiny(train_steps=4), workdir)


def load(workdir, cfg):
  setup = step_lib.create_setup(cfg, startup.model_config(cfg, 10002))
  return checkpoint.load_latest(workdir, cfg, setup)


class CommandLineTest(absltest.TestCase):
  """`python -m ncalm.main` prints one paragraph and exits 2 on user errors."""

  def _main(self, *args):
    proc = subprocess.run([sys.executable, '-m', 'ncalm.main', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr

  def _assert_paragraph(self, code, out, *needles):
    self.assertEqual(code, errors.EXIT_USER_ERROR, out)
    self.assertNotIn('Traceback', out)
    lines = out.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('ncalm.main: error: '))
    self.assertLessEqual(len(lines) - start, 4, out)  # one wrapped paragraph, at the end
    for needle in needles:
      self.assertIn(needle, ' '.join(lines[start:]))

  def test_user_errors_are_one_paragraph(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    cases = [
        ((f'--config={TINY}', f'--workdir={workdir}', '--config.modle.d_model=3'),
         ('--config.modle.d_model=3', 'Did you mean "model"')),
        ((f'--config={TINY}', f'--workdir={workdir}', '--config.log_every=0'),
         ('log_every=0 must be an integer >= 1',)),
        (('--config=/no/such/config.py', f'--workdir={workdir}'),
         ("no such file '/no/such/config.py'",)),
        ((f'--config={TINY}:bogus', f'--workdir={workdir}'),
         ('failed to load (line', "unknown variant 'bogus'")),
        ((f'--config={TINY}', f'--workdir={workdir}', '--config.model.d_model=abc'),
         ('--config.model.d_model=abc',)),
        ((f'--config={TINY}',), ('--workdir',)),
    ]
    for args, needles in cases:
      self._assert_paragraph(*self._main(*args), *needles)
    self.assertFalse(os.path.exists(workdir))

  def test_full_disk_is_one_paragraph_and_exit_code_4(self):
    workdir = self.create_tempdir().full_path
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tests', 'disk_full_main.py'), f'--config={TINY}',
         f'--workdir={workdir}', '--config.train_steps=12'],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    self.assertEqual(proc.returncode, errors.EXIT_CHECKPOINT, out)
    self.assertNotIn('Traceback', out)
    paragraph = ' '.join(out[out.index('ncalm.main: error: '):].split())
    self.assertRegex(paragraph, r'^ncalm.main: error: saving the checkpoint of step 6 to '
                     r'\S+/checkpoints/6 failed \(OSError: \[Errno 28\] No space left on '
                     r'device\); stopping now\. .* The last good checkpoint \(step 3\) is kept')


if __name__ == '__main__':
  absltest.main()
