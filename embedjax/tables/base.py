"""The table interface, shared helpers (byte counting, uint32 hashing, id offsets) and the full table.

A *table* maps integer ids ``(B, F)`` -- one column per categorical field, each column holding that
field's local ids in ``[0, vocab_sizes[f])`` -- to vectors ``(B, F, D)``. Every method is a
:class:`Table`: a frozen bundle of pure functions closed over static configuration (sizes, hash
seeds), so that ``jax.jit`` of anything built on it sees static shapes and no hidden state.

Life cycle of one table:

* ``params = table.init(key)``: trainable parameters (a pytree of float arrays).
* ``emb = table.lookup(params, ids, key=None)``: ``key`` is given only while training, for the
  methods that sample something per step (OptEmbed's supernet dimensions); everything else
  ignores it.
* ``loss += table.regularizer(params)`` (OptEmbed's threshold penalty; 0 elsewhere).
* ``params = table.post_update(params, key)`` after each optimizer step (stochastic rounding of
  low-precision training; identity elsewhere).
* ``served = table.finalize(params)``: what must be stored to serve (int8 codes and scales, pruned
  rows, ...). ``lookup`` accepts ``served`` as well as ``params``.
* ``table.param_bytes(served)``: the exact bytes of ``served`` -- every array that serving needs,
  at its storage width, plus stated index overhead. Hash functions are derived from integer
  seeds in the static configuration and are not counted (nor are vocab sizes).
* ``table.row_reads(ids)`` (row tables only, else None): (B, F) int32 rows of
  ``params['embedding']`` with ``lookup(params, ids) == take(params['embedding'], row_reads(ids))``,
  which is what a row-wise sparse optimizer (``sparse_optim``) needs to update only those rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

Params = Any  # a pytree of arrays


class Infeasible(ValueError):
  """A method cannot be sized to the requested byte budget (e.g. QR below its minimum rows)."""


def _identity(params: Params) -> Params:
  return params


def _keep(params: Params, key: jax.Array) -> Params:
  del key
  return params


def _zero(params: Params) -> jax.Array:
  del params
  return jnp.zeros((), jnp.float32)


def tree_bytes(tree: Params) -> int:
  """Sum of ``size * itemsize`` over the array leaves of ``tree`` (exact, at stored dtype)."""
  return int(sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
  """One embedding-table method with its static configuration.

  Attributes:
    name: method name (a key of ``embedjax.tables.methods.TABLES``).
    vocab_sizes: (F,) rows per field.
    dim: D, the width of every output vector.
    init: key -> params.
    lookup: (params or served, ids (B, F) int, key=None) -> (B, F, D) float32.
    param_bytes: served -> int, exact serving bytes.
    finalize: params -> served (identity unless the stored form differs).
    post_update: (params, key) -> params, applied after each optimizer step.
    regularizer: params -> scalar added to the training loss.
    row_reads: ids -> (B, F) rows of params['embedding'] that lookup reads, or None.
    config: the hyperparameters, as plain JSON-able data for result files.
  """

  name: str
  vocab_sizes: tuple[int, ...]
  dim: int
  init: Callable[[jax.Array], Params]
  lookup: Callable[..., jax.Array]
  param_bytes: Callable[[Params], int] = tree_bytes
  finalize: Callable[[Params], Params] = _identity
  post_update: Callable[[Params, jax.Array], Params] = _keep
  regularizer: Callable[[Params], jax.Array] = _zero
  row_reads: Callable[[jax.Array], jax.Array] | None = None
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_fields(self) -> int:
    return len(self.vocab_sizes)

  @property
  def total_vocab(self) -> int:
    return int(sum(self.vocab_sizes))


def full_table_bytes(vocab_sizes: Sequence[int], dim: int) -> int:
  """Bytes of the uncompressed float32 table: ``sum(vocab_sizes) * dim * 4``."""
  return int(sum(vocab_sizes)) * int(dim) * 4


def field_offsets(vocab_sizes: Sequence[int]) -> np.ndarray:
  """(F,) int32 start row of each field in the concatenated vocabulary."""
  total = int(sum(vocab_sizes))
  if total >= 2**31:
    raise ValueError(f'total vocabulary {total} does not fit int32 ids')
  return np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).astype(np.int32)


def check_ids(ids: jax.Array, vocab_sizes: Sequence[int]) -> None:
  """Module-boundary check: ids are (B, F) integers, F = number of fields (shape only: traced)."""
  chex.assert_rank(ids, 2)
  chex.assert_axis_dimension(ids, 1, len(vocab_sizes))
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f'ids must be integers, got {ids.dtype}')


def global_ids(ids: jax.Array, vocab_sizes: Sequence[int]) -> jax.Array:
  """(B, F) local ids -> (B, F) int32 ids in the concatenated vocabulary."""
  return ids.astype(jnp.int32) + jnp.asarray(field_offsets(vocab_sizes))[None, :]


# ----------------------------------------------------------------------------------------------
# Hashing. One integer hash, written once for jnp and numpy so tests can recompute it on the host.

_GOLDEN = 0x9E3779B9
_M1 = 0x85EBCA6B
_M2 = 0xC2B2AE35


def _fmix32(x, xp):
  """MurmurHash3's 32-bit finaliser (a bijection on uint32 with good avalanche)."""
  x = x ^ (x >> xp.uint32(16))
  x = x * xp.uint32(_M1)
  x = x ^ (x >> xp.uint32(13))
  x = x * xp.uint32(_M2)
  return x ^ (x >> xp.uint32(16))


