"""The loader's token-id cache (data.token_cache): each text tokenized once a run, the batches
the same as tokenizing every batch."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.models.pretrained import load_spec
from embedjax.train import batches as train_batches


@pytest.fixture(scope='module')
def tokenizer():
  return load_spec('all-MiniLM-L6-v2')[1]


def rows(n: int = 12) -> list[dict]:
  words = 'dense sparse retrieval embedding vector index query passage token model'.split()
  return [{'query': ' '.join(words[i % 10:i % 10 + 1 + i % 4]),
           'positive': ' '.join(words[(3 * i) % 10:] * (1 + i % 5)),
           'negative': f'negative number {i}', 'doc_key': i} for i in range(n)]


def test_each_distinct_text_is_tokenized_once_to_the_tokenizers_ids(tokenizer):
  tok = tokenizer.with_max_length(16)
  asked: list[str] = []
  encode = tok.encode
  tok.encode = lambda texts: asked.extend(texts) or encode(texts)  # counts what reaches it
  cache = train_batches.TokenIdCache(tok)
  first = cache.encode(['b a', 'a b c', 'b a'])
  again = cache.encode(['a b c', 'new text', 'b a'])
  assert asked == ['b a', 'a b c', 'new text'] and len(cache) == 3
  want = encode(['b a', 'a b c', 'b a', 'a b c', 'new text', 'b a'])
  for got, ids in zip(first + again, want):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ids)
  long = cache.encode([' '.join(['word'] * 40)])[0]  # truncated as the tokenizer truncates
  assert len(long) == 16 and long[-1] == encode(['x'])[0][-1]


@pytest.mark.parametrize('padding', ['bucket', 'max_length', 'pack'])
def test_cached_batches_equal_uncached_ones_over_several_epochs(tokenizer, padding):
  data = rows()
  kw = dict(batch_size=4, query_len=8, doc_len=24, seed=3, padding=padding, pack_segments=4)
  plain = train_batches.make_loader(data, tokenizer, token_cache=False, **kw)
  cached = train_batches.make_loader(data, tokenizer, token_cache=True, read_threads=2, **kw)
  for _ in range(9):  # three epochs: the last two read every text from the cache
    want, got = next(plain), next(cached)
    assert want.keys() == got.keys()
    for key in want:
      assert got[key].dtype == want[key].dtype, key
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
