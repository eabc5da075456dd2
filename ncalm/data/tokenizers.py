"""Tokenisers: one interface over Hugging Face tokenizers, SentencePiece, tiktoken and bytes.

    tokenizer = tokenizers.load('tok.json')   # or 'bytes', 'tiktoken:gpt2', 'sp.model'
    ids = tokenizer.encode(text)               # int32 [n]
    assert tokenizer.decode(ids) == text

A spec names the tokeniser (`load`):
  * `bytes`: raw UTF-8, ids 0..255 are bytes and 256 is end of text (vocabulary 257);
  * `tiktoken:NAME`: a tiktoken encoding (`tiktoken:gpt2` is the paper's GPT-2 BPE, 50,257
    ids); tiktoken downloads its rank file on first use, so this works only where it can, or
    where a cached copy is (`_tiktoken_cache_dir`);
  * `PATH.json`: a Hugging Face `tokenizers` file (`python -m ncalm.tokenizer train` makes one);
  * `PATH.model`: a SentencePiece model.

Every backend encodes a document as plain text: text that spells a special token inside a
document (`<|endoftext|>`, `</s>`, ...) is encoded like any other text, never as the special
id, and nothing (BOS/EOS) is added; so `encode` never returns `eot_id`, and the text pipeline
can join documents with it. Per backend: tiktoken's `encode_ordinary`; Hugging Face with
`encode_special_tokens = True` (special tokens are split as text) and `add_special_tokens=False`
(no post-processor template), with any padding or truncation in the file switched off;
SentencePiece matches control symbols (its `</s>`) only by id, never in text. `load` checks
this on the end-of-text token's own text and refuses a tokeniser that breaks it.

`decode(encode(text)) == text` for any Unicode text (valid UTF-8) with `bytes`, tiktoken,
byte-level BPE files (`ncalm.tokenizer train`) and SentencePiece models trained with the
options of `SENTENCEPIECE_LOSSLESS_OPTIONS`; see `_load_sentencepiece` for what other models
lose. `decode` replaces byte sequences that are not valid UTF-8 (an id sequence cut inside a
character) by U+FFFD, and renders the end-of-text id as the backend does (`<|endoftext|>`
for bytes, tiktoken and Hugging Face files; nothing for SentencePiece).

`fingerprint` identifies the exact tokeniser (a SHA-256 of the file's bytes, of tiktoken's
ranks, ...): a dataset records it and a run refuses a dataset made with another tokeniser.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import tempfile
from types import ModuleType
from typing import Callable, Sequence

import numpy as np

from ncalm import errors

EOT_TEXT = '<|endoftext|>'
BYTES_EOT_ID = 256
# End-of-text token names looked up in a Hugging Face file, in this order.
HF_EOT_TOKENS = ('<|endoftext|>', '<|end_of_text|>', '</s>', '<eos>')
SPECS = ('`bytes`, `tiktoken:NAME` (e.g. tiktoken:gpt2), a Hugging Face tokenizers file '
         'PATH.json, or a SentencePiece model PATH.model')
TRAIN_HINT = ('train one on local text with `python -m ncalm.tokenizer train --input=GLOB '
              '--vocab_size=N --out=FILE.json`')
# SentencePiece trainer options under which decode(encode(text)) == text (with the `▁`
# escape of `_load_sentencepiece`); pass them with model_type, vocab_size and the input.
SENTENCEPIECE_LOSSLESS_OPTIONS = dict(
    normalization_rule_name='identity',  # no NFKC: text is kept as written
    byte_fallback=True,                  # characters outside the vocabulary become bytes
    remove_extra_whitespaces=False,      # runs of spaces, leading and trailing spaces kept
    add_dummy_prefix=False,              # no space added before the text
    allow_whitespace_only_pieces=True,   # indentation can be one piece
    character_coverage=1.0,
    split_digits=False,
)

Ids = np.ndarray  # int32 [n]


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """A loaded tokeniser; compares by (name, vocab_size, eot_id, fingerprint).

  Pickling reloads it from its spec (`load(name)`) and checks the fingerprint, so worker
  processes get the same tokeniser (a `from_tiktoken` one with a made-up name cannot).

  Attributes:
    name: the spec it was loaded from (`load(name)` loads it again), e.g. 'tiktoken:gpt2'.
    vocab_size: number of ids, 0..vocab_size-1 (the model pads it: `padded_vocab_size`).
    eot_id: the end-of-text id that separates documents; `encode` never returns it.
    fingerprint: SHA-256 hex digest identifying the exact tokeniser.
  """
  name: str
  vocab_size: int
  eot_id: int
  fingerprint: str
  _encode: Callable[[str], Sequence[int]] = dataclasses.field(repr=False, compare=False)
  _encode_batch: Callable[[list[str]], list[Sequence[int]]] = dataclasses.field(
      repr=False, compare=False)
  _decode: Callable[[list[int]], str] = dataclasses.field(repr=False, compare=False)

  def encode(self, text: str) -> Ids:
    """int32 [n]: the ids of one document, encoded as plain text."""
    return np.asarray(self._encode(text), np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[Ids]:
    """`encode` of each text, with the backend's batch (multi-threaded) encoder."""
    return [np.asarray(ids, np.int32) for ids in self._encode_batch(list(texts))]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The text of `ids`; invalid UTF-8 (a cut character) becomes U+FFFD."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= self.vocab_size)]
    if bad.size:
      raise ValueError(f'{self.name}: ids {bad[:5].tolist()} are outside '
                       f'0..{self.vocab_size - 1}.')
    return self._decode(ids.tolist())

  def __reduce__(self):
    # Workers (multiprocessing) load the spec again and check it is still the same tokeniser.
    return _load_expecting, (self.name, self.fingerprint)


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """The model's vocabulary: `vocab_size` rounded up to a multiple the mesh can shard."""
  if vocab_size < 1 or multiple < 1:
    raise errors.UserError(f'padded_vocab_size: vocab_size={vocab_size} and multiple={multiple}'
                           ' must both be positive.')
  return -(-vocab_size // multiple) * multiple


def load(spec: str) -> Tokenizer:
  """The tokeniser a spec names: `bytes`, `tiktoken:NAME`, `PATH.json` or `PATH.model`."""
  if spec == 'bytes':
    return byte_tokenizer()
  if spec.startswith('tiktoken:'):
    return _load_tiktoken(spec, spec.split(':', 1)[1])
  if spec.endswith(('.json', '.model')):
    data = _read_file(spec)
    if spec.endswith('.json'):
      return _load_hf_json(spec, data)
    return _load_sentencepiece(spec, data)
  if os.path.isdir(spec):
    raise errors.UserError(f'tokenizer {spec!r} is a directory; give the tokeniser file in it '
                           f'(e.g. {os.path.join(spec, "tokenizer.json")}). Accepted: {SPECS}.')
  raise errors.UserError(f'tokenizer {spec!r} is not a tokeniser spec; give {SPECS}.')


def byte_tokenizer() -> Tokenizer:
  """Raw UTF-8: ids 0..255 are bytes, 256 is end of text; nothing to load."""

  def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8)

  def decode(ids: list[int]) -> str:
    ids = np.asarray(ids, np.int64)
    runs = np.split(ids, np.flatnonzero(ids == BYTES_EOT_ID))  # runs[1:] start with the eot
    texts = [run[run != BYTES_EOT_ID].astype(np.uint8).tobytes().decode('utf-8', 'replace')
             for run in runs]
    return EOT_TEXT.join(texts)

  fingerprint = _sha256(b'ncalm bytes tokenizer: UTF-8 bytes 0..255, end of text 256')
  return Tokenizer('bytes', BYTES_EOT_ID + 1, BYTES_EOT_ID, fingerprint, encode,
                   lambda texts: [encode(t) for t in texts], decode)


