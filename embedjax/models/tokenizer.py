"""Tokenization that reproduces sentence-transformers' for BERT-family models.

sentence-transformers strips each text, tokenizes with the model's fast tokenizer, truncates to
``max_seq_length`` tokens (special tokens included) and pads to the longest text of the batch. The
packaged ``tokenizer.json`` carries its own fixed padding and truncation at 128, so both are
switched off here and truncation is set to the model's ``max_seq_length`` explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import tokenizers


class TextTokenizer:
  """Wraps a ``tokenizers.Tokenizer``: texts -> lists of token ids, truncated to ``max_length``.

  ``lowercase``: lowercase texts before the tokenizer's own normalizer (sentence-transformers'
  ``do_lower_case``, which it applies the same way: a Lowercase normalizer put first).
  ``pad_id``: the id padding positions get (default: the tokenizer's [PAD] / <pad> token, else 0).
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, max_length: int, source_json: str | None = None,
               *, lowercase: bool = False, pad_id: int | None = None):
    if max_length < 2:
      raise ValueError(f'max_length must be at least 2 (room for [CLS] and [SEP]), got {max_length}')
    self._source_json = source_json if source_json is not None else tokenizer.to_str()
    tok = tokenizers.Tokenizer.from_str(self._source_json)
    tok.no_padding()
    tok.enable_truncation(max_length)
    if lowercase:
      current = tok.normalizer
      steps = [tokenizers.normalizers.Lowercase()] + ([] if current is None else [current])
      tok.normalizer = tokenizers.normalizers.Sequence(steps)
    self._tok = tok
    self.max_length = max_length
    self.lowercase = lowercase
    if pad_id is None:
      pad_id = next((i for i in (tok.token_to_id(t) for t in ('[PAD]', '<pad>')) if i is not None), 0)
    self.pad_id = pad_id

  @classmethod
  def from_folder(cls, folder: str | Path, max_length: int, do_lower_case: bool = True, *,
                  lowercase: bool = False, pad_id: int | None = None) -> 'TextTokenizer':
    """Loads ``tokenizer.json`` from a model folder, else builds WordPiece from ``vocab.txt``.

    ``do_lower_case`` is the WordPiece lowercasing when building from vocab.txt; ``lowercase`` and
    ``pad_id`` are as in the constructor.
    """
    folder = Path(folder)
    tj = folder / 'tokenizer.json'
    if tj.exists():
      text = tj.read_text(encoding='utf-8')
      try:
        tok = tokenizers.Tokenizer.from_str(text)
      except Exception as e:  # tokenizers raises its own exception types
        raise ValueError(f'{tj}: not a valid tokenizers JSON file ({e})') from e
      return cls(tok, max_length, source_json=text, lowercase=lowercase, pad_id=pad_id)
    vocab = folder / 'vocab.txt'
    if vocab.exists():
      wp = tokenizers.BertWordPieceTokenizer(str(vocab), lowercase=do_lower_case)
      # the wrapped tokenizers.Tokenizer
      return cls(wp._tokenizer, max_length, lowercase=lowercase, pad_id=pad_id)
    raise FileNotFoundError(f'{folder}: no tokenizer.json or vocab.txt')

  def with_max_length(self, max_length: int) -> 'TextTokenizer':
    """The same tokenizer truncating at ``max_length`` tokens (special tokens included)."""
    return TextTokenizer(self._tok, max_length, source_json=self._source_json,
                         lowercase=self.lowercase, pad_id=self.pad_id)

  @property
  def lowercases(self) -> bool:
    """Whether tokenization lowercases texts (our ``lowercase`` or the tokenizer's own normalizer)."""
    def lowers(node) -> bool:
      if not node:
        return False
      if node['type'] == 'Sequence':
        return any(lowers(n) for n in node['normalizers'])
      return node['type'] == 'Lowercase' or (node['type'] == 'BertNormalizer' and node['lowercase'])
    return self.lowercase or lowers(json.loads(self._source_json).get('normalizer'))

  @property
  def model_type(self) -> str:
    """The tokenization model: 'WordPiece', 'BPE', 'Unigram' or 'WordLevel'."""
    return json.loads(self._source_json)['model']['type']

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  def to_json(self) -> str:
    """The original tokenizer JSON (with the padding/truncation it was shipped with)."""
    return self._source_json

  def vocab(self) -> dict[str, int]:
    return self._tok.get_vocab()

  def encode(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (stripped, truncated to ``max_length`` with special tokens)."""
    if isinstance(texts, str):
      raise TypeError('encode takes a sequence of texts, not a single string')
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f'text {i} is a {type(t).__name__}, not a str')
    encodings = self._tok.encode_batch([t.strip() for t in texts])
    return [e.ids for e in encodings]

  def prompt_length(self, prompt: str) -> int:
    """Tokens a prompt occupies at the start of ``prompt + text``, as sentence-transformers counts
    them: the prompt tokenized alone (unstripped), less a trailing special token ([SEP], </s>)."""
    encoding = self._tok.encode(prompt)
    n = len(encoding.ids)
    return n - 1 if n and encoding.special_tokens_mask[-1] else n

  def pad(self, ids: Sequence[Sequence[int]], length: int | None = None) -> dict[str, np.ndarray]:
    """Right-pads token id lists into ``input_ids`` / ``attention_mask`` (B, length) int32 arrays."""
    length = max(len(x) for x in ids) if length is None else length
    input_ids = np.full((len(ids), length), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(ids), length), dtype=np.int32)
    for i, x in enumerate(ids):
      if len(x) > length:
        raise ValueError(f'text {i} has {len(x)} tokens, more than the padded length {length}')
      input_ids[i, :len(x)] = x
      mask[i, :len(x)] = 1
    return {'input_ids': input_ids, 'attention_mask': mask}

  def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Tokenizes and pads to the longest text, as sentence-transformers does."""
    return self.pad(self.encode(texts))


def write_vocab_txt(tokenizer: TextTokenizer, path: Path) -> None:
  """Writes ``vocab.txt`` (one token a line, in id order) for tools that want the slow tokenizer."""
  vocab = tokenizer.vocab()
  by_id = sorted(vocab.items(), key=lambda kv: kv[1])
  if [i for _, i in by_id] != list(range(len(by_id))):
    raise ValueError('vocabulary ids are not contiguous; cannot write vocab.txt')
  path.write_text(''.join(tok + '\n' for tok, _ in by_id), encoding='utf-8')


def tokenizer_config_json(max_length: int, do_lower_case: bool = True) -> str:
  return json.dumps({
      'tokenizer_class': 'BertTokenizer', 'do_lower_case': do_lower_case,
      'model_max_length': max_length, 'unk_token': '[UNK]', 'sep_token': '[SEP]',
      'pad_token': '[PAD]', 'cls_token': '[CLS]', 'mask_token': '[MASK]',
  }, indent=2)