def _seed_word(seed: int) -> int:
  # Mixing the seed on the host keeps distinct seeds far apart (seed and seed + 1 would otherwise
  # give permutations that differ only in low bits before the first multiply).
  s = np.uint32((int(seed) * _GOLDEN) & 0xFFFFFFFF)
  with np.errstate(over='ignore'):
    return int(_fmix32(np.asarray(s, np.uint32), np))


def hash_u32(x, seed: int, xp=jnp):
  """Deterministic uint32 hash of integer ``x`` (any shape) under an integer ``seed``.

  ``xp`` is ``jnp`` (traceable) or ``np`` (host reference); both give identical bits.
  """
  word = xp.uint32(_seed_word(seed))
  x = xp.asarray(x).astype(xp.uint32)
  if xp is np:
    with np.errstate(over='ignore'):
      return _fmix32(_fmix32(x ^ word, np) + word, np)
  return _fmix32(_fmix32(x ^ word, xp) + word, xp)


def hash_bucket(x, seed: int, buckets: int, xp=jnp):
  """``hash_u32(x, seed) % buckets`` as int32: a deterministic bucket in ``[0, buckets)``."""
  if not 0 < buckets < 2**31:
    raise ValueError(f'buckets must be in [1, 2**31), got {buckets}')
  return (hash_u32(x, seed, xp) % xp.uint32(buckets)).astype(xp.int32)


# ----------------------------------------------------------------------------------------------
# The full table: one (N, D) float32 matrix over the concatenated vocabulary.


def normal_init(key: jax.Array, shape: tuple[int, ...], std: float) -> jax.Array:
  return std * jax.random.normal(key, shape, jnp.float32)


def full(vocab_sizes: Sequence[int], dim: int, *, init_std: float = 0.01) -> Table:
  """The uncompressed baseline: row ``offset[f] + id`` of one (sum(vocab_sizes), D) matrix.

  Bytes: ``N * D * 4``.
  """
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = int(sum(vocab_sizes))

  def init(key):
    return {'embedding': normal_init(key, (n, dim), init_std)}

  def row_reads(ids):
    check_ids(ids, vocab_sizes)
    return global_ids(ids, vocab_sizes)

  def lookup(params, ids, key=None):
    del key
    return jnp.take(params['embedding'], row_reads(ids), axis=0)

  return Table('full', vocab_sizes, dim, init, lookup, row_reads=row_reads,
               config={'rows': n, 'init_std': init_std})


def full_for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> Table:
  """The full table when it fits the budget (it never shrinks), else :class:`Infeasible`."""
  need = full_table_bytes(vocab_sizes, dim)
  if need > budget_bytes:
    raise Infeasible(f'full table needs {need} bytes > budget {budget_bytes}')
  return full(vocab_sizes, dim, **kw)


def largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
  """Largest integer v in [lo, hi] with ``fits(v)`` for a monotone (true then false) predicate."""
  if hi < lo or not fits(lo):
    return None
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(mid):
      lo = mid
    else:
      hi = mid - 1
  return lo


def ceil_div(a: int, b: int) -> int:
  return -(-int(a) // int(b))


def isqrt_ceil(n: int) -> int:
  r = math.isqrt(n)
  return r if r * r == n else r + 1
