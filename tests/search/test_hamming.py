"""hamming_topk against faiss IndexBinaryFlat and a numpy popcount reference."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from embedjax.search.hamming import hamming_topk

# Each test runs with the 'merge' and the 'maxima' strategy forced (conftest.py).
pytestmark = pytest.mark.usefixtures('strategy')


def _codes(rng, n, d):
  # Bits from correlated Gaussians: realistic near neighbours, plus many tied distances.
  base = rng.standard_normal((8, d))
  x = base[rng.integers(0, 8, n)] + 0.8 * rng.standard_normal((n, d))
  return np.packbits(x > 0, axis=-1)


def _check_against(dist, idx, ref_dist, all_dist):
  """Distances must be equal; indices may differ only within a tie at the same distance."""
  np.testing.assert_array_equal(dist, ref_dist)
  np.testing.assert_array_equal(np.take_along_axis(all_dist, idx, axis=1), dist)
  assert all(len(set(r)) == len(r) for r in idx)


@pytest.mark.parametrize('method', ['popcount', 'matmul'])
@pytest.mark.parametrize('n,d,k,block', [(300, 64, 10, 64), (257, 96, 25, 1000), (1000, 384, 10, 128)])
def test_equals_faiss_index_binary_flat(n, d, k, block, method):
  rng = np.random.default_rng(n)
  corpus, queries = _codes(rng, n, d), _codes(rng, 40, d)
  dist, idx = hamming_topk(queries, corpus, k, method=method, block_size=block, query_block=16)
  dist, idx = np.asarray(dist), np.asarray(idx)
  assert dist.dtype == np.int32 and idx.shape == (40, k)

  index = faiss.IndexBinaryFlat(d)
  index.add(corpus)
  f_dist, f_idx = index.search(queries, k)
  all_dist = np.unpackbits(queries[:, None, :] ^ corpus[None, :, :], axis=-1).sum(-1)
  _check_against(dist, idx, f_dist, all_dist)
  # Our ties are broken by index: exactly a stable sort of the distances.
  ref_idx = np.argsort(all_dist, axis=1, kind='stable')[:, :k]
  np.testing.assert_array_equal(idx, ref_idx)
  # Where faiss' pick is not tied at the k-th distance, the id sets agree too.
  kth = dist[:, -1:]
  for row in range(40):
    strict = set(idx[row][dist[row] < kth[row]])
    assert strict == set(f_idx[row][f_dist[row] < kth[row]])


def test_popcount_method_and_signed_codes_agree():
  rng = np.random.default_rng(7)
  corpus, queries = _codes(rng, 200, 40), _codes(rng, 9, 40)  # 5 bytes: padded to 2 words
  d1, i1 = hamming_topk(queries, corpus, 15, method='matmul', block_size=64)
  d2, i2 = hamming_topk(queries, corpus, 15, method='popcount', block_size=64)
  signed = lambda c: (c.astype(np.int16) - 128).astype(np.int8)
  d3, i3 = hamming_topk(signed(queries), signed(corpus), 15, block_size=64)
  for d, i in ((d2, i2), (d3, i3)):
    np.testing.assert_array_equal(np.asarray(d), np.asarray(d1))
    np.testing.assert_array_equal(np.asarray(i), np.asarray(i1))


def test_bad_arguments():
  a = np.zeros((2, 4), np.uint8)
  with pytest.raises(ValueError, match='codes must be'):
    hamming_topk(a, np.zeros((5, 3), np.uint8), 1)
  with pytest.raises(TypeError, match='uint8 or int8'):
    hamming_topk(a.astype(np.int32), a.astype(np.int32), 1)
  with pytest.raises(ValueError, match='method'):
    hamming_topk(a, a, 1, method='nope')
