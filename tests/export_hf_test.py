"""Hugging Face export and import (ncalm/tools/export_hf.py, ncalm/hf_llama.py,
ncalm/hf_tokenizer.py): transformers' LlamaForCausalLM computes ncalm's logits from the
exported files, its tokeniser gives ncalm's ids, and export → import is the identity."""
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import ml_dtypes
import numpy as np
import torch
import transformers

from ncalm import checkpoint
from ncalm import errors
from ncalm import hf_tokenizer
from ncalm import run_params
from ncalm import safetensors_io
from ncalm import startup
from ncalm import step as step_lib
from ncalm import train
from ncalm import transfer
from ncalm.data import tokenizers
from ncalm.tools import export_hf

import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The model of configs/nca_164m.py:cpu, on a small text corpus with the bytes tokeniser.
CPU_MODEL = dict(d_model=128, num_layers=2, num_heads=4, mlp_dim=512)


def run_config(data_dir, **model):
  cfg = helpers.text_config(data_dir)
  cfg.train_steps = 3
  cfg.model.update(**CPU_MODEL)
  cfg.model.update(**model)
  return cfg


WEIGHTS = 'model.safetensors'


def tensor_bytes(directory):
  """{tensor name: its bytes} of an export's model.safetensors."""
  tensors = safetensors_io.read_safetensors(os.path.join(directory, WEIGHTS))
  return {name: x.tobytes() for name, x in tensors.items()}


def data_span(path, name):
  """(first byte, end) of tensor `name`'s data in a safetensors file."""
  with open(path, 'rb') as f:
    (length,) = struct.unpack('<Q', f.read(8))
    start, end = json.loads(f.read(length))[name]['data_offsets']
  return 8 + length + start, 8 + length + end


def truncate(path, size):
  with open(path, 'r+b') as f:
    f.truncate(size)


def overwrite(path, offset, data):
  with open(path, 'r+b') as f:
    f.seek(offset)
    f.write(data)


