"""Exact MaxSim over int8 / int4 / binary coded tokens against float64 numpy MaxSim over the
tokens as each code reads back, and the bytes it stores."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax import quant
from embedjax.search.multivector_codes import (bytes_per_doc, decode_tokens, encode_tokens,
                                               topk_maxsim_codes)


def _tokens(rng, n, t, d):
  x = rng.standard_normal((n, t, d)).astype(np.float32)
  mask = (np.arange(t) < rng.integers(1, t + 1, size=n)[:, None]).astype(np.int32)
  mask *= (rng.random((n, t)) > 0.2) | (np.arange(t) == 0)  # pruned tokens inside the text
  return x, mask


def _maxsim64(q, qm, d, dm):
  out = np.zeros((len(q), len(d)))
  for a in range(len(q)):
    for b in range(len(d)):
      sims = (q[a].astype(np.float64) @ d[b].astype(np.float64).T)[qm[a] != 0][:, dm[b] != 0]
      out[a, b] = sims.max(axis=1).sum() if sims.size else 0.0
  return out


def _decoded64(name, params, codes, d):
  """What the code stores, read back independently of embedjax's decode (float64)."""
  c = np.asarray(codes).reshape(-1, np.asarray(codes).shape[-1])
  if name == 'int8':  # bucket centres of the per-dimension [min, max] in 255 steps
    lo, hi = (np.asarray(r, np.float64) for r in np.asarray(params.ranges))
    x = lo + (c.astype(np.float64) + 128 + 0.5) * (hi - lo) / 255
  elif name == 'binary':  # np.packbits order, bit 1 -> +1
    bits = np.unpackbits((c.astype(np.int16) + 128).astype(np.uint8), axis=-1)[:, :d]
    x = 2.0 * bits - 1.0
  else:
    raise AssertionError(name)
  return x.reshape(*np.asarray(codes).shape[:2], d)


@pytest.fixture(scope='module')
def corpus():
  rng = np.random.default_rng(0)
  q, qm = _tokens(rng, 6, 5, 16)
  qm[4] = 0  # a query without counted tokens scores 0 everywhere
  d, dm = _tokens(rng, 23, 7, 16)
  return q, qm, d, dm


@pytest.mark.parametrize('name', ['int8', 'binary'])
def test_coded_maxsim_search_equals_float64_maxsim_over_the_stored_tokens(corpus, name):
  q, qm, d, dm = corpus
  qz = quant.get(name)
  params = qz.fit(d[dm != 0])
  codes = encode_tokens(qz, params, d)
  stored = _decoded64(name, params, codes, d.shape[2])
  np.testing.assert_allclose(np.asarray(decode_tokens(qz, params, codes)), stored, atol=1e-5)
  ref = _maxsim64(q, qm, stored, dm)
  for block_size, query_block in [(None, None), (4, 2)]:
    scores, ids = topk_maxsim_codes(qz, params, q, qm, codes, dm, 5, block_size=block_size,
                                    query_block=query_block)
    scores, ids = np.asarray(scores), np.asarray(ids)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, axis=1), rtol=1e-5, atol=1e-4)
    # The top 5 by the reference, up to float32 near-ties.
    want = np.sort(ref, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-4)
    assert np.all(scores[4] == 0) and ids[4].tolist() == [0, 1, 2, 3, 4]  # ties by index


def test_int8_tokens_keep_float_maxsim_order_closely_and_store_d_bytes_a_token(corpus):
  q, qm, d, dm = corpus
  qz = quant.get('int8')
  params = qz.fit(d[dm != 0])
  codes = encode_tokens(qz, params, d)
  assert codes.dtype == np.int8 and codes.shape == (23, 7, 16)
  assert bytes_per_doc(qz, params, dm) == pytest.approx(dm.sum(axis=1).mean() * 16)
  assert bytes_per_doc(quant.get('binary'), quant.get('binary').fit(d[dm != 0]), dm) == (
      pytest.approx(dm.sum(axis=1).mean() * 2))
  _, ids = topk_maxsim_codes(qz, params, q, qm, codes, dm, 3)
  exact = np.argsort(-_maxsim64(q, qm, d, dm), axis=1, kind='stable')[:, :3]
  counted = qm.any(axis=1)
  assert np.mean(np.asarray(ids)[counted] == exact[counted]) >= 0.9


def test_bad_shapes_and_empty_documents_are_refused(corpus):
  q, qm, d, dm = corpus
  qz = quant.get('int8')
  params = qz.fit(d[dm != 0])
  codes = encode_tokens(qz, params, d)
  with pytest.raises(ValueError, match='dimension 8 but the coded tokens 16'):
    topk_maxsim_codes(qz, params, q[..., :8], qm, codes, dm, 3)
  with pytest.raises(ValueError, match='masks'):
    topk_maxsim_codes(qz, params, q, qm, codes, dm[:, :3], 3)
  empty = dm.copy()
  empty[2] = 0
  with pytest.raises(ValueError, match=r'1 document\(s\) have no counted tokens'):
    topk_maxsim_codes(qz, params, q, qm, codes, empty, 3)
