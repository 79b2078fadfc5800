"""MaxSim against a float64 numpy reference, and the blocked multi-vector search against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.search.multivector import (maxsim_paired, maxsim_scores, search_blocks,
                                         topk_maxsim)


def _tokens(rng, n, t, d, min_len=1):
  x = rng.standard_normal((n, t, d)).astype(np.float32)
  lengths = rng.integers(min_len, t + 1, size=n)
  mask = (np.arange(t) < lengths[:, None]).astype(np.int32)
  # Pruned tokens inside the text, not only trailing padding.
  mask[:, 0] = 1
  mask *= (rng.random((n, t)) > 0.2) | (np.arange(t) == 0)
  return x, mask


def _reference(q, qm, d, dm):
  """float64 MaxSim by loops: for each pair, each counted query token's best counted doc token."""
  out = np.zeros((len(q), len(d)))
  for a in range(len(q)):
    for b in range(len(d)):
      sims = q[a].astype(np.float64) @ d[b].astype(np.float64).T  # (Tq, Td)
      sims = sims[qm[a] != 0][:, dm[b] != 0]
      out[a, b] = sims.max(axis=1).sum() if sims.size else 0.0
  return out


def test_maxsim_equals_a_float64_reference_with_padding_and_masks():
  rng = np.random.default_rng(0)
  q, qm = _tokens(rng, 5, 7, 16)
  qm[2] = 0  # a query without counted tokens scores 0
  d, dm = _tokens(rng, 9, 11, 16)
  got = np.asarray(maxsim_scores(q, qm, d, dm))
  np.testing.assert_allclose(got, _reference(q, qm, d, dm), rtol=1e-5, atol=1e-5)
  assert np.all(got[2] == 0)
  # Values at masked positions never matter.
  d_noise = np.where(dm[..., None] != 0, d, 1e3).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(maxsim_scores(q, qm, d_noise, dm)), got)
  paired = np.asarray(maxsim_paired(q, qm, d[:5], dm[:5]))
  np.testing.assert_allclose(paired, np.diag(got[:, :5]), rtol=1e-6, atol=1e-6)


def test_a_document_without_tokens_scores_minus_infinity_and_is_refused_by_search():
  rng = np.random.default_rng(1)
  q, qm = _tokens(rng, 2, 4, 8)
  d, dm = _tokens(rng, 6, 5, 8)
  dm[3] = 0
  dm[5] = 0
  assert np.all(np.isneginf(np.asarray(maxsim_scores(q, qm, d, dm))[:, 3]))
  with pytest.raises(ValueError, match=r'2 document\(s\) have no counted tokens.*\[3, 5\]'):
    topk_maxsim(q, qm, d, dm, 3)


@pytest.mark.parametrize('block_size, query_block', [(None, None), (4, 3), (7, 1)])
def test_blocked_search_equals_brute_force(block_size, query_block):
  rng = np.random.default_rng(2)
  q, qm = _tokens(rng, 10, 6, 12)
  d, dm = _tokens(rng, 45, 9, 12)
  d[17] = d[4]  # a tie: the lower index comes first
  dm[17] = dm[4]
  want = _reference(q, qm, d, dm)
  scores, idx = topk_maxsim(q, qm, d, dm, 8, block_size=block_size, query_block=query_block)
  order = np.lexsort((np.broadcast_to(np.arange(45), want.shape), -want), axis=1)[:, :8]
  np.testing.assert_allclose(np.asarray(scores), np.take_along_axis(want, order, 1), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(idx), order)
  # k beyond the corpus is clamped.
  assert topk_maxsim(q, qm, d[:5], dm[:5], 9)[1].shape == (10, 5)


def test_search_blocks_bound_the_token_similarities_of_a_step():
  qb, block = search_blocks(1000, 5183, 32, 256)
  assert qb == 64 and qb * block * 32 * 256 * 4 <= 64 << 20
  assert search_blocks(3, 10, 32, 256) == (3, 10)


def test_shapes_that_disagree_are_refused():
  rng = np.random.default_rng(3)
  q, qm = _tokens(rng, 2, 4, 8)
  d, dm = _tokens(rng, 3, 5, 6)
  with pytest.raises(ValueError, match='dimension 8 but document tokens 6'):
    topk_maxsim(q, qm, d, dm, 2)
  d, dm = _tokens(rng, 3, 5, 8)
  with pytest.raises(ValueError, match='do not match'):
    topk_maxsim(q, qm, d, dm[:, :4], 2)
