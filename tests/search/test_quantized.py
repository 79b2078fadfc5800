"""int8 exact top-k and asymmetric top-k of every quantizer against numpy brute force; the
generic blocked loop with pytree queries/corpora."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from embedjax import quant
from embedjax.search.exact import topk_blocked_by
from embedjax.search.quantized import asymmetric_topk, int8_topk

# Each test runs with the 'merge' and the 'maxima' strategy forced (conftest.py).
pytestmark = pytest.mark.usefixtures('strategy')

N, Q, D = 300, 16, 32


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((N + Q, D)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  return x[:N], x[N:]


def _stable_topk(scores, k):
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def test_int8_topk_exact_integer_scores():
  corpus, queries = _data(1)
  q8 = quant.get('int8')
  p = q8.fit(corpus)
  c_codes, q_codes = np.asarray(q8.encode(p, corpus)), np.asarray(q8.encode(p, queries))
  scores, idx = int8_topk(q_codes, c_codes, 20, block_size=64, query_block=5)
  ref_scores, ref_idx = _stable_topk(q_codes.astype(np.int64) @ c_codes.astype(np.int64).T, 20)
  assert np.asarray(scores).dtype == np.int32
  np.testing.assert_array_equal(np.asarray(scores), ref_scores)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)


def test_int8_topk_extreme_codes_are_exact():
  # |sum| up to D * 128^2: the float32 accumulation must still be exact.
  rng = np.random.default_rng(2)
  c = rng.choice(np.array([-128, 127], np.int8), size=(N, D))
  q = rng.choice(np.array([-128, 127], np.int8), size=(Q, D))
  scores, idx = int8_topk(q, c, 7, block_size=128)
  ref_scores, _ = _stable_topk(q.astype(np.int64) @ c.astype(np.int64).T, 7)
  np.testing.assert_array_equal(np.asarray(scores), ref_scores)


# One of each kind of score (cast, calibrated integer, packed nibbles, bits, reduced); every
# quantizer's score itself is checked against q . decode in tests/quant.
@pytest.mark.parametrize('name', ['float16', 'int8', 'int4', 'binary', 'pca50_int8'])
def test_asymmetric_topk_equals_brute_force(name):
  corpus, queries = _data(3)
  q = quant.get(name)
  p = q.fit(corpus)
  codes = q.encode(p, corpus)
  scores, idx = asymmetric_topk(q, p, queries, codes, 10, block_size=128, query_block=8)
  full = np.asarray(q.score(p, queries, codes))
  ref_scores, ref_idx = _stable_topk(full, 10)
  np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=1e-5)
  # Indices agree except inside (near-)ties.
  picked = np.take_along_axis(full, np.asarray(idx), axis=1)
  np.testing.assert_allclose(picked, ref_scores, atol=1e-5)


def _pair_scores(aux, queries, rows):
  (qv, qw), (cv, cw) = queries, rows
  return jnp.dot(qv, cv.T) * aux + qw[:, None] * cw[None, :]


def test_topk_blocked_by_pytrees_and_aux():
  corpus, queries = _data(4)
  cw = np.linspace(0, 1, N, dtype=np.float32)
  qw = np.linspace(1, 2, Q, dtype=np.float32)
  scores, idx = topk_blocked_by(_pair_scores, (queries, qw), (corpus, cw), 12,
                                aux=jnp.float32(2.0), block_size=64, query_block=5)
  full = 2.0 * queries @ corpus.T + qw[:, None] * cw[None, :]
  ref_scores, ref_idx = _stable_topk(full, 12)
  np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  with pytest.raises(ValueError, match='leading dimension'):
    topk_blocked_by(_pair_scores, (queries, qw[:3]), (corpus, cw), 5)


def test_blocked_topk_keeps_lower_index_on_ties():
  # Blocks of 1024 (the last shifted) with k=3; every row ties with many others.
  rng = np.random.default_rng(5)
  corpus = rng.integers(-1, 2, size=(3000, 4)).astype(np.float32)
  queries = rng.integers(-1, 2, size=(Q, 4)).astype(np.float32)
  scores, idx = topk_blocked_by(
      lambda a, q, c: q @ c.T, queries, corpus, 3, block_size=1024)
  ref_scores, ref_idx = _stable_topk(queries @ corpus.T, 3)
  np.testing.assert_array_equal(np.asarray(idx), ref_idx)
  np.testing.assert_array_equal(np.asarray(scores), ref_scores)
