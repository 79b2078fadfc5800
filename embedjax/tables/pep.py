"""PEP: learnable embedding sizes by soft thresholding (Liu et al., ICLR 2021), served sparse.

Two stages (the benchmark runs them in order, as it does OptEmbed's and dedup's):

1. **Search** (:func:`pep`): a full (N, D) table V and threshold logits s; lookups read
   ``sign(V) * relu(|V| - sigmoid(s))``, so entries below their threshold are exactly zero and the
   thresholds are trained with the task loss. ``granularity``: one threshold in all ('global'),
   per dimension ('dim', D), per id ('feature', N; the default) or per entry ('feature_dim').
   ``s`` starts at ``threshold_init`` (-15: sigmoid = 3e-7, nothing pruned at first).
2. **Retrain** (:func:`pruned`): the learned mask (entries still non-zero), cut to the byte budget
   by smallest magnitude when the thresholds pruned less than the budget needs (the paper stops
   its search at a target sparsity instead; a budget needs a hard cut), retrained from the same
   initialisation with the mask fixed -- the paper's lottery-ticket retraining.

Served (:func:`pruned`'s ``finalize``): the kept entries as a sorted int32 flat index
(``row * D + dim``) and their float32 values; a lookup finds each entry by binary search, absent
entries read 0. Bytes: ``8 * kept``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.tables import base

GRANULARITIES = ('global', 'dim', 'feature', 'feature_dim')


def _threshold_shape(granularity: str, n: int, dim: int) -> tuple[int, ...]:
  return {'global': (1, 1), 'dim': (1, dim), 'feature': (n, 1), 'feature_dim': (n, dim)}[granularity]


def soft_threshold(v: jax.Array, s: jax.Array) -> jax.Array:
  """``sign(v) * relu(|v| - sigmoid(s))`` (s broadcast against v)."""
  return jnp.sign(v) * jax.nn.relu(jnp.abs(v) - jax.nn.sigmoid(s))


def pep(vocab_sizes: Sequence[int], dim: int, *, granularity: str = 'feature',
        threshold_init: float = -15.0, init_std: float = 0.01) -> base.Table:
  """Stage 1: the full table with learnable soft thresholds."""
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  if granularity not in GRANULARITIES:
    raise ValueError(f'granularity must be one of {GRANULARITIES}, got {granularity!r}')
  n = sum(vocab_sizes)
  shape = _threshold_shape(granularity, n, dim)

  def init(key):
    return {'embedding': base.normal_init(key, (n, dim), init_std),
            'threshold': jnp.full(shape, threshold_init, jnp.float32)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    g = base.global_ids(ids, vocab_sizes)
    s = params['threshold']
    s = s[g] if shape[0] == n else s[0]
    return soft_threshold(jnp.take(params['embedding'], g, axis=0), s)

  return base.Table('pep', vocab_sizes, dim, init, lookup,
                    config={'granularity': granularity, 'threshold_init': threshold_init,
                            'init_std': init_std})


def learned_values(params) -> np.ndarray:
  """(N, D) the thresholded table the search stage ended with (zeros where pruned)."""
  return np.asarray(soft_threshold(params['embedding'], params['threshold']))


def budget_mask(values: np.ndarray, budget_bytes: int) -> np.ndarray:
  """(N, D) bool: the non-zero entries of ``values``, cut to the ``budget_bytes // 8`` of largest
  magnitude (ties to the lower flat index) when more survive.

  The cut finds the k-th largest magnitude by partition, not by sorting every entry: a sort's
  int64 index arrays cost about five times the table's bytes (measured at 1M ids x 64), and PEP ran
  out of a 24-GiB machine at 10M ids x 64, the memory check's shape (not traced to the sort).
  """
  keep = values != 0
  most = int(budget_bytes) // 8
  if keep.sum() > most:
    flat = np.abs(values).ravel()
    # the most-th largest magnitude; it is > 0, since more than `most` entries are non-zero
    kth = np.partition(flat, flat.size - most)[flat.size - most]
    keep = flat > kth
    ties = np.flatnonzero(flat == kth)[:most - int(keep.sum())]  # the lowest flat indices
    keep[ties] = True
    keep = keep.reshape(values.shape)
  return keep


def pruned(vocab_sizes: Sequence[int], dim: int, *, mask: np.ndarray,
           init_std: float = 0.01) -> base.Table:
  """Stage 2: the full table with a fixed (N, D) mask; served as the kept entries only.

  ``init`` draws the same (N, D) normal table as :func:`pep` from the same key (the lottery-ticket
  restart), masked.
  """
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)
  mask = np.asarray(mask, bool)
  if mask.shape != (n, dim):
    raise ValueError(f'mask {mask.shape} must be ({n}, {dim})')
  flat_kept = np.flatnonzero(mask).astype(np.int32)
  mask_j = jnp.asarray(mask)  # bool: a quarter of a float32 mask's bytes

  def init(key):
    return {'embedding': jnp.where(mask_j, base.normal_init(key, (n, dim), init_std), 0.0)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    g = base.global_ids(ids, vocab_sizes)
    if 'values' in params:  # served: binary search of each entry in the kept index
      want = g[..., None] * dim + jnp.arange(dim, dtype=jnp.int32)
      index, values = params['index'], params['values']
      if index.shape[0] == 0:
        return jnp.zeros(want.shape, jnp.float32)
      pos = jnp.clip(jnp.searchsorted(index, want), 0, index.shape[0] - 1)
      return jnp.where(index[pos] == want, values[pos], 0.0)
    # the rows read, masked: masking the whole table first made an (N, D) temporary every step
    return jnp.take(params['embedding'], g, axis=0) * jnp.take(mask_j, g, axis=0)

  def finalize(params):
    return {'index': jnp.asarray(flat_kept),
            'values': jnp.asarray(params['embedding']).reshape(-1)[flat_kept]}

  return base.Table('pep', vocab_sizes, dim, init, lookup, finalize=finalize,
                    config={'kept_entries': int(flat_kept.size), 'entries': n * dim,
                            'init_std': init_std})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """Stage 1; the budget (at least one kept entry: 8 bytes) is met when the mask is cut."""
  if budget_bytes < 8:
    raise base.Infeasible(f'one kept entry needs 8 bytes > budget {budget_bytes}')
  table = pep(vocab_sizes, dim, **kw)
  return base.Table(table.name, table.vocab_sizes, table.dim, table.init, table.lookup,
                    config={**table.config, 'budget_bytes': int(budget_bytes)})
