"""Safetensors files and Hugging Face checkpoint folders, read and written here: the
`safetensors` package's NumPy reader has no bfloat16, the dtype most published Llama
checkpoints use, so the format is read directly (`read_safetensors`) and checked before
use. A file that is not whole, a JSON file that does not parse, a shard an index names that
is missing: `errors.UserError`; a tensor whose bytes differ from the SHA-256 that
`write_safetensors` puts in `__metadata__` (`CHECKSUM_KEY` + name): `errors.CheckpointError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct

import ml_dtypes
import numpy as np

from ncalm import errors

WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'   # a checkpoint sharded over several files
SAFETENSORS_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
                      'BF16': ml_dtypes.bfloat16}
CHECKSUM_KEY = 'ncalm.sha256.'   # + tensor name: in __metadata__, the SHA-256 of its bytes
RECOPY = ('copy the checkpoint directory again from where it came from (or export it again '
          'with `python -m ncalm.export_hf`)')


def read_json(path: str, fix: str) -> dict:
  """The JSON object in `path`; one paragraph naming the file and `fix` if it is not one."""
  try:
    with open(path, encoding='utf-8') as f:
      content = json.load(f)
  except (OSError, ValueError) as e:   # ValueError: not UTF-8, or not JSON (truncated)
    raise errors.UserError(f'{path} cannot be read as JSON ({e}): {fix}.') from None
  if not isinstance(content, dict):
    raise errors.UserError(f'{path} holds a JSON {type(content).__name__}, not an object: '
                           f'{fix}.')
  return content


def _damaged(path: str, what: str) -> errors.UserError:
  return errors.UserError(f'{path} is not a whole safetensors file: {what}. It is damaged or '
                          f'was not copied completely; {RECOPY}.')


def _is_entry(entry) -> bool:
  """Whether a safetensors header entry is {dtype: str, shape: [int...], data_offsets: [a, b]}."""
  def naturals(xs):
    return isinstance(xs, list) and all(isinstance(x, int) and x >= 0 for x in xs)
  return (isinstance(entry, dict) and isinstance(entry.get('dtype'), str)
          and naturals(entry.get('shape')) and naturals(entry.get('data_offsets'))
          and len(entry['data_offsets']) == 2
          and entry['data_offsets'][0] <= entry['data_offsets'][1])


def _header(path: str) -> tuple[dict, dict, int]:
  """(tensor entries, __metadata__, offset of the data) of a safetensors file, once every
  entry is known to lie inside the file with the size its dtype and shape need."""
  size = os.path.getsize(path)
  if size < 8:
    raise _damaged(path, f'it has {size} bytes, fewer than the 8 that give its header\'s length')
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    if length > size - 8:
      raise _damaged(path, f'its header would be {length:,} bytes long but only {size - 8:,} '
                           'bytes follow its length')
    try:
      header = json.loads(f.read(length))
    except ValueError as e:
      raise _damaged(path, f'its header is not JSON ({e})') from None
  metadata = header.pop('__metadata__', None) if isinstance(header, dict) else None
  if not isinstance(header, dict) or not isinstance(metadata or {}, dict):
    raise _damaged(path, 'its header is not a JSON object of tensors')
  data_bytes = size - 8 - length
  for name, entry in header.items():
    if not _is_entry(entry):
      raise _damaged(path, f'the header\'s entry of tensor {name!r} is not a dtype, shape and '
                           f'data offsets ({str(entry)[:100]})')
    dtype, shape, (start, end) = entry['dtype'], entry['shape'], entry['data_offsets']
    if end > data_bytes:
      raise _damaged(path, f'tensor {name!r} ends at byte {end:,} of the data but the file holds '
                           f'{data_bytes:,} bytes of data (it is truncated)')
    if dtype in SAFETENSORS_DTYPES and (
        end - start != np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize * int(np.prod(shape))):
      raise _damaged(path, f'tensor {name!r} ({dtype}, shape {shape}) has {end - start:,} bytes')
  return header, metadata or {}, 8 + length


def tensor_files(directory: str) -> dict[str, str]:
  """{tensor name: file} of a Hugging Face checkpoint directory (one file or an index whose
  every shard is there)."""
  index = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index):
    weight_map = read_json(index, RECOPY).get('weight_map')
    if not isinstance(weight_map, dict) or not all(isinstance(f, str)
                                                   for f in weight_map.values()):
      raise errors.UserError(f'{index} has no "weight_map" of tensor names to files: {RECOPY}.')
    missing = sorted({f for f in weight_map.values()
                      if not os.path.isfile(os.path.join(directory, f))})
    if missing:
      raise errors.UserError(
          f'{index} names {len(missing)} file(s) that are not in {directory!r}: '
          f'{", ".join(missing[:3])}{", ..." if len(missing) > 3 else ""}; {RECOPY}, with '
          'every file its index names.')
    return {name: os.path.join(directory, file) for name, file in weight_map.items()}
  single = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.exists(single):
    raise errors.UserError(f'{directory!r} holds neither {WEIGHTS_FILE} nor {INDEX_FILE}: '
                           'name a Hugging Face checkpoint directory (as save_pretrained or '
                           '`python -m ncalm.export_hf` write it).')
  return {name: single for name in _header(single)[0]}


def shapes(files: dict[str, str]) -> dict[str, tuple[int, ...]]:
  """{tensor name: shape} from the files' headers alone."""
  out, headers = {}, {}
  for name, path in files.items():
    if path not in headers:
      headers[path] = _header(path)[0]
    if name not in headers[path]:
      raise errors.UserError(f'{INDEX_FILE} puts tensor {name!r} in {path}, whose header does '
                             f'not have it: {RECOPY}.')
    out[name] = tuple(headers[path][name]['shape'])
  return out


