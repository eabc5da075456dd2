"""A run's text tokeniser as Hugging Face tokeniser files, giving the same ids as ncalm.

  * a Hugging Face `tokenizers` file (`PATH.json`) is copied as `tokenizer.json`;
  * a SentencePiece model (`PATH.model`) is copied as `tokenizer.model` (LlamaTokenizer);
  * `bytes` becomes a byte-level BPE without merges: ids 0..255 are the bytes, 256 is
    `<|endoftext|>`;
  * `tiktoken:NAME` becomes the equivalent byte-level BPE: the same vocabulary in GPT-2's
    byte-to-character spelling, merges recovered from the ranks (each token is the merge
    of the two parts that BPE with the lower ranks leaves of it; a token that no merge
    makes gets none, as tiktoken never emits it), the encoding's split pattern, and its
    special tokens. Text that spells a special token (`<|endoftext|>`) is that token for
    Hugging Face but plain text for ncalm, which never puts special ids inside a document.

`tokenizer_config.json` names the end-of-text token as bos/eos and adds no special tokens
when encoding, as ncalm encodes documents (ncalm/data/tokenizers.py).
"""
from __future__ import annotations

import json
import os
import shutil

from ncalm.data import tokenizers

TOKENIZER_JSON = 'tokenizer.json'
TOKENIZER_MODEL = 'tokenizer.model'
TOKENIZER_CONFIG = 'tokenizer_config.json'


def byte_to_char() -> dict[int, str]:
  """GPT-2's printable spelling of bytes, as the ByteLevel pre-tokenizer uses it."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  spelling, extra = {}, 0
  for b in range(256):
    if b in printable:
      spelling[b] = chr(b)
    else:
      spelling[b] = chr(256 + extra)
      extra += 1
  return spelling


def _spell(token: bytes, chars: dict[int, str]) -> str:
  return ''.join(chars[b] for b in token)


def _bpe_parts(ranks: dict[bytes, int], token: bytes, below: int) -> list[bytes]:
  """The parts of `token` after byte-pair merging with ranks lower than `below`."""
  parts = [bytes([b]) for b in token]
  while len(parts) > 1:
    best = None
    for i in range(len(parts) - 1):
      rank = ranks.get(parts[i] + parts[i + 1])
      if rank is not None and rank < below and (best is None or rank < best[1]):
        best = (i, rank)
    if best is None:
      break
    i = best[0]
    parts[i:i + 2] = [parts[i] + parts[i + 1]]
  return parts


def byte_level_bpe(ranks: dict[bytes, int], special: dict[str, int], pattern: str | None):
  """A `tokenizers.Tokenizer`: byte-level BPE over `ranks` ({token bytes: id}), with
  `special` ({text: id}) and the pre-tokenizer split `pattern` (None: no split)."""
  import tokenizers as hf  # pylint: disable=g-import-not-at-top
  chars = byte_to_char()
  vocab = {_spell(token, chars): rank for token, rank in ranks.items()}
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
    if len(token) > 1:
      parts = _bpe_parts(ranks, token, rank)
      if len(parts) == 2:   # else no merge makes it: tiktoken never emits it either
        merges.append((_spell(parts[0], chars), _spell(parts[1], chars)))
  tok = hf.Tokenizer(hf.models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
  byte_level = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  if pattern:
    tok.pre_tokenizer = hf.pre_tokenizers.Sequence([
        hf.pre_tokenizers.Split(hf.Regex(pattern), behavior='isolated', invert=False),
        byte_level])
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = hf.decoders.ByteLevel()
  tok.add_special_tokens([hf.AddedToken(text, special=True, normalized=False)
                          for text, _ in sorted(special.items(), key=lambda item: item[1])])
  for text, want in special.items():
    if tok.token_to_id(text) != want:
      raise ValueError(f'special token {text!r} got id {tok.token_to_id(text)}, not {want}.')
  return tok


def from_tiktoken(encoding):
  """The byte-level BPE `tokenizers.Tokenizer` equivalent to a `tiktoken.Encoding`."""
  # pylint: disable=protected-access  (tiktoken has no public accessors for these)
  return byte_level_bpe(encoding._mergeable_ranks, dict(encoding._special_tokens),
                        encoding._pat_str)


def write(spec: str, out_dir: str, max_length: int) -> list[str]:
  """Writes the tokeniser files of `spec` into `out_dir`; returns their names."""
  tok = tokenizers.load(spec)   # refuses a spec that cannot be loaded, with the fix
  eot = tokenizers.EOT_TEXT
  if spec.endswith('.model'):
    shutil.copyfile(spec, os.path.join(out_dir, TOKENIZER_MODEL))
    sentencepiece = tokenizers._import('sentencepiece')  # pylint: disable=protected-access
    eot = sentencepiece.SentencePieceProcessor(model_file=spec).id_to_piece(tok.eot_id)
    config = {'tokenizer_class': 'LlamaTokenizer', 'add_bos_token': False,
              'add_eos_token': False, 'legacy': False}
    written = [TOKENIZER_MODEL]
  else:
    if spec.endswith('.json'):
      shutil.copyfile(spec, os.path.join(out_dir, TOKENIZER_JSON))
      eot = tok.decode([tok.eot_id])
    elif spec == 'bytes':
      byte_level_bpe({bytes([b]): b for b in range(256)}, {eot: tokenizers.BYTES_EOT_ID},
                     None).save(os.path.join(out_dir, TOKENIZER_JSON))
    else:
      tiktoken = tokenizers._import('tiktoken')  # pylint: disable=protected-access
      from_tiktoken(tiktoken.get_encoding(spec.split(':', 1)[1])).save(
          os.path.join(out_dir, TOKENIZER_JSON))
    config = {'tokenizer_class': 'PreTrainedTokenizerFast'}
    written = [TOKENIZER_JSON]
  config.update(bos_token=eot, eos_token=eot, model_max_length=max_length,
                clean_up_tokenization_spaces=False, ncalm_tokenizer=spec)
  with open(os.path.join(out_dir, TOKENIZER_CONFIG), 'w') as f:
    json.dump(config, f, indent=1)
  return [*written, TOKENIZER_CONFIG]
