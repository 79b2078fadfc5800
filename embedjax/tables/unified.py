"""Unified Embedding / feature multiplexing (Coleman et al., NeurIPS 2023).

One shared (M, D / probes) table serves every field. Field f probes it with its own ``probes``
hash functions ``h_{f,j}`` (seeds distinct per field and probe, so two fields' ids collide only
by chance, never systematically) and the vector of id ``i`` is the concatenation of rows
``h_{f,1}(i), ..., h_{f,p}(i)`` (the paper's multi-probe variant, which lowers the chance that
two ids share their whole vector to ~1/M^p). ``combine='sum'`` sums full-width probes instead.

Unlike the per-field hashing trick, capacity is pooled: a field with few ids uses few rows and
leaves the rest to large fields, without a per-field split being chosen.

Bytes: ``M * width * 4`` with ``width = D / probes`` (concat) or ``D`` (sum).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from embedjax.tables import base


def probe_rows(ids, num_fields: int, probes: int, rows: int, seed: int, xp=jnp):
  """(B, F) local ids -> (B, F, probes) int32 rows of the shared table."""
  cols = []
  for f in range(num_fields):
    cols.append(xp.stack([base.hash_bucket(ids[:, f], seed + 1_000 * f + j, rows, xp)
                          for j in range(probes)], axis=-1))
  return xp.stack(cols, axis=1)


def unified(vocab_sizes: Sequence[int], dim: int, *, rows: int, probes: int = 2,
            combine: str = 'concat', seed: int = 0, init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  if combine not in ('concat', 'sum'):
    raise ValueError("combine must be 'concat' or 'sum'")
  if combine == 'concat' and dim % probes:
    raise ValueError(f'dim {dim} is not divisible by {probes} probes')
  width = dim // probes if combine == 'concat' else dim
  num_fields = len(vocab_sizes)

  def init(key):
    std = init_std if combine == 'concat' else init_std / probes ** 0.5
    return {'embedding': base.normal_init(key, (rows, width), std)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    e = jnp.take(params['embedding'], probe_rows(ids, num_fields, probes, rows, seed), axis=0)
    if combine == 'sum':
      return e.sum(axis=2)
    return e.reshape(*ids.shape, dim)  # (B, F, p, D/p) -> (B, F, D)

  return base.Table('unified', vocab_sizes, dim, init, lookup,
                    config={'rows': rows, 'probes': probes, 'combine': combine, 'seed': seed,
                            'init_std': init_std})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *, probes: int = 2,
               combine: str = 'concat', **kw) -> base.Table:
  width = dim // probes if combine == 'concat' else dim
  rows = int(budget_bytes) // (width * 4)
  # More rows than ids x probes cannot lower collisions further.
  rows = min(rows, int(sum(vocab_sizes)) * probes)
  if rows < 1:
    raise base.Infeasible(f'one row of width {width} exceeds {budget_bytes} bytes')
  return unified(vocab_sizes, dim, rows=rows, probes=probes, combine=combine, **kw)
