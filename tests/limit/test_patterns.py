"""LIMIT qrel patterns and synthetic corpora."""

from __future__ import annotations

import itertools
import json
import math
import re
import time

import jax
import numpy as np
import pytest

from embedjax.data import readers
from embedjax.limit import patterns as lp


def items_of(doc_id: str, text: str) -> list[str]:
  """The liked items of ``"<doc_id> likes A, B and C."`` (asserts the format)."""
  prefix = f'{doc_id} likes '
  assert text.startswith(prefix) and text.endswith('.') and len(text) > len(prefix) + 1, text
  head, _, last = text[len(prefix):-1].rpartition(' and ')
  return (head.split(', ') if head else []) + [last]


# ----------------------------------------------------------------------------------------------
# Patterns


@pytest.mark.parametrize('pattern,q,m', [
    ('dense', 1000, 46), ('dense', 1035, 46), ('dense', 1036, 47), ('dense', 1, 2), ('dense', 3, 3),
    ('random', 1000, 2000), ('random', 1, 2), ('cycle', 1000, 1000), ('cycle', 2, 3), ('cycle', 1, 2), ('disjoint', 1000, 2000),
])
def test_default_pool_size(pattern, q, m):
  assert lp.default_pool_size(pattern, q) == m
  assert lp.qrel_pairs(pattern, q).max() == m - 1 or pattern == 'random'


def test_dense():
  all_pairs = list(itertools.combinations(range(46), 2))
  assert lp.qrel_pairs('dense', 1035).tolist() == [list(p) for p in all_pairs]
  assert lp.qrel_pairs('dense', 1000).tolist() == [list(p) for p in all_pairs[:1000]]
  # An explicit pool: still the lexicographic prefix, without building all C(m, 2) pairs.
  assert lp.qrel_pairs('dense', 5, 50_000).tolist() == [[0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]
  for m in range(2, 12):
    assert lp.qrel_pairs('dense', math.comb(m, 2), m).tolist() == [list(p) for p in itertools.combinations(range(m), 2)]


def test_cycle():
  pairs = lp.qrel_pairs('cycle', 7)
  assert pairs.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 0]]
  assert lp.qrel_pairs('cycle', 3, 10).tolist() == [[0, 1], [1, 2], [2, 3]]
  assert np.bincount(lp.qrel_pairs('cycle', 1000).ravel()).tolist() == [2] * 1000


def test_disjoint():
  pairs = lp.qrel_pairs('disjoint', 500)
  assert pairs.tolist() == [[2 * i, 2 * i + 1] for i in range(500)]
  assert np.unique(pairs).size == pairs.size  # no document in two queries
  assert lp.qrel_pairs('disjoint', 3, 7).tolist() == [[0, 1], [2, 3], [4, 5]]


def test_random():
  pairs = lp.qrel_pairs('random', 1000, 46, 0)
  assert pairs.shape == (1000, 2) and pairs.dtype == np.int64
  assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() < 46
  assert len({tuple(p) for p in pairs.tolist()}) == 1000  # no duplicate pair
  np.testing.assert_array_equal(pairs, lp.qrel_pairs('random', 1000, 46, 0))
  assert not np.array_equal(pairs, lp.qrel_pairs('random', 1000, 46, 1))
  # The default pool (2Q): documents are relevant to about one query each.
  sparse = lp.qrel_pairs('random', 1000, None, 0)
  assert sparse.max() < 2000 and np.bincount(sparse.ravel()).max() <= 6
  # Asking for every pair gives all of them, in a random order.
  full = lp.qrel_pairs('random', 1035, 46, 3)
  assert sorted(map(tuple, full.tolist())) == list(itertools.combinations(range(46), 2))
  # A pool far larger than the queries.
  big = lp.qrel_pairs('random', 200, 50_000, 0)
  assert len({tuple(p) for p in big.tolist()}) == 200 and big.max() < 50_000


def test_random_seed_kinds():
  from_seed = lp.qrel_pairs('random', 50, 20, 7)
  np.testing.assert_array_equal(from_seed, lp.qrel_pairs('random', 50, 20, np.random.default_rng(7)))
  key = jax.random.key(0)
  from_key = lp.qrel_pairs('random', 50, 20, key)
  np.testing.assert_array_equal(from_key, lp.qrel_pairs('random', 50, 20, key))
  np.testing.assert_array_equal(from_key, lp.qrel_pairs('random', 50, 20, jax.random.PRNGKey(0)))
  assert not np.array_equal(from_key, lp.qrel_pairs('random', 50, 20, jax.random.fold_in(key, 1)))
  with pytest.raises(TypeError, match='key_or_seed'):
    lp.qrel_pairs('random', 5, 10, 'seed')


