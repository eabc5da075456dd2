"""Preparing a corpus: exact records and counts, determinism, bad input, interruption, the CLI.

The corpus is made here: CPython's standard-library json/ and email/ packages (~400 KB of
code, copied into a temporary directory so that the truth is known), a byte-level BPE trained
on them with `ncalm.tools.tokenizer.train_bpe`, and synthetic files for the bad cases.
"""
import collections
import errno
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from unittest import mock

from absl.testing import absltest
import numpy as np

from ncalm import errors
from ncalm import processes
from ncalm.data import dataset
from ncalm.data import encode
from ncalm.data import inputs as inputs_lib
from ncalm.data import prepare
from ncalm.data import tokenizers
from ncalm.tools import prepare as prepare_cli
from ncalm.tools import tokenizer as tokenizer_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_path('stdlib')


def _write(path: str, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data.encode('utf-8') if isinstance(data, str) else data)
  return path


def _read_split(out: str, split: str) -> tuple[list[np.ndarray], dict]:
  source, meta = dataset.open_split(out, split)
  return [source[i]['tokens'] for i in range(len(source))], meta


def _descendants(pid: int) -> set[int]:
  """The processes started by process `pid` and by them, from /proc."""
  parents = {}
  for entry in os.listdir('/proc'):
    try:
      with open(f'/proc/{entry}/stat') as f:
        parents[int(entry)] = int(f.read().rsplit(')', 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
      continue
  found, level = set(), {pid}
  while level:
    level = {child for child, parent in parents.items() if parent in level} - found
    found |= level
  return found


class PrepareTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix='prepare_test_')
    cls.corpus = os.path.join(cls.tmp, 'corpus')
    for package in ('json', 'email'):
      for path in glob.glob(os.path.join(STDLIB, package, '**', '*.py'), recursive=True):
        shutil.copy(path, _write(os.path.join(cls.corpus, os.path.relpath(path, STDLIB)), b''))
    cls.paths = sorted(glob.glob(os.path.join(cls.corpus, '**', '*.py'), recursive=True))
    cls.texts = [open(p, encoding='utf-8').read() for p in cls.paths]
    cls.bpe = os.path.join(cls.tmp, 'bpe.json')
    tokenizer_cli.train_bpe(os.path.join(cls.corpus, '**', '*.py'), 512, cls.bpe)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp(dir=self.tmp)

  def assertNothingLeft(self, out: str):
    self.assertFalse(os.path.exists(out))
    self.assertEqual(glob.glob(glob.escape(out) + '.*'), [])

  def start_prepare_reading_fifo(self, inputs: str, out: str, *flags: str):
    """`python -m ncalm.prepare` on `inputs` and then a new FIFO, once it reads the FIFO (whose
    writing end stays open until the test ends: prepare waits there)."""
    fifo = os.path.join(self.dir, 'fifo.txt')
    os.mkfifo(fifo)
    self.addCleanup(os.remove, fifo)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'ncalm.prepare', f'--input={inputs},{fifo}', '--tokenizer=bytes',
         f'--out={out}', '--validation_fraction=0.2', *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:  # opening the FIFO for writing succeeds once prepare opens it to read
      try:
        writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, writer)
        return proc
      except OSError:
        if proc.poll() is not None:
          self.fail(f'prepare ended before reading the FIFO: {proc.communicate()}')
        if time.monotonic() > deadline:  # a hang guard, not a speed check
          self.fail('prepare never opened the FIFO for reading')
        time.sleep(0.01)

  def test_corpus_is_there(self):
    self.assertGreater(len(self.paths), 30)
    self.assertGreater(sum(map(len, self.texts)), 300_000)
    self.assertIn('', self.texts)  # email/mime/__init__.py

  def test_records_are_the_documents_and_the_counts_are_true(self):
    for spec in ('bytes', self.bpe):
      with self.subTest(spec=spec):
        tokenizer = tokenizers.load(spec)
        out = os.path.join(self.dir, os.path.basename(spec))
        report = prepare.prepare(self.corpus, spec, out, validation_fraction=0.25, workers=1)
        (train, meta), (validation, _) = _read_split(out, 'train'), _read_split(out, 'validation')
        self.assertNotIn('tensorflow', sys.modules)
        self.assertEqual(report.meta, meta)
        decoded = {split: [tokenizer.decode(r) for r in records]
                   for split, records in (('train', train), ('validation', validation))}
        documents = [t for t in self.texts if t]
        # Every document once, in one split; identical documents share it; input order kept.
        self.assertEqual(collections.Counter(decoded['train']) +
                         collections.Counter(decoded['validation']),
                         collections.Counter(documents))
        self.assertEmpty(set(decoded['train']) & set(decoded['validation']))
        held_out = set(decoded['validation'])
        self.assertEqual(decoded['train'], [t for t in documents if t not in held_out])
        self.assertEqual(decoded['validation'], [t for t in documents if t in held_out])
        self.assertNotEmpty(held_out)
        for split, records in (('train', train), ('validation', validation)):
          ids = [tokenizer.encode(t) for t in decoded[split]]
          for record, expected in zip(records, ids):
            self.assertEqual(record.dtype, np.uint16)
            np.testing.assert_array_equal(record, expected)
          np.testing.assert_array_equal(dataset.document_lengths(out, split),
                                        [len(i) for i in ids])
          self.assertEqual(meta['splits'][split], {
              'documents': len(records), 'tokens': sum(map(len, ids)),
              'bytes': sum(len(t.encode('utf-8')) for t in decoded[split])})
        train_split = meta['splits']['train']
        self.assertEqual(meta['bytes_per_token'], train_split['bytes'] / train_split['tokens'])
        self.assertEqual(
            {k: meta[k] for k in ('format', 'tokenizer', 'tokenizer_fingerprint', 'vocab_size',
                                  'eot_id', 'token_dtype', 'inputs', 'input_files',
                                  'validation_fraction', 'seed')},
            {'format': 1, 'tokenizer': spec, 'tokenizer_fingerprint': tokenizer.fingerprint,
             'vocab_size': tokenizer.vocab_size, 'eot_id': tokenizer.eot_id,
             'token_dtype': 'uint16', 'inputs': [self.corpus], 'input_files': len(self.paths),
             'validation_fraction': 0.25, 'seed': 0})
        empty = [p for p, t in zip(self.paths, self.texts) if not t]
        self.assertEqual(meta['skipped']['empty'], {'count': len(empty), 'examples': empty})
        self.assertEqual({r: s['count'] for r, s in meta['skipped'].items() if r != 'empty'},
                         dict.fromkeys(inputs_lib.SKIP_REASONS.keys() - {'empty'}, 0))
        self.assertEqual(meta['invalid_utf8']['documents'], 0)
        self.assertEqual(sorted(os.listdir(out)), [
            'dataset_info.json', 'document_lengths-train.npy',
            'document_lengths-validation.npy', 'features.json', dataset.META_FILE,
            'ncalm_text-train.array_record-00000-of-00001',
            'ncalm_text-validation.array_record-00000-of-00001'])
    self.assertNotIn('tensorflow', sys.modules)

  def test_the_same_inputs_give_the_same_bytes(self):
    def files(out):
      return {name: open(os.path.join(out, name), 'rb').read() for name in os.listdir(out)}

    lines = _write(os.path.join(self.dir, 'lines.jsonl'),
                   ''.join(json.dumps({'text': t[:5000]}) + '\n' for t in self.texts))
    inputs = f'{self.corpus},{lines}'
    runs = {}
    options = dict(validation_fraction=0.2, shard_mb=0.1)  # several shards per split
    runs['first'] = prepare.prepare(inputs, self.bpe, os.path.join(self.dir, 'a'), workers=1,
                                    **options)
    runs['again'] = prepare.prepare(inputs, self.bpe, os.path.join(self.dir, 'b'), workers=1,
                                    **options)
    with mock.patch.object(inputs_lib, 'CHUNK_BYTES', 32 << 10):  # ~20 chunks over 2 processes
      runs['two workers'] = prepare.prepare(inputs, self.bpe, os.path.join(self.dir, 'c'),
                                            workers=2, **options)
    self.assertEqual(runs['two workers'].workers, 2)
    first = files(runs['first'].out_dir)
    self.assertGreater(sum('-train.array_record-' in name for name in first), 1)
    for name, report in runs.items():
      with self.subTest(name):
        self.assertEqual(files(report.out_dir), first)
    other_seed = prepare.prepare(inputs, self.bpe, os.path.join(self.dir, 'd'), seed=1,
                                 workers=1, **options)
    self.assertNotEqual(other_seed.meta['splits'], runs['first'].meta['splits'])

  def test_jsonl(self):
    good = [f'document {i}: caf\u00e9 \U0001f44d\n\ttabs' for i in range(30)]
    lines = [json.dumps({'content': t, 'id': i}) for i, t in enumerate(good)]
    lines[3:3] = [
        '',                                              # blank: not a document
        '{"content": "half',                             # line 5: not JSON
        '[1, 2]',                                        # line 6: not an object
        json.dumps({'text': 'wrong field', 'id': 7}),    # line 7
        json.dumps({'content': 12}),                     # line 8
        json.dumps({'content': ''}),                     # line 9
        '{"content": "lone \\ud800 surrogate"}',         # line 10: one replaced
    ]
    path = _write(os.path.join(self.dir, 'docs.jsonl'),
                  '\n'.join(lines).encode('utf-8') + b'\n{"content": "bad \xff\xfe utf-8"}\n')
    out = os.path.join(self.dir, 'out')
    meta = prepare.prepare(path, 'bytes', out, text_field='content', validation_fraction=0.3,
                           workers=1).meta
    tokenizer = tokenizers.load('bytes')
    texts = [tokenizer.decode(r) for split in dataset.SPLITS for r in _read_split(out, split)[0]]
    expected = good + ['lone \ufffd surrogate', 'bad \ufffd\ufffd utf-8']
    self.assertCountEqual(texts, expected)
    skipped = {r: s for r, s in meta['skipped'].items() if s['count']}
    self.assertEqual(skipped, {
        'bad_json': {'count': 2, 'examples': [f'{path}:5', f'{path}:6']},
        'missing_field': {'count': 1, 'examples': [f'{path}:7 (its fields: id, text)']},
        'field_not_text': {'count': 1, 'examples': [f'{path}:8 (int)']},
        'empty': {'count': 1, 'examples': [f'{path}:9']}})
    self.assertEqual(meta['invalid_utf8']['documents'], 2)
    self.assertEqual(meta['invalid_utf8']['replaced'], 3)
    self.assertEqual(meta['invalid_utf8']['examples'],
                     [{'where': f'{path}:10', 'replaced': 1},
                      {'where': f'{path}:{len(lines) + 1}', 'replaced': 2}])
    self.assertEqual(sum(s['documents'] for s in meta['splits'].values()), len(expected))

    # Every line without the field: refused, naming the fields the lines have.
    with self.assertRaises(errors.UserError) as raised:
      prepare.prepare(path, 'bytes', os.path.join(self.dir, 'none'), text_field='body',
                      workers=1)
    message = str(raised.exception)
    self.assertIn('no document to keep', message)
    self.assertIn(f'{path}:1 (its fields: content, id)', message)
    self.assertIn('--text_field', message)
    self.assertNothingLeft(os.path.join(self.dir, 'none'))

  def test_empty_binary_and_invalid_utf8_files_are_skipped_or_replaced_and_counted(self):
    corpus = os.path.join(self.dir, 'mixed')
    for i, path in enumerate(self.paths):
      shutil.copy(path, _write(os.path.join(corpus, 'code', f'{i:02d}.py'), b''))
    bad_utf8 = b'caf\xe9 ok \xff\xfe \xe2\x82 end \xf0\x9f\x91\x8d'
    _write(os.path.join(corpus, 'latin1.txt'), bad_utf8)
    _write(os.path.join(corpus, 'empty_a.txt'), b'')
    _write(os.path.join(corpus, 'empty_b.txt'), b'')
    _write(os.path.join(corpus, 'image.png'), b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' + b'x' * 99)
    _write(os.path.join(corpus, 'utf16.txt'), 'hello'.encode('utf-16'))
    _write(os.path.join(corpus, '.hidden'), b'never read')
    out = os.path.join(self.dir, 'out')
    meta = prepare.prepare(f'{corpus}/*,{corpus}/code', 'bytes', out, validation_fraction=0.2,
                           workers=1).meta
    tokenizer = tokenizers.load('bytes')
    texts = [tokenizer.decode(r) for split in dataset.SPLITS for r in _read_split(out, split)[0]]
    replaced = bad_utf8.decode('utf-8', 'replace')
    self.assertEqual(replaced.count('\ufffd'), 4)  # é, \xff, \xfe, a cut €
    self.assertCountEqual(texts, [replaced] + [t for t in self.texts if t])
    empty = [os.path.join(corpus, 'code', f'{i:02d}.py') for i, t in enumerate(self.texts)
             if not t] + [os.path.join(corpus, 'empty_a.txt'), os.path.join(corpus, 'empty_b.txt')]
    self.assertEqual(meta['skipped']['empty'], {'count': len(empty), 'examples': empty})
    self.assertEqual(meta['skipped']['binary'], {'count': 2, 'examples': [
        os.path.join(corpus, 'image.png'), os.path.join(corpus, 'utf16.txt')]})
    self.assertEqual(meta['invalid_utf8'], {
        'policy': 'each invalid sequence replaced by U+FFFD (Python "replace")',
        'documents': 1, 'replaced': 4,
        'examples': [{'where': os.path.join(corpus, 'latin1.txt'), 'replaced': 4}]})
    self.assertEqual(meta['input_files'], len(self.paths) + 5)  # each once, not the hidden one

  def test_refusals(self):
    out = os.path.join(self.dir, 'out')
    _write(os.path.join(self.dir, 'empty', 'a.txt'), b'')
    _write(os.path.join(self.dir, 'empty', 'b.txt'), b'')
    _write(os.path.join(self.dir, 'binary', 'a.bin'), b'\x00\x01\x02')
    os.makedirs(os.path.join(self.dir, 'nothing'))
    link = os.path.join(self.dir, 'link')
    os.symlink(os.path.join(self.dir, 'nothing'), link)
    few = os.path.join(self.dir, 'few')
    for i in range(3):
      _write(os.path.join(few, f'{i}.txt'), f'text {i}')
    cases = [
        (dict(inputs=f'{self.dir}/none/*.txt'), f"--input: '{self.dir}/none/*.txt' matches "
                                                'nothing'),
        (dict(inputs=f'{self.corpus},{self.dir}/missing.txt'),
         f"--input: no such file or directory '{self.dir}/missing.txt'"),
        (dict(inputs=' , '), '--input is empty'),
        (dict(inputs=os.path.join(self.dir, 'nothing')), 'holds no files'),
        (dict(inputs=os.path.join(self.dir, 'empty')),
         '--input holds no document to keep: 2 empty (no text) (e.g. '
         f'{self.dir}/empty/a.txt, {self.dir}/empty/b.txt)'),
        (dict(inputs=os.path.join(self.dir, 'binary')), '1 binary'),
        (dict(inputs=few, validation_fraction=1e-9),
         '--validation_fraction=1e-09 left the validation split empty: none of the 3 documents'),
        (dict(inputs=few, validation_fraction=1 - 1e-9), 'left the train split empty'),
        (dict(inputs=few, validation_fraction=0.0), '--validation_fraction=0.0 must be > 0'),
        (dict(inputs=few, validation_fraction=1.0), 'must be > 0 and < 1'),
        (dict(inputs=few, workers=-1), '--workers=-1'),
        (dict(inputs=few, tokenizer='nope'), "tokenizer 'nope' is not a tokeniser spec"),
        (dict(inputs=few, tokenizer=f'{self.dir}/no.json'),
         f"tokenizer file '{self.dir}/no.json' does not exist"),
        (dict(inputs='tfds:c4/en'), "--input=tfds:c4/en: tensorflow-datasets cannot read 'c4/en'"
                                    " split 'train'"),
        (dict(inputs='hf:allenai/c4:en@validation'), '--input=hf:allenai/c4:en@validation: '),
        (dict(inputs=few, out=self.corpus), f"--out='{self.corpus}' exists and is not empty"),
        (dict(inputs=few, out=self.corpus, overwrite=True),
         f"--out='{self.corpus}' is not a dataset made by ncalm.prepare"),
        (dict(inputs=few, out=few + '/0.txt'), 'is a file'),
        (dict(inputs=few, out=link), f"--out='{link}' is a symbolic link; give the folder it "
                                     f"points to, --out='{os.path.realpath(self.dir)}/nothing'."),
    ]
    for kwargs, message in cases:
      kwargs = {'tokenizer': 'bytes', 'out': out, 'workers': 1, **kwargs}
      with self.subTest(kwargs=kwargs):
        with self.assertRaises(errors.UserError) as raised:
          prepare.prepare(kwargs.pop('inputs'), kwargs.pop('tokenizer'), kwargs.pop('out'),
                          **kwargs)
        self.assertIn(message, str(raised.exception))
        self.assertNothingLeft(out)
    self.assertTrue(os.path.exists(few + '/0.txt'))  # nothing refused was touched
    self.assertEqual(sorted(os.listdir(self.corpus)), ['email', 'json'])

  def test_overwrite_replaces_only_a_dataset(self):
    out = os.path.join(self.dir, 'out')
    prepare.prepare(self.paths[:20], 'bytes', out, validation_fraction=0.3, workers=1)
    again = prepare.prepare(self.paths[20:], 'bytes', out, validation_fraction=0.3, workers=1,
                            overwrite=True)
    self.assertEqual(dataset.read_meta(out), again.meta)
    self.assertEqual(again.meta['input_files'], len(self.paths) - 20)
    self.assertEqual(glob.glob(out + '.*'), [])
    # An input directory holding the output reads its corpus, never the dataset.
    corpus = os.path.join(self.dir, 'corpus')
    for i, path in enumerate(self.paths[:20]):
      _write(os.path.join(corpus, f'{i:02d}.py'), open(path, 'rb').read())
    first = prepare.prepare(corpus, 'bytes', os.path.join(corpus, 'data'),
                            validation_fraction=0.3, workers=1)
    second = prepare.prepare(corpus, 'bytes', os.path.join(corpus, 'data'),
                             validation_fraction=0.3, workers=1, overwrite=True)
    self.assertEqual(first.meta, second.meta)
    self.assertEqual(first.meta['input_files'], 20)

  def test_long_documents_are_encoded_in_pieces_with_the_same_ids(self):
    text = ' '.join(t.replace('\n', ' ') for t in self.texts)  # one ~430 KB line
    no_spaces = 'ab\u00e9' * 40_000
    tokenizer = tokenizers.load(self.bpe)
    cuts = encode.cut_points(text, 20_000)
    self.assertGreater(len(cuts), 20)
    for a, b in zip([0] + cuts, cuts + [len(text)]):
      self.assertLessEqual(b - a, 20_000)
    for cut in cuts:
      self.assertEqual((text[cut - 1] != ' ', text[cut], text[cut + 1] != ' '), (True, ' ', True))
    self.assertEqual(encode.cut_points(no_spaces, 20_000), list(range(20_000, 120_000, 20_000)))
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(self.texts), model_prefix=os.path.join(self.dir, 'sp'),
        model_type='bpe', vocab_size=1000, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        max_sentence_length=1 << 20, num_threads=1, minloglevel=2,
        **tokenizers.SENTENCEPIECE_LOSSLESS_OPTIONS)
    bounds = [0] + cuts + [len(text)]
    for spec in (self.bpe, os.path.join(self.dir, 'sp.model')):  # the pieces' ids = the whole's
      with self.subTest(spec=spec):
        other = tokenizers.load(spec)
        np.testing.assert_array_equal(
            np.concatenate([other.encode(text[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]),
            other.encode(text))
    _write(os.path.join(self.dir, 'long', 'a_line.txt'), text)
    _write(os.path.join(self.dir, 'long', 'b_no_spaces.txt'), no_spaces)
    _write(os.path.join(self.dir, 'long', 'c.jsonl'), json.dumps({'text': text}) + '\n')
    out = os.path.join(self.dir, 'out')
    with mock.patch.object(encode, 'PIECE_CHARS', 20_000), \
        mock.patch.object(inputs_lib, 'CHUNK_BYTES', 100_000):
      prepare.prepare(os.path.join(self.dir, 'long'), self.bpe, out, workers=1,
                      validation_fraction=0.5)
    records = {tokenizer.decode(r): r for split in dataset.SPLITS
               for r in _read_split(out, split)[0]}
    self.assertCountEqual(records, [text, no_spaces])  # the .jsonl line is the same text
    np.testing.assert_array_equal(records[text], tokenizer.encode(text))
    # Megabytes in one line, bytes tokenizer, default pieces: exact (its speed and memory
    # are in benchmarks/prepare_throughput.py and docs/benchmarks.md).
    big = (text * 8)[:3_000_000]
    _write(os.path.join(self.dir, 'big', 'big.txt'), big)
    _write(os.path.join(self.dir, 'big', 'small.txt'), 'small')
    prepare.prepare(os.path.join(self.dir, 'big'), 'bytes', os.path.join(self.dir, 'big_out'),
                    workers=1, validation_fraction=0.5)
    records = [r for split in dataset.SPLITS
               for r in _read_split(os.path.join(self.dir, 'big_out'), split)[0]]
    self.assertIn(len(big.encode('utf-8')), [len(r) for r in records])
    self.assertIn(big.encode('utf-8'), [r.astype(np.uint8).tobytes() for r in records])

  def test_an_interrupted_prepare_leaves_nothing_that_looks_finished(self):
    out = os.path.join(self.dir, 'out')
    serialize = dataset.serialize_tokens
    calls = []

    def interrupted(ids):  # Ctrl-C at the tenth document
      calls.append(1)
      if len(calls) == 10:
        raise KeyboardInterrupt
      return serialize(ids)

    with mock.patch.object(dataset, 'serialize_tokens', interrupted):
      with self.assertRaises(KeyboardInterrupt):
        prepare.prepare(self.corpus, 'bytes', out, workers=1)
    self.assertNothingLeft(out)

    # SIGKILL while the dataset is half written: prepare blocks reading a FIFO after the corpus.
    proc = self.start_prepare_reading_fifo(self.corpus, out, '--workers=1')
    left = glob.glob(out + '.incomplete-*')
    self.assertLen(left, 1)
    self.assertTrue(glob.glob(os.path.join(left[0], 'ncalm_text-train.array_record-*')))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    self.assertFalse(os.path.exists(out))
    self.assertEqual(glob.glob(out + '.incomplete-*'), left)
    with self.assertRaises(errors.UserError) as raised:
      dataset.open_split(out, 'train')
    self.assertEqual(str(raised.exception),
                     f"data directory '{out}' does not exist (a prepare into it did not "
                     f"finish: '{left[0]}' is left; run it again); make it with `python -m "
                     f'ncalm.prepare --input=FILES --tokenizer=SPEC --out={out}`.')
    # A folder of a live prepare is not touched; one of a dead prepare is removed.
    alive = f'{out}.incomplete-{left[0].rsplit("-", 2)[1]}-{os.getppid()}'
    os.rename(left[0], alive)
    with self.assertRaises(errors.UserError) as raised:
      prepare.prepare(self.corpus, 'bytes', out, workers=1)
    self.assertIn(f'{alive!r} belongs to another prepare', str(raised.exception))
    os.rename(alive, left[0])
    report = prepare.prepare(self.corpus, 'bytes', out, workers=1, validation_fraction=0.2)
    self.assertEqual(glob.glob(out + '.*'), [])
    self.assertEqual(sum(s['documents'] for s in report.meta['splits'].values()),
                     sum(1 for t in self.texts if t))

  def test_a_killed_prepare_leaves_no_process_behind(self):
    # Two workers (the input is over CHUNK_BYTES), one of them waiting on the FIFO.
    big = _write(os.path.join(self.dir, 'big.txt'), ''.join(self.texts) * 3)
    self.assertGreater(os.path.getsize(big), inputs_lib.CHUNK_BYTES)
    proc = self.start_prepare_reading_fifo(big, os.path.join(self.dir, 'out'), '--workers=2')
    children = _descendants(proc.pid)  # the workers and multiprocessing's resource tracker
    self.assertGreaterEqual(len(children), 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # not communicate(): workers left running would hold its pipes open
    deadline = time.monotonic() + 10
    while any(map(processes.alive, children)) and time.monotonic() < deadline:
      time.sleep(0.05)
    alive = [p for p in children if processes.alive(p)]
    for pid in alive:  # not left to the rest of the suite
      os.kill(pid, signal.SIGKILL)
    self.assertEqual(alive, [])
    proc.communicate()

  def test_out_filled_while_preparing_is_not_replaced_without_overwrite(self):
    first = os.path.join(self.dir, 'first')
    prepare.prepare(self.paths[:10], 'bytes', first, validation_fraction=0.3, workers=1)
    out = os.path.join(self.dir, 'out')
    claim = prepare._claim_temp_dir

    def claim_then_fill(out_dir):  # another prepare into --out finishes first
      tmp = claim(out_dir)
      shutil.copytree(first, out_dir)
      return tmp

    with mock.patch.object(prepare, '_claim_temp_dir', claim_then_fill):
      with self.assertRaises(errors.UserError) as raised:
        prepare.prepare(self.paths[10:20], 'bytes', out, validation_fraction=0.3, workers=1)
    kept = glob.glob(out + '.*')
    self.assertLen(kept, 1)
    self.assertEqual(str(raised.exception),
                     f"--out='{out}' was filled while this prepare ran (by another prepare into "
                     'it?) and --overwrite was not given: it is left as it is, and the dataset '
                     f"this prepare made is in '{kept[0]}'; use it from there, move it, or "
                     'delete it.')
    self.assertEqual(dataset.read_meta(out), dataset.read_meta(first))
    self.assertEqual(_read_split(kept[0], 'train')[1]['inputs'], self.paths[10:20])

  def test_a_killed_overwrite_is_undone_by_the_next_prepare(self):
    out = os.path.join(self.dir, 'out')
    old = prepare.prepare(self.paths[:10], 'bytes', out, validation_fraction=0.3, workers=1)
    # Killed between the two renames of --overwrite (no handler runs, as with SIGKILL).
    killed = subprocess.run([sys.executable, '-c', f"""if True:
        import os
        from ncalm.data import prepare
        rename = os.rename
        def rename_or_die(src, dst):
          if dst == {out!r} and {dataset.INCOMPLETE!r} in src and not os.path.exists(dst):
            os._exit(9)
          rename(src, dst)
        os.rename = rename_or_die
        prepare.prepare({self.paths[10:20]!r}, 'bytes', {out!r}, validation_fraction=0.3,
                        workers=1, overwrite=True)
        """], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(killed.returncode, 9, killed.stderr)
    self.assertFalse(os.path.exists(out))
    aside, new = glob.glob(out + '.old-*'), glob.glob(out + '.incomplete-*')
    self.assertEqual((len(aside), len(new)), (1, 1))
    with self.assertRaisesRegex(errors.UserError, 'a prepare that replaced it was killed: the '
                                f"previous dataset is in '{aside[0]}', and the next prepare"):
      dataset.read_meta(out)
    # The next prepare, even one that is refused, puts the old dataset back first ...
    missing = os.path.join(self.dir, 'missing.txt')
    with self.assertRaisesRegex(errors.UserError, 'no such file'):
      prepare.prepare(missing, 'bytes', out, workers=1, overwrite=True)
    self.assertEqual(dataset.read_meta(out), old.meta)
    self.assertEqual(glob.glob(out + '.*'), [])
    # ... and, killed after the new dataset was in place, deletes the old one moved aside.
    shutil.copytree(out, aside[0])
    with self.assertRaisesRegex(errors.UserError, 'no such file'):
      prepare.prepare(missing, 'bytes', out, workers=1, overwrite=True)
    self.assertEqual(dataset.read_meta(out), old.meta)
    self.assertEqual(glob.glob(out + '.*'), [])

  def test_an_out_that_cannot_be_renamed_is_refused_before_the_work(self):
    out = os.path.join(self.dir, 'out')
    os.makedirs(out)
    rename = os.rename

    def rename_but_out(src, dst):  # as for a mount point
      if src == out:
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), src)
      rename(src, dst)

    # An immutable folder, which not even root may rename, where chattr +i can be set.
    immutable = shutil.which('chattr') and not subprocess.run(
        ['chattr', '+i', out], capture_output=True, check=False).returncode
    if immutable:
      self.addCleanup(subprocess.run, ['chattr', '-i', out], check=True)
    progress = []
    with mock.patch.object(os, 'rename', rename if immutable else rename_but_out):
      with self.assertRaises(errors.UserError) as raised:
        prepare.prepare(self.paths[:10], 'bytes', out, validation_fraction=0.3, workers=1,
                        progress=lambda *args: progress.append(args))
    self.assertStartsWith(str(raised.exception), f"--out='{out}': renaming '{out}' failed (")
    self.assertIn('not a mount point', str(raised.exception))
    self.assertEqual(progress, [])  # nothing was encoded
    self.assertEqual(os.listdir(out), [])
    self.assertEqual(glob.glob(out + '.*'), [])

  def test_fingerprint(self):
    fingerprints = {}
    for name, paths, shard_mb in (('a', self.paths[:20], 512), ('same', self.paths[:20], 0.001),
                                  ('other', self.paths[20:40], 512)):
      out = os.path.join(self.dir, name)
      meta = prepare.prepare(paths, self.bpe, out, validation_fraction=0.3, workers=1,
                             shard_mb=shard_mb).meta
      fingerprints[name] = dataset.dataset_fingerprint(out)
      self.assertEqual(fingerprints[name], meta['fingerprint'])
    self.assertRegex(fingerprints['a'], '^[0-9a-f]{64}$')
    self.assertEqual(fingerprints['same'], fingerprints['a'])  # other paths and shards
    self.assertNotEqual(fingerprints['other'], fingerprints['a'])
    # A dataset prepared before fingerprints were written: computed from its records.
    same = os.path.join(self.dir, 'same')
    self.assertGreater(len(glob.glob(f'{same}/ncalm_text-train.array_record-*')), 1)
    meta = dataset.read_meta(same)
    del meta['fingerprint']
    _write(os.path.join(same, dataset.META_FILE), json.dumps(meta))
    self.assertEqual(dataset.dataset_fingerprint(same), fingerprints['a'])

  def test_readers_refuse_what_is_not_a_finished_dataset(self):
    out = os.path.join(self.dir, 'out')
    make = f'`python -m ncalm.prepare --input=FILES --tokenizer=SPEC --out={out}`'
    os.makedirs(out)
    for message in (f"data directory '{out}' is empty: it is not a dataset made by "
                    f'ncalm.prepare; make one with {make}.',
                    f"data directory '{out}' has no {dataset.META_FILE}: it is not"):
      with self.assertRaises(errors.UserError) as raised:
        dataset.open_split(out, 'train')
      self.assertStartsWith(str(raised.exception), message)
      _write(os.path.join(out, 'notes.txt'), 'x')
    shutil.rmtree(out)
    prepare.prepare(self.paths[:20], 'bytes', out, validation_fraction=0.3, workers=1)
    with self.assertRaisesRegex(errors.UserError, "has no split 'test'"):
      dataset.open_split(out, 'test')
    meta_path = os.path.join(out, dataset.META_FILE)
    meta = dataset.read_meta(out)
    _write(meta_path, json.dumps({**meta, 'format': 2}))
    with self.assertRaisesRegex(errors.UserError, 'has format 2, and this ncalm reads format 1'):
      dataset.open_split(out, 'train')
    _write(meta_path, '{"format": 1, "spl')
    with self.assertRaisesRegex(errors.UserError, 'cannot be read'):
      dataset.read_meta(out)
    _write(meta_path, json.dumps(meta))
    os.remove(glob.glob(os.path.join(out, 'ncalm_text-validation.array_record-*'))[0])
    with self.assertRaisesRegex(errors.UserError, f"data directory '{out}' is incomplete: 1 of "
                                                  'its validation files are missing'):
      dataset.open_split(out, 'validation')
    self.assertLen(_read_split(out, 'train')[0], meta['splits']['train']['documents'])

  def test_serialize_tokens_is_what_tfds_writes(self):
    rng = np.random.default_rng(0)
    for vocab_size, edges in ((257, [0, 1, 127, 128, 256]),
                              (1 << 16, [0, 127, 128, 16383, 16384, 65535]),
                              (1 << 31, [0, 128, 2**21 - 1, 2**21, 2**28 - 1, 2**28, 2**31 - 1])):
      features = dataset.features(vocab_size)
      dtype = dataset.token_dtype(vocab_size)
      arrays = [np.array(edges, dtype), np.array(edges[-1:], dtype)]
      arrays += [rng.integers(0, vocab_size, n).astype(dtype) for n in (1, 2, 100, 20_000)]
      for ids in arrays:
        with self.subTest(vocab_size=vocab_size, n=ids.size):
          record = dataset.serialize_tokens(ids)
          self.assertEqual(record, features.serialize_example({'tokens': ids}))
          np.testing.assert_array_equal(features.deserialize_example_np(record)['tokens'], ids)
    with self.assertRaises(ValueError):
      dataset.serialize_tokens(np.zeros(0, np.uint16))

  def test_progress_line(self):
    class Terminal(io.StringIO):
      def isatty(self):
        return True

    first = 'prepare: 25 documents (0.42/s), 1.0 of 2.0 MB (0.02 MB/s), ETA 0:01:00'
    second = 'prepare: 2,500 documents (19/s), 3.0 MB (0.02 MB/s)'  # size unknown: no ETA
    for stream, expected in (
        (Terminal(), f'\r{first}\x1b[K\r{second}\x1b[K\r{second}\x1b[K\n'),
        (io.StringIO(), f'{first}\n{second}\n')):  # off a terminal, a line a minute at most
      clock = [100.0]
      with mock.patch.object(time, 'perf_counter', lambda: clock[0]):
        progress = prepare_cli.Progress(stream)
        for seconds, done_bytes, documents, total_bytes in ((0.1, 0, 0, 2_000_000),
                                                            (60, 1_000_000, 25, 2_000_000),
                                                            (130, 3_000_000, 2500, 0)):
          clock[0] = 100 + seconds
          progress(done_bytes, documents, total_bytes)
        progress.close()
      self.assertEqual(stream.getvalue(), expected)

  def test_cli_end_to_end(self):
    out = os.path.join(self.dir, 'cli')
    good = subprocess.run(
        [sys.executable, '-m', 'ncalm.prepare', f'--input={self.corpus}/**/*.py',
         f'--tokenizer={self.bpe}', f'--out={out}', '--validation_fraction=0.2'],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    bad = subprocess.run(
        [sys.executable, '-m', 'ncalm.prepare', f'--input={self.dir}/missing.txt',
         '--tokenizer=bytes', f'--out={out}-2'],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(good.returncode, 0, good.stderr)
    meta = dataset.read_meta(out)
    self.assertEqual(good.stdout.splitlines()[:2], prepare_cli.summary(prepare.Report(
        out, meta, 0, 0, 1, 1.0))[:2])
    self.assertRegex(good.stdout.splitlines()[2],
                     rf'^read {len(self.paths)} files, 0.4 MB in [0-9.]+ s \([0-9.]+ MB/s, '
                     r'[0-9,]+ documents/s\) with 1 worker$')
    self.assertStartsWith(good.stdout.splitlines()[3], 'skipped 1 empty (no text) (e.g. ')
    self.assertEqual(good.stdout.splitlines()[-1],
                     f'dataset fingerprint {dataset.dataset_fingerprint(out)}')
    self.assertEqual(meta['tokenizer'], self.bpe)
    self.assertEqual(bad.returncode, errors.EXIT_USER_ERROR, bad.stderr)
    self.assertEqual(' '.join(bad.stderr.split()),
                     f"ncalm.prepare: error: --input: no such file or directory "
                     f"'{self.dir}/missing.txt'; check the path (a glob needs *, ? or [...]).")
    self.assertFalse(os.path.exists(out + '-2'))


if __name__ == '__main__':
  absltest.main()
