"""The loader's token-id cache (data.token_cache_texts): each text tokenized once a run, the
batches the same as tokenizing every batch, memory bounded by the number of texts kept."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.models.pretrained import load_spec
from embedjax.train import batches as train_batches


@pytest.fixture(scope='module')
def tokenizer():
  return load_spec('all-MiniLM-L6-v2')[1]


def rows(n: int = 12) -> list[dict]:
  words = ['dense', 'sparse', 'retrieval', 'embedding', 'vector', 'index', 'query', 'passage',
           'token', 'model']
  return [{'query': ' '.join(words[i % 10:i % 10 + 1 + i % 4]),
           'positive': ' '.join(words[(3 * i) % 10:] * (1 + i % 5)),
           'negative': f'negative number {i}', 'doc_key': i} for i in range(n)]


def test_each_distinct_text_is_tokenized_once_to_the_tokenizers_ids(tokenizer):
  tok = tokenizer.with_max_length(16)
  asked: list[str] = []
  encode = tok.encode
  tok.encode = lambda texts: asked.extend(texts) or encode(texts)  # counts what reaches it
  cache = train_batches.TokenIdCache(tok, max_texts=10)
  first = cache.encode(['b a', 'a b c', 'b a'])
  again = cache.encode(['a b c', 'new text', 'b a'])
  assert asked == ['b a', 'a b c', 'new text'] and len(cache) == 3
  want = encode(['b a', 'a b c', 'b a', 'a b c', 'new text', 'b a'])
  for got, ids in zip(first + again, want):
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ids)
  long = cache.encode([' '.join(['word'] * 40)])[0]  # truncated as the tokenizer truncates
  assert len(long) == 16 and long[-1] == encode(['x'])[0][-1]


def test_a_full_cache_keeps_what_it_has_and_tokenizes_the_rest_each_time(tokenizer):
  tok = tokenizer.with_max_length(16)
  asked: list[str] = []
  encode = tok.encode
  tok.encode = lambda texts: asked.extend(texts) or encode(texts)
  cache = train_batches.TokenIdCache(tok, max_texts=2)
  for _ in range(3):
    got = cache.encode(['one', 'two', 'three', 'one'])
    for ids, want in zip(got, encode(['one', 'two', 'three', 'one'])):
      np.testing.assert_array_equal(ids, want)
  assert len(cache) == 2 and asked == ['one', 'two', 'three', 'three', 'three']


@pytest.mark.parametrize('padding', ['bucket', 'max_length', 'pack'])
def test_cached_batches_equal_uncached_ones_over_several_epochs(tokenizer, padding):
  data = rows()
  kw = {'batch_size': 4, 'query_len': 8, 'doc_len': 24, 'seed': 3, 'padding': padding,
        'pack_segments': 4}
  plain = train_batches.make_loader(data, tokenizer, token_cache_texts=0, **kw)
  cached = train_batches.make_loader(data, tokenizer, token_cache_texts=10_000, read_threads=2,
                                     **kw)
  full = train_batches.make_loader(data, tokenizer, token_cache_texts=5, **kw)  # 5 of 12 kept
  for _ in range(9):  # three epochs: the last two read every text from the cache
    want = next(plain)
    for got in (next(cached), next(full)):
      assert want.keys() == got.keys()
      for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_negative_cache_size_is_one_line_naming_the_field():
  from embedjax.config import ConfigError
  from embedjax.train.base_config import base_config, check_config
  cfg = base_config()
  check_config(cfg)  # the default is valid
  cfg.data.token_cache_texts = -1
  with pytest.raises(ConfigError, match='data.token_cache_texts -1: must be >= 0'):
    check_config(cfg)
