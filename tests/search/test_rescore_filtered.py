"""Rescoring pipelines and filtered search against numpy brute force."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax import quant
from embedjax.search import filtered
from embedjax.search.exact import inner_product_scores
from embedjax.search.rescore import binary_rescore, rescore, rescore_with

# Each test runs with the 'merge' and the 'maxima' strategy forced (conftest.py).
pytestmark = pytest.mark.usefixtures('strategy')

N, Q, D = 400, 12, 32


def _data(seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((6, D))
  x = centers[rng.integers(0, 6, N + Q)] + 0.7 * rng.standard_normal((N + Q, D))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  return x[:N], x[N:]


def test_rescore_reorders_candidates_and_keeps_missing_last():
  corpus, queries = _data(1)
  rng = np.random.default_rng(0)
  cand = np.stack([rng.choice(N, 20, replace=False) for _ in range(Q)]).astype(np.int32)
  cand[:, -3:] = -1
  scores, idx = rescore(inner_product_scores, queries, corpus, cand, 15, query_block=5)
  scores, idx = np.asarray(scores), np.asarray(idx)
  for r in range(Q):
    valid = cand[r][cand[r] >= 0]
    s = queries[r] @ corpus[valid].T
    order = np.argsort(-s, kind='stable')[:15]
    np.testing.assert_array_equal(idx[r], valid[order])
    np.testing.assert_allclose(scores[r], s[order], atol=1e-5)
  # Asking for all 20 exposes the three missing slots as -inf / -1.
  s_all, i_all = rescore(inner_product_scores, queries, corpus, cand)
  assert np.all(np.asarray(i_all)[:, -3:] == -1) and np.all(np.isneginf(np.asarray(s_all)[:, -3:]))


def _numpy_binary_rescore(queries, corpus, k, m, rescore_from):
  qb, cb = queries > 0, corpus > 0
  ham = (qb[:, None, :] != cb[None, :, :]).sum(-1)
  cand = np.argsort(ham, axis=1, kind='stable')[:, :k * m]
  out = []
  for r in range(len(queries)):
    s = queries[r] @ rescore_from[cand[r]].T
    out.append(cand[r][np.argsort(-s, kind='stable')[:k]])
  return np.stack(out)


def test_binary_rescore_pipeline():
  corpus, queries = _data(2)
  b = quant.get('ubinary')
  p = b.fit(corpus)
  codes, q_codes = b.encode(p, corpus), b.encode(p, queries)
  # Rescoring with the float query against the same bits (sentence-transformers' recipe).
  _, idx = binary_rescore(queries, q_codes, codes, 10, 4, block_size=128)
  ref = _numpy_binary_rescore(queries, corpus, 10, 4, np.where(corpus > 0, 1.0, -1.0))
  np.testing.assert_array_equal(np.asarray(idx), ref)
  # Rescoring from float32 embeddings kept elsewhere (e.g. on disk).
  f32 = quant.get('float32')
  fp = f32.fit(corpus)
  _, idx = binary_rescore(queries, q_codes, codes, 10, 4, rescorer=(f32, fp, corpus))
  np.testing.assert_array_equal(np.asarray(idx), _numpy_binary_rescore(queries, corpus, 10, 4,
                                                                       corpus))
  # The generic form with an int8 rescorer equals brute force on the int8 scores.
  q8 = quant.get('int8')
  p8 = q8.fit(corpus)
  c8 = q8.encode(p8, corpus)
  cand = np.tile(np.arange(40, dtype=np.int32), (Q, 1))
  _, idx8 = rescore_with(q8, p8, queries, c8, cand, 10)
  full = np.asarray(q8.score(p8, queries, c8))[:, :40]
  np.testing.assert_array_equal(np.asarray(idx8), np.argsort(-full, axis=1, kind='stable')[:, :10])


def _exact_filtered(queries, corpus, k, mask):
  s = np.where(mask, queries @ corpus.T, -np.inf)
  order = np.argsort(-s, axis=1, kind='stable')[:, :k]
  return np.where(np.isneginf(np.take_along_axis(s, order, 1)), -1, order)


def _numpy_post_filter(queries, corpus, k, oversample, mask):
  """Float64 reference: top k x oversample by score, drop failing rows, keep k, pad with -1."""
  s = queries.astype(np.float64) @ corpus.astype(np.float64).T
  out = np.full((len(queries), k), -1)
  for r in range(len(queries)):
    cand = np.argsort(-s[r], kind='stable')[:k * oversample]
    kept = cand[mask[r, cand]][:k]
    out[r, :len(kept)] = kept
  return out


def _numpy_recall(found, exact):
  """Mean over queries with a non-empty exact answer of |found & exact| / |exact|."""
  per_query = [len(set(f[f >= 0]) & set(e[e >= 0])) / len(set(e[e >= 0]))
               for f, e in zip(found, exact) if (e >= 0).any()]
  return float(np.mean(per_query))


@pytest.mark.parametrize('predicate', ['equals', 'in_range', 'any_tag', 'all_tags'])
def test_prefilter_is_exact_filtered_search(predicate):
  corpus, queries = _data(3)
  rng = np.random.default_rng(4)
  if predicate == 'equals':
    c_attr = rng.integers(0, 5, N)
    q_attr = rng.integers(0, 5, Q)
    mask = q_attr[:, None] == c_attr[None]
  elif predicate == 'in_range':
    c_attr = rng.random(N).astype(np.float32)
    lo = rng.random(Q).astype(np.float32) * 0.9
    q_attr = np.stack([lo, lo + 0.05], 1)  # selective: ~5% of rows, sometimes fewer than k
    mask = (c_attr[None] >= q_attr[:, :1]) & (c_attr[None] <= q_attr[:, 1:])
  else:
    c_attr = rng.integers(0, 2 ** 6, N).astype(np.uint32)
    q_attr = rng.integers(1, 2 ** 6, Q).astype(np.uint32)
    both = q_attr[:, None] & c_attr[None]
    mask = both != 0 if predicate == 'any_tag' else both == q_attr[:, None]
  exact = _exact_filtered(queries, corpus, 20, mask)
  _, pre = filtered.filtered_topk(queries, corpus, 20, predicate=predicate, query_attrs=q_attr,
                                  corpus_attrs=c_attr, block_size=128)
  np.testing.assert_array_equal(np.asarray(pre), exact)
  assert filtered.filtered_recall(pre, exact) == 1.0
  # Post-filtering returns only rows that pass, in score order, a subset of the exact answer.
  _, post = filtered.filtered_topk(queries, corpus, 20, predicate=predicate, query_attrs=q_attr,
                                   corpus_attrs=c_attr, mode='post', oversample=2)
  post = np.asarray(post)
  for r in range(Q):
    got = post[r][post[r] >= 0]
    assert mask[r, got].all()
    assert set(got) <= set(exact[r][exact[r] >= 0])
  # ... and exactly the numpy post-filter: unfiltered top 20 x 2, the passing ones kept in order.
  ref = _numpy_post_filter(queries, corpus, 20, 2, mask)
  np.testing.assert_array_equal(post, ref)
  want = _numpy_recall(ref, exact)
  assert filtered.filtered_recall(post, exact) == pytest.approx(want, abs=1e-12)
  if predicate == 'in_range':  # ~5 % of rows pass: 40 unfiltered candidates keep only a few
    assert want < 0.5


def test_prefilter_with_a_quantizer_and_recall_definition():
  corpus, queries = _data(5)
  c_attr = np.arange(N) % 3
  q_attr = np.arange(Q) % 3
  q = quant.get('binary')
  p = q.fit(corpus)
  codes = q.encode(p, corpus)
  _, got = filtered.filtered_topk(queries, codes, 10, predicate='equals', query_attrs=q_attr,
                                  corpus_attrs=c_attr, quantizer=q, params=p)
  full = np.where(q_attr[:, None] == c_attr[None], np.asarray(q.score(p, queries, codes)), -np.inf)
  np.testing.assert_array_equal(np.asarray(got), np.argsort(-full, axis=1, kind='stable')[:, :10])
  assert filtered.filtered_recall([[1, 2, -1]], [[2, 5, -1]]) == 0.5
  assert np.isnan(filtered.filtered_recall([[1]], [[-1]]))
  with pytest.raises(ValueError, match='mode'):
    filtered.filtered_topk(queries, corpus, 3, predicate='equals', query_attrs=q_attr,
                           corpus_attrs=c_attr, mode='sideways')
