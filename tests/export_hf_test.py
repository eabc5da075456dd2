"""Hugging Face export and import (ncalm/tools/export_hf.py, ncalm/hf_llama.py,
ncalm/hf_tokenizer.py): transformers' LlamaForCausalLM computes ncalm's logits from the
exported files, its tokeniser gives ncalm's ids, and export → import is the identity."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import jax
import ml_dtypes
import numpy as np
import torch
import transformers

from ncalm import checkpoint
from ncalm import errors
from ncalm import hf_llama
from ncalm import hf_tokenizer
from ncalm import train
from ncalm.data import feeds
from ncalm.data import tokenizers
from ncalm.tools import export_hf
import text_train_test
import tokenizers_test
from transfer_test import flat   # {name: numpy array} of a params tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The model of configs/nca_164m.py:cpu, on a small text corpus with the bytes tokeniser.
CPU_MODEL = dict(d_model=128, num_layers=2, num_heads=4, mlp_dim=512)


def run_config(data_dir, **model):
  cfg = text_train_test.text_config(data_dir)
  cfg.train_steps = 3
  cfg.model.update(**CPU_MODEL)
  cfg.model.update(**model)
  return cfg


class ExportImportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.data_dir = text_train_test.make_corpus(os.path.join(cls.tmp, 'corpus'))
    cls.cfg = run_config(cls.data_dir)
    cls.run_dir = os.path.join(cls.tmp, 'run')
    train.train_and_evaluate(cls.cfg, cls.run_dir)
    cls.setup = train.create_setup(cls.cfg, feeds.check(cls.cfg).train_source.vocab_size)
    state, step = checkpoint.load_latest(cls.run_dir, cls.cfg, cls.setup)
    assert step == 3
    cls.params = state.params
    cls.out = os.path.join(cls.tmp, 'hf')
    cls.info = export_hf.export(cls.run_dir, cls.out)

  def test_files_config_and_info(self):
    self.assertCountEqual(os.listdir(self.out), [
        'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json',
        'ncalm_export.json'])
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
    texts = [t for t in tokenizers_test.NASTY_TEXTS if '<|endoftext|>' not in t]
    for text in texts:
      self.assertEqual(hf(text, add_special_tokens=False).input_ids, ours.encode(text).tolist())
    self.assertEqual(hf.eos_token_id, ours.eot_id)

  def import_params(self, source, **model):
    cfg = run_config(self.data_dir, **model)
    cfg.init.update(from_run=f'hf:{source}', embedding='keep')
    setup = train.create_setup(cfg, feeds.check(cfg).train_source.vocab_size)
    workdir = self.create_tempdir().full_path
    return flat(train.transferred_state(setup, jax.random.PRNGKey(0), workdir).params)

  def stacked(self):
    return flat(self.params)

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
    a = hf_llama.read_safetensors(os.path.join(out, 'model.safetensors'))
    b = hf_llama.read_safetensors(os.path.join(self.out, 'model.safetensors'))
    self.assertEqual({k: v.tobytes() for k, v in a.items()}, {k: v.tobytes() for k, v in b.items()})
    done = subprocess.run([sys.executable, '-m', 'ncalm.export_hf', f'--workdir={self.data_dir}',
                           f'--out={out}2'], cwd=ROOT, capture_output=True, text=True)
    self.assertEqual(done.returncode, errors.EXIT_USER_ERROR)
    self.assertIn('is not an ncalm workdir', done.stderr)


class TokeniserFilesTest(absltest.TestCase):

  def test_tiktoken_encoding_as_byte_level_bpe(self):
    encoding = tokenizers_test._tiny_tiktoken(  # pylint: disable=protected-access
        extra_merges=(b' t', b'he', b' the', b're', b'ret', b'retu', b'return', b'\n\n'))
    hf = hf_tokenizer.from_tiktoken(encoding)
    texts = [t for t in tokenizers_test.NASTY_TEXTS if '<|endoftext|>' not in t]
    texts += [open(p, encoding='utf-8').read() for p in tokenizers_test.CORPUS_FILES[:4]]
    for text in texts:
      self.assertEqual(hf.encode(text, add_special_tokens=False).ids,
                       encoding.encode_ordinary(text), msg=repr(text[:40]))
    self.assertEqual(hf.token_to_id('<|endoftext|>'), encoding.eot_token)

  def test_hf_json_is_copied_and_gives_the_same_ids(self):
    tmp = self.create_tempdir().full_path
    spec = os.path.join(tmp, 'bpe.json')
    from ncalm.tools import tokenizer as tokenizer_cli  # pylint: disable=g-import-not-at-top
    tokenizer_cli.train_bpe(','.join(tokenizers_test.CORPUS_GLOBS), 400, spec)
    out = os.path.join(tmp, 'out')
    os.makedirs(out)
    self.assertEqual(hf_tokenizer.write(spec, out, 64), ['tokenizer.json', 'tokenizer_config.json'])
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ours = tokenizers.load(spec)
    text = open(tokenizers_test.CORPUS_FILES[0], encoding='utf-8').read()
    self.assertEqual(hf(text, add_special_tokens=False).input_ids, ours.encode(text).tolist())
    self.assertEqual(hf.eos_token_id, ours.eot_id)


if __name__ == '__main__':
  absltest.main()
