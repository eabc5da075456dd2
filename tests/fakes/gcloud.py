"""A fake `gcloud` for tests/launch_test.py: no cloud, no network, no account.

    python tests/fakes/gcloud.py ARGS...   (the test puts a `gcloud` that runs this first on PATH)

Each call appends its arguments (after `gcloud`) as a JSON line to $FAKE_GCLOUD_LOG, then
answers from the JSON state in $FAKE_GCLOUD_STATE, which the test writes first and this
keeps up to date:

  zones         {zone: [accelerator types]}      for `tpu-vm accelerator-types list`
  buckets       [bucket names]                   for `storage buckets describe`
  slices        {name: slice}                    the queued resources (kept here)
  created       how many slices were created so far (kept here)
  preempt       per created slice, in creation order: after this many listings with its
                run going it reads SUSPENDED (null, or past the list's end: never)
  fail_lists    the numbers of the `queued-resources list` calls that fail (1 = the first)
  finish_after  on a slice that is not preempted, the exit-status file on worker 0 reads
                `exit_status` (default 0) from this read of it on (default 1)
  fail_setup    the ssh that runs `launch/worker.sh setup` fails
  workers       the number of network endpoints `tpu-vm describe` reports

A new slice is listed WAITING_FOR_RESOURCES the first time and ACTIVE after that. A call
this fake does not know fails (exit 1), so an unexpected command fails the test.
"""
import json
import os
import sys


def error(message: str, code: int = 1) -> int:
  print(f'ERROR: (gcloud) {message}', file=sys.stderr)
  return code


def answer(state: dict, argv: list[str]) -> int:
  words = [a for a in argv if not a.startswith('-')]
  flags = dict(a[2:].partition('=')[::2] for a in argv if a.startswith('--'))
  slices = state.setdefault('slices', {})
  match words:
    case ['compute', 'tpus', 'tpu-vm', 'accelerator-types', 'list']:
      if flags['zone'] not in state.get('zones', {}):
        return error(f'NOT_FOUND: zone {flags["zone"]}')
      print('\n'.join(state['zones'][flags['zone']]))
    case ['storage', 'buckets', 'describe', url]:
      if url.removeprefix('gs://') not in state.get('buckets', []):
        return error(f'NOT_FOUND: {url}')
      print(url.removeprefix('gs://'))
    case ['compute', 'tpus', 'queued-resources', 'create', name]:
      if name in slices:
        return error(f'ALREADY_EXISTS: {name}')
      slices[name] = dict(state='WAITING_FOR_RESOURCES', index=state.get('created', 0),
                          checks=0, running=False, polls=0, reads=0)
      state['created'] = state.get('created', 0) + 1
    case ['compute', 'tpus', 'queued-resources', 'list']:
      state['lists'] = state.get('lists', 0) + 1
      if state['lists'] in state.get('fail_lists', []):
        return error('UNAVAILABLE: the service is currently unavailable')
      for name, s in slices.items():
        s['checks'] += 1
        if s['state'] == 'WAITING_FOR_RESOURCES' and s['checks'] > 1:
          s['state'] = 'ACTIVE'
        preempt = state.get('preempt', [])
        after = preempt[s['index']] if s['index'] < len(preempt) else None
        if s['state'] == 'ACTIVE' and s['running'] and after is not None:
          s['polls'] += 1
          if s['polls'] >= after:
            s['state'] = 'SUSPENDED'
        print(f'{name}\t{s["state"]}')
    case ['compute', 'tpus', 'queued-resources', 'delete', name]:
      if slices.pop(name, None) is None:
        return error(f'NOT_FOUND: queued resource {name}')
    case ['compute', 'tpus', 'tpu-vm', 'describe', name] if name in slices:
      print(state.get('workers', 1))
    case ['compute', 'tpus', 'tpu-vm', 'scp', source, dest]:
      name = (source if ':' in source else dest).split(':')[0]
      if slices.get(name, {}).get('state') != 'ACTIVE':
        return error(f'scp: {name} is not ACTIVE')
    case ['compute', 'tpus', 'tpu-vm', 'ssh', name]:
      s = slices.get(name, {})
      command = flags['command']
      if s.get('state') != 'ACTIVE':
        return error(f'ssh: {name} is not ACTIVE', 255)
      if 'worker.sh setup' in command and state.get('fail_setup'):
        return error('ssh: setup failed on worker 1')
      if 'worker.sh start' in command:
        s.update(running=True, polls=0, reads=0)
      if 'ncalm-run.exit' in command and s['running']:
        s['reads'] += 1
        if s['reads'] >= state.get('finish_after', 1):
          print(state.get('exit_status', 0))
    case _:
      return error(f'the fake gcloud does not know: {" ".join(argv)}')
  return 0


def main(argv: list[str]) -> int:
  with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
    f.write(json.dumps(argv) + '\n')
  path = os.environ['FAKE_GCLOUD_STATE']
  with open(path) as f:
    state = json.load(f)
  code = answer(state, argv)
  with open(path, 'w') as f:
    json.dump(state, f, indent=1)
  return code


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