def shard_with_a_missing_file(directory):
  """Turns model.safetensors into the first of two shards whose second is missing."""
  names = sorted(tensor_bytes(directory))
  os.rename(os.path.join(directory, WEIGHTS),
            os.path.join(directory, 'model-00001-of-00002.safetensors'))
  weight_map = {name: f'model-0000{1 + i % 2}-of-00002.safetensors'
                for i, name in enumerate(names)}
  with open(os.path.join(directory, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)


# Damaged hf: checkpoints: (what is done to a copy of an export, what the refusal says).
DAMAGES = {
    'file_of_4_bytes': (lambda d: truncate(os.path.join(d, WEIGHTS), 4),
                        r'model\.safetensors is not a whole safetensors file: it has 4 bytes'),
    'data_cut_short': (lambda d: truncate(os.path.join(d, WEIGHTS),
                                          os.path.getsize(os.path.join(d, WEIGHTS)) - 1000),
                       r'tensor .* ends at byte .* of the data but the file holds .* \(it is '
                       r'truncated\)'),
    'header_length_2_62': (lambda d: overwrite(os.path.join(d, WEIGHTS), 0,
                                               struct.pack('<Q', 2**62)),
                           r'its header would be 4,611,686,018,427,387,904 bytes long'),
    'garbage_header': (lambda d: overwrite(os.path.join(d, WEIGHTS), 40, b'\x00garbage}{'),
                       r'its header is not JSON'),
    'truncated_config': (lambda d: truncate(os.path.join(d, 'config.json'), 50),
                         r'config\.json cannot be read as JSON \(.*\): copy the checkpoint '
                         r'directory again'),
    'index_names_a_missing_shard': (shard_with_a_missing_file,
                                    r'index\.json names 1 file\(s\) that are not in .*: '
                                    r'model-00002-of-00002\.safetensors'),
}


class ExportImportTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.data_dir = helpers.make_corpus(os.path.join(cls.tmp, 'corpus'))
    cls.cfg = run_config(cls.data_dir)
    cls.run_dir = os.path.join(cls.tmp, 'run')
    train.train_and_evaluate(cls.cfg, cls.run_dir)
    cls.setup = step_lib.create_setup(cls.cfg, startup.check(cls.cfg).model)
    state, step = checkpoint.load_latest(cls.run_dir, cls.cfg, cls.setup)
    assert step == 3
    cls.params = state.params
    cls.out = os.path.join(cls.tmp, 'hf')
    cls.info = export_hf.export(cls.run_dir, cls.out)

  def test_files_config_and_info(self):
    self.assertCountEqual(os.listdir(self.out), [
        'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json',
        'ncalm_export.json'])
    modes = {n: stat.S_IMODE(os.stat(os.path.join(self.out, n)).st_mode)
             for n in os.listdir(self.out)}
    self.assertLen(set(modes.values()), 1, modes)   # the weights as readable as the rest
    with open(os.path.join(self.out, 'config.json')) as f:
      config = json.load(f)
    self.assertEqual(
        {k: config[k] for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads',
                                'num_key_value_heads', 'intermediate_size', 'vocab_size',
                                'head_dim', 'tie_word_embeddings', 'eos_token_id')},
        dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=512, vocab_size=384, head_dim=32, tie_word_embeddings=False,
             eos_token_id=tokenizers.BYTES_EOT_ID))
    self.assertEqual((self.info['step'], self.info['tokenizer']), (3, 'bytes'))

  def test_transformers_gives_ncalm_logits(self):
    model = transformers.LlamaForCausalLM.from_pretrained(self.out).eval()
    tokens = np.random.RandomState(0).randint(0, 257, (3, 64)).astype(np.int32)
    ours = np.asarray(self.setup.model.apply({'params': self.params}, tokens))
    with torch.no_grad():
      theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)

  def test_transformers_tokeniser_gives_ncalm_ids(self):
    hf = transformers.AutoTokenizer.from_pretrained(self.out)
    ours = tokenizers.load('bytes')
    texts = [t for t in helpers.NASTY_TEXTS if '<|endoftext|>' not in t]
    for text in texts:
      self.assertEqual(hf(text, add_special_tokens=False).input_ids, ours.encode(text).tolist())
    self.assertEqual(hf.eos_token_id, ours.eot_id)

  def import_params(self, source, **model):
    cfg = run_config(self.data_dir, **model)
    cfg.init.update(from_run=f'hf:{source}', embedding='keep')
    setup = step_lib.create_setup(cfg, startup.check(cfg).model)
    workdir, key = self.create_tempdir().full_path, jax.random.PRNGKey(0)
    state = transfer.initial_state(setup, lambda: step_lib.create_state(setup, key), key, workdir)
    return helpers.flat(state.params)

  def stacked(self):
    return helpers.flat(self.params)

  def test_export_then_import_is_the_identity(self):
    self.assertEqual(
        {k: v.tobytes() for k, v in self.import_params(self.out).items()},
        {k: v.tobytes() for k, v in self.stacked().items()})

  def test_import_into_per_layer_layout(self):
    got = self.import_params(self.out, scan_layers=False)
    for name, stacked in self.stacked().items():
      if name.startswith('layers/'):
        for i in range(stacked.shape[0]):
          np.testing.assert_array_equal(got[f'layers_{i}/{name[7:]}'], stacked[i])
      else:
        np.testing.assert_array_equal(got[name], stacked)

  def test_import_of_a_bfloat16_checkpoint_written_by_transformers(self):
    out = self.create_tempdir().full_path
    transformers.LlamaForCausalLM.from_pretrained(self.out).to(torch.bfloat16).save_pretrained(out)
    got = self.import_params(out)
    for name, value in self.stacked().items():
      want = value.astype(ml_dtypes.bfloat16).astype(np.float32)
      np.testing.assert_array_equal(got[name], want, err_msg=name)

  def test_tied_embeddings_give_the_head(self):
    out = self.create_tempdir().full_path
    config = transformers.LlamaConfig(
        vocab_size=384, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(out)
    got = self.import_params(out)
    embed = model.model.embed_tokens.weight.detach().numpy()
    np.testing.assert_array_equal(got['embedding'], embed)
    np.testing.assert_array_equal(got['head'], embed.T)
    q = model.model.layers[1].self_attn.q_proj.weight.detach().numpy()   # [H·D, E]
    np.testing.assert_array_equal(got['layers/attn/query'][1], q.T.reshape(128, 4, 32))

  def assert_refused(self, pattern, **kw):
    with self.assertRaisesRegex(errors.UserError, pattern):
      self.import_params(**kw)

  def test_import_errors_name_the_tensor_and_both_shapes(self):
    self.assert_refused(r"tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape "
                        r"\(128, 512\) there but this config needs \(128, 256\)",
                        source=self.out, mlp_dim=256)
    self.assert_refused(r'num_attention_heads=4 there but model\.num_heads=8; set '
                        r'model\.num_heads=4', source=self.out, num_heads=8)
    self.assert_refused(r'has 2 layers but model\.num_layers=3', source=self.out, num_layers=3)
    self.assert_refused(r'is not a directory', source=os.path.join(self.tmp, 'absent'))
    self.assert_refused(r'has no config\.json', source=self.data_dir)
    config_only = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.out, 'config.json'), config_only)
    self.assert_refused(r'neither model\.safetensors nor', source=config_only)

  def damaged_copy(self):
    """A copy of the export, to damage."""
    copy = os.path.join(self.create_tempdir().full_path, 'hf')
    shutil.copytree(self.out, copy)
    return copy

  def test_flipped_bytes_are_refused_naming_the_tensor(self):
    copy = self.damaged_copy()
    weights = os.path.join(copy, WEIGHTS)
    start, end = data_span(weights, 'model.layers.1.mlp.down_proj.weight')
    with open(weights, 'r+b') as f:
      f.seek((start + end) // 2)
      data = f.read(4)
      f.seek((start + end) // 2)
      f.write(bytes(b ^ 1 for b in data))   # low mantissa bits: still finite values
    with self.assertRaisesRegex(
        errors.CheckpointError,
        rf"^init\.from_run='hf:{copy}': {weights}: tensor "
        r"'model\.layers\.1\.mlp\.down_proj\.weight' differs from the SHA-256 written with it"):
      self.import_params(copy)

  def test_a_non_finite_tensor_is_refused(self):
    """Also from a file without checksums (not made by ncalm)."""
    plain = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.out, 'config.json'), plain)
    tensors = {k: np.array(v) for k, v in
               safetensors_io.read_safetensors(os.path.join(self.out, WEIGHTS)).items()}
    tensors['model.layers.0.self_attn.q_proj.weight'][3, 5] = np.nan
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    safetensors_numpy.save_file(tensors, os.path.join(plain, WEIGHTS), metadata={'format': 'pt'})
    with self.assertRaisesRegex(errors.UserError, r"tensor 'model\.layers\.0\.self_attn\.q_proj"
                                r"\.weight' holds 1 NaN or infinite value\(s\) \(of 16,384\)"):
      self.import_params(plain)

  @parameterized.named_parameters(*((name, *damage) for name, damage in DAMAGES.items()))
  def test_a_damaged_checkpoint_is_one_paragraph(self, damage, message):
    copy = self.damaged_copy()
    damage(copy)
    with self.assertRaises(errors.UserError) as raised:
      self.import_params(copy)
    self.assertNotIsInstance(raised.exception, errors.CheckpointError)   # exit 2
    self.assertRegex(str(raised.exception), rf"^init\.from_run='hf:{copy}': .*{message}")
    self.assertNotIn('\n', str(raised.exception))

  def test_export_refusals(self):
    empty_run = self.create_tempdir().full_path
    shutil.copy(os.path.join(self.run_dir, 'run_config.json'), empty_run)
    with self.assertRaisesRegex(errors.UserError, r'--workdir=.* has no finished checkpoint'):
      export_hf.export(empty_run, os.path.join(self.tmp, 'x'))
    with self.assertRaisesRegex(errors.UserError, r'is not an ncalm workdir'):
      export_hf.export(self.data_dir, os.path.join(self.tmp, 'x'))
    with self.assertRaisesRegex(errors.UserError, r'--out=.* exists and is not empty'):
      export_hf.export(self.run_dir, self.out)
    with self.assertRaisesRegex(errors.UserError, r'--step=2: .* has checkpoints of steps \[3\]'):
      export_hf.export(self.run_dir, os.path.join(self.tmp, 'x'), step=2)
    self.assertFalse(os.path.exists(os.path.join(self.tmp, 'x')))

  def test_out_and_run_config_refusals_come_before_the_checkpoint_is_read(self):
    tmp = self.create_tempdir().full_path
    a_file = os.path.join(tmp, 'file')
    open(a_file, 'w').close()
    truncated_run = os.path.join(tmp, 'run')
    os.makedirs(truncated_run)
    with open(os.path.join(self.run_dir, 'run_config.json'), 'rb') as f:
      head = f.read(100)
    with open(os.path.join(truncated_run, 'run_config.json'), 'wb') as f:
      f.write(head)
    cases = [
        ((self.run_dir, a_file), rf"--out='{a_file}' is a file: name a new directory"),
        ((self.run_dir, os.path.join(a_file, 'sub', 'hf')),
         rf"--out='{a_file}/sub/hf' cannot be made: '{a_file}' is a file, not a folder"),
        ((truncated_run, os.path.join(tmp, 'hf')),
         rf'{truncated_run}/run_config\.json cannot be read as JSON \(.*\): '
         rf"--workdir='{truncated_run}' cannot be exported without the config"),
    ]
    read = mock.patch.object(run_params, 'read_run_params', side_effect=AssertionError('read'))
    with read:
      for (workdir, out), message in cases:
        with self.subTest(out=out):
          with self.assertRaisesRegex(errors.UserError, '^' + message):
            export_hf.export(workdir, out)
      # Root writes anywhere whatever the permission bits, so the refusal is made here as the
      # kernel would make it for another user: os.access says the folder is not writable.
      with mock.patch.object(os, 'access', lambda path, mode: path != tmp):
        with self.assertRaisesRegex(errors.UserError, rf"--out='{tmp}/hf' cannot be made: this "
                                    rf"user may not write in '{tmp}'"):
          export_hf.export(self.run_dir, os.path.join(tmp, 'hf'))
    self.assertCountEqual(os.listdir(tmp), ['file', 'run'])

  def test_two_exports_into_one_out(self):
    """Each stages in its own folder; the first to finish gets --out, the other is refused
    and removes its folder; an export that died on this host leaves a folder the next removes."""
    tmp = self.create_tempdir().full_path
    out = os.path.join(tmp, 'hf')
    dead = subprocess.Popen(['true'])
    dead.wait()
    left_by_dead = f'{out}.tmp-{socket.gethostname()}-{dead.pid}-0badc0de'
    left_by_live = f'{out}.tmp-{socket.gethostname()}-1-0badc0de'   # pid 1 runs
    for path in (left_by_dead, left_by_live):
      os.makedirs(path)
    staged, write = [], hf_tokenizer.write

    def write_then_export_meanwhile(spec, staging, seq_len):
      staged.append(staging)
      if len(staged) == 1:   # the first export, before it renames: another one finishes
        export_hf.export(self.run_dir, out)
      return write(spec, staging, seq_len)

    with mock.patch.object(hf_tokenizer, 'write', write_then_export_meanwhile):
      with self.assertRaisesRegex(errors.UserError, rf"^--out='{out}' was filled by another "
                                  'export .* while this one ran; that export is left as it is'):
        export_hf.export(self.run_dir, out)
    self.assertLen(set(staged), 2)
    self.assertCountEqual(os.listdir(tmp), ['hf', os.path.basename(left_by_live)])
    self.assertCountEqual(os.listdir(out), os.listdir(self.out))
    self.assertEqual(tensor_bytes(out), tensor_bytes(self.out))

  def test_a_failed_export_leaves_nothing(self):
    out = os.path.join(self.tmp, 'failed')
    def broken(*_):
      raise OSError('disk full')
    original, hf_tokenizer.write = hf_tokenizer.write, broken
    try:
      with self.assertRaisesRegex(OSError, 'disk full'):
        export_hf.export(self.run_dir, out)
    finally:
      hf_tokenizer.write = original
    self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith('failed')], [])

  def test_command_line(self):
    out = os.path.join(self.tmp, 'cli')
    done = subprocess.run([sys.executable, '-m', 'ncalm.export_hf', f'--workdir={self.run_dir}',
                           f'--out={out}'], cwd=ROOT, capture_output=True, text=True)
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertIn('step 3', done.stdout)
    self.assertEqual(tensor_bytes(out), tensor_bytes(self.out))
    done = subprocess.run([sys.executable, '-m', 'ncalm.export_hf', f'--workdir={self.data_dir}',
                           f'--out={out}2'], cwd=ROOT, capture_output=True, text=True)
    self.assertEqual(done.returncode, errors.EXIT_USER_ERROR)
    self.assertIn('is not an ncalm workdir', done.stderr)