def from_tiktoken(encoding, name: str | None = None) -> Tokenizer:
  """Wraps a `tiktoken.Encoding` (its `<|endoftext|>` is the end-of-text id)."""
  name = name or f'tiktoken:{encoding.name}'
  special = dict(encoding._special_tokens)  # pylint: disable=protected-access
  if EOT_TEXT not in special:
    raise errors.UserError(f'tokenizer {name!r}: the encoding has no end-of-text token '
                           f'{EOT_TEXT!r} (its special tokens: {sorted(special)}).')
  digest = hashlib.sha256(b'tiktoken\0')
  digest.update(encoding._pat_str.encode('utf-8') + b'\0')  # pylint: disable=protected-access
  ranks = encoding._mergeable_ranks  # pylint: disable=protected-access
  for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
    digest.update(len(token).to_bytes(4, 'little') + token + rank.to_bytes(8, 'little'))
  for text, rank in sorted(special.items(), key=lambda item: item[1]):
    token = text.encode('utf-8')
    digest.update(b'special' + len(token).to_bytes(4, 'little') + token +
                  rank.to_bytes(8, 'little'))
  tokenizer = Tokenizer(name, encoding.n_vocab, special[EOT_TEXT], digest.hexdigest(),
                        encoding.encode_ordinary, encoding.encode_ordinary_batch,
                        lambda ids: encoding.decode(ids, errors='replace'))
  return _checked(tokenizer, EOT_TEXT)


