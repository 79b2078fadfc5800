"""STS correlations against scipy.stats and sklearn paired distances."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.metrics.pairwise import (paired_cosine_distances, paired_euclidean_distances,
                                      paired_manhattan_distances)

from embedjax.evals import sts


def _pairs(seed, n=200, d=16):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, d))
  b = a + rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, (n, 1))
  b[:5] = a[:5]          # identical pairs: tied similarities
  b[5:8] = b[8:11]       # more ties on the distance side
  a[5:8] = a[8:11]
  gold = np.round(rng.uniform(0, 5, n) * 5) / 5  # STS-B-like grid: many gold ties
  return a.astype(np.float32), b.astype(np.float32), gold


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_scipy(seed):
  a, b, gold = _pairs(seed)
  out = sts.sts_scores(a, b, gold)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  sims = {
      'cosine': 1 - paired_cosine_distances(a64, b64),
      'manhattan': -paired_manhattan_distances(a64, b64),
      'euclidean': -paired_euclidean_distances(a64, b64),
      'dot': np.einsum('nd,nd->n', a64, b64),
  }
  for name, sim in sims.items():
    assert out[f'{name}_spearman'] == pytest.approx(stats.spearmanr(gold, sim)[0], abs=1e-9)
    assert out[f'{name}_pearson'] == pytest.approx(stats.pearsonr(gold, sim)[0], abs=1e-9)
  assert out['spearman'] == out['cosine_spearman']
  assert out['pearson'] == out['cosine_pearson']
  assert set(out) == {'spearman', 'pearson'} | {f'{s}_{c}' for s in sims
                                               for c in ('spearman', 'pearson')}
  # jax inputs give the same numbers.
  out_jax = sts.sts_scores(jnp.asarray(a), jnp.asarray(b), jnp.asarray(gold))
  assert out_jax['spearman'] == pytest.approx(out['spearman'], abs=1e-12)


def test_zero_vector_has_zero_cosine():
  a = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
  b = np.array([[1.0, 2.0], [1.0, 0.0], [-1.0, 1.0]])
  sims = sts.pair_similarities(a, b)
  # By definition here (sklearn would give 0.5 for the zero row); the other rows as usual.
  np.testing.assert_allclose(sims['cosine'], [0.0, 1.0, 0.0], atol=1e-12)


def test_rank_average_matches_scipy_rankdata():
  x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0, 7.0])
  np.testing.assert_array_equal(sts.rank_average(x), stats.rankdata(x))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.floats(-10, 10, allow_nan=False, width=32)),
                min_size=3, max_size=60))
def test_spearman_with_ties_property(pairs):
  x = np.array([p[0] for p in pairs], np.float64)
  y = np.array([p[1] for p in pairs], np.float64)
  np.testing.assert_array_equal(sts.rank_average(x), stats.rankdata(x))
  expected = stats.spearmanr(x, y)[0] if np.ptp(x) > 0 and np.ptp(y) > 0 else np.nan
  got = sts.spearman(x, y)
  if np.isnan(expected):
    assert np.isnan(got)
  else:
    assert got == pytest.approx(expected, abs=1e-9)
