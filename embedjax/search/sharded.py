"""Sharded exact search: a corpus split by rows over one mesh axis, for corpora beyond one device.

Layout. An n-row corpus (any pytree whose leaves share the leading row dimension: float32 or
bfloat16 vectors, int8 codes, packed bits, PQ codes, filter attributes) is padded to
``S x R`` rows, S the size of the mesh axis and R = ceil(n / S), and split so that shard s (its
position along the axis) holds global rows [s R, (s + 1) R). Rows n and beyond are padding: every
shard knows which of its rows are real from its axis index, and scores padding -inf, so padding
never wins and never comes back. Other mesh axes hold replicas. ``place_rows`` puts a host corpus
there; with several processes each passes its contiguous slice ``process_rows`` of the rows.

Search. Queries (and quantizer params) are replicated. Inside ``jax.shard_map`` every shard runs
the single-device blocked top-k of ``embedjax.search.exact`` (the same score functions as
``topk_blocked``, ``int8_topk``, ``asymmetric_topk``, ``hamming_topk``) over its R rows, offsets
its indices to global row ids, and the (Q, k') candidates of all shards are all-gathered along
the axis and merged by one ``lax.top_k``. Candidates are gathered in shard order and each shard's
are sorted by (score, index), so the stable top_k breaks ties towards the lower global index,
exactly as single-device search does: ids are the same, and scores are the same score function
of the same rows. One caveat, shared with single-device search across block sizes: a float32
score computed by a GEMM (float vectors, asymmetric int8, binary) can differ in its last bit with
the row's position in the scanned block, so rows whose exact scores tie (duplicates) may then
order differently from a single-device run. Integer scores (int8, Hamming) and exactly
representable float products are layout-independent, and PQ table sums add the same entries in
the same order wherever the row sits: those give identical results.

Filters mirror ``filtered.filtered_topk``'s exact 'pre' mode: a predicate (a name in
``filtered.PREDICATES``, ``'allowed'`` for a per-row boolean mask, or a module-level function)
of replicated query attributes and corpus attributes sharded like the corpus. Rows that fail
score -inf inside the scan; when fewer than k rows pass, the missing entries are -inf / -1, as
``filtered_topk`` returns them (Hamming: distance ``MISSING_DISTANCE`` / -1; int8: score
``MISSING_INT8`` / -1). The inexact 'post' mode has no sharded form.

Per device (memory): its rows, R x bytes_per_row (+ R x attribute bytes, + R bools of the
real-row mask), plus per query block of B queries: the scan's B x block_size float32 scores
(see ``exact.plan``), the local (B, k') and gathered (B, S k') candidates (float32 score + int32
id each, 8 bytes), and the (B, k) result; k' = min(k, R).
"""

from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from embedjax.ops import as_uint8, bytes_to_words
from embedjax.search.exact import inner_product_scores, topk_blocked_by
from embedjax.search.filtered import PREDICATES
# hamming_topk's own popcount score (private there: hamming_topk is its only other caller).
from embedjax.search.hamming import _popcount_scores
from embedjax.search.quantized import int8_scores

MISSING_DISTANCE = int(np.iinfo(np.int32).max)  # Hamming distance reported for a missing result
MISSING_INT8 = int(np.iinfo(np.int32).min)  # int8 score reported for a missing result
DEFAULT_QUERY_BLOCK = 1024  # queries per sharded call (each shard scores B x block_size at once)


def allowed(query_attrs, corpus_attrs):
  """The per-row mask predicate: corpus_attrs (rows,) bool; query_attrs (B,) are ignored."""
  return jnp.broadcast_to(corpus_attrs[None, :].astype(bool),
                          (query_attrs.shape[0], corpus_attrs.shape[0]))


SHARDED_PREDICATES: dict[str, Callable] = {**PREDICATES, 'allowed': allowed}