def sha256(data: np.ndarray) -> str:
  """The hex SHA-256 of an array's bytes in C order (as safetensors stores them)."""
  return hashlib.sha256(np.ascontiguousarray(data).reshape(-1).view(np.uint8)).hexdigest()


def read_safetensors(path: str, names=None) -> dict[str, np.ndarray]:
  """{name: array} of the tensors `names` (all if None) in one safetensors file, memory-mapped
  (F32, F16, BF16, F64); each checked against its `CHECKSUM_KEY` digest where the file has
  one, and refused if it holds NaN or Inf."""
  header, metadata, offset = _header(path)
  data = np.memmap(path, np.uint8, mode='r')
  out = {}
  for name in (names if names is not None else header):
    entry = header[name]
    if entry['dtype'] not in SAFETENSORS_DTYPES:
      raise errors.UserError(f'{path}: tensor {name!r} has dtype {entry["dtype"]}; ncalm reads '
                             f'{list(SAFETENSORS_DTYPES)}.')
    start, end = entry['data_offsets']
    raw = data[offset + start:offset + end]
    want = metadata.get(CHECKSUM_KEY + name)
    if want is not None and sha256(raw) != want:
      raise errors.CheckpointError(
          f'{path}: tensor {name!r} differs from the SHA-256 written with it ({CHECKSUM_KEY}'
          f'{name} in the file\'s header): the file is damaged; {RECOPY}.')
    x = raw.view(SAFETENSORS_DTYPES[entry['dtype']]).reshape(entry['shape'])
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
      raise errors.UserError(
          f'{path}: tensor {name!r} holds {bad:,} NaN or infinite value(s) (of {x.size:,}); a '
          'model with them cannot train (its gradients are NaN or 0). Import a checkpoint whose '
          'tensors are all finite (an earlier one of the run that made it, say).')
    out[name] = x
  return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Writes `tensors` with the SHA-256 of each in the header (`read_safetensors` checks it)."""
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  metadata = {'format': 'pt', **{CHECKSUM_KEY + name: sha256(x) for name, x in tensors.items()}}
  safetensors_numpy.save_file(tensors, path, metadata=metadata)
  os.chmod(path, 0o666 & ~_umask())   # safetensors creates it 0600; readable like its siblings


def _umask() -> int:
  """This process's umask, read without changing it where /proc has it (threads may be
  creating files)."""
  try:
    with open('/proc/self/status') as f:
      return next(int(line.split()[1], 8) for line in f if line.startswith('Umask:'))
  except (OSError, StopIteration, ValueError):
    mask = os.umask(0)
    os.umask(mask)
    return mask
