"""k-means++ seeding: its sampling law against hand-computed probabilities; the greedy variant."""

import jax
import numpy as np
import pytest

from embedjax.kmeans_seeding import kmeans_plusplus, sq_distances


def test_sq_distances_match_float64():
  rng = np.random.default_rng(0)
  x, c = rng.standard_normal((50, 7)), rng.standard_normal((4, 7))
  ref = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
  got = np.asarray(sq_distances(x.astype(np.float32), c.astype(np.float32)))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_plain_kmeans_plusplus_samples_proportionally_to_squared_distance():
  # Points 0, 1, 3 on a line, k = 2: the first centre is uniform, the second is drawn with
  # probability d^2 / sum d^2 from the first, e.g. from 0: 1/10 for 1 and 9/10 for 3.
  x = np.array([[0.0], [1.0], [3.0]], np.float32)
  keys = jax.random.split(jax.random.key(0), 6000)
  seeds = np.asarray(jax.vmap(lambda k: kmeans_plusplus(k, x, 2, trials=1))(keys))[:, :, 0]
  d2 = (x - x.T) ** 2
  expected = d2 / d2.sum(axis=1, keepdims=True) / 3  # P(first = i, second = j)
  found = np.zeros((3, 3))
  for first, second in seeds:
    found[int(np.flatnonzero(x[:, 0] == first)[0]), int(np.flatnonzero(x[:, 0] == second)[0])] += 1
  np.testing.assert_allclose(found / len(seeds), expected, atol=0.02)


@pytest.mark.parametrize('trials', [1, None])
def test_seeds_are_distinct_points_one_per_separated_blob(trials):
  rng = np.random.default_rng(1)
  centres = rng.standard_normal((6, 5)) * 50
  labels = np.repeat(np.arange(6), 40)
  x = (centres[labels] + rng.standard_normal((240, 5))).astype(np.float32)
  seeds = np.asarray(kmeans_plusplus(jax.random.key(2), x, 6, trials=trials))
  rows = [np.flatnonzero((x == s).all(axis=1)) for s in seeds]
  assert all(len(r) == 1 for r in rows)
  assert sorted(labels[r[0]] for r in rows) == list(range(6))


def test_greedy_seeding_starts_lower_than_plain():
  # sklearn's greedy variant keeps the best of 2 + log k candidates per centre, so its potential
  # (summed squared distance to the nearest seed) is lower on average than plain k-means++'s.
  rng = np.random.default_rng(3)
  x = rng.standard_normal((400, 8)).astype(np.float32)

  def potential(trials, seed):
    c = kmeans_plusplus(jax.random.key(seed), x, 10, trials=trials)
    return float(np.asarray(sq_distances(x, c)).min(axis=1).sum())

  plain = np.mean([potential(1, s) for s in range(10)])
  greedy = np.mean([potential(None, s) for s in range(10)])
  assert greedy < 0.97 * plain


def test_trials_must_be_positive():
  with pytest.raises(ValueError, match='trials'):
    kmeans_plusplus(jax.random.key(0), np.zeros((4, 2), np.float32), 2, trials=0)
