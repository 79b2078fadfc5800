"""The hashing trick: each field's ids hashed into that field's own smaller table.

Field f has ``rows[f] <= vocab_sizes[f]`` rows; id ``i`` reads row ``hash_bucket(i, seed + f)``
when the field is hashed and row ``i`` when ``rows[f] == vocab_sizes[f]`` (a field that already
fits is not hashed: hashing it would only add collisions). Colliding ids share a vector.

Bytes: ``sum(rows) * D * 4``.
"""

from __future__ import annotations

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

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    return jnp.take(params['embedding'], bucket_ids(ids, vocab_sizes, rows, seed), axis=0)

  return base.Table('hashing', vocab_sizes, dim, init, lookup,
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
  # Hand out the rounding remainder one row at a time to the largest hashed fields.
  spare = int(total_rows) - int(rows.sum())
  for f in np.argsort(-vocab, kind='stable'):
    if spare <= 0:
      break
    add = min(spare, int(vocab[f] - rows[f]))
    rows[f] += add
    spare -= add
  return [int(r) for r in rows]


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  total_rows = min(int(budget_bytes) // (dim * 4), int(sum(vocab_sizes)))
  return hashing(vocab_sizes, dim, rows=proportional_rows(vocab_sizes, total_rows), **kw)
