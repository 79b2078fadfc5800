"""Post-hoc transforms of frozen embeddings: whitening, subspace removal (DECOR), a low-rank
residual adapter (ADR) and query drift compensation (QDC).

Each is a pair of pure functions, fit on arrays, then applied to (N, D) float embeddings:

  whitening_fit(x, dims=None, eps)   mean and W with cov(x @ W) = I: the eigenvectors of the
                                     covariance scaled by 1/sqrt(eigenvalue), largest first,
                                     optionally only the first ``dims`` (BERT-whitening, Su et al.
                                     2021); apply_whitening(params, x) = (x - mean) @ W
  decor_projection(directions)       I - V (V^T V)^-1 V^T: removes the span of unwanted directions
                                     (DECOR); apply with x @ P (and renormalise if wanted)
  adr_init / adr_apply / adr_fit     e + B (A e) with A (r, D), B (D, r), B = 0 at init (the
                                     identity), trained by in-batch InfoNCE on (query, document)
                                     pairs over frozen embeddings, on the queries only or on both
                                     sides (Adapted Dense Retrieval)
  qdc_fit(new_queries, old_queries)  the linear map W (D_new, D_old) minimising
                                     ||new @ W - old||^2 + ridge ||W||^2 on unlabeled queries, so a
                                     new query model's queries land in the old model's document
                                     space and the old index stays usable (Query Drift
                                     Compensation's distillation objective, solved in closed form)

Fitting runs in float64 on the host (numpy) where it is a linear-algebra solve; ADR trains with
optax under jit from an explicit PRNG key.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct


@struct.dataclass
class Whitening:
  """mean (D,) and W (D, k) float32."""
  mean: jax.Array
  w: jax.Array


def whitening_fit(x, dims: int | None = None, eps: float = 1e-8) -> Whitening:
  """Fits whitening on (N, D) embeddings; ``dims`` keeps the largest-variance directions."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'whitening needs (N >= 2, D) embeddings, got shape {x.shape}')
  mean = x.mean(axis=0)
  cov = (x - mean).T @ (x - mean) / x.shape[0]
  values, vectors = np.linalg.eigh(cov)
  order = np.argsort(values)[::-1]
  values, vectors = values[order], vectors[:, order]
  k = x.shape[1] if dims is None else int(dims)
  if not 1 <= k <= x.shape[1]:
    raise ValueError(f'dims must be in [1, {x.shape[1]}], got {dims}')
  w = vectors[:, :k] / np.sqrt(values[:k] + eps)
  return Whitening(mean=jnp.asarray(mean, jnp.float32), w=jnp.asarray(w, jnp.float32))


def apply_whitening(params: Whitening, x) -> jax.Array:
  return jnp.dot(jnp.asarray(x, jnp.float32) - params.mean, params.w,
                 precision=jax.lax.Precision.HIGHEST)


def decor_projection(directions) -> jax.Array:
  """(k, D) unwanted directions (any scale, linearly independent) -> (D, D) projection onto
  their orthogonal complement."""
  v = np.asarray(directions, np.float64)
  if v.ndim == 1:
    v = v[None]
  if np.linalg.matrix_rank(v) < v.shape[0]:
    raise ValueError(f'the {v.shape[0]} directions are linearly dependent')
  p = np.eye(v.shape[1]) - v.T @ np.linalg.solve(v @ v.T, v)
  return jnp.asarray(p, jnp.float32)


def adr_init(key: jax.Array, dim: int, rank: int) -> dict:
  """A (r, D) small random, B (D, r) zero: the adapter starts as the identity."""
  return {'a': jax.random.normal(key, (rank, dim), jnp.float32) / np.sqrt(dim),
          'b': jnp.zeros((dim, rank), jnp.float32)}


def adr_apply(params: dict, e) -> jax.Array:
  """(N, D) -> (N, D): e + B (A e), row by row."""
  e = jnp.asarray(e, jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  return e + jnp.dot(jnp.dot(e, params['a'].T, precision=hi), params['b'].T, precision=hi)


def _adr_loss(params, q, d, scale: float, both: bool):
  from embedjax.losses.contrastive import info_nce
  qa = adr_apply(params, q)
  da = adr_apply(params, d) if both else d
  return info_nce(qa, da, scale=scale)[0]


def adr_fit(key: jax.Array, queries, docs, *, rank: int = 16, steps: int = 200,
            batch_size: int = 64, lr: float = 1e-3, scale: float = 20.0,
            sides: str = 'query') -> tuple[dict, list[float]]:
  """Trains the adapter on (N, D) query / positive-document embedding pairs (frozen), in-batch
  InfoNCE over cosine similarities; ``sides`` 'query' (documents untouched: the index stays) or
  'both'. Returns (params, the loss of every step)."""
  if sides not in ('query', 'both'):
    raise ValueError(f"sides must be 'query' or 'both', got {sides!r}")
  q, d = jnp.asarray(queries, jnp.float32), jnp.asarray(docs, jnp.float32)
  chex.assert_equal_shape([q, d])
  n = q.shape[0]
  b = min(batch_size, n)
  init_key, data_key = jax.random.split(key)
  params = adr_init(init_key, q.shape[1], rank)
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, idx):
    loss, grads = jax.value_and_grad(_adr_loss)(params, q[idx], d[idx], scale, sides == 'both')
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for i in range(steps):
    idx = jax.random.permutation(jax.random.fold_in(data_key, i), n)[:b]
    params, opt_state, loss = step(params, opt_state, idx)
    losses.append(float(loss))
  return params, losses


def qdc_fit(new_queries, old_queries, ridge: float = 1e-3) -> jax.Array:
  """(N, D_new), (N, D_old) embeddings of the same unlabeled queries -> W (D_new, D_old)
  minimising ||new @ W - old||^2 + ridge * N * ||W||^2 (float64 normal equations)."""
  x = np.asarray(new_queries, np.float64)
  y = np.asarray(old_queries, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
    raise ValueError(f'need the same queries embedded twice: shapes {x.shape} and {y.shape}')
  gram = x.T @ x + ridge * x.shape[0] * np.eye(x.shape[1])
  return jnp.asarray(np.linalg.solve(gram, x.T @ y), jnp.float32)
