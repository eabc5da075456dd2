"""Tokenisers: exact round trips, end-of-text ids, fingerprints, offline tiktoken, the CLI.

Every tokeniser is made here from CPython's standard library (json/ and email/, ~400 KB of
code): a byte-level BPE through `ncalm.tools.tokenizer.train_bpe`, a SentencePiece BPE with the
lossless options, and a small tiktoken encoding built from ranks. Nothing is downloaded.
"""
import builtins
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from unittest import mock

from absl import flags
from absl.testing import absltest
import numpy as np

from ncalm import errors
from ncalm.data import tokenizers
from ncalm.tools import tokenizer as tokenizer_cli

import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTES_FINGERPRINT = 'a3c4d5aa9ee672fe1a3d194853e8e96d95e1f3efc4d26cb5a5630c537cb40391'



def _train_sentencepiece(path_prefix: str, vocab_size: int) -> str:
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  texts = [open(p, encoding='utf-8').read() for p in helpers.CORPUS_FILES]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_prefix=path_prefix, model_type='bpe',
      vocab_size=vocab_size, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
      max_sentence_length=1 << 20, num_threads=1, minloglevel=2,
      **tokenizers.SENTENCEPIECE_LOSSLESS_OPTIONS)
  return path_prefix + '.model'


def _parse(argv: list[str]) -> tuple[flags.FlagValues, list[str]]:
  """The command's own flags, parsed from argv; and the arguments left."""
  fv = flags.FlagValues()
  tokenizer_cli.define_flags(fv)
  rest = fv(argv)
  return fv, rest


class TokenizersTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.hf_path = os.path.join(cls.tmp, 'bpe600.json')
    cls.hf_report = tokenizer_cli.train_bpe(','.join(helpers.CORPUS_GLOBS), 600, cls.hf_path)
    cls.sp_path = _train_sentencepiece(os.path.join(cls.tmp, 'sp600'), 600)
    cls.tokenizers = {
        'bytes': tokenizers.load('bytes'),
        'hf': tokenizers.load(cls.hf_path),
        'sentencepiece': tokenizers.load(cls.sp_path),
        'tiktoken': tokenizers.from_tiktoken(helpers.tiny_tiktoken()),
    }
    cls.corpus_texts = [open(p, encoding='utf-8').read() for p in helpers.CORPUS_FILES[:8]]

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_corpus_is_there(self):
    self.assertLen(helpers.CORPUS_FILES, self.hf_report.num_files)
    self.assertGreater(self.hf_report.num_bytes, 200_000)

  def test_round_trip_is_identity_for_every_backend(self):
    for name, tokenizer in self.tokenizers.items():
      for text in helpers.NASTY_TEXTS + self.corpus_texts:
        with self.subTest(backend=name, text=text[:40]):
          ids = tokenizer.encode(text)
          self.assertEqual(ids.dtype, np.int32)
          self.assertEqual(tokenizer.decode(ids), text)
          self.assertNotIn(tokenizer.eot_id, ids.tolist())
          self.assertTrue(((ids >= 0) & (ids < tokenizer.vocab_size)).all())

  def test_encode_batch_equals_encode(self):
    texts = helpers.NASTY_TEXTS + self.corpus_texts
    for name, tokenizer in self.tokenizers.items():
      with self.subTest(backend=name):
        batch = tokenizer.encode_batch(texts)
        self.assertEqual([ids.tolist() for ids in batch],
                         [tokenizer.encode(text).tolist() for text in texts])
        self.assertEqual({ids.dtype for ids in batch}, {np.dtype(np.int32)})

  def test_bytes_are_utf8(self):
    tokenizer = self.tokenizers['bytes']
    self.assertEqual(tokenizer.encode('aé\x00').tolist(), [97, 0xC3, 0xA9, 0])
    self.assertEqual(tokenizer.decode([104, 105, 256, 104, 256]),
                     'hi<|endoftext|>h<|endoftext|>')
    self.assertEqual(tokenizer.decode([0xC3]), '\ufffd')  # a cut character

  def test_vocab_size_and_eot_id_per_backend(self):
    got = {name: (t.vocab_size, t.eot_id) for name, t in self.tokenizers.items()}
    self.assertEqual(got, {'bytes': (257, 256), 'hf': (600, 0), 'sentencepiece': (600, 1),
                           'tiktoken': (265, 264)})
    self.assertEqual(self.tokenizers['hf'].decode([0]), '<|endoftext|>')
    self.assertEqual(self.tokenizers['tiktoken'].decode([264]), '<|endoftext|>')
    self.assertEqual(self.tokenizers['sentencepiece'].decode([1]), '')

  def test_special_token_text_in_a_document_is_plain_text(self):
    specials = {'bytes': '<|endoftext|>', 'hf': '<|endoftext|>', 'sentencepiece': '</s>',
                'tiktoken': '<|endoftext|>'}
    for name, tokenizer in self.tokenizers.items():
      special = specials[name]
      for text in (special, f'a{special}b', f'{special}\n{special}'):
        with self.subTest(backend=name, text=text):
          ids = tokenizer.encode(text).tolist()
          self.assertNotIn(tokenizer.eot_id, ids)
          self.assertGreater(len(ids), 1)
          self.assertEqual(tokenizer.decode(ids), text)
    # And the text's ids are those of its pieces (no special id hides in between).
    hf = self.tokenizers['hf']
    self.assertEqual(hf.encode('<|endoftext|>').tolist(),
                     hf.encode('<|').tolist() + hf.encode('endoftext').tolist()
                     + hf.encode('|>').tolist())

  def test_sentencepiece_spells_a_literal_escape_char_with_byte_pieces(self):
    tokenizer = self.tokenizers['sentencepiece']
    byte_ids = tokenizer.encode('\u2581').tolist()
    self.assertLen(byte_ids, 3)
    self.assertEqual(tokenizer.encode('a\u2581 b').tolist(),
                     tokenizer.encode('a').tolist() + byte_ids + tokenizer.encode(' b').tolist())
    self.assertEqual(tokenizer.decode(byte_ids), '\u2581')

  def test_fingerprints(self):
    hf = self.tokenizers['hf']
    copy_path = os.path.join(self.tmp, 'copy_of_bpe600.json')
    shutil.copyfile(self.hf_path, copy_path)
    copy = tokenizers.load(copy_path)
    self.assertEqual(copy.fingerprint, hf.fingerprint)
    self.assertNotEqual(copy.name, hf.name)
    self.assertEqual(tokenizers.load(self.hf_path), hf)
    self.assertEqual(tokenizers.load(self.sp_path).fingerprint,
                     self.tokenizers['sentencepiece'].fingerprint)
    self.assertEqual(self.tokenizers['bytes'].fingerprint, BYTES_FINGERPRINT)
    self.assertEqual(self.hf_report.fingerprint, hf.fingerprint)
    # Different tokenisers, different fingerprints: other backends, another vocabulary.
    other_path = os.path.join(self.tmp, 'bpe300.json')
    other = tokenizers.load(
        tokenizer_cli.train_bpe(helpers.CORPUS_GLOBS[0], 300, other_path).out_path)
    retrained = tokenizer_cli.train_bpe(helpers.CORPUS_GLOBS[0], 300,
                                        os.path.join(self.tmp, 'bpe300_again.json'))
    self.assertEqual(retrained.fingerprint, other.fingerprint)  # training is deterministic
    sp_other = tokenizers.load(_train_sentencepiece(os.path.join(self.tmp, 'sp400'), 400))
    prints = [t.fingerprint for t in self.tokenizers.values()] + [other.fingerprint,
                                                                  sp_other.fingerprint]
    self.assertLen(set(prints), 6)
    self.assertEqual({len(p) for p in prints}, {64})

  def test_tiktoken_fingerprint_depends_on_the_ranks_not_the_name(self):
    base = tokenizers.from_tiktoken(helpers.tiny_tiktoken('tiny'))
    renamed = tokenizers.from_tiktoken(helpers.tiny_tiktoken('renamed'))
    more = tokenizers.from_tiktoken(helpers.tiny_tiktoken('tiny', extra_merges=(b're',)))
    self.assertEqual(renamed.fingerprint, base.fingerprint)
    self.assertNotEqual(more.fingerprint, base.fingerprint)
    self.assertEqual(more.vocab_size, 266)

  def test_pickle_reloads_by_spec_and_checks_the_fingerprint(self):
    path = os.path.join(self.tmp, 'pickled.json')
    shutil.copyfile(self.hf_path, path)
    tokenizer = tokenizers.load(path)
    again = pickle.loads(pickle.dumps(tokenizer))
    self.assertEqual(again, tokenizer)
    self.assertEqual(again.encode('print(1)\n').tolist(), tokenizer.encode('print(1)\n').tolist())
    data = pickle.dumps(tokenizer)
    with open(path, encoding='utf-8') as f:
      content = json.load(f)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(content, f, indent=1)  # the same tokeniser in other bytes: another fingerprint
    with self.assertRaisesRegex(errors.UserError,
                                re.escape(f'tokenizer {path!r} changed: its fingerprint')):
      pickle.loads(data)

  def test_decode_refuses_ids_outside_the_vocabulary(self):
    for name, tokenizer in self.tokenizers.items():
      with self.subTest(backend=name):
        with self.assertRaisesRegex(ValueError, rf'\[{tokenizer.vocab_size}\] are outside'):
          tokenizer.decode([1, tokenizer.vocab_size])

  def test_tiktoken_without_its_rank_file_is_a_user_error(self):
    cache = tempfile.mkdtemp(dir=self.tmp)
    # A port bound but not listening refuses at once: with or without network, the download
    # fails fast instead of hanging.
    with socket.socket() as closed_port:
      closed_port.bind(('127.0.0.1', 0))
      proxy = 'http://127.0.0.1:%d' % closed_port.getsockname()[1]
      env = {'TIKTOKEN_CACHE_DIR': cache, 'HTTPS_PROXY': proxy, 'https_proxy': proxy,
             'HTTP_PROXY': proxy, 'http_proxy': proxy, 'NO_PROXY': '', 'no_proxy': ''}
      with mock.patch.dict(os.environ, env):
        with self.assertRaises(errors.UserError) as raised:
          tokenizers.load('tiktoken:gpt2')
    message = str(raised.exception)
    for text in ("tokenizer 'tiktoken:gpt2'", 'could not load the rank file', repr(cache),
                 'TIKTOKEN_CACHE_DIR', "tiktoken.get_encoding('gpt2')", 'PATH.json',
                 'PATH.model', '`bytes`', 'python -m ncalm.tokenizer train'):
      self.assertIn(text, message)
    self.assertEqual(raised.exception.exit_code, errors.EXIT_USER_ERROR)
    self.assertEqual(os.listdir(cache), [])

  def test_unknown_tiktoken_encoding(self):
    with self.assertRaisesRegex(errors.UserError, "no encoding 'gpt3'; it has .*gpt2"):
      tokenizers.load('tiktoken:gpt3')

  def test_load_bad_specs(self):
    missing = os.path.join(self.tmp, 'missing.json')
    not_hf = os.path.join(self.tmp, 'not_a_tokenizer.json')
    not_sp = os.path.join(self.tmp, 'not_a_model.model')
    with open(not_hf, 'w') as f:
      f.write('{"a": 1}')
    with open(not_sp, 'wb') as f:
      f.write(b'\x00garbage')
    cases = {
        'gpt2': ["tokenizer 'gpt2' is not a tokeniser spec", 'tiktoken:NAME', 'PATH.model'],
        'tok.txt': ["'tok.txt' is not a tokeniser spec"],
        missing: [f'{missing!r} does not exist'],
        self.tmp: [f'{self.tmp!r} is a directory', 'tokenizer.json'],
        not_hf: [f'{not_hf!r} is not a Hugging Face tokenizers JSON file'],
        not_sp: [f'{not_sp!r} is not a SentencePiece model'],
    }
    for spec, texts in cases.items():
      with self.subTest(spec=spec):
        with self.assertRaises(errors.UserError) as raised:
          tokenizers.load(spec)
        for text in texts:
          self.assertIn(text, str(raised.exception))

  def test_hf_file_without_end_of_text_token(self):
    path = os.path.join(self.tmp, 'no_eot.json')
    with open(self.hf_path, encoding='utf-8') as f:
      text = f.read().replace('<|endoftext|>', '<|separator|>')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
    with self.assertRaises(errors.UserError) as raised:
      tokenizers.load(path)
    self.assertIn(f'{path!r} has no end-of-text token: none of <|endoftext|>, '
                  '<|end_of_text|>, </s>, <eos> is in its vocabulary', str(raised.exception))

  def test_hf_file_whose_end_of_text_token_matches_text_is_refused(self):
    path = os.path.join(self.tmp, 'eot_not_special.json')
    with open(self.hf_path, encoding='utf-8') as f:
      content = json.load(f)
    self.assertEqual([t['content'] for t in content['added_tokens']], ['<|endoftext|>'])
    content['added_tokens'][0]['special'] = False  # an added token matched inside text
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(content, f)
    with self.assertRaisesRegex(errors.UserError, "the text '<\\|endoftext\\|>' inside a "
                                'document encodes as the end-of-text id 0'):
      tokenizers.load(path)

  def test_padded_vocab_size(self):
    self.assertEqual(tokenizers.padded_vocab_size(50257), 50304)
    self.assertEqual(tokenizers.padded_vocab_size(257), 384)
    self.assertEqual(tokenizers.padded_vocab_size(256), 256)
    self.assertEqual(tokenizers.padded_vocab_size(600, 1), 600)
    self.assertEqual(tokenizers.padded_vocab_size(1, 128), 128)
    self.assertEqual(tokenizers.padded_vocab_size(50257, 1024), 51200)
    for vocab_size, multiple in ((0, 128), (257, 0)):
      with self.assertRaisesRegex(errors.UserError, 'must both be positive'):
        tokenizers.padded_vocab_size(vocab_size, multiple)

  def test_train_report(self):
    report = self.hf_report
    num_bytes = sum(os.path.getsize(p) for p in helpers.CORPUS_FILES)
    tokenizer = self.tokenizers['hf']
    num_tokens = sum(len(tokenizer.encode(open(p, encoding='utf-8').read()))
                     for p in helpers.CORPUS_FILES)
    self.assertEqual((report.vocab_size, report.eot_id, report.num_files, report.num_bytes,
                      report.num_tokens),
                     (600, 0, len(helpers.CORPUS_FILES), num_bytes, num_tokens))
    self.assertEqual(report.bytes_per_token, num_bytes / num_tokens)
    self.assertFalse(os.path.exists(self.hf_path.replace('.json', '.tmp.json')))

  def test_train_bad_inputs(self):
    empty_dir = os.path.join(self.tmp, 'empty_dir')
    os.makedirs(os.path.join(empty_dir, 'sub'))
    binary = os.path.join(self.tmp, 'binary.txt')
    with open(binary, 'wb') as f:
      f.write(b'text, then \xff\xfe\x00 not UTF-8')
    empty_file = os.path.join(self.tmp, 'empty.txt')
    open(empty_file, 'w').close()
    out = os.path.join(self.tmp, 'out.json')
    nowhere = os.path.join(binary, 'out.json')   # under a file
    corpus = helpers.CORPUS_GLOBS[0]
    cases = [
        ((f'{self.tmp}/nothing/*.txt', 600, out),
         f"--input: '{self.tmp}/nothing/*.txt' matches nothing"),
        ((f'{corpus},{self.tmp}/*.nope', 600, out), f"'{self.tmp}/*.nope' matches nothing"),
        ((f'{empty_dir}/*', 600, out), f"'{empty_dir}/*' matches only directories"),
        ((' , ', 600, out), '--input is empty'),
        ((corpus, 257, out), '--vocab_size=257 is too small'),
        ((corpus, 0, out), '--vocab_size >= 258'),
        ((corpus, 600, nowhere), f"cannot be made: {binary!r} is a file, not a folder"),
        ((corpus, 600, os.path.join(self.tmp, 'out.txt')), 'give a path ending in .json'),
        ((binary, 600, out), f'--input: {binary!r} is not UTF-8 text (byte 11: invalid start '
                             'byte); is it a binary file?'),
        ((empty_file, 600, out), '--input: every file it matches (1) is empty'),
    ]
    for args, text in cases:
      with self.subTest(args=args):
        with self.assertRaises(errors.UserError) as raised:
          tokenizer_cli.train_bpe(*args)
        self.assertIn(text, str(raised.exception))
    self.assertFalse(os.path.exists(out))

  def test_train_unreadable_file(self):
    unreadable = os.path.join(self.tmp, 'unreadable.txt')
    with open(unreadable, 'w') as f:
      f.write('text')
    real_open = builtins.open

    def open_refusing(path, *args, **kwargs):
      if path == unreadable:  # chmod 000 does not stop root, so refuse here
        raise PermissionError(13, 'Permission denied', path)
      return real_open(path, *args, **kwargs)

    with mock.patch.object(builtins, 'open', open_refusing):
      with self.assertRaises(errors.UserError) as raised:
        tokenizer_cli.train_bpe(unreadable, 600, os.path.join(self.tmp, 'out.json'))
    self.assertEqual(str(raised.exception),
                     f'--input: cannot read {unreadable!r} (Permission denied).')

  def test_train_refuses_an_out_it_cannot_write_before_training(self):
    folder = os.path.join(self.tmp, 'unwritable')
    a_directory = os.path.join(self.tmp, 'a_directory.json')
    os.makedirs(folder)
    os.makedirs(a_directory)
    access = os.access

    def folder_not_writable(path, mode):
      # Root writes anywhere whatever the permission bits, so the refusal is made here as the
      # kernel would make it for another user: os.access says the folder is not writable.
      return path != folder and access(path, mode)

    in_folder = os.path.join(folder, 'tok.json')
    cases = [
        (a_directory, access, f'--out={a_directory!r} is a directory; give the path of the file '
                              'to write'),
        (in_folder, folder_not_writable,
         f'--out={in_folder!r} cannot be made: this user may not write in {folder!r}'),
    ]
    for out, access_now, text in cases:
      with self.subTest(out=out):
        with mock.patch.object(os, 'access', access_now), \
             mock.patch.object(tokenizer_cli, 'read_text', side_effect=AssertionError('trained')):
          with self.assertRaises(errors.UserError) as raised:
            tokenizer_cli.train_bpe(helpers.CORPUS_GLOBS[0], 300, out)
        self.assertStartsWith(str(raised.exception), text)
    self.assertEqual((os.listdir(folder), os.listdir(a_directory)), ([], []))
    self.assertEqual([n for n in os.listdir(self.tmp) if '.tmp' in n], [])

  def test_train_makes_the_folders_of_out(self):
    out = os.path.join(self.tmp, 'new', 'deeper', 'tok.json')
    report = tokenizer_cli.train_bpe(helpers.CORPUS_GLOBS[0], 300, out)
    self.assertEqual((report.out_path, tokenizers.load(out).vocab_size), (out, 300))

  def test_train_write_failure_leaves_no_temp_file(self):
    out = os.path.join(self.tmp, 'disk_full.json')
    with mock.patch.object(os, 'replace', side_effect=OSError(28, 'No space left on device')):
      with self.assertRaisesRegex(errors.UserError, rf'^--out={re.escape(repr(out))} could not '
                                  r'be written \(No space left on device\); nothing was written'):
        tokenizer_cli.train_bpe(helpers.CORPUS_GLOBS[0], 300, out)
    self.assertEqual([n for n in os.listdir(self.tmp) if n.startswith('disk_full')], [])

  def test_training_pieces_keep_every_pre_token(self):
    import tokenizers as hf  # pylint: disable=import-outside-toplevel
    pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    def pre_tokens(texts):
      return [token for text in texts for token, _ in pre_tokenizer.pre_tokenize_str(text)]
    short = [t for t in helpers.NASTY_TEXTS if len(t) < 2048]   # no stretch that must be cut anyway
    texts = self.corpus_texts + [''.join(short) * 10, ' \t\n'.join(short) * 10]
    for text in texts:
      pieces = tokenizer_cli.training_pieces(text)
      self.assertEqual(''.join(pieces), text)
      self.assertLessEqual(max(map(len, pieces)), tokenizer_cli.TRAIN_PIECE_CHARS)
      self.assertEqual(pre_tokens(pieces), pre_tokens([text]))
    self.assertGreater(len(tokenizer_cli.training_pieces(''.join(self.corpus_texts))), 20)

  def test_train_on_one_very_long_word(self):
    """8 MB of one letter: the trainer sees it in pieces (whole, one word of 1 MB took minutes)."""
    one_word = os.path.join(self.tmp, 'one_word.txt')
    with open(one_word, 'w') as f:
      f.write('a' * (8 << 20))
    out = os.path.join(self.tmp, 'one_word.json')
    train = subprocess.run(
        [sys.executable, '-m', 'ncalm.tokenizer', 'train', f'--input={one_word}',
         '--vocab_size=300', f'--out={out}'],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(train.returncode, 0, train.stderr)
    tokenizer = tokenizers.load(out)
    self.assertEqual(tokenizer.encode('a' * 4096).tolist(), [tokenizer.vocab_size - 1])
    for text in helpers.NASTY_TEXTS + ['a' * 100_000]:
      self.assertEqual(tokenizer.decode(tokenizer.encode(text)), text)

  def test_main_bad_commands(self):
    cases = [
        ([], 'no command given; give a command: `train'),
        (['fit'], "'fit' is not a command of this tool"),
        (['train', 'info'], "'train info' is not a command of this tool"),
        (['train', '--input=x', '--out=y.json'], 'train needs --vocab_size'),
        (['info'], 'info needs --tokenizer'),
        (['info', '--tokenizer=bytes', '--vocab_size=300'], '--vocab_size: not a flag of `info`'),
    ]
    for argv, text in cases:
      with self.subTest(argv=argv):
        fv, rest = _parse(['tokenizer', *argv])
        with self.assertRaises(errors.UserError) as raised:
          tokenizer_cli.main(rest, fv)
        self.assertIn(text, str(raised.exception))

  def test_cli_end_to_end(self):
    out = os.path.join(self.tmp, 'cli.json')
    train = subprocess.run(
        [sys.executable, '-m', 'ncalm.tokenizer', 'train',
         f'--input={",".join(helpers.CORPUS_GLOBS)}', '--vocab_size=400', f'--out={out}'],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    bad = subprocess.Popen(
        [sys.executable, '-m', 'ncalm.tokenizer', 'train', f'--input={self.tmp}/none/*.txt',
         '--vocab_size=400', f'--out={out}.other.json'],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.assertEqual(train.returncode, 0, train.stderr)
    tokenizer = tokenizers.load(out)
    self.assertEqual((tokenizer.vocab_size, tokenizer.eot_id), (400, 0))
    num_bytes = sum(os.path.getsize(p) for p in helpers.CORPUS_FILES)
    num_tokens = sum(len(tokenizer.encode(open(p, encoding='utf-8').read()))
                     for p in helpers.CORPUS_FILES)
    lines = train.stdout.splitlines()
    self.assertLen(lines, 3)
    self.assertEqual(lines[0], f'wrote {out}: byte-level BPE, vocab size 400, '
                               '<|endoftext|> = id 0')
    self.assertStartsWith(lines[1],
                          f'read {len(helpers.CORPUS_FILES)} files, {num_bytes:,} bytes in ')
    self.assertEndsWith(lines[1], f' s; {num_bytes / num_tokens:.3f} bytes per token on the '
                                  'training text')
    self.assertEqual(lines[2], f'fingerprint {tokenizer.fingerprint}')
    for text in helpers.NASTY_TEXTS:
      self.assertEqual(tokenizer.decode(tokenizer.encode(text)), text)

    info = subprocess.run([sys.executable, '-m', 'ncalm.tokenizer', 'info', f'--tokenizer={out}'],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    self.assertEqual(info.returncode, 0, info.stderr)
    self.assertEqual(info.stdout.splitlines(), [
        f'name {out}', 'vocab size 400 (padded to a multiple of 128: 512)', 'eot id 0',
        f'fingerprint {tokenizer.fingerprint}'])

    _, err = bad.communicate(timeout=60)
    self.assertEqual(bad.returncode, errors.EXIT_USER_ERROR, err)
    self.assertEqual(' '.join(err.split()),
                     f"ncalm.tokenizer: error: --input: '{self.tmp}/none/*.txt' matches nothing; "
                     "give a glob of text files, e.g. 'DIR/**/*.txt' (quote it so the shell "
                     'does not expand it).')
    self.assertFalse(os.path.exists(f'{out}.other.json'))


if __name__ == '__main__':
  absltest.main()