def test_qrel_matrix():
  rel = lp.qrel_matrix(lp.qrel_pairs('dense', 1035), 46)
  assert rel.shape == (1035, 46) and rel.dtype == bool
  assert (rel.sum(axis=1) == 2).all() and (rel.sum(axis=0) == 45).all()
  assert lp.qrel_matrix([[0, 2]], 3).tolist() == [[True, False, True]]
  with pytest.raises(ValueError, match='pairs'):
    lp.qrel_matrix([[0, 3]], 3)
  with pytest.raises(ValueError, match='pairs'):
    lp.qrel_matrix([0, 1], 3)


@pytest.mark.parametrize('args,match', [
    (('chain', 10), 'pattern'),
    (('dense', 0), 'num_queries'),
    (('dense', 1036, 46), 'num_queries'),
    (('random', 11, 5), 'num_queries'),
    (('cycle', 6, 5), 'num_queries'),
    (('cycle', 2, 2), 'num_queries'),
    (('disjoint', 3, 5), 'num_queries'),
    (('dense', 1, 1), 'pool_size'),
    (('disjoint', 1, 0), 'pool_size'),
    (('dense', 2.5), 'num_queries'),
])
def test_bad_pattern_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    lp.qrel_pairs(*args)


# ----------------------------------------------------------------------------------------------
# Word lists


def test_word_lists():
  lists = {'adjectives': lp._ADJECTIVES, 'nouns': lp._NOUNS, 'varieties': lp._VARIETIES,
           'first names': lp._FIRST_NAMES, 'surnames': lp._SURNAMES}
  for name, words in lists.items():
    assert len(set(words)) == len(words), name
    assert all(re.fullmatch(r'[A-Z][a-z]+', w) for w in words), name
  for (a, wa), (b, wb) in itertools.combinations(lists.items(), 2):
    assert not {w.lower() for w in wa} & {w.lower() for w in wb}, (a, b)
  nouns = sorted(lp._NOUNS)
  assert not [(x, y) for x, y in zip(nouns, nouns[1:]) if y.startswith(x)]  # prefix-free
  assert lp.MAX_DOCS >= 100_000 and lp.MAX_QUERIES >= 50_000 and lp.NUM_FILLERS >= 20_000
  bm25s = pytest.importorskip('bm25s')
  stopwords = set(bm25s.stopwords.STOPWORDS_EN)
  assert not stopwords & {w.lower() for words in lists.values() for w in words}


# ----------------------------------------------------------------------------------------------
# Corpora


@pytest.mark.parametrize('pattern,num_queries', [('dense', 60), ('random', 60), ('cycle', 60), ('disjoint', 60)])
def test_corpus_structure(pattern, num_queries):
  num_docs = 300
  corpus = lp.generate_corpus(pattern, num_docs, num_queries, seed=5)
  np.testing.assert_array_equal(corpus.pairs, lp.qrel_pairs(pattern, num_queries, None, 5))
  m = lp.default_pool_size(pattern, num_queries)
  assert corpus.pool_size == m and len(set(corpus.pool_docs.tolist())) == m
  assert len(corpus.corpus_ids) == len(corpus.corpus_texts) == num_docs
  assert corpus.query_ids == [f'query_{i}' for i in range(num_queries)]
  assert corpus.query_texts == [f'Who likes {x}?' for x in corpus.query_attributes]
  assert len(set(corpus.query_attributes)) == num_queries

  # qrels: exactly the two pool documents of each pair, relevance 1.
  for i, qid in enumerate(corpus.query_ids):
    expected = {corpus.corpus_ids[corpus.pool_docs[j]] for j in corpus.pairs[i]}
    assert corpus.qrels[qid] == dict.fromkeys(expected, 1)

  # Every query attribute occurs in exactly its two relevant documents, and nowhere else.
  for qid, attr in zip(corpus.query_ids, corpus.query_attributes):
    holders = {doc_id for doc_id, text in zip(corpus.corpus_ids, corpus.corpus_texts) if attr in text}
    assert holders == set(corpus.qrels[qid]), attr

  # Every document lists the same number of distinct items; only pool documents hold query items.
  degree = np.bincount(corpus.pairs.ravel(), minlength=m)
  assert corpus.likes_per_doc == max(10, int(degree.max()))
  query_items = set(corpus.query_attributes)
  # (a random pool can hold documents that no drawn pair uses)
  pool = {int(doc) for doc, deg in zip(corpus.pool_docs, degree) if deg > 0}
  for d, (doc_id, text) in enumerate(zip(corpus.corpus_ids, corpus.corpus_texts)):
    items = items_of(doc_id, text)
    assert len(items) == corpus.likes_per_doc and len(set(items)) == len(items)
    assert bool(query_items & set(items)) == (d in pool)


