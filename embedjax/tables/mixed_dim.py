"""Mixed-dimension embeddings (Ginart et al., ISIT 2021): per-field widths with a projection to D.

Field f has its own (n_f, d_f) table and, when ``d_f < D``, a (d_f, D) projection; the output is
``table_f[id] @ proj_f``. The widths follow the paper's power-law rule with access probability
taken per row as ``1 / n_f`` (rows of small fields are read more often, so they get more width):
``d_f = clip(round(lam * n_f ** -alpha), 1, D)``, with ``lam`` the largest scale that fits the
budget (found by bisection).

Bytes: ``sum_f n_f * d_f * 4 + sum_{f: d_f < D} d_f * D * 4``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.tables import base


def mixed_dim(vocab_sizes: Sequence[int], dim: int, *, dims: Sequence[int],
              init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  dims = tuple(int(d) for d in dims)
  if len(dims) != len(vocab_sizes) or min(dims) < 1 or max(dims) > dim:
    raise ValueError(f'dims {dims} must be in [1, {dim}], one per field')

  def init(key):
    keys = jax.random.split(key, 2 * len(dims))
    params = {}
    for f, (n, d) in enumerate(zip(vocab_sizes, dims)):
      if d < dim:
        # The projection is orthonormal-ish (std 1/sqrt(d)) so outputs start at ~init_std.
        params[f'table{f}'] = base.normal_init(keys[2 * f], (n, d), init_std)
        params[f'proj{f}'] = base.normal_init(keys[2 * f + 1], (d, dim), 1.0 / np.sqrt(d))
      else:
        params[f'table{f}'] = base.normal_init(keys[2 * f], (n, d), init_std)
    return params

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    cols = []
    for f, d in enumerate(dims):
      e = jnp.take(params[f'table{f}'], ids[:, f], axis=0)
      cols.append(e @ params[f'proj{f}'] if d < dim else e)
    return jnp.stack(cols, axis=1)

  return base.Table('mixed_dim', vocab_sizes, dim, init, lookup,
                    config={'dims': list(dims), 'init_std': init_std})


def mixed_dim_bytes(vocab_sizes: Sequence[int], dim: int, dims: Sequence[int]) -> int:
  return 4 * sum(n * d + (d * dim if d < dim else 0) for n, d in zip(vocab_sizes, dims))


def power_law_dims(vocab_sizes: Sequence[int], dim: int, lam: float, alpha: float) -> list[int]:
  n = np.asarray(vocab_sizes, np.float64)
  dims = [int(d) for d in np.clip(np.round(lam * n ** -alpha), 1, dim)]
  # A tiny field (gender: 2 rows) is cheaper at full width than narrow plus a (d, D) projection.
  return [dim if n_f * d + d * dim >= n_f * dim else d for n_f, d in zip(vocab_sizes, dims)]


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *, alpha: float = 0.3,
               **kw) -> base.Table:
  def fits(lam):
    return mixed_dim_bytes(vocab_sizes, dim, power_law_dims(vocab_sizes, dim, lam, alpha)) <= budget_bytes

  if not fits(0.0):
    raise base.Infeasible(f'width 1 for every field exceeds {budget_bytes} bytes')
  lo, hi = 0.0, dim * max(vocab_sizes) ** alpha  # at hi every field has width D
  for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return mixed_dim(vocab_sizes, dim, dims=power_law_dims(vocab_sizes, dim, lo, alpha), **kw)
