"""k-means++ seeding and squared distances, shared by product quantization and the clustering eval.

``kmeans_plusplus`` with ``trials=1`` is the original k-means++ (Arthur & Vassilvitskii 2007;
faiss-style PQ codebook training uses it); the default, ``trials=None``, is the greedy variant of
sklearn's ``KMeans``: each new centre is the best of 2 + log(k) candidates, the one that lowers
the summed squared distances most.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def sq_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
  """(N, D) x (k, D) -> (N, k) squared euclidean distances, expanded form (as sklearn and faiss
  compute them), clamped at 0 against rounding."""
  xx = jnp.sum(x * x, axis=1, keepdims=True)
  cc = jnp.sum(centers * centers, axis=1)
  return jnp.maximum(xx - 2.0 * jnp.dot(x, centers.T, precision=_HI) + cc, 0.0)


@functools.partial(jax.jit, static_argnames=('k', 'trials'))
def kmeans_plusplus(key: jax.Array, x: jax.Array, k: int, trials: int | None = None) -> jax.Array:
  """k-means++ seeding: each new centre is sampled with probability ~ squared distance to the
  nearest centre chosen so far.

  Args:
    key: PRNG key.
    x: (N, D).
    k: number of centres.
    trials: candidates sampled per new centre, the best (lowest summed squared distance) kept;
      None = sklearn's greedy 2 + floor(log k), 1 = plain k-means++.

  Returns:
    (k, D) initial centres, rows of x.
  """
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  if trials is None:
    trials = 2 + int(math.log(k))
  if trials < 1:
    raise ValueError(f'trials must be >= 1, got {trials}')
  n = x.shape[0]
  key, first_key = jax.random.split(key)
  first = jax.random.randint(first_key, (), 0, n)
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  closest = sq_distances(x, x[first][None])[:, 0]

  def add_centre(c, carry):
    centers, closest, key = carry
    key, sub = jax.random.split(key)
    cumulative = jnp.cumsum(closest)
    targets = jax.random.uniform(sub, (trials,)) * cumulative[-1]
    candidates = jnp.minimum(jnp.searchsorted(cumulative, targets), n - 1)
    with_candidate = jnp.minimum(closest[None, :], sq_distances(x, x[candidates]).T)
    best = jnp.argmin(jnp.sum(with_candidate, axis=1)) if trials > 1 else 0
    return centers.at[c].set(x[candidates[best]]), with_candidate[best], key

  centers, _, _ = jax.lax.fori_loop(1, k, add_centre, (centers, closest, key))
  return centers