def rows_per_shard(n: int, num_shards: int) -> int:
  """R = ceil(n / num_shards): rows each shard holds (the last shards end in padding)."""
  if n < 1 or num_shards < 1:
    raise ValueError(f'need n >= 1 rows and >= 1 shards, got n={n}, num_shards={num_shards}')
  return -(-n // num_shards)


def _row_sharding(mesh: Mesh, axis: str) -> NamedSharding:
  return NamedSharding(mesh, P(axis))


def _process_padded_range(mesh: Mesh, n: int, axis: str) -> tuple[int, int]:
  """[lo, hi) of the padded rows held by this process's devices (must be contiguous)."""
  padded = mesh.shape[axis] * rows_per_shard(n, mesh.shape[axis])
  index_map = _row_sharding(mesh, axis).addressable_devices_indices_map((padded,))
  spans = sorted({(sl[0].start or 0, padded if sl[0].stop is None else sl[0].stop)
                  for sl in index_map.values()})
  for (_, stop), (start, _) in zip(spans, spans[1:]):
    if start != stop:  # a process holding rows [0, R) and [2R, 3R) cannot pass one slice
      raise ValueError(f'this process holds non-contiguous row ranges {spans} on axis {axis!r}')
  return spans[0][0], spans[-1][1]


def process_rows(mesh: Mesh, n: int, *, axis: str = 'data') -> tuple[int, int]:
  """[start, stop): the real rows of an n-row corpus this process passes to ``place_rows``.

  One process: (0, n). Several: each process's devices hold a contiguous range of shards (as
  ``jax.make_mesh`` orders devices); the range is clipped to n (a trailing process may get fewer
  rows, or none).
  """
  lo, hi = _process_padded_range(mesh, n, axis)
  return min(lo, n), min(hi, n)


def place_rows(mesh: Mesh, local_rows, n: int, *, axis: str = 'data'):
  """Places this process's rows of an n-row corpus onto ``mesh``, split along ``axis``, padded.

  Args:
    mesh: the device mesh (may span several processes; other axes hold replicas).
    local_rows: pytree of host arrays (rows, ...) holding global rows ``process_rows(mesh, n)``
      (with one process: the whole corpus). Codes, vectors, filter attributes, all alike.
    n: total real rows of the corpus.
    axis: the mesh axis the rows are split over.

  Returns:
    the same pytree of global jax arrays (S R, ...), S = mesh.shape[axis], R = ceil(n / S),
    sharded ``P(axis)``; rows >= n are zeros (search never returns them).

  Per-device memory: R x bytes_per_row for the rows (bytes_per_row summed over the leaves, e.g.
  D x 4 for float32 vectors, D for int8, ceil(D / 8) for packed bits, M for PQ codes), plus, in
  each search, the (B, min(k, R)) local and (B, S min(k, R)) gathered candidates (8 bytes each:
  float32 score + int32 id) of a query block of B queries and the scan's B x block_size float32
  scores (``exact.plan``).
  """
  r = rows_per_shard(n, mesh.shape[axis])
  padded = mesh.shape[axis] * r
  lo, hi = _process_padded_range(mesh, n, axis)
  start, stop = min(lo, n), min(hi, n)
  sharding = _row_sharding(mesh, axis)

  def place(x):
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] != stop - start:
      raise ValueError(f'this process must pass global rows [{start}, {stop}) of {n} '
                       f'({stop - start} rows), got shape {x.shape}')
    pad = np.zeros((hi - lo - x.shape[0],) + x.shape[1:], x.dtype)
    return jax.make_array_from_process_local_data(sharding, np.concatenate([x, pad]),
                                                  (padded,) + x.shape[1:])

  return jax.tree.map(place, local_rows)


