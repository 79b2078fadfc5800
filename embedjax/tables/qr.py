"""Quotient-remainder and compositional embeddings (Shi et al., KDD 2020).

The concatenated vocabulary of N ids is written in a mixed radix ``radices = (r_0, ..., r_{k-1})``
with ``prod(radices) >= N``: digit ``j`` of id ``x`` is ``(x // prod(r_<j)) % r_j``. Part j is a
table of ``r_j`` rows, and the vector of ``x`` is the element-wise product (``combine='mult'``, the
paper's default) or sum of its k part rows. Two parts with ``radices = (m, ceil(N/m))`` is the
quotient-remainder trick; more parts are the general complementary partitions. Because the digit
tuple of every id is distinct, no two ids share *all* their rows (unlike hashing).

Bytes: ``sum(radices) * D * 4``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from embedjax.tables import base

COMBINE = {'mult': jnp.prod, 'sum': jnp.sum}


def digits(x, radices: Sequence[int], xp=jnp):
  """(...,) int ids -> (..., k) mixed-radix digits, least significant first."""
  out = []
  for r in radices:
    out.append(x % r)
    x = x // r
  return xp.stack(out, axis=-1)


def qr(vocab_sizes: Sequence[int], dim: int, *, radices: Sequence[int], combine: str = 'mult',
       init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  radices = tuple(int(r) for r in radices)
  n = sum(vocab_sizes)
  if math.prod(radices) < n or min(radices) < 1:
    raise ValueError(f'radices {radices} cover {math.prod(radices)} < {n} ids')
  if combine not in COMBINE:
    raise ValueError(f'combine must be one of {list(COMBINE)}')
  # With a product, each part should be ~1 so the product starts at the usual scale: parts are
  # 1 + noise (as the reference implementation's 'mult' init keeps the product non-degenerate).
  k = len(radices)

  def init(key):
    keys = jax.random.split(key, k)
    if combine == 'mult':
      # Part 0 carries the scale, the others start near 1: the product is ~N(0, init_std).
      return {f'part{j}': (base.normal_init(keys[j], (r, dim), init_std) if j == 0 else
                           1.0 + base.normal_init(keys[j], (r, dim), init_std))
              for j, r in enumerate(radices)}
    return {f'part{j}': base.normal_init(keys[j], (r, dim), init_std / math.sqrt(k))
            for j, r in enumerate(radices)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    d = digits(base.global_ids(ids, vocab_sizes), radices)
    rows = jnp.stack([jnp.take(params[f'part{j}'], d[..., j], axis=0) for j in range(k)], axis=0)
    return COMBINE[combine](rows, axis=0)

  return base.Table('qr', vocab_sizes, dim, init, lookup,
                    config={'radices': list(radices), 'combine': combine, 'init_std': init_std})


def radices_for_rows(n: int, max_rows: int, max_parts: int = 4) -> tuple[int, ...] | None:
  """The fewest parts (2..max_parts) whose radices cover n ids in at most ``max_rows`` rows.

  With two parts the remainder table takes as many rows as fit (m + ceil(n/m) <= max_rows, m as
  large as possible), so a generous budget approaches the full table. With k > 2 the radices are
  as equal as possible (their sum is minimal near n^(1/k) each).
  """
  # m + ceil(n/m) falls until sqrt(n) and rises after: search the rising branch for the largest m.
  lo = base.isqrt_ceil(n)
  if lo + base.ceil_div(n, lo) <= max_rows:
    best = base.largest_fitting(lo, n, lambda m: m + base.ceil_div(n, m) <= max_rows)
    return (best, base.ceil_div(n, best))
  for k in range(3, max_parts + 1):
    r = max(1, math.ceil(n ** (1.0 / k)))
    while r ** k < n:
      r += 1
    rad = [r] * k
    # Shrink the last radix while the product still covers n.
    rad[-1] = base.ceil_div(n, r ** (k - 1))
    if sum(rad) <= max_rows:
      return tuple(rad)
  return None


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *, max_parts: int = 4,
               **kw) -> base.Table:
  n = int(sum(vocab_sizes))
  max_rows = int(budget_bytes) // (dim * 4)
  radices = radices_for_rows(n, max_rows, max_parts)
  if radices is None:
    raise base.Infeasible(f'{max_parts} parts need more than {max_rows} rows for {n} ids')
  return qr(vocab_sizes, dim, radices=radices, **kw)
