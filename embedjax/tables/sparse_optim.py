"""Row-wise sparse optimizers for embedding tables: an update touches only the rows of the batch.

A dense optimizer step on an (N, D) table reads and writes all N rows (and its gradient is an
(N, D) array of mostly zeros); with millions of ids that is most of a recommender's step time.
Recommender systems (DLRM's FBGEMM kernels, TF's LazyAdam) update only the rows a batch read:

* ``adagrad``: per-entry Adagrad on the rows read. Untouched rows have a zero gradient, so dense
  Adagrad leaves them unchanged too: this is exactly ``optax.adagrad``, at a sparse cost.
* ``rowwise_adagrad``: one accumulator per row, the mean of the row's squared gradient entries
  (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``): N floats of optimizer state instead of N x D.
* ``lazy_adam``: Adam's moments updated only on the rows read, bias-corrected by the global step
  (TF Addons' LazyAdam). Equal to ``optax.adam`` on rows read at every step; differs from dense
  Adam on rows skipped by a step, whose momentum dense Adam keeps applying.

An optimizer is ``RowOptimizer(init, update)``: ``state = init(table (N, D))``;
``table, state = update(state, table, rows (U,) int32, grads (U, D), step)`` where ``rows`` are
distinct, padded with N (out of range: ignored) and ``step`` is the number of updates applied so
far. :func:`row_gradients` turns the gradient of a batch's gathered vectors into that form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class RowOptimizer(NamedTuple):
  init: Callable[[jax.Array], Any]
  update: Callable[..., tuple[jax.Array, Any]]


def row_gradients(rows: jax.Array, grads: jax.Array, num_rows: int
                  ) -> tuple[jax.Array, jax.Array]:
  """rows (...,) int32 read by a batch, grads (..., D) of the vectors read -> the distinct rows
  (R,) int32, padded with ``num_rows``, and each one's summed gradient (R, D), R = rows.size.
  Static shapes: a row read twice appears once with both gradients added."""
  flat = rows.reshape(-1)
  uniq, inverse = jnp.unique(flat, size=flat.size, fill_value=num_rows, return_inverse=True)
  summed = jax.ops.segment_sum(grads.reshape(flat.size, -1), inverse.reshape(-1),
                               num_segments=flat.size)
  return uniq.astype(jnp.int32), summed


def _get(x, rows):
  return x.at[rows].get(mode='fill', fill_value=0)


def _set(x, rows, values):
  return x.at[rows].set(values, mode='drop')


def adagrad(learning_rate: float, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> RowOptimizer:
  """optax.adagrad's update (``g / sqrt(acc + eps)``, acc starting at the initial value), on the
  rows read only."""

  def init(table):
    return jnp.full(table.shape, initial_accumulator_value, table.dtype)

  def update(acc, table, rows, grads, step):
    del step
    a = _get(acc, rows) + grads * grads
    new = _get(table, rows) - learning_rate * grads * jax.lax.rsqrt(a + eps)
    return _set(table, rows, new), _set(acc, rows, a)

  return RowOptimizer(init, update)


def rowwise_adagrad(learning_rate: float, initial_accumulator_value: float = 0.0,
                    eps: float = 1e-8) -> RowOptimizer:
  """One accumulator per row: ``acc_r += mean_j g_rj^2``; ``w_r -= lr g_r / (sqrt(acc_r) + eps)``."""

  def init(table):
    return jnp.full(table.shape[:1], initial_accumulator_value, table.dtype)

  def update(acc, table, rows, grads, step):
    del step
    a = _get(acc, rows) + jnp.mean(grads * grads, axis=-1)
    new = _get(table, rows) - learning_rate * grads / (jnp.sqrt(a) + eps)[:, None]
    return _set(table, rows, new), _set(acc, rows, a)

  return RowOptimizer(init, update)


def lazy_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> RowOptimizer:
  """Adam on the rows read (optax.adam's formula, bias correction by the global step)."""

  def init(table):
    return {'mu': jnp.zeros_like(table), 'nu': jnp.zeros_like(table)}

  def update(state, table, rows, grads, step):
    t = (step + 1).astype(jnp.float32)
    mu = b1 * _get(state['mu'], rows) + (1 - b1) * grads
    nu = b2 * _get(state['nu'], rows) + (1 - b2) * grads * grads
    mu_hat = mu / (1 - b1 ** t)
    nu_hat = nu / (1 - b2 ** t)
    new = _get(table, rows) - learning_rate * mu_hat / (jnp.sqrt(nu_hat) + eps)
    return _set(table, rows, new), {'mu': _set(state['mu'], rows, mu),
                                    'nu': _set(state['nu'], rows, nu)}

  return RowOptimizer(init, update)


ROW_OPTIMIZERS = {'adagrad': adagrad, 'rowwise_adagrad': rowwise_adagrad, 'lazy_adam': lazy_adam}