@functools.lru_cache(maxsize=None)
def _masked_score_fn(base: Callable, predicate: Callable | None) -> Callable:
  """``base`` with padding rows (and rows failing ``predicate``) scored -inf; one function object
  per (scorer, predicate), so the scan compiles once per pair."""
  def score(aux, queries, rows):
    (prepared, q_attrs), (codes, real, c_attrs) = queries, rows
    s = base(aux, prepared, codes).astype(jnp.float32)
    keep = real[None, :]
    if predicate is not None:
      keep = keep & predicate(q_attrs, c_attrs)
    return jnp.where(keep, s, -jnp.inf)
  return score


def _float_prepare(aux, queries):
  del aux
  return jnp.asarray(queries, jnp.float32)


def _int8_prepare(aux, queries):
  del aux
  return queries


def _hamming_prepare(aux, queries):
  del aux
  return bytes_to_words(as_uint8(queries))


def _hamming_corpus(codes):
  return as_uint8(codes)


def _identity(x):
  return x


@functools.partial(jax.jit, static_argnames=(
    'mesh', 'axis', 'n', 'k', 'score_fn', 'prepare', 'convert', 'predicate', 'block_size',
    'strategy', 'output'))
def _sharded_block(aux, queries, corpus, query_attrs, corpus_attrs, *, mesh, axis, n, k,
                   score_fn, prepare, convert, predicate, block_size, strategy, output):
  """(B, ...) replicated queries against the row-sharded corpus: (B, k) results, replicated.

  Returns (scores (B, k), ids (B, k) int32): scores float32 for output 'score', exact int32 for
  'int8', int32 Hamming distances (-score) for 'hamming'; missing entries as the module says.
  """
  num_shards = mesh.shape[axis]
  r = jax.tree.leaves(corpus)[0].shape[0] // num_shards
  k_local = min(k, r)
  score = _masked_score_fn(score_fn, predicate)

  def shard(aux, queries, corpus, query_attrs, corpus_attrs):
    offset = jax.lax.axis_index(axis) * r
    real = offset + jnp.arange(r, dtype=jnp.int32) < n  # padding rows are >= n
    prepared = prepare(aux, queries)
    codes = convert(corpus)
    b = jax.tree.leaves(queries)[0].shape[0]
    vals, local = topk_blocked_by(score, (prepared, query_attrs), (codes, real, corpus_attrs),
                                  k_local, aux=aux, block_size=block_size, query_block=b,
                                  strategy=strategy)
    missing = jnp.isneginf(vals)
    ids = jnp.where(missing, -1, local + offset)
    gathered = [vals, ids]
    if output == 'int8':
      # As int8_topk: the selected scores recomputed exactly in int32 (Q x k' x D).
      picked = jnp.take(codes, local, axis=0).astype(jnp.int32)
      exact = jnp.einsum('qd,qkd->qk', prepared.astype(jnp.int32), picked)
      gathered.append(jnp.where(missing, MISSING_INT8, exact))
    # (B, S k') in shard order: shard s's candidates hold lower global ids than shard s + 1's,
    # so the stable top_k keeps the lower id on ties, as single-device search does.
    gathered = [jax.lax.all_gather(x, axis, axis=1, tiled=True) for x in gathered]
    top, pos = jax.lax.top_k(gathered[0], k)
    ids = jnp.take_along_axis(gathered[1], pos, axis=1)
    if output == 'int8':
      return jnp.take_along_axis(gathered[2], pos, axis=1), ids
    if output == 'hamming':
      return jnp.where(jnp.isneginf(top), MISSING_DISTANCE, -top).astype(jnp.int32), ids
    return top, ids

  # The all-gathered merge is the same on every shard: outputs are replicated (check_vma off, as
  # it cannot see that through the gather).
  return jax.shard_map(shard, mesh=mesh, in_specs=(P(), P(), P(axis), P(), P(axis)),
                       out_specs=(P(), P()), check_vma=False)(
                           aux, queries, corpus, query_attrs, corpus_attrs)


