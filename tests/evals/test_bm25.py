"""BM25 retriever: scores and rankings against an independent float64 numpy BM25."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

bm25s = pytest.importorskip('bm25s')

from embedjax.evals.bm25 import bm25_topk  # noqa: E402

# Synthetic corpus words: none is a bm25s stopword (checked below); STOP are stopwords that the
# reference drops itself, so the reference does not depend on bm25s's list beyond these three.
WORDS = ('apple', 'river', 'stone', 'garden', 'violin', 'rocket', 'harbor', 'lantern', 'meadow', 'copper',
         'falcon', 'glacier', 'pepper', 'quartz', 'saddle', 'tunnel', 'walnut', 'yogurt', 'zephyr', 'basil',
         'cobalt', 'dune', 'ember', 'fjord', 'grove')
STOP = ('the', 'and', 'of')


def reference_tokens(text: str) -> list[str]:
  """Lowercase, runs of >= 2 word characters, minus STOP (the corpora below use no other stopword)."""
  return [t for t in re.findall(r'\w\w+', text.lower()) if t not in STOP]


def reference_bm25(corpus: list[str], queries: list[str], k1: float, b: float) -> np.ndarray:
  """(Q, N) classic Lucene BM25 in float64:
  sum over query tokens of log(1 + (N - df + 0.5)/(df + 0.5)) * tf*(k1+1)/(tf + k1*(1-b+b*dl/avgdl)).
  """
  docs = [reference_tokens(t) for t in corpus]
  n = len(docs)
  dl = np.array([len(d) for d in docs], np.float64)
  avgdl = dl.mean()
  out = np.zeros((len(queries), n), np.float64)
  for qi, query in enumerate(queries):
    for term in reference_tokens(query):  # a repeated query token counts each time
      tf = np.array([d.count(term) for d in docs], np.float64)
      df = float((tf > 0).sum())
      if df == 0:
        continue
      idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
      out[qi] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
  return out


def reference_ranking(scores: np.ndarray, k: int) -> np.ndarray:
  """Top k per row by score descending, then index ascending; scores equal to 9 decimals tie."""
  index = np.arange(scores.shape[1])
  return np.stack([np.lexsort((index, -np.round(row, 9)))[:k] for row in scores])


def synthetic_corpus(seed: int = 0, n_docs: int = 60, n_queries: int = 25):
  rng = np.random.default_rng(seed)
  corpus_words = WORDS[:-3]  # the last three words never occur in the corpus
  corpus = []
  for _ in range(n_docs):
    length = int(rng.integers(1, 30))
    tokens = [corpus_words[i] for i in rng.integers(len(corpus_words), size=length)]
    # Mix in stopwords, single characters (dropped by the regex), capitals and punctuation.
    for extra in ('The', 'and', 'OF', 'x', 'a'):
      if rng.random() < 0.5:
        tokens.insert(int(rng.integers(len(tokens) + 1)), extra)
    tokens[0] = tokens[0].capitalize()
    corpus.append(' '.join(tokens) + rng.choice(['.', '!', ' ?', '']))
  queries = []
  for _ in range(n_queries):
    tokens = [WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(1, 5)))]
    if rng.random() < 0.3:
      tokens.append(tokens[0])  # a repeated query token
    queries.append('Who likes the ' + ', '.join(tokens).upper() + '?')
  return corpus, queries


def test_vocabulary_assumptions():
  stopwords = set(bm25s.stopwords.STOPWORDS_EN)
  assert set(STOP) <= stopwords
  assert not set(WORDS) & stopwords
  assert 'who' not in stopwords and 'likes' not in stopwords  # so the reference keeps them too


@pytest.mark.parametrize('k1,b', [(1.5, 0.75), (1.2, 0.4), (0.9, 1.0)])
def test_matches_reference_bm25(k1, b):
  corpus, queries = synthetic_corpus(seed=int(k1 * 10))
  ref = reference_bm25(corpus, queries, k1, b)
  n = len(corpus)
  for k in (5, n):
    result = bm25_topk(corpus, queries, k, k1=k1, b=b)
    assert result.indices.shape == result.scores.shape == (len(queries), k)
    assert result.indices.dtype == np.int64 and result.scores.dtype == np.float64
    np.testing.assert_array_equal(result.indices, reference_ranking(ref, k))
    # bm25s's 'lucene' is Lucene >= 8, which drops the constant factor (k1 + 1) of the classic form.
    np.testing.assert_allclose(result.scores * (k1 + 1), np.take_along_axis(ref, result.indices, 1),
                               rtol=0, atol=1e-5)
  assert (ref > 0).any(axis=1).mean() > 0.5  # the comparison is not between all-zero scores


def test_exact_ties_by_index_despite_rounding():
  # With b = 1 the length factor is tf / (tf + k1 * dl / avgdl): "apple pear" (tf 1, dl 2) and
  # document 2 (tf 3, dl 6) tie in exact arithmetic, but in float64 (bm25s 0.3.16) document 2
  # comes out one ulp higher. The tie must still go to the lower index.
  corpus = ['apple pear', 'plum', 'apple apple apple pear pear pear', 'fig']
  result = bm25_topk(corpus, ['apple'], 2, b=1.0)
  np.testing.assert_array_equal(result.indices, [[0, 2]])
  np.testing.assert_allclose(result.scores[0, 0], result.scores[0, 1], rtol=1e-12)


def test_hand_computed():
  # N = 3, df(cat) = 2: idf = log(1 + 1.5 / 2.5) = log(1.6); dl = 2, 2, 1, avgdl = 5/3;
  # length factor of a 2-token document: 1.5 * (0.25 + 0.75 * 2 / (5/3)) = 1.725.
  result = bm25_topk(['cat dog', 'cat cat', 'bird'], ['Cat?'], 3)
  np.testing.assert_array_equal(result.indices, [[1, 0, 2]])
  expected = [math.log(1.6) * 2 / (2 + 1.725), math.log(1.6) * 1 / (1 + 1.725), 0.0]
  np.testing.assert_allclose(result.scores, [expected], rtol=1e-12)


def test_ties_by_lower_index_and_no_output(capsys):
  corpus = ['green pear', 'red apple', 'red apple', 'blue plum', 'red apple']
  first = bm25_topk(corpus, ['apple', 'pear', 'zebra', 'the of'], 4)
  np.testing.assert_array_equal(first.indices, [[1, 2, 4, 0], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
  assert first.scores[0, 0] == first.scores[0, 1] == first.scores[0, 2] > 0
  assert (first.scores[2:] == 0).all()  # unknown words and stopwords only: nothing matches
  again = bm25_topk(corpus, ['apple', 'pear', 'zebra', 'the of'], 4)
  np.testing.assert_array_equal(first.indices, again.indices)
  out, err = capsys.readouterr()
  assert out == '' and err == ''  # no progress bars


@pytest.mark.parametrize('method', ['robertson', 'atire', 'bm25l', 'bm25+'])
def test_other_methods_rank_the_matching_document_first(method):
  corpus, queries = synthetic_corpus(seed=1, n_docs=20, n_queries=3)
  result = bm25_topk(corpus + ['zephyr basil cobalt'], ['basil cobalt zephyr'], 5, method=method)
  assert result.indices[0, 0] == len(corpus)  # the only document holding these (held-out) words
  assert (np.diff(result.scores, axis=1) <= 1e-9).all()


def test_k_larger_than_corpus_is_clipped():
  result = bm25_topk(['a red apple', 'a pear'], ['apple'], 10)
  assert result.indices.shape == (1, 2)
  np.testing.assert_array_equal(result.indices, [[0, 1]])


@pytest.mark.parametrize('corpus,queries,k,kwargs,match', [
    ([], ['apple'], 1, {}, 'corpus_texts is empty'),
    (['apple'], [], 1, {}, 'query_texts is empty'),
    (['apple'], ['apple', ''], 1, {}, r'query_texts\[1\] is empty'),
    (['apple'], ['   '], 1, {}, r'query_texts\[0\] is empty'),
    (['the', 'a of'], ['apple'], 1, {}, 'no indexable token'),
    ('apple pear', ['apple'], 1, {}, 'single string'),
    (['apple'], ['apple'], 0, {}, 'k must be'),
    (['apple'], ['apple'], 1, {'method': 'okapi'}, 'method'),
])
def test_bad_input(corpus, queries, k, kwargs, match):
  with pytest.raises(ValueError, match=match):
    bm25_topk(corpus, queries, k, **kwargs)