def test_patterns_share_documents_outside_their_pools():
  # Same seed, size and likes: only pool documents differ, so embeddings can be shared.
  a = lp.generate_corpus('dense', 3000, 100, seed=2, likes_per_doc=20)
  b = lp.generate_corpus('cycle', 3000, 100, seed=2, likes_per_doc=20)
  assert a.corpus_ids == b.corpus_ids
  outside = set(range(3000)) - set(a.pool_docs.tolist()) - set(b.pool_docs.tolist())
  assert len(outside) > 2800
  assert all(a.corpus_texts[i] == b.corpus_texts[i] for i in outside)


def test_dense_limit_shape():
  # The LIMIT configuration: 46 relevant documents, each holding 45 query attributes.
  corpus = lp.generate_corpus('dense', 200, 1035, seed=0)
  assert corpus.likes_per_doc == 45
  assert (corpus.qrel_matrix().sum(axis=0) == 45).all()
  assert all(len(items_of(i, t)) == 45 for i, t in zip(corpus.corpus_ids, corpus.corpus_texts))


def test_corpus_options_and_determinism():
  a = lp.generate_corpus('random', 120, 40, seed=3, pool_size=30, likes_per_doc=25)
  b = lp.generate_corpus('random', 120, 40, seed=3, pool_size=30, likes_per_doc=25)
  c = lp.generate_corpus('random', 120, 40, seed=4, pool_size=30, likes_per_doc=25)
  assert a.pool_size == 30 and a.likes_per_doc == 25
  assert a.to_retrieval_data() == b.to_retrieval_data()
  assert a.corpus_texts != c.corpus_texts and not np.array_equal(a.pairs, c.pairs)
  assert all(len(items_of(i, t)) == 25 for i, t in zip(a.corpus_ids, a.corpus_texts))
  # One item per document: "<Name> likes X."
  single = lp.generate_corpus('disjoint', 4, 2, seed=0, likes_per_doc=1)
  assert all(t == f'{i} likes {items_of(i, t)[0]}.' for i, t in zip(single.corpus_ids, single.corpus_texts))


@pytest.mark.parametrize('kwargs,match', [
    (dict(pattern='dense', num_docs=40, num_queries=1000), 'num_docs'),
    (dict(pattern='dense', num_docs=lp.MAX_DOCS + 1, num_queries=10), 'num_docs'),
    (dict(pattern='dense', num_docs=100, num_queries=1000, likes_per_doc=44), 'likes_per_doc'),
    (dict(pattern='cycle', num_docs=100, num_queries=10, likes_per_doc=0), 'likes_per_doc'),
    (dict(pattern='cycle', num_docs=100, num_queries=10, pool_size=5), 'num_queries'),
    (dict(pattern='star', num_docs=100, num_queries=10), 'pattern'),
    (dict(pattern='cycle', num_docs=100, num_queries=10, seed=-1), 'seed'),
])
def test_bad_corpus_arguments(kwargs, match):
  kwargs.setdefault('seed', 0)
  with pytest.raises(ValueError, match=match):
    lp.generate_corpus(**kwargs)


def test_full_size_corpus():
  start = time.perf_counter()
  corpus = lp.generate_corpus('dense', 50_000, 1000, seed=0)
  elapsed = time.perf_counter() - start
  assert elapsed < 30, elapsed  # about 1 s on an idle core; generous for a loaded CI machine
  assert len(set(corpus.corpus_ids)) == 50_000
  assert corpus.likes_per_doc == 45 and corpus.pool_size == 46
  counts = {len(items_of(i, t)) for i, t in zip(corpus.corpus_ids, corpus.corpus_texts)}
  assert counts == {45}


def test_beir_round_trip(tmp_path):
  corpus = lp.generate_corpus('cycle', 80, 30, seed=1)
  folder = corpus.write_beir(tmp_path / 'limit-cycle')
  assert readers.read_beir(folder) == corpus.to_retrieval_data()
  assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*')) == [
      'corpus.jsonl', 'qrels', 'qrels/test.tsv', 'queries.jsonl']
  first = json.loads((folder / 'corpus.jsonl').read_text(encoding='utf-8').splitlines()[0])
  assert first == {'_id': corpus.corpus_ids[0], 'title': '', 'text': corpus.corpus_texts[0]}
  assert (folder / 'qrels' / 'test.tsv').read_text(encoding='utf-8').startswith('query-id\tcorpus-id\tscore\n')


def test_text_format_matches_released_limit(data_dir):
  """The released limit-small corpus parses with the same format."""
  path = data_dir / 'limit' / 'limit-small' / 'corpus.jsonl'
  if not path.is_file():
    pytest.skip(f'{path} is not present')
  for _, obj in itertools.islice(readers.read_jsonl(path), 5):
    assert obj['title'] == '' and len(items_of(obj['_id'], obj['text'])) > 10
