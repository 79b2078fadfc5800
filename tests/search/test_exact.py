"""topk_blocked against float64 numpy argsort and faiss IndexFlatIP."""

from __future__ import annotations

import faiss
import jax
import numpy as np
import pytest

from embedjax.search import exact
from embedjax.search.exact import topk_blocked


def _numpy_topk(queries, corpus, k):
  """Reference: float64 scores, descending, ties by increasing index (stable sort on -score)."""
  scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
  order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def _assert_same_topk(scores, indices, ref_scores, ref_indices, full_scores):
  np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=0)
  mismatch = indices != ref_indices
  if mismatch.any():
    # Only allowed where the reference has (near-)exact ties: the scores of both picks must agree.
    rows, cols = np.nonzero(mismatch)
    picked = full_scores[rows, indices[rows, cols]]
    np.testing.assert_allclose(picked, ref_scores[rows, cols], atol=1e-5, rtol=0)
    assert mismatch.mean() < 0.01, f'{mismatch.sum()} index mismatches'


@pytest.mark.parametrize('n,block,query_block,k', [
    (50, 64, 7, 10),      # N < 64: one block ('maxima': the final (tail) step alone)
    (300, 64, 16, 20),    # 'merge': 5 blocks of 60; 'maxima': 4 blocks of 64 and a 44-row tail
    (256, 64, 100, 5),    # N % block == 0, Q % query_block != 0
    (513, 128, 1024, 200),  # k > block: running top-k larger than a block's top-k
    (1000, 1000, 33, 1000),  # k == N == block
    (97, 10, 8, 1),       # 10 blocks of 10, the last shifted; 'maxima': 7 over 64 rows, k=1
    (1000, 4096, 50, 3),  # one block ('maxima': 960 rows and a 40-row tail step)
    (2500, 1000, 64, 2),  # 3 blocks of 834 ('maxima': 832 and a 4-row tail)
    (2000, 700, 64, 2),   # 3 ragged blocks, the last shifted
    (777, 300, 20, 1),    # 3 blocks of 259 ('maxima': 256 and a 9-row tail)
    (700, 250, 20, 1),    # 3 ragged blocks, the last shifted ('maxima': a 60-row tail)
])
@pytest.mark.parametrize('strategy', ['maxima', 'merge'])
def test_matches_numpy_and_faiss(n, block, query_block, k, strategy):
  rng = np.random.default_rng(n * 7 + block)
  d = 24
  queries = rng.standard_normal((41, d)).astype(np.float32)
  corpus = rng.standard_normal((n, d)).astype(np.float32)
  scores, indices = topk_blocked(queries, corpus, k, block_size=block, query_block=query_block,
                                 strategy=strategy)
  scores, indices = np.asarray(scores), np.asarray(indices)
  assert scores.shape == (41, k) and indices.shape == (41, k)
  assert scores.dtype == np.float32 and indices.dtype == np.int32

  full = queries.astype(np.float64) @ corpus.astype(np.float64).T
  ref_scores, ref_indices = _numpy_topk(queries, corpus, k)
  _assert_same_topk(scores, indices, ref_scores, ref_indices, full)

  index = faiss.IndexFlatIP(d)
  index.add(corpus)
  f_scores, f_indices = index.search(queries, k)
  _assert_same_topk(scores, indices, f_scores.astype(np.float64), f_indices, full)


def test_k_larger_than_corpus_is_clamped():
  rng = np.random.default_rng(0)
  queries = rng.standard_normal((3, 8)).astype(np.float32)
  corpus = rng.standard_normal((5, 8)).astype(np.float32)
  scores, indices = topk_blocked(queries, corpus, 50, block_size=2)
  ref_scores, ref_indices = _numpy_topk(queries, corpus, 5)
  np.testing.assert_array_equal(np.asarray(indices), ref_indices)
  np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=1e-5)