def _replicate(mesh: Mesh, tree):
  """Host (or single-device) arrays -> global arrays replicated over the mesh (every process
  passes the same values)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def sharded_topk_by(mesh: Mesh, score_fn, queries, corpus, n: int, k: int, *, aux=None,
                    prepare=_float_prepare, convert=_identity, predicate=None, query_attrs=None,
                    corpus_attrs=None, axis: str = 'data', block_size: int | None = None,
                    query_block: int = DEFAULT_QUERY_BLOCK, strategy: str | None = None,
                    output: str = 'score'):
  """Exact top-k by any blocked score over a row-sharded corpus (the engine of this module).

  Args:
    mesh: device mesh; ``axis`` is the one the corpus rows are split over.
    score_fn: static ``(aux, prepared (B, ...), corpus rows (rows, ...)) -> (B, rows)`` scores,
      larger = better (``exact.topk_blocked_by``'s contract).
    queries: pytree of host arrays (Q, ...), replicated onto the mesh.
    corpus: pytree of global arrays (S R, ...) from ``place_rows`` (n real rows).
    n: real rows of the corpus.
    k: results per query; clamped to n.
    aux: replicated pytree handed to ``prepare`` and ``score_fn`` (quantizer params).
    prepare: static ``(aux, queries) -> prepared``, run on every shard (replicated work).
    convert: static ``corpus -> rows`` seen by score_fn (e.g. int8 binary codes -> uint8).
    predicate, query_attrs, corpus_attrs: optional filter: a name in ``SHARDED_PREDICATES`` or a
      module-level ``(query_attrs (B, ...), corpus_attrs (rows, ...)) -> (B, rows) bool``;
      query_attrs (Q, ...) host arrays (None: zeros (Q,), enough for 'allowed'), corpus_attrs
      (S R, ...) from ``place_rows``.
    block_size, strategy: per-shard scan settings (``exact.plan``).
    query_block: queries per sharded call (the last call may be shorter and compiles again).
    output: 'score' (the float32 scores), 'int8' (exact int32 inner products of the int8 codes
      ``prepared`` and rows, ``MISSING_INT8`` where missing) or 'hamming' (int32 -score,
      ``MISSING_DISTANCE`` where missing).

  Returns:
    scores (Q, min(k, n)) as ``output`` says, in ranking order, and ids (Q, min(k, n)) int32
    global row ids, ties by lower id, -1 where fewer rows pass the filter (float scores -inf
    there). Replicated global arrays.
  """
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if query_block < 1:
    raise ValueError(f'query_block must be >= 1, got {query_block}')
  num_shards = mesh.shape[axis]
  padded = num_shards * rows_per_shard(n, num_shards)
  for leaf in jax.tree.leaves((corpus, corpus_attrs)):
    if leaf.shape[0] != padded:
      raise ValueError(f'corpus leaves must have {padded} rows ({n} real rows over {num_shards} '
                       f'shards; see place_rows), got shape {leaf.shape}')
  if isinstance(predicate, str):
    predicate = SHARDED_PREDICATES[predicate]
  if (predicate is None) != (corpus_attrs is None):
    raise ValueError('a filter needs both predicate and corpus_attrs')
  if output not in ('score', 'int8', 'hamming'):
    raise ValueError(f"output must be 'score', 'int8' or 'hamming', got {output!r}")
  q_rows = jax.tree.leaves(queries)[0].shape[0]
  if predicate is not None and query_attrs is None:
    query_attrs = np.zeros((q_rows,), np.int32)  # a row mask ('allowed') needs no query side
  k = min(k, n)
  aux = _replicate(mesh, aux)
  outs = []
  for start in range(0, q_rows, query_block):
    q = _replicate(mesh, jax.tree.map(lambda x: np.asarray(x)[start:start + query_block],
                                      (queries, query_attrs)))
    outs.append(_sharded_block(aux, q[0], corpus, q[1], corpus_attrs, mesh=mesh, axis=axis,
                               n=n, k=k, score_fn=score_fn, prepare=prepare, convert=convert,
                               predicate=predicate, block_size=block_size, strategy=strategy,
                               output=output))
  if len(outs) == 1:
    return outs[0]
  return tuple(jnp.concatenate(o, axis=0) for o in zip(*outs))


def sharded_topk(mesh: Mesh, queries, corpus, n: int, k: int, **kw):
  """``topk_blocked`` over a row-sharded corpus: inner-product top-k.

  queries (Q, D) float host array; corpus (S R, D) float32 / bfloat16 from ``place_rows``.
  Keywords: those of ``sharded_topk_by`` (axis, predicate, query_attrs, corpus_attrs, ...).
  Returns scores (Q, min(k, n)) float32 and ids (Q, min(k, n)) int32 (-inf / -1 missing).
  """
  chex.assert_rank([queries, corpus], 2)
  chex.assert_equal_shape_suffix([queries, corpus], 1)
  return sharded_topk_by(mesh, inner_product_scores, queries, corpus, n, k, **kw)


def sharded_int8_topk(mesh: Mesh, query_codes, corpus_codes, n: int, k: int, **kw):
  """``int8_topk`` over a row-sharded corpus: exact integer inner products of int8 codes.

  query_codes (Q, D) int8; corpus_codes (S R, D) int8 from ``place_rows``.
  Returns scores (Q, min(k, n)) int32 (``MISSING_INT8`` missing) and ids (-1 missing).
  """
  chex.assert_rank([query_codes, corpus_codes], 2)
  chex.assert_equal_shape_suffix([query_codes, corpus_codes], 1)
  if np.asarray(query_codes).dtype != np.int8 or corpus_codes.dtype != jnp.int8:
    raise TypeError(f'int8 codes expected, got {np.asarray(query_codes).dtype} and '
                    f'{corpus_codes.dtype}')
  return sharded_topk_by(mesh, int8_scores, query_codes, corpus_codes, n, k,
                         prepare=_int8_prepare, output='int8', **kw)


def sharded_asymmetric_topk(mesh: Mesh, quantizer, params, queries, codes, n: int, k: int, **kw):
  """``asymmetric_topk`` over a row-sharded corpus: float queries against a quantizer's codes
  (int8 with its ranges, PQ, binary, ...); params are replicated.

  queries (Q, D) float; codes (S R, ...) from ``place_rows``.
  Returns scores (Q, min(k, n)) float32 (-inf missing) and ids (Q, min(k, n)) int32 (-1).
  """
  return sharded_topk_by(mesh, quantizer.score_prepared, queries, codes, n, k, aux=params,
                         prepare=quantizer.prepare_query, **kw)


def sharded_hamming_topk(mesh: Mesh, query_codes, corpus_codes, n: int, k: int, **kw):
  """``hamming_topk`` (popcount) over a row-sharded corpus of packed bits.

  query_codes (Q, W) uint8 or int8 ('binary'); corpus_codes (S R, W) of the same kind.
  Returns distances (Q, min(k, n)) int32 ascending (``MISSING_DISTANCE`` missing) and ids (-1).
  """
  chex.assert_rank([query_codes, corpus_codes], 2)
  chex.assert_equal_shape_suffix([query_codes, corpus_codes], 1)
  return sharded_topk_by(mesh, _popcount_scores, query_codes, corpus_codes, n, k,
                         prepare=_hamming_prepare, convert=_hamming_corpus, output='hamming', **kw)


__all__ = ['DEFAULT_QUERY_BLOCK', 'MISSING_DISTANCE', 'MISSING_INT8', 'SHARDED_PREDICATES',
           'allowed', 'place_rows', 'process_rows', 'rows_per_shard', 'sharded_asymmetric_topk',
           'sharded_hamming_topk', 'sharded_int8_topk', 'sharded_topk', 'sharded_topk_by']
