"""The hashing trick: each field's ids hashed into that field's own smaller table.

Field f has ``rows[f] <= vocab_sizes[f]`` rows; id ``i`` reads row ``hash_bucket(i, seed + f)``
when the field is hashed and row ``i`` when ``rows[f] == vocab_sizes[f]`` (a field that already
fits is not hashed: hashing it would only add collisions). Colliding ids share a vector.

Bytes: ``sum(rows) * D * 4``.

Sized to a budget (:func:`for_budget`), the rows are split over fields by one of two rules:

* ``'fair'`` (the default): half of the rows are spread evenly -- every field first gets
  ``min(vocab_f, total_rows // (2 F))`` rows, so a field smaller than that stays exact -- and the
  other half (with whatever the small fields did not need) goes in proportion to the ids each
  field still has to hash (:func:`fair_rows`). A two-valued field is never crushed into one row.
* ``'proportional'``: rows in proportion to vocabulary (:func:`proportional_rows`). At small
  budgets it leaves a tiny field one or two rows (gender gets 1 row at 10% of MovieLens), a
  handicap that per-field hashing baselines in papers often carry and that flatters methods
  sharing one table across fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from embedjax.tables import base


def bucket_ids(ids, vocab_sizes: Sequence[int], rows: Sequence[int], seed: int, xp=jnp):
  """(B, F) local ids -> (B, F) int32 rows in the concatenated hashed table."""
  offsets = base.field_offsets(rows)
  cols = []
  for f, (n, m) in enumerate(zip(vocab_sizes, rows)):
    col = ids[:, f].astype(xp.int32)
    if m < n:
      col = base.hash_bucket(col, seed + f, m, xp)
    cols.append(col + offsets[f])
  return xp.stack(cols, axis=1)


def hashing(vocab_sizes: Sequence[int], dim: int, *, rows: Sequence[int], seed: int = 0,
            init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  rows = tuple(min(int(m), n) for m, n in zip(rows, vocab_sizes))
  if len(rows) != len(vocab_sizes) or min(rows) < 1:
    raise ValueError(f'rows {rows} must give >= 1 row for each of {len(vocab_sizes)} fields')
  total = sum(rows)

  def init(key):
    return {'embedding': base.normal_init(key, (total, dim), init_std)}

  def row_reads(ids):
    base.check_ids(ids, vocab_sizes)
    return bucket_ids(ids, vocab_sizes, rows, seed)

  def lookup(params, ids, key=None):
    del key
    return jnp.take(params['embedding'], row_reads(ids), axis=0)

  return base.Table('hashing', vocab_sizes, dim, init, lookup, row_reads=row_reads,
                    config={'rows': list(rows), 'seed': seed, 'init_std': init_std})


def proportional_rows(vocab_sizes: Sequence[int], total_rows: int) -> list[int]:
  """Splits ``total_rows`` over fields in proportion to their vocab, capped at the vocab.

  Rows freed by the cap (small fields stay exact) are handed to the remaining fields, so the sum
  is ``min(total_rows, sum(vocab_sizes))`` whenever every field can get at least one row.
  """
  vocab = np.asarray(vocab_sizes, np.int64)
  if total_rows < len(vocab):
    raise base.Infeasible(f'{total_rows} rows cannot give each of {len(vocab)} fields one row')
  rows = np.zeros_like(vocab)
  fixed = np.zeros(len(vocab), bool)
  left = int(total_rows)
  while True:
    free = ~fixed
    share = np.floor(left * vocab[free] / vocab[free].sum()).astype(np.int64)
    share = np.maximum(share, 1)
    capped = share >= vocab[free]
    if not capped.any():
      rows[free] = share
      break
    idx = np.flatnonzero(free)[capped]
    rows[idx] = vocab[idx]
    fixed[idx] = True
    left -= int(vocab[idx].sum())
    if fixed.all():
      break
  # Shares rounded up to one row can overshoot: take the excess back from the largest fields.
  excess = int(rows.sum()) - int(total_rows)
  for f in np.argsort(-rows, kind='stable'):
    if excess <= 0:
      break
    take = min(excess, int(rows[f]) - 1)
    rows[f] -= take
    excess -= take
  # Hand out the rounding remainder one row at a time to the largest hashed fields.
  spare = int(total_rows) - int(rows.sum())
  for f in np.argsort(-vocab, kind='stable'):
    if spare <= 0:
      break
    add = min(spare, int(vocab[f] - rows[f]))
    rows[f] += add
    spare -= add
  return [int(r) for r in rows]


def fair_rows(vocab_sizes: Sequence[int], total_rows: int) -> list[int]:
  """Splits ``total_rows`` over fields by the 'fair' rule of the module docstring.

  Every field gets ``min(vocab_f, max(1, total_rows // (2 F)))`` rows first; the remaining rows
  go to the fields that still hash ids, in proportion to how many ids each still has beyond its
  rows, capped at its vocabulary. The sum is ``min(total_rows, sum(vocab_sizes))``.
  """
  vocab = np.asarray(vocab_sizes, np.int64)
  if total_rows < len(vocab):
    raise base.Infeasible(f'{total_rows} rows cannot give each of {len(vocab)} fields one row')
  total_rows = min(int(total_rows), int(vocab.sum()))
  rows = np.minimum(vocab, max(1, total_rows // (2 * len(vocab))))
  left = total_rows - int(rows.sum())
  hashed = np.flatnonzero(rows < vocab)
  if left > 0 and hashed.size:
    if left >= hashed.size:  # proportional over what each field still has to hash
      rows[hashed] += proportional_rows(vocab[hashed] - rows[hashed], left)
    else:  # fewer rows than hashed fields: one more each to the largest ones
      rows[hashed[np.argsort(-(vocab[hashed] - rows[hashed]), kind='stable')[:left]]] += 1
  return [int(r) for r in rows]


ALLOCATIONS = {'fair': fair_rows, 'proportional': proportional_rows}


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *,
               allocation: str = 'fair', **kw) -> base.Table:
  """Per-field hashing with ``budget_bytes // (4 D)`` rows split by ``allocation``."""
  if allocation not in ALLOCATIONS:
    raise ValueError(f'allocation must be one of {sorted(ALLOCATIONS)}, got {allocation!r}')
  total_rows = min(int(budget_bytes) // (dim * 4), int(sum(vocab_sizes)))
  table = hashing(vocab_sizes, dim, rows=ALLOCATIONS[allocation](vocab_sizes, total_rows), **kw)
  return dataclasses.replace(table, config={**table.config, 'allocation': allocation})
