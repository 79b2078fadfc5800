"""Top-k search over learned sparse vectors (SPLADE) through an inverted index (scipy.sparse).

``SparseIndex.build(doc_weights)`` keeps each document's nonzero weights in a (V, N) CSR matrix
whose row t is term t's posting list (documents ascending, with their weights). A query block's
scores are the sum, over the query's nonzero terms, of their posting lists scaled by the query
weights (``Q @ postings`` with sparse operands, which scipy computes term by term).
Scores are exact float64 sums cast to float32; the
top-k orders equal scores by lower document index, like the dense searches.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

_QUERY_BLOCK = 256  # queries scored at once: a (block, N) float64 score array


@dataclasses.dataclass(frozen=True)
class SparseIndex:
  """postings: (V, N) CSR float32, row t = term t's posting list (documents ascending)."""
  postings: sp.csr_matrix

  @classmethod
  def build(cls, doc_weights, threshold: float = 0.0) -> SparseIndex:
    """From (N, V) document weights, dense or scipy sparse; weights <= threshold are dropped."""
    w = sp.csr_matrix(doc_weights, dtype=np.float32)
    if threshold > 0:
      w.data[w.data <= threshold] = 0
      w.eliminate_zeros()
    if np.any(w.data < 0):
      raise ValueError('sparse document weights must be >= 0 (SPLADE weights are)')
    return cls(postings=w.T.tocsr())

  @property
  def num_docs(self) -> int:
    return self.postings.shape[1]

  def nonzeros_per_doc(self) -> float:
    return self.postings.nnz / max(self.num_docs, 1)

  def bytes_per_doc(self, index_bytes: int = 4, value_bytes: int = 4) -> float:
    """Mean bytes of one document's postings: a document id and a weight per nonzero."""
    return self.nonzeros_per_doc() * (index_bytes + value_bytes)


def sparse_topk(index: SparseIndex, query_weights, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Top-k documents by sparse inner product for every query.

  Args:
    index: ``SparseIndex.build``'s result.
    query_weights: (Q, V) dense or scipy sparse.
    k: results per query, clamped to N.

  Returns:
    scores (Q, k) float32 descending and indices (Q, k) int32; ties by lower index.
  """
  q = sp.csr_matrix(query_weights, dtype=np.float64)
  if q.shape[1] != index.postings.shape[0]:
    raise ValueError(f'queries have {q.shape[1]} vocabulary entries but the index '
                     f'{index.postings.shape[0]}')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  n = index.num_docs
  k = min(k, n)
  postings = index.postings.astype(np.float64)
  out_s = np.empty((q.shape[0], k), np.float32)
  out_i = np.empty((q.shape[0], k), np.int32)
  for start in range(0, q.shape[0], _QUERY_BLOCK):
    scores = (q[start:start + _QUERY_BLOCK] @ postings).toarray()  # (block, N)
    order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
    out_i[start:start + len(order)] = order
    out_s[start:start + len(order)] = np.take_along_axis(scores, order, axis=1)
  return out_s, out_i
