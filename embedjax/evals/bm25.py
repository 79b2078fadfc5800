"""BM25 lexical retrieval, a baseline for the retrieval evaluations (backed by ``bm25s``).

Scoring (``method='lucene'``, the default) is Lucene's BM25 (Lucene >= 8, also Anserini/Pyserini):

  score(q, d) = sum over query tokens t of idf(t) * tf / (tf + k1 * (1 - b + b * dl / avgdl))
  idf(t)      = log(1 + (N - df + 0.5) / (df + 0.5))

with tf the count of t in d, dl the token count of d, avgdl the mean over the corpus, df the
number of documents holding t and N the corpus size. Lucene 8 dropped the constant factor
(k1 + 1) of older versions, which does not change rankings; multiply by (k1 + 1) to compare with
the classic form. A token repeated in the query counts once per occurrence (one clause each, as
Lucene's query parser builds them); query tokens absent from the corpus add nothing. The other
``bm25s`` variants ('robertson', 'atire', 'bm25l', 'bm25+') are passed through unchanged.

Tokenization is ``bm25s.tokenize``'s default, applied alike to documents and queries: lowercase,
tokens = the regex ``(?u)\\b\\w\\w+\\b`` (runs of two or more word characters, as scikit-learn's
CountVectorizer; single characters are dropped), then bm25s's English stopword list (NLTK's) is
removed. No stemming: bm25s would need the separate PyStemmer package, and LIMIT-style queries repeat
their attribute words verbatim. Stopwords count neither in tf nor in dl.

Scores are computed in float64. The top k are ordered by score, then by corpus index (ascending),
as in ``embedjax.search.exact``. Scores equal to ``TIE_DECIMALS`` decimals count as tied: scores
that are equal in exact arithmetic can differ in the last bits when computed from different
inputs (with b = 1, tf = 1 at length L scores the same as tf = 2 at length 2L), and the ranking
should not depend on that rounding.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

STOPWORDS = 'en'
METHODS = ('lucene', 'robertson', 'atire', 'bm25l', 'bm25+')
TIE_DECIMALS = 9


class BM25TopK(NamedTuple):
  """The top k of each query.

  Attributes:
    indices: (Q, min(k, N)) int64 corpus positions, best first; ties by lower index.
    scores: (Q, min(k, N)) float64 BM25 scores, descending (to ``TIE_DECIMALS`` decimals).
  """

  indices: np.ndarray
  scores: np.ndarray


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
  if isinstance(texts, str):
    raise ValueError(f'{name} must be a sequence of strings, got a single string')
  texts = list(texts)
  if not texts:
    raise ValueError(f'{name} is empty')
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f'{name}[{i}] must be a string, got {type(text).__name__}')
  return texts


def _topk_row(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top k of a (N,) row by score (rounded to TIE_DECIMALS) descending, then index ascending."""
  key = np.round(scores, TIE_DECIMALS)
  if k < key.shape[0]:
    # Every index whose key reaches the k-th largest is a candidate; with ties at the threshold
    # there can be more than k, and the index order below decides among them.
    threshold = np.partition(key, key.shape[0] - k)[key.shape[0] - k]
    candidates = np.flatnonzero(key >= threshold)
  else:
    candidates = np.arange(key.shape[0])
  # Candidates are in index order; a stable sort on -key keeps the lower index first on ties.
  order = candidates[np.argsort(-key[candidates], kind='stable')[:k]]
  return order, scores[order]


def bm25_topk(corpus_texts: Sequence[str], query_texts: Sequence[str], k: int, *, k1: float = 1.5,
              b: float = 0.75, method: str = 'lucene') -> BM25TopK:
  """Indexes ``corpus_texts`` with BM25 and returns the top k documents of each query.

  Args:
    corpus_texts: (N,) document texts, N >= 1.
    query_texts: (Q,) query texts, Q >= 1, none empty or blank.
    k: documents to return per query (k >= 1); at most N are returned.
    k1, b: BM25 parameters (term-frequency saturation, length normalisation).
    method: a ``bm25s`` scoring variant, one of ``METHODS``.

  Returns:
    :class:`BM25TopK` ``(indices, scores)``, each (Q, min(k, N)).

  Raises:
    ValueError: empty corpus or query list, an empty/blank query text, a corpus without any
      indexable token, a bad k or method.
  """
  import bm25s  # imported here so that importing embedjax.evals does not need it

  corpus_texts = _check_texts(corpus_texts, 'corpus_texts')
  query_texts = _check_texts(query_texts, 'query_texts')
  for i, text in enumerate(query_texts):
    if not text.strip():
      raise ValueError(f'query_texts[{i}] is empty')
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f'k must be a positive integer, got {k!r}')
  if method not in METHODS:
    raise ValueError(f'method: unknown {method!r}; choose one of {list(METHODS)}')
  k = min(int(k), len(corpus_texts))

  corpus_tokens = bm25s.tokenize(corpus_texts, stopwords=STOPWORDS, return_ids=True, show_progress=False)
  if not corpus_tokens.vocab:
    raise ValueError('corpus_texts has no indexable token (every text is empty, single characters or stopwords)')
  retriever = bm25s.BM25(k1=k1, b=b, method=method, dtype='float64')
  retriever.index(corpus_tokens, show_progress=False)
  # Queries are tokenized to strings and mapped through the corpus vocabulary (tokens the corpus
  # lacks are dropped), so both sides share one tokenization.
  query_tokens = bm25s.tokenize(query_texts, stopwords=STOPWORDS, return_ids=False, show_progress=False)

  indices = np.empty((len(query_texts), k), np.int64)
  scores = np.empty((len(query_texts), k), np.float64)
  for row, tokens in enumerate(query_tokens):
    known = [t for t in tokens if t in retriever.vocab_dict]
    # A query without any corpus token scores 0 for every document (its top k is 0, 1, ...).
    row_scores = retriever.get_scores(known) if known else np.zeros(len(corpus_texts))
    indices[row], scores[row] = _topk_row(np.asarray(row_scores, np.float64), k)
  return BM25TopK(indices, scores)