@pytest.mark.parametrize('layout,k,blocks,query_block', [
    # 44 rows, duplicates spanning block boundaries, including the shifted last block
    ('uneven', 30, (5, 8, 44, 100), 4),
    # 1,040 rows: k small against large and ragged blocks ('maxima': a 16-row tail step)
    ('tiled', 3, (1040, 500, 300, 4096), 5),
    # 1,040 rows drawn from 200 integer vectors: chunk maxima differ, and the integer scores tie
    # across chunks, so chunk / sub-chunk selections must keep the lowest indices
    ('drawn', 30, (1040, 200), 9),
    ('drawn', 5, (1040, 333), 9),
])
@pytest.mark.parametrize('strategy', ['maxima', 'merge'])
def test_exact_ties_lower_index_first(layout, k, blocks, query_block, strategy):
  # Small integer vectors give exactly representable, heavily tied scores.
  rng = np.random.default_rng(1)
  base = rng.integers(-2, 3, size=(13, 6)).astype(np.float32)
  if layout == 'uneven':
    corpus = np.concatenate([base, base, base[:5], base], axis=0)
  elif layout == 'tiled':
    corpus = np.tile(base, (80, 1))
  else:
    corpus = rng.integers(-2, 3, size=(200, 6)).astype(np.float32)[rng.integers(0, 200, 1040)]
  queries = rng.integers(-2, 3, size=(9, 6)).astype(np.float32)
  ref_scores, ref_indices = _numpy_topk(queries, corpus, k)
  for block in blocks:
    scores, indices = topk_blocked(queries, corpus, k, block_size=block, query_block=query_block,
                                   strategy=strategy)
    np.testing.assert_array_equal(np.asarray(indices), ref_indices)
    np.testing.assert_array_equal(np.asarray(scores), ref_scores.astype(np.float32))


@pytest.mark.parametrize('n,block_size,want', [
    (100_000, 16384, 14336),   # 7 blocks: 14,286 rows rounded up to whole chunks
    (1_000_000, 16384, 16192),
    (5183, 16384, 5183),       # one block: the corpus
    (1000, 300, 256),          # 4 blocks of 250 -> 256 (<= 300)
    (777, 300, 259),           # 3 blocks of 259; 320 would exceed block_size
    (64, 10, 10),
])
def test_balanced_block(n, block_size, want):
  block = exact.balanced_block(n, block_size)
  assert block == want
  assert block <= min(n, block_size) and -(-n // block) == -(-n // min(n, block_size))


def test_plan_default_is_the_portable_scan_off_cpu(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  # One scan over all rows, 1,024 queries x 16,384 rows (64 MiB of float32 scores) per step.
  assert exact.plan(100_000, 10) == ('merge', 14_336, 1024, 100_000)  # 7 balanced blocks
  assert exact.plan(100_000_000, 10)[0] == 'merge'
  assert exact.plan(50, 10) == ('merge', 50, 1024, 50)
  # More queries per step: smaller blocks within the same score memory; fewer: still at most
  # 16,384 rows (balanced: 62 blocks of 16,192 over 1M rows).
  assert exact.plan(1_000_000, 10, query_block=4096)[1:3] == (4096, 4096)
  assert exact.plan(1_000_000, 10, query_block=7)[1] == 16_192
  assert exact.plan(5183, 10, block_size=1000) == ('merge', 896, 1024, 5183)  # 6 balanced blocks
  assert exact.plan(1000, 10, strategy='maxima')[0] == 'maxima'  # forcing still works


def test_plan_cpu_specialisation(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  # 25 balanced blocks of 4,032 rows over the 99,968 rows of whole chunks
  assert exact.plan(100_000, 10) == ('maxima', 4032, 1024, 99_968)
  assert exact.plan(100_000, 100)[0] == 'merge'  # k > 32
  assert exact.plan(16_384, 10) == ('merge', 16_384, 1024, 16_384)  # one default block
  assert exact.plan(16_448, 10)[0] == 'maxima'  # two
  assert exact.plan(50, 10, strategy='maxima') == ('merge', 50, 1024, 50)  # no whole chunk
  # 100M rows: one query's maxima take 25 MB, so the default query block shrinks to fit 1 GiB.
  strategy, _, qb, _ = exact.plan(100_000_000, 10)
  assert strategy == 'maxima' and qb * 100_000_000 // 16 * 4 <= 1 << 30 and qb >= 40
  assert exact.plan(100_000_000, 10, query_block=1024)[0] == 'merge'
  assert exact.plan(1000, 10, block_size=100, strategy='maxima')[1] == 96  # whole sub-chunks
  assert exact.plan(100_000, 10, strategy='merge')[0] == 'merge'
  with pytest.raises(ValueError, match='strategy'):
    exact.plan(1000, 10, strategy='heap')


def test_jax_inputs_and_bad_arguments():
  import jax.numpy as jnp
  rng = np.random.default_rng(2)
  queries = rng.standard_normal((4, 8)).astype(np.float32)
  corpus = rng.standard_normal((20, 8)).astype(np.float32)
  s1, i1 = topk_blocked(jnp.asarray(queries), jnp.asarray(corpus), 3, block_size=6)
  s2, i2 = topk_blocked(queries, corpus, 3, block_size=6)
  np.testing.assert_array_equal(np.asarray(i1), np.asarray(i2))
  with pytest.raises(ValueError, match='dimension'):
    topk_blocked(queries, corpus[:, :4], 3)
  with pytest.raises(ValueError, match='k must be'):
    topk_blocked(queries, corpus, 0)