def _tiktoken_cache_dir() -> str | None:
  """Where tiktoken keeps downloaded rank files (None: caching off), as tiktoken.load does."""
  for variable in ('TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR'):
    if variable in os.environ:
      return os.environ[variable] or None
  return os.path.join(tempfile.gettempdir(), 'data-gym-cache')


def _load_tiktoken(spec: str, encoding_name: str) -> Tokenizer:
  tiktoken = _import('tiktoken')
  names = tiktoken.list_encoding_names()
  if encoding_name not in names:
    raise errors.UserError(f'tokenizer {spec!r}: tiktoken has no encoding {encoding_name!r}; '
                           f'it has {", ".join(names)}.')
  try:
    encoding = tiktoken.get_encoding(encoding_name)
  except Exception as error:  # pylint: disable=broad-except
    # requests' ConnectionError without network, a hash mismatch, a missing blobfile, ...
    cache = _tiktoken_cache_dir()
    where = (f'in {cache!r} (TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else '
             f'{os.path.join(tempfile.gettempdir(), "data-gym-cache")}; files named by the '
             'SHA-1 of their URL)' if cache else
             'nowhere: TIKTOKEN_CACHE_DIR is empty, which turns tiktoken\'s cache off')
    cause = ' '.join(str(error).split())
    cause = cause if len(cause) <= 160 else cause[:160].rsplit(' ', 1)[0] + ' …'
    raise errors.UserError(
        f'tokenizer {spec!r}: tiktoken could not load the rank file of encoding '
        f'{encoding_name!r} ({type(error).__name__}: {cause}). tiktoken downloads it on '
        f'first use and looks for a cached copy {where}. Copy that cache folder from a machine '
        f'where `python -c "import tiktoken; tiktoken.get_encoding({encoding_name!r})"` has run '
        'and point TIKTOKEN_CACHE_DIR at it, or use another tokeniser: a Hugging Face '
        'tokenizers file PATH.json, a SentencePiece model PATH.model, `bytes`, or '
        f'{TRAIN_HINT}.') from None
  return from_tiktoken(encoding, spec)


def _load_hf_json(path: str, data: bytes) -> Tokenizer:
  """A Hugging Face `tokenizers` file.

  Byte-level BPE files (GPT-2 style, and those `ncalm.tokenizer train` writes) round-trip
  any text. Files with a normalizer (NFC/NFKC, lowercasing, stripping), a Metaspace
  pre-tokenizer that adds a leading space, an unknown token instead of byte fallback, or a
  WordPiece model (BERT) change the text they encode; decode gives the changed text.
  """
  hf = _import('tokenizers')
  try:
    backend = hf.Tokenizer.from_str(data.decode('utf-8'))
  except Exception as error:  # pylint: disable=broad-except  (tokenizers raises Exception)
    raise errors.UserError(f'tokenizer file {path!r} is not a Hugging Face tokenizers JSON file '
                           f'({" ".join(str(error).split())[:200]}).') from None
  backend.encode_special_tokens = True  # special-token text in a document is plain text
  backend.no_padding()
  backend.no_truncation()
  vocab = backend.get_vocab(with_added_tokens=True)
  found = [(token, vocab[token]) for token in HF_EOT_TOKENS if token in vocab]
  if not found:
    raise errors.UserError(f'tokenizer file {path!r} has no end-of-text token: none of '
                           f'{", ".join(HF_EOT_TOKENS)} is in its vocabulary. Add one as a '
                           f'special token, or {TRAIN_HINT}.')
  eot_text, eot_id = found[0]

  def encode(text: str) -> list[int]:
    return backend.encode(text, add_special_tokens=False).ids

  def encode_batch(texts: list[str]) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

  tokenizer = Tokenizer(path, max(vocab.values()) + 1, eot_id, _sha256(b'hf-tokenizers\0' + data),
                        encode, encode_batch,
                        lambda ids: backend.decode(ids, skip_special_tokens=False))
  return _checked(tokenizer, eot_text)


