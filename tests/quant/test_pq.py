"""Product quantization: recall side by side with faiss IndexPQ, ADC tables, OPQ."""

from __future__ import annotations

import faiss
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.quant import pq
from embedjax.search.quantized import asymmetric_topk

N, NQ, D, M = 4000, 1000, 32, 8


@pytest.fixture(scope='module')
def data():
  # Low-rank structure plus noise, unit norm: neighbours are meaningful, PQ is not trivial.
  rng = np.random.default_rng(0)
  z = rng.standard_normal((N + NQ, 8)).astype(np.float32)
  x = z @ rng.standard_normal((8, D)).astype(np.float32)
  x += 0.7 * rng.standard_normal((N + NQ, D)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  base, queries = x[:N], x[N:]
  truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
  return base, queries, truth


def _recall(found, truth):
  return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def test_recall_within_one_point_of_faiss_index_pq(data):
  base, queries, truth = data
  faiss.omp_set_num_threads(1)
  ours, theirs = [], []
  for seed in (0, 1):  # two trainings each, so that one lucky k-means run does not decide
    q = pq.product_quantizer(M)
    p = q.fit(base, jax.random.key(seed))
    _, idx = asymmetric_topk(q, p, queries, q.encode(p, base), 10)
    ours.append(_recall(np.asarray(idx), truth))
    index = faiss.IndexPQ(D, M, 8, faiss.METRIC_INNER_PRODUCT)
    index.pq.cp.seed = seed
    index.train(base)
    index.add(base)
    theirs.append(_recall(index.search(queries, 10)[1], truth))
  assert abs(np.mean(ours) - np.mean(theirs)) <= 0.01, (ours, theirs)
  assert q.bytes_per_vector(p) == index.code_size == M


def test_adc_tables_and_reconstruction(data):
  base, queries, _ = data
  q = pq.product_quantizer(M)
  p = q.fit(base, jax.random.key(2))  # same shapes as above: the compiled programs are reused
  codes = q.encode(p, base)[:300]
  assert codes.shape == (300, M) and codes.dtype == np.uint8
  rec = np.asarray(q.decode(p, codes), np.float64)
  # Each sub-vector is its nearest centroid.
  cb = np.asarray(p.codebooks, np.float64)
  sub = base[:300].reshape(300, M, D // M)
  d2 = ((sub[:, :, None, :] - cb[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(codes), d2.argmin(-1))
  # ADC inner product = query . reconstruction; the l2 tables give -|q - rec|^2.
  np.testing.assert_allclose(np.asarray(q.score(p, queries[:5], codes)),
                             queries[:5] @ rec.T, atol=1e-5)
  tables = pq.distance_tables(p, queries[:5], 'l2')
  l2 = np.asarray(pq.lut_scores(p, tables, codes))
  np.testing.assert_allclose(l2, -((queries[:5, None, :] - rec[None]) ** 2).sum(-1), atol=1e-5)
  # Decode-then-GEMM scoring gives the same scores for both metrics.
  rq = pq._rotate(p, jnp.asarray(queries[:5]))
  np.testing.assert_allclose(np.asarray(pq.gemm_scores_ip(p, rq, codes)), queries[:5] @ rec.T,
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(pq.gemm_scores_l2(p, rq, codes)), l2, atol=1e-4)
  gemm = pq.product_quantizer(M, scoring='gemm')
  np.testing.assert_allclose(np.asarray(gemm.score(p, queries[:5], codes)), queries[:5] @ rec.T,
                             atol=1e-5)


def test_opq_rotation_is_orthogonal_and_lowers_error(data):
  base, _, _ = data
  x = base
  plain = pq.fit(x, jax.random.key(3), m=M, iters=10)
  rot = pq.fit(x, jax.random.key(3), m=M, iters=10, opq=True, opq_iters=4)
  r = np.asarray(rot.rotation)
  np.testing.assert_allclose(r.T @ r, np.eye(D), atol=1e-4)
  err = lambda p: float(np.mean((np.asarray(pq.decode(p, pq.encode(p, x))) - x) ** 2))
  assert err(rot) < err(plain)


def test_bad_arguments():
  with pytest.raises(ValueError, match='divisible'):
    pq.fit(np.zeros((300, 30), np.float32), m=8)
  with pytest.raises(ValueError, match='at least'):
    pq.fit(np.zeros((100, 32), np.float32), m=8)
  with pytest.raises(ValueError, match='scoring'):
    pq.product_quantizer(8, scoring='tables')
