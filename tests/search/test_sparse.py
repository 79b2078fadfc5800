"""Inverted-index sparse search against brute-force dot products."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.search.sparse import SparseIndex, sparse_topk


def _sparse(rng, n, v, density):
  w = rng.random((n, v)) * (rng.random((n, v)) < density)
  return w.astype(np.float32)


def test_inverted_index_search_equals_brute_force_sparse_scores():
  rng = np.random.default_rng(0)
  docs, queries = _sparse(rng, 300, 500, 0.03), _sparse(rng, 20, 500, 0.05)
  docs[123] = docs[45]  # a tie: the lower index first
  queries[3] = 0  # a query without terms: every score 0, documents in index order
  index = SparseIndex.build(docs)
  want = queries.astype(np.float64) @ docs.astype(np.float64).T
  order = np.lexsort((np.broadcast_to(np.arange(300), want.shape), -want), axis=1)[:, :10]
  scores, ids = sparse_topk(index, queries, 10)
  np.testing.assert_array_equal(ids, order)
  np.testing.assert_allclose(scores, np.take_along_axis(want, order, 1), rtol=1e-6)
  assert ids[3].tolist() == list(range(10))
  assert index.nonzeros_per_doc() == pytest.approx((docs > 0).sum() / 300)
  assert index.bytes_per_doc() == pytest.approx(8 * (docs > 0).sum() / 300)


def test_threshold_drops_small_weights_and_bad_input_is_refused():
  docs = np.array([[0.0, 0.05, 2.0], [1.0, 0.0, 0.2]], np.float32)
  index = SparseIndex.build(docs, threshold=0.1)
  assert index.postings.nnz == 3
  _, ids = sparse_topk(index, np.array([[0.0, 1.0, 0.0]]), 5)
  assert ids.shape == (1, 2)
  with pytest.raises(ValueError, match='must be >= 0'):
    SparseIndex.build(-docs)
  with pytest.raises(ValueError, match='queries have 4 vocabulary entries but the index 3'):
    sparse_topk(index, np.zeros((1, 4)), 1)