class TokeniserFilesTest(absltest.TestCase):

  def test_tiktoken_encoding_as_byte_level_bpe(self):
    encoding = helpers.tiny_tiktoken(  # pylint: disable=protected-access
        extra_merges=(b' t', b'he', b' the', b're', b'ret', b'retu', b'return', b'\n\n'))
    hf = hf_tokenizer.from_tiktoken(encoding)
    texts = [t for t in helpers.NASTY_TEXTS if '<|endoftext|>' not in t]
    texts += [open(p, encoding='utf-8').read() for p in helpers.CORPUS_FILES[:4]]
    for text in texts:
      self.assertEqual(hf.encode(text, add_special_tokens=False).ids,
                       encoding.encode_ordinary(text), msg=repr(text[:40]))
    self.assertEqual(hf.token_to_id('<|endoftext|>'), encoding.eot_token)

  def test_hf_json_is_copied_and_gives_the_same_ids(self):
    tmp = self.create_tempdir().full_path
    spec = os.path.join(tmp, 'bpe.json')
    from ncalm.tools import tokenizer as tokenizer_cli  # pylint: disable=g-import-not-at-top
    tokenizer_cli.train_bpe(','.join(helpers.CORPUS_GLOBS), 400, spec)
    out = os.path.join(tmp, 'out')
    os.makedirs(out)
    self.assertEqual(hf_tokenizer.write(spec, out, 64), ['tokenizer.json', 'tokenizer_config.json'])
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ours = tokenizers.load(spec)
    text = open(helpers.CORPUS_FILES[0], encoding='utf-8').read()
    self.assertEqual(hf(text, add_special_tokens=False).input_ids, ours.encode(text).tolist())
    self.assertEqual(hf.eos_token_id, ours.eot_id)


if __name__ == '__main__':
  absltest.main()
