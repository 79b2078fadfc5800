"""Tensor-train embeddings (TT-Rec, Yin et al., MLSys 2021) over the concatenated vocabulary.

The (N, D) table is the first N rows of an implicit (n1 n2 n3, d1 d2 d3) matrix in tensor-train
form with three cores (ranks 1, r, r, 1):

  G1: (n1, d1, r),   G2: (n2, r, d2, r),   G3: (n3, r, d3)
  row(i1 n2 n3 + i2 n3 + i3)[a d2 d3 + b d3 + c] = sum_{s,t} G1[i1,a,s] G2[i2,s,b,t] G3[i3,t,c]

``n_j = ceil(N^(1/3))`` (the product may exceed N: the extra rows are never read) and the d_j
are the most balanced factorisation of D (largest last). A lookup never builds the dense matrix of
a large vocabulary (:func:`dense` builds it, for tests and small tables); it takes the cheaper of
two exact contractions, chosen from the static number of ids looked up, K:

- per id: gather the three core slices of each id and contract them, ~K d1 d2 r^2 FLOPs, with
  K r d2 r gathered floats (at r = 256 and a 2048 x 26 batch, 56 GB: too much);
- paired: contract G1 with G2 once into the (n1 n2, d1 d2, r) matrix (n1 n2 d1 d2 r^2 FLOPs,
  independent of K), then per id one (d1 d2, r) x (r, d3) product. Cheaper when n1 n2 < K, as in
  CTR training batches over a vocabulary of a few million ids.

Bytes: ``4 * (n1 d1 r + n2 r d2 r + n3 r d3)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from embedjax.tables import base


def balanced_factors(n: int, k: int = 3) -> tuple[int, ...]:
  """k integers with product n, as equal as possible (largest last); e.g. 16 -> (2, 2, 4)."""
  best = None
  def rec(left, k, start, acc):
    nonlocal best
    if k == 1:
      if left >= start:
        cand = tuple(acc + [left])
        if best is None or max(cand) - min(cand) < max(best) - min(best):
          best = cand
      return
    f = start
    while f ** k <= left:
      if left % f == 0:
        rec(left // f, k - 1, f, acc + [f])
      f += 1
  rec(n, k, 1, [])
  return best


def vocab_factors(n: int, k: int = 3) -> tuple[int, ...]:
  r = max(1, round(n ** (1.0 / k)))
  while r ** k < n:
    r += 1
  return (r,) * k


def tt_bytes(ns: Sequence[int], ds: Sequence[int], rank: int) -> int:
  (n1, n2, n3), (d1, d2, d3) = ns, ds
  return 4 * (n1 * d1 * rank + n2 * rank * d2 * rank + n3 * rank * d3)


def dense(params, n: int) -> jax.Array:
  """The (n, D) matrix the cores represent (first n rows)."""
  g1, g2, g3 = params['core1'], params['core2'], params['core3']
  full = jnp.einsum('ias,jsbt,ktc->ijkabc', g1, g2, g3)
  n1, n2, n3, d1, d2, d3 = full.shape
  return full.reshape(n1 * n2 * n3, d1 * d2 * d3)[:n]


# Below this many (rows x dims) of the implicit matrix a lookup builds the whole matrix from the
# cores and gathers from it: for small vocabularies that costs fewer FLOPs than contracting the
# cores once per looked-up id (and XLA:CPU is slow at batches of tiny matmuls).
MATERIALIZE_MAX = 1 << 20


def tt(vocab_sizes: Sequence[int], dim: int, *, rank: int, init_std: float = 0.01,
       materialize: bool | None = None) -> base.Table:
  """``materialize``: build the dense matrix per lookup (None: when it has <= MATERIALIZE_MAX
  entries). Both paths compute the same rows; only the cost differs."""
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)
  ns = vocab_factors(n)
  ds = balanced_factors(dim)
  (n1, n2, n3), (d1, d2, d3) = ns, ds
  if materialize is None:
    materialize = n1 * n2 * n3 * dim <= MATERIALIZE_MAX

  def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    # Each entry of a row sums rank^2 products of three core entries: equal per-core stds s with
    # rank^2 s^6 = init_std^2 give rows with std init_std.
    s = (init_std ** 2 / rank ** 2) ** (1.0 / 6.0)
    return {'core1': base.normal_init(k1, (n1, d1, rank), s),
            'core2': base.normal_init(k2, (n2, rank, d2, rank), s),
            'core3': base.normal_init(k3, (n3, rank, d3), s)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    x = base.global_ids(ids, vocab_sizes)
    if materialize:
      return jnp.take(dense(params, n), x, axis=0)
    if n1 * n2 < x.size:  # paired (module docstring): G1 G2 once, then one product per id
      pair = jnp.einsum('ias,jsbt->ijabt', params['core1'], params['core2'])
      pair = jnp.take(pair.reshape(n1 * n2, d1 * d2, rank), x // n3, axis=0)  # (B, F, d1 d2, r)
      c = jnp.take(params['core3'], x % n3, axis=0)  # (B, F, r, d3)
      return jnp.einsum('...pt,...tc->...pc', pair, c).reshape(*x.shape, dim)
    i1, rest = x // (n2 * n3), x % (n2 * n3)
    i2, i3 = rest // n3, rest % n3
    a = jnp.take(params['core1'], i1, axis=0)  # (B, F, d1, r)
    b = jnp.take(params['core2'], i2, axis=0)  # (B, F, r, d2, r)
    c = jnp.take(params['core3'], i3, axis=0)  # (B, F, r, d3)
    e = jnp.einsum('...as,...sbt,...tc->...abc', a, b, c)
    return e.reshape(*x.shape, dim)

  return base.Table('tt', vocab_sizes, dim, init, lookup,
                    config={'rank': rank, 'vocab_factors': list(ns), 'dim_factors': list(ds),
                            'init_std': init_std, 'materialize': materialize})


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, *, max_rank: int = 256,
               **kw) -> base.Table:
  ns, ds = vocab_factors(int(sum(vocab_sizes))), balanced_factors(dim)
  rank = base.largest_fitting(1, max_rank, lambda r: tt_bytes(ns, ds, r) <= budget_bytes)
  if rank is None:
    raise base.Infeasible(f'rank-1 TT needs {tt_bytes(ns, ds, 1)} bytes > {budget_bytes}')
  return tt(vocab_sizes, dim, rank=rank, **kw)