def _load_sentencepiece(path: str, data: bytes) -> Tokenizer:
  """A SentencePiece model; its eos (`</s>`), or else a `<|endoftext|>` piece, ends text.

  A model trained with `SENTENCEPIECE_LOSSLESS_OPTIONS` round-trips any text. SentencePiece
  writes a space as `▁` (U+2581), so a literal `▁` would decode as a space: `encode` spells
  each literal `▁` with its three byte pieces instead, which decode to `▁` (this needs
  byte_fallback). Models made with SentencePiece's defaults (most published ones) lose
  information: NFKC normalisation rewrites text (full-width letters, ligatures, some
  spaces); remove_extra_whitespaces collapses runs of spaces and drops leading and trailing
  ones; add_dummy_prefix adds a space that decode removes, so a text that starts with a space
  loses it; without byte_fallback characters outside the vocabulary become <unk> (⁇ on
  decode). Newlines survive only as byte pieces, never merged, when the model was trained on
  line-split text.
  """
  spm = _import('sentencepiece')
  try:
    backend = spm.SentencePieceProcessor(model_proto=data)
  except Exception as error:  # pylint: disable=broad-except  (RuntimeError from C++)
    raise errors.UserError(f'tokenizer file {path!r} is not a SentencePiece model '
                           f'({" ".join(str(error).split())[:200]}).') from None
  eot_id = backend.eos_id()
  if eot_id < 0:
    eot_id = backend.piece_to_id(EOT_TEXT)
    if backend.id_to_piece(eot_id) != EOT_TEXT:
      raise errors.UserError(f'tokenizer file {path!r} has no end-of-text token: the model has '
                             f'no eos piece (eos_id=-1) and no {EOT_TEXT!r} piece. Retrain it '
                             f'with eos_id >= 0 or a control symbol {EOT_TEXT!r}, or {TRAIN_HINT}.')
  escape_char = '\u2581'
  escape_ids = [backend.piece_to_id(f'<0x{b:02X}>') for b in escape_char.encode('utf-8')]
  can_escape = all(backend.is_byte(i) for i in escape_ids)
  options = dict(out_type=int, add_bos=False, add_eos=False)

  def encode(text: str) -> list[int]:
    if not can_escape or escape_char not in text:
      return backend.encode(text, **options)
    parts = text.split(escape_char)
    ids = backend.encode(parts[0], **options)
    for part in parts[1:]:
      ids += escape_ids + backend.encode(part, **options)
    return ids

  def encode_batch(texts: list[str]) -> list[list[int]]:
    plain = [i for i, text in enumerate(texts) if not can_escape or escape_char not in text]
    out = [None] * len(texts)
    for i, ids in zip(plain, backend.encode([texts[i] for i in plain], **options)):
      out[i] = ids
    for i, ids in enumerate(out):
      if ids is None:
        out[i] = encode(texts[i])
    return out

  tokenizer = Tokenizer(path, backend.get_piece_size(), eot_id,
                        _sha256(b'sentencepiece\0' + data), encode, encode_batch, backend.decode)
  return _checked(tokenizer, backend.id_to_piece(eot_id))


def _checked(tokenizer: Tokenizer, eot_text: str) -> Tokenizer:
  """`tokenizer`, once its end-of-text token is known not to come out of document text."""
  if not 0 <= tokenizer.eot_id < tokenizer.vocab_size:
    raise errors.UserError(f'tokenizer {tokenizer.name!r}: end-of-text id {tokenizer.eot_id} '
                           f'is outside its vocabulary 0..{tokenizer.vocab_size - 1}.')
  if tokenizer.eot_id in tokenizer.encode(f'a{eot_text} b'):
    raise errors.UserError(
        f'tokenizer {tokenizer.name!r}: the text {eot_text!r} inside a document encodes as the '
        f'end-of-text id {tokenizer.eot_id}, so documents could not be told apart from text '
        'that spells it. Make it a special token (Hugging Face: "special": true; '
        'SentencePiece: a control symbol, not a user-defined one).')
  return tokenizer


def _load_expecting(spec: str, fingerprint: str) -> Tokenizer:
  tokenizer = load(spec)
  if tokenizer.fingerprint != fingerprint:
    raise errors.UserError(f'tokenizer {spec!r} changed: its fingerprint is now '
                           f'{tokenizer.fingerprint[:12]}…, not {fingerprint[:12]}….')
  return tokenizer


def _read_file(path: str) -> bytes:
  if not os.path.exists(path):
    raise errors.UserError(f'tokenizer file {path!r} does not exist (accepted: {SPECS}).')
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as error:
    raise errors.UserError(f'tokenizer file {path!r} cannot be read ({error}).') from None


def _import(module: str) -> ModuleType:
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise errors.UserError(f'this tokeniser needs the Python package {module!r} ({error}); '
                           f'pip install {module}.') from None


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()
