"""k-means and V-measure against sklearn."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.metrics import homogeneity_completeness_v_measure, v_measure_score

from embedjax.evals import clustering


def _blobs(seed, n_clusters=5, n=600, d=8, spread=4.0):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((n_clusters, d)) * spread
  y = rng.integers(0, n_clusters, n)
  return (centres[y] + rng.standard_normal((n, d))).astype(np.float32), y


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 9)), min_size=1, max_size=80))
def test_v_measure_matches_sklearn(pairs):
  t = np.array([p[0] for p in pairs])
  p = np.array([p[1] for p in pairs])
  assert clustering.v_measure(t, p) == pytest.approx(v_measure_score(t, p), abs=1e-12)
  ours = clustering.homogeneity_completeness_v_measure(t, p)
  np.testing.assert_allclose(ours, homogeneity_completeness_v_measure(t, p), atol=1e-12)


def test_v_measure_string_labels_and_edge_cases():
  t = np.array(['a', 'a', 'b', 'b', 'c'])
  p = np.array([3, 3, 1, 7, 7])
  assert clustering.v_measure(t, p) == pytest.approx(v_measure_score(t, p), abs=1e-12)
  assert clustering.v_measure(t, t) == pytest.approx(1.0, abs=1e-12)
  one = np.zeros(5, int)
  assert clustering.v_measure(one, p) == pytest.approx(v_measure_score(one, p), abs=1e-12)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_lloyd_matches_sklearn_from_same_init(seed):
  x, _ = _blobs(seed, spread=2.0)  # overlapping enough to need several iterations
  rng = np.random.default_rng(100 + seed)
  init = x[rng.choice(len(x), 5, replace=False)]
  centers, labels, inertia, num_iter = clustering.lloyd(x, init, max_iter=300, tol=0.0)
  ref = KMeans(5, init=init, n_init=1, algorithm='lloyd', tol=0.0, max_iter=300).fit(x)
  np.testing.assert_array_equal(np.asarray(labels), ref.labels_)
  assert float(inertia) == pytest.approx(ref.inertia_, rel=1e-5)
  np.testing.assert_allclose(np.asarray(centers), ref.cluster_centers_, atol=1e-4)
  assert int(num_iter) == ref.n_iter_
  assert ref.n_iter_ > 2


def test_lloyd_tolerance_and_max_iter_like_sklearn():
  x, _ = _blobs(5, spread=1.0)
  init = x[:5]
  for tol, max_iter in ((1e-2, 300), (0.0, 3)):
    _, labels, inertia, num_iter = clustering.lloyd(x, init, max_iter=max_iter, tol=tol)
    ref = KMeans(5, init=init, n_init=1, algorithm='lloyd', tol=tol, max_iter=max_iter).fit(x)
    np.testing.assert_array_equal(np.asarray(labels), ref.labels_)
    assert float(inertia) == pytest.approx(ref.inertia_, rel=1e-5)
    assert int(num_iter) == ref.n_iter_


def test_empty_cluster_relocated_like_sklearn():
  x, _ = _blobs(3, n_clusters=3, spread=6.0)
  init = np.concatenate([x[:3], np.full((1, x.shape[1]), 1e3, np.float32)])  # gets no point
  _, labels, inertia, _ = clustering.lloyd(x, init, max_iter=300, tol=0.0)
  ref = KMeans(4, init=init, n_init=1, algorithm='lloyd', tol=0.0, max_iter=300).fit(x)
  np.testing.assert_array_equal(np.asarray(labels), ref.labels_)
  assert float(inertia) == pytest.approx(ref.inertia_, rel=1e-5)
  assert len(np.unique(np.asarray(labels))) == 4


def test_kmeans_plusplus_restarts_find_the_blobs():
  # Well separated blobs: the optimum is the true partition, whose inertia is computed directly.
  x, y = _blobs(7, n_clusters=5, spread=6.0)
  result = clustering.kmeans(jax.random.key(0), x, 5)  # same shapes as test_clustering_scores
  x64 = x.astype(np.float64)
  means = np.stack([x64[y == c].mean(axis=0) for c in range(5)])
  assert result.inertia == pytest.approx(np.sum((x64 - means[y]) ** 2), rel=1e-5)
  assert v_measure_score(y, np.asarray(result.labels)) == pytest.approx(1.0)
  init = np.asarray(clustering.kmeans_plusplus(jax.random.key(1), x, 5))
  # Seeds are distinct data points, and on separated blobs k-means++ picks one per blob.
  assert all((init[i] == x).all(axis=1).any() for i in range(5))
  seed_blobs = [y[np.flatnonzero((init[i] == x).all(axis=1))[0]] for i in range(5)]
  assert sorted(seed_blobs) == list(range(5))


def test_clustering_scores():
  x, y = _blobs(8, n_clusters=5, spread=1.2)  # overlapping: V-measure well below 1
  out = clustering.clustering_scores(x, y, None, jax.random.key(3))
  again = clustering.kmeans(jax.random.key(3), x, 5)
  assert out['v_measure'] == pytest.approx(v_measure_score(y, np.asarray(again.labels)),
                                           abs=1e-12)
  assert 0.2 < out['v_measure'] < 0.95
  assert set(out) == {'v_measure', 'homogeneity', 'completeness', 'inertia'}
