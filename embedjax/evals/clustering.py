"""Clustering evaluation: k-means in JAX and V-measure against gold labels (MTEB-style).

k-means follows sklearn's ``KMeans(algorithm='lloyd')``: greedy k-means++ seeding (2 + log k local
trials per centre), Lloyd iterations that stop when the labels no longer change or the squared
centre shift is <= tol * mean feature variance, a final assignment step when stopped by tolerance or
``max_iter``, and empty clusters moved to the points farthest from their centres. Restarts run in
parallel with ``vmap``; the lowest inertia wins. Everything is float32 on the device.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from embedjax.kmeans_seeding import kmeans_plusplus, sq_distances


@dataclasses.dataclass(frozen=True)
class KMeansResult:
  """centers (k, D), labels (N,) int32, inertia (sum of squared distances), num_iter."""
  centers: jax.Array
  labels: jax.Array
  inertia: float
  num_iter: int


def _update_centers(x, labels, sq_dist_to_own, k):
  """Cluster means; an empty cluster takes the next farthest point (from its own centre)."""
  sums = jax.ops.segment_sum(x, labels, num_segments=k)
  counts = jax.ops.segment_sum(jnp.ones_like(labels, x.dtype), labels, num_segments=k)
  empty = counts == 0
  rank = jnp.cumsum(empty) - 1  # e-th empty cluster gets the e-th farthest point
  _, far = jax.lax.top_k(sq_dist_to_own, k)
  point = far[jnp.clip(rank, 0, k - 1)]
  donor = labels[point]
  # Like sklearn: the point leaves its old cluster, whose mean is recomputed without it.
  moved = jnp.where(empty[:, None], x[point], 0.0)
  sums = sums.at[donor].add(-moved)
  counts = counts.at[donor].add(-empty.astype(x.dtype))
  sums = jnp.where(empty[:, None], x[point], sums)
  counts = jnp.where(empty, 1.0, counts)
  # A donor left with no point keeps its (zero) sum, as sklearn does.
  return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], sums)


def _assign(x, centers):
  d = sq_distances(x, centers)
  labels = jnp.argmin(d, axis=1).astype(jnp.int32)
  return labels, jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=('max_iter',))
def lloyd(x: jax.Array, centers: jax.Array, *, max_iter: int = 300, tol: float = 1e-4):
  """Lloyd iterations from given centres (sklearn ``KMeans(init=centers, n_init=1)`` semantics).

  Args:
    x: (N, D) float32.
    centers: (k, D) initial centres.
    max_iter: iteration limit.
    tol: relative tolerance; stops when the summed squared centre shift is
      <= tol * mean(var(x, axis=0)). With tol=0 only unchanged labels stop it.

  Returns:
    centers (k, D), labels (N,) int32, inertia () float32, num_iter () int32.
  """
  chex.assert_rank([x, centers], 2)
  k = centers.shape[0]
  tol_abs = tol * jnp.mean(jnp.var(x, axis=0))

  def step(carry):
    centers, labels_old, it, _, _ = carry
    labels, own = _assign(x, centers)
    new_centers = _update_centers(x, labels, own, k)
    shift = jnp.sum((new_centers - centers) ** 2)
    strict = jnp.all(labels == labels_old)
    return new_centers, labels, it + 1, strict, strict | (shift <= tol_abs)

  def keep_going(carry):
    _, _, it, _, done = carry
    return (it < max_iter) & ~done

  init = (centers, jnp.full((x.shape[0],), -1, jnp.int32), jnp.int32(0), jnp.bool_(False),
          jnp.bool_(False))
  centers, labels, it, strict, _ = jax.lax.while_loop(keep_going, step, init)
  # Labels from the loop belong to the previous centres unless they stopped changing.
  labels = jnp.where(strict, labels, _assign(x, centers)[0])
  inertia = jnp.sum((x - centers[labels]) ** 2)
  return centers, labels, inertia, it


@functools.partial(jax.jit, static_argnames=('k', 'n_init', 'max_iter'))
def _kmeans(key, x, k, n_init, max_iter, tol):
  def one(key):
    return lloyd(x, kmeans_plusplus(key, x, k), max_iter=max_iter, tol=tol)

  centers, labels, inertia, it = jax.vmap(one)(jax.random.split(key, n_init))
  best = jnp.argmin(inertia)
  return centers[best], labels[best], inertia[best], it[best]


def kmeans(key: jax.Array, x, k: int, *, n_init: int = 3, max_iter: int = 300,
           tol: float = 1e-4) -> KMeansResult:
  """k-means++ then Lloyd, ``n_init`` restarts in parallel; the lowest inertia wins.

  Args:
    key: PRNG key.
    x: (N, D) features (numpy or jax), N >= k.
    k: number of clusters.
    n_init, max_iter, tol: restarts, iteration limit and relative tolerance (see ``lloyd``).
  """
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  if not 1 <= k <= x.shape[0]:
    raise ValueError(f'need 1 <= k <= N, got k={k}, N={x.shape[0]}')
  centers, labels, inertia, it = _kmeans(key, x, k, n_init, max_iter, jnp.float32(tol))
  return KMeansResult(centers=centers, labels=labels, inertia=float(inertia), num_iter=int(it))


def _entropy(counts: np.ndarray) -> float:
  counts = counts[counts > 0].astype(np.float64)
  if counts.size <= 1:
    return 0.0
  total = counts.sum()
  return float(-np.sum((counts / total) * (np.log(counts) - math.log(total))))


def homogeneity_completeness_v_measure(labels_true, labels_pred, beta: float = 1.0
                                       ) -> tuple[float, float, float]:
  """Homogeneity, completeness and V-measure of two (N,) labelings (sklearn's definitions)."""
  labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
  chex.assert_rank([labels_true, labels_pred], 1)
  chex.assert_equal_shape([labels_true, labels_pred])
  if labels_true.shape[0] == 0:
    return 1.0, 1.0, 1.0
  _, t = np.unique(labels_true, return_inverse=True)
  _, p = np.unique(labels_pred, return_inverse=True)
  n_t, n_p = t.max() + 1, p.max() + 1
  contingency = np.bincount(t * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p)
  h_true = _entropy(contingency.sum(axis=1))
  h_pred = _entropy(contingency.sum(axis=0))
  if n_t == 1 or n_p == 1:
    mi = 0.0
  else:
    rows, cols = np.nonzero(contingency)
    nij = contingency[rows, cols].astype(np.float64)
    n = float(labels_true.shape[0])
    a = contingency.sum(axis=1)[rows].astype(np.float64)
    b = contingency.sum(axis=0)[cols].astype(np.float64)
    # sum_ij nij/n log(n nij / (a_i b_j)), in the log-difference form that keeps float64 exact.
    terms = nij / n * (np.log(nij) + math.log(n) - np.log(a) - np.log(b))
    mi = max(float(np.sum(np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms))), 0.0)
  homogeneity = mi / h_true if h_true else 1.0
  completeness = mi / h_pred if h_pred else 1.0
  if homogeneity + completeness == 0.0:
    return homogeneity, completeness, 0.0
  v = (1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness)
  return homogeneity, completeness, v


def v_measure(labels_true, labels_pred, beta: float = 1.0) -> float:
  """V-measure (harmonic mean of homogeneity and completeness) of two (N,) labelings."""
  return homogeneity_completeness_v_measure(labels_true, labels_pred, beta)[2]


def clustering_scores(emb, labels, n_clusters: int | None, key: jax.Array, *, n_init: int = 3,
                      max_iter: int = 300, tol: float = 1e-4) -> dict[str, float]:
  """k-means on (N, D) embeddings scored against (N,) gold labels.

  Args:
    emb: (N, D) embeddings.
    labels: (N,) gold labels.
    n_clusters: k; None uses the number of distinct gold labels (as MTEB does).
    key: PRNG key for the k-means++ seeding.

  Returns:
    {'v_measure', 'homogeneity', 'completeness', 'inertia'}.
  """
  labels = np.asarray(labels)
  k = len(np.unique(labels)) if n_clusters is None else n_clusters
  result = kmeans(key, emb, k, n_init=n_init, max_iter=max_iter, tol=tol)
  h, c, v = homogeneity_completeness_v_measure(labels, np.asarray(result.labels))
  return {'v_measure': v, 'homogeneity': h, 'completeness': c, 'inertia': result.inertia}
