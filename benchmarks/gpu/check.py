"""ncalm on one GPU: the prepared check (run it through check.sh, which says how).

    benchmarks/gpu/check.sh [--smoke] [--out=DIR] [--parts=correctness,steps,data,text]

Parts, each timed, each with its own entry in DIR/gpu_check.json and a section of
DIR/gpu_check.md (both rewritten after every part, atomically, so a kill keeps the parts
that finished):
  1. correctness  (correctness.py)  logits against the host, fused vs plain attention,
                                     reference NCA vs the published vectors, bf16 vs f32;
  2. steps        (step_speed.py)   the training step at the paper's and GPT-2-small
                                     shapes: tokens/s, MFU, memory, compile time, the
                                     in-step data's share, dropout and fused attention;
  3. data         (data_speed.py)   NCA generation tokens/s, rule scoring rules/s;
  4. text         (text_feed.py)    the grain text feed against the GPT-2-small step.
Exit 0 when every part ran, 1 when one failed (its entry holds the error), 2 when refused:
no GPU without --smoke, or a package missing (the message names it and how to fetch it).
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback

from absl import app
from absl import flags

_SMOKE = flags.DEFINE_bool('smoke', False, 'Every part on the CPU backend at tiny shapes.')
_OUT = flags.DEFINE_string('out', os.environ.get('OUT') or '/tmp/ncalm_gpu_check',
                           'Where gpu_check.json and gpu_check.md go (default $OUT).')
_PARTS = flags.DEFINE_list('parts', ['correctness', 'steps', 'data', 'text'], 'Parts to run.')
_VECTORS = flags.DEFINE_string(
    'vectors', os.environ.get('NCALM_VECTORS', ''),
    'The published NCA test vectors (nca_published_vectors.npz; default $NCALM_VECTORS).')

# Imported module → the package (and version) that provides it, as check.sh's wheels hold it.
NEEDED = {
    'jax': 'jax', 'flax': 'flax', 'optax': 'optax', 'orbax.checkpoint': 'orbax-checkpoint',
    'grain': 'grain==0.2.18', 'ml_collections': 'ml_collections==1.1.0',
    'array_record.python.array_record_module': 'array-record==0.8.6',
    'tensorflow_datasets': 'tensorflow-datasets==4.9.10', 'tensorboardX': 'tensorboardX==2.6.5',
}
FETCH = ('benchmarks/gpu/fetch_carry.sh  (or, for one package: python3 -m pip download '
         '--no-deps --only-binary=:all: --python-version 3.12 --implementation cp '
         '--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl {})')


def refuse(message: str) -> None:
  print(message, file=sys.stderr)
  sys.exit(2)


def missing_packages() -> list[str]:
  missing = []
  for module, package in NEEDED.items():
    try:
      importlib.import_module(module)
    except ImportError as error:
      missing.append(f'{package} (import {module}: {error})')
  return missing


def machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              python=platform.python_version(), jax=jax.__version__,
              backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()],
              cpu_cores=os.cpu_count(), smoke=_SMOKE.value)
  for module in ('jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'grain', 'numpy'):
    try:
      info[module] = importlib.import_module(module).__version__
    except Exception:  # pylint: disable=broad-except
      pass
  try:
    info['nvidia_smi'] = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,memory.total,driver_version,clocks.max.sm',
         '--format=csv,noheader'], capture_output=True, text=True, timeout=30).stdout.strip()
    info['cuda'] = subprocess.run(['nvidia-smi'], capture_output=True, text=True,
                                  timeout=30).stdout.split('CUDA Version:')[1].split()[0]
  except (OSError, IndexError, subprocess.SubprocessError):
    pass
  return info


class Report:
  """The check's results: one entry per part, written out after each."""

  def __init__(self, out_dir: str, header: dict):
    self.out_dir, self.header, self.parts = out_dir, header, {}
    os.makedirs(out_dir, exist_ok=True)

  def add(self, name: str, seconds: float, result=None, error: str | None = None) -> None:
    failed = error is not None or bool((result or {}).get('errors'))
    self.parts[name] = dict(ok=not failed, seconds=round(seconds, 1),
                            **({'error': error} if error else {'result': result}))
    self.write()

  def write(self) -> None:
    import markdown_report  # pylint: disable=g-import-not-at-top
    doc = dict(machine=self.header, parts=self.parts)
    for name, text in (('gpu_check.json', json.dumps(doc, indent=1, default=str)),
                       ('gpu_check.md', markdown_report.render(doc))):
      path = os.path.join(self.out_dir, name)
      with open(path + '.tmp', 'w') as f:
        f.write(text)
      os.replace(path + '.tmp', path)


def main(argv):
  del argv
  smoke = _SMOKE.value
  if smoke:
    os.environ['JAX_PLATFORMS'] = 'cpu'
  missing = missing_packages()
  if missing:
    refuse('Missing packages: ' + '; '.join(missing) + '. The GPU machine has jax, flax, optax '
           'and orbax-checkpoint; carry the rest as wheels in .whl/ (check.sh installs them): '
           + FETCH.format(' '.join(m.split(' ')[0] for m in missing)))
  import jax  # pylint: disable=g-import-not-at-top
  if not smoke and jax.default_backend() != 'gpu':
    refuse(f'No GPU visible to JAX (backend {jax.default_backend()!r}, devices '
           f'{jax.devices()}): run this on the GPU machine, or with --smoke for the CPU check.')
  vectors_path = _VECTORS.value or os.path.join(os.path.dirname(__file__), '..', '..', '..',
                                                 'shared', 'testdata',
                                                 'nca_published_vectors.npz')
  if 'correctness' in _PARTS.value and not os.path.exists(vectors_path):
    refuse(f'The published NCA test vectors are not at {vectors_path!r}: pass --vectors, or '
           'let benchmarks/gpu/fetch_carry.sh copy them into .testdata/ (carried with the run).')

  import numpy as np  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top,multiple-imports
  import correctness
  import data_speed
  import step_speed
  import text_feed
  # pylint: enable=g-import-not-at-top,multiple-imports
  parts = {
      'correctness': lambda: correctness.run(smoke, dict(np.load(vectors_path))),
      'steps': lambda: step_speed.run(smoke),
      'data': lambda: data_speed.run(smoke),
      'text': lambda: text_feed.run(smoke),
  }
  unknown = [p for p in _PARTS.value if p not in parts]
  if unknown:
    refuse(f'--parts: unknown {unknown}; use some of {list(parts)}.')
  report = Report(_OUT.value, machine())
  print(json.dumps(report.header), flush=True)
  for name in _PARTS.value:
    start = time.perf_counter()
    print(f'== {name} ...', flush=True)
    try:
      result = parts[name]()
    except Exception:  # pylint: disable=broad-except
      report.add(name, time.perf_counter() - start, error=traceback.format_exc(limit=8))
      print(report.parts[name]['error'], flush=True)
    else:
      report.add(name, time.perf_counter() - start, result)
    print(f'== {name}: {"ok" if report.parts[name]["ok"] else "FAILED"} in '
          f'{report.parts[name]["seconds"]} s', flush=True)
  with open(os.path.join(_OUT.value, 'gpu_check.md')) as f:
    print(f.read())
  sys.exit(0 if all(p['ok'] for p in report.parts.values()) else 1)


if __name__ == '__main__':
  app.run(main)
