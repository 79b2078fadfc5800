"""Exact maximum-inner-product top-k, blocked so that (Q, N) is never materialised.

The default path, the same on every backend, is one blocked scan under jit: for each corpus block
of ``block`` rows, the (B, block) scores go through ``lax.top_k`` and are merged with the running
(B, k) top-k by one more ``lax.top_k`` over their concatenation. The last block is shifted back
to end at row N; the rows it shares with the previous block score -inf there. Queries go through
the same compiled scan ``query_block`` rows at a time, so one call compiles at most two programs
(full query blocks and the last, shorter one) per (corpus shape, block sizes, k).

Block sizes follow from memory, not from timings (``plan``). Device memory: the corpus (N rows,
transferred once, whole, when given as numpy), the (Q, k) outputs, and per step
``query_block x block`` float32 scores (at most 64 MiB by default) plus the block's corpus rows
as the score function widens them (e.g. PQ codes decoded to ``block x D`` float32), so
``block`` is also capped at 16,384 rows.

CPU specialisation ('maxima'). ``plan`` picks it only when ``jax.default_backend() == 'cpu'``,
for k <= 32 on corpora beyond one default block. XLA:CPU runs every ``lax.top_k`` on one thread
at a high cost per row, so instead of a top-k per block the loop keeps only the maximum score of
every 16-row sub-chunk for every query (a reduction fused after the score), and selects once at
the end: the k best 64-row chunks, the k best sub-chunks within them, then the exact top-k of
those 16k rows, re-scored. Its reason and measurements: BENCHMARKS.md ("Exhaustive search on
CPU"). It scans the whole 64-row chunks of the corpus (N - N % 64 rows) and scores the remaining
N % 64 rows in one final step; its sub-chunk maxima add ``query_block x N / 16`` float32 (the
default query block shrinks to keep them within 1 GiB).

Both strategies return the same top-k. Ties are broken towards the lower corpus index
(``lax.top_k`` is stable; the running top-k, which only holds earlier rows, comes first in every
merge; selections keep candidates in index order). Scores are assumed finite: with NaN or -inf
scores the order among those rows is unspecified.

The same scan serves every other exhaustive search (``topk_blocked_by``): the score is any static
function ``score_fn(aux, query_rows, corpus_rows) -> (B, rows) float32`` of pytrees whose leaves
share the leading query / corpus dimension (int8 codes, packed bits, PQ codes with per-query
distance tables, attributes for filtering).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

ScoreFn = Callable[[Any, Any, Any], jax.Array]
QUERY_BLOCK = 1024  # default queries per step
_SCORE_BYTES = 64 << 20  # float32 scores of one step at most: query_block x block x 4 bytes
_MAX_BLOCK = 16384  # corpus rows per step at most (rows a score function may widen per step)
_CHUNK = 64
# 'maxima' (the CPU specialisation; its settings are CPU tuning, see BENCHMARKS.md):
MAXIMA_BLOCKS = (4096, 1024)  # default (corpus rows, queries) per step
_SUB = 16  # rows per sub-chunk whose maximum is kept for every query
_MAXIMA_MAX_K = 32  # beyond it the re-scored candidates (16k rows per query) cost too much
_MAXIMA_MAX_BYTES = 1 << 30  # sub-chunk maxima of one query block: query_block x N / 16 x 4
_RESCORE_BATCH = 16  # queries whose candidate rows are gathered at once (16 x 16k rows)


def inner_product_scores(aux, queries: jax.Array, rows: jax.Array) -> jax.Array:
  """(B, D) x (block, D) -> (B, block) float32 inner products (the default score)."""
  del aux
  return jnp.dot(queries, rows.T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def balanced_block(n: int, block_size: int) -> int:
  """Corpus rows per block: at most ``block_size`` (and ``n``), as even as the blocks allow.

  ``ceil(n / block_size)`` blocks of ``block_size`` rows would re-score up to a block of rows in
  the shifted last block (14.7% of the work for n = 100,000 and 16,384-row blocks); the same
  number of blocks of ``ceil(n / num_blocks)`` rows, rounded up to whole 64-row chunks where that
  stays within both bounds, re-scores fewer than 64 rows per block.
  """
  block = min(block_size, n)
  num_blocks = -(-n // block)
  even = -(-n // num_blocks)
  rounded = -(-even // _CHUNK) * _CHUNK
  return rounded if rounded <= block else even


def n_main_rows(n: int) -> int:
  """Corpus rows the 'maxima' strategy scans in blocks: the whole 64-row chunks of n (the rest,
  < 64 rows, is scored in one final step)."""
  return n // _CHUNK * _CHUNK


def _leading(tree) -> int:
  sizes = {x.shape[0] for x in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f'pytree leaves disagree on their leading dimension: {sorted(sizes)}')
  return sizes.pop()


def _merge(run_scores, run_indices, new_scores, new_indices, k: int):
  """Top-k of the running (B, k) and new (B, k') entries; the running ones come first in the
  concatenation (they hold lower corpus indices), so the stable top_k keeps the lower index on
  ties."""
  cat_scores = jnp.concatenate([run_scores, new_scores], axis=1)
  cat_indices = jnp.concatenate([run_indices, new_indices], axis=1)
  scores, pos = jax.lax.top_k(cat_scores, k)
  return scores, jnp.take_along_axis(cat_indices, pos, axis=1)


def _empty(b_rows: int, k: int):
  """An empty running top-k: (B, k) -inf scores and -1 indices."""
  return jnp.full((b_rows, k), -jnp.inf, jnp.float32), jnp.full((b_rows, k), -1, jnp.int32)


def _slice_rows(corpus, start, size: int):
  return jax.tree.map(lambda c: jax.lax.dynamic_slice_in_dim(c, start, size, axis=0), corpus)


def _main_by_merge(aux, queries, corpus, score_fn: ScoreFn, k: int, block: int, n_main: int):
  """Top-k over rows [0, n_main): each block's ``lax.top_k`` merged into a running top-k.

  Returns (B, k) scores and indices. When k <= block the first block's top-k starts the running
  top-k (no merge with an empty one), so a single block costs no merge at all.
  """
  kb = min(k, block)

  def block_topk(b):
    # The last block is shifted back to stay inside [0, n_main); rows it re-reads were already
    # seen and are masked.
    start = jnp.minimum(b * block, n_main - block)
    scores = score_fn(aux, queries, _slice_rows(corpus, start, block)).astype(jnp.float32)
    global_idx = start + jnp.arange(block, dtype=jnp.int32)
    scores = jnp.where(global_idx[None, :] >= b * block, scores, -jnp.inf)
    blk_scores, blk_pos = jax.lax.top_k(scores, kb)
    return blk_scores, blk_pos + start

  def body(b, carry):
    return _merge(*carry, *block_topk(b), k)

  num_blocks = -(-n_main // block)
  if kb < k:  # blocks smaller than k: the running top-k is wider than any block's
    return jax.lax.fori_loop(0, num_blocks, body, _empty(_leading(queries), k))
  return jax.lax.fori_loop(1, num_blocks, body, block_topk(0))


def _main_by_maxima(aux, queries, corpus, score_fn: ScoreFn, k: int, block: int, n_main: int):
  """Top-k over rows [0, n_main) from the maxima of every 16-row sub-chunk (CPU specialisation).

  The loop only keeps, per query, the maximum score of each 16-row sub-chunk: (B, n_main / 16),
  a reduction XLA fuses after the score. Selection happens once, after the loop: the k 64-row
  chunks with the largest maxima, then the k best sub-chunks among their 4k, then the exact
  top-k of those 16k rows, re-scored. Both selections keep ties on the lower index (stable
  ``top_k`` over positions in index order), so they cannot drop a row of the exact top-k: a
  chunk left out is beaten by k chosen chunks, each holding a row that beats every row of it.
  The re-score is the same ``score_fn`` on the gathered rows (a (1, 16k) product per query instead
  of the block's GEMM), so scores may differ from the loop's in the last bit of float32.
  """
  b_rows = _leading(queries)
  subs_per_chunk = _CHUNK // _SUB

  def body(b, maxima):
    # The last block is shifted back to stay inside [0, n_main): it rewrites the maxima of the
    # rows it shares with the previous block, so nothing needs masking.
    start = jnp.minimum(b * block, n_main - block)
    scores = score_fn(aux, queries, _slice_rows(corpus, start, block)).astype(jnp.float32)
    sub_max = jnp.max(scores.reshape(b_rows, block // _SUB, _SUB), axis=2)
    return jax.lax.dynamic_update_slice_in_dim(maxima, sub_max, start // _SUB, axis=1)

  maxima = jnp.full((b_rows, n_main // _SUB), -jnp.inf, jnp.float32)
  maxima = jax.lax.fori_loop(0, -(-n_main // block), body, maxima)

  chunks = maxima.reshape(b_rows, n_main // _CHUNK, subs_per_chunk)
  k_chunks = min(k, n_main // _CHUNK)
  _, best_chunks = jax.lax.top_k(jnp.max(chunks, axis=2), k_chunks)
  best_chunks = jnp.sort(best_chunks, axis=1)
  sub_maxima = jnp.take_along_axis(chunks, best_chunks[:, :, None], axis=1)
  k_subs = min(k, k_chunks * subs_per_chunk)
  _, pos = jax.lax.top_k(sub_maxima.reshape(b_rows, -1), k_subs)
  pos = jnp.sort(pos, axis=1)
  subs = (jnp.take_along_axis(best_chunks, pos // subs_per_chunk, axis=1) * subs_per_chunk
          + pos % subs_per_chunk)
  rows = (subs[:, :, None] * _SUB + jnp.arange(_SUB, dtype=jnp.int32)).reshape(b_rows, -1)

  def rescore(args):
    query, ids = args
    picked = jax.tree.map(lambda c: c[ids], corpus)
    one = jax.tree.map(lambda x: x[None], query)
    return score_fn(aux, one, picked)[0].astype(jnp.float32)

  scores = jax.lax.map(rescore, (queries, rows), batch_size=_RESCORE_BATCH)
  vals, pos = jax.lax.top_k(scores, min(k, k_subs * _SUB))
  return vals, jnp.take_along_axis(rows, pos, axis=1)


@functools.partial(jax.jit, static_argnames=('score_fn', 'k', 'block', 'n_main', 'strategy'))
def _topk_scan(aux, queries, corpus, score_fn: ScoreFn, k: int, block: int, n_main: int,
               strategy: str):
  """Top-k of one query block against the whole corpus.

  Args:
    aux: pytree passed to every ``score_fn`` call unchanged (e.g. quantizer params).
    queries: pytree, leaves (B, ...).
    corpus: pytree, leaves (N, ...), N >= k.
    score_fn: (aux, query leaves (B, ...), corpus leaves (rows, ...)) -> (B, rows) float32.
    k: outputs per query.
    block: corpus rows scored at once, <= n_main (unused when n_main = 0); a multiple of 16 for
      'maxima'.
    n_main: rows [0, n_main) are scanned in blocks ('merge': N; 'maxima': the whole 64-row
      chunks); the remaining N - n_main rows are scored in one last step.
    strategy: 'merge' (``_main_by_merge``) or 'maxima' (``_main_by_maxima``).

  Returns:
    scores (B, k) float32 descending, indices (B, k) int32.
  """
  n = _leading(corpus)
  b_rows = _leading(queries)
  carry = _empty(b_rows, k)
  if n_main:
    main = _main_by_maxima if strategy == 'maxima' else _main_by_merge
    vals, idx = main(aux, queries, corpus, score_fn, k, block, n_main)
    carry = _merge(*carry, vals, idx, k) if vals.shape[1] < k else (vals, idx)  # k > n_main
  if n_main < n:
    scores = score_fn(aux, queries, jax.tree.map(lambda c: c[n_main:], corpus))
    tail_idx = jnp.broadcast_to(jnp.arange(n_main, n, dtype=jnp.int32), scores.shape)
    carry = _merge(*carry, scores.astype(jnp.float32), tail_idx, k)
  return carry


def _maxima_fits(n: int, k: int, query_block: int | None) -> bool:
  """Whether ``plan`` picks 'maxima' by default: on CPU only, for k <= 32, on corpora beyond one
  default block, with the sub-chunk maxima of a query block within 1 GiB."""
  n_main = n_main_rows(n)
  return (jax.default_backend() == 'cpu' and k <= _MAXIMA_MAX_K and n_main > _MAX_BLOCK
          and (query_block or 1) * (n_main // _SUB * 4) <= _MAXIMA_MAX_BYTES)


def plan(n: int, k: int, block_size: int | None = None, query_block: int | None = None,
         strategy: str | None = None) -> tuple[str, int, int, int]:
  """How ``topk_blocked_by`` searches n rows for k results: (strategy, block, query_block, n_main).

  strategy None picks 'merge' (the portable scan) on every backend but the CPU, where it picks
  'maxima' under the conditions of the module docstring. 'merge': ``None`` sizes are
  ``QUERY_BLOCK`` queries and as many corpus rows as keep the step's scores within 64 MiB (at
  most 16,384); the scan covers all n rows. 'maxima': ``MAXIMA_BLOCKS``, its default query block
  shrunk so that the sub-chunk maxima fit 1 GiB, blocks of whole 16-row sub-chunks over the
  whole 64-row chunks (corpora of fewer than 64 rows take 'merge'). Blocks are balanced
  (``balanced_block``).
  """
  if strategy not in (None, 'maxima', 'merge'):
    raise ValueError(f"strategy must be None, 'maxima' or 'merge', got {strategy!r}")
  if strategy is None:
    strategy = 'maxima' if _maxima_fits(n, k, query_block) else 'merge'
  n_main = n_main_rows(n)
  if strategy == 'maxima' and n_main:
    qb = query_block or max(1, min(MAXIMA_BLOCKS[1], _MAXIMA_MAX_BYTES // (n_main // _SUB * 4)))
    block = balanced_block(n_main, block_size or MAXIMA_BLOCKS[0])
    return 'maxima', max(_SUB, block // _SUB * _SUB), qb, n_main
  qb = query_block or QUERY_BLOCK
  block = block_size or max(1, min(_MAX_BLOCK, _SCORE_BYTES // (4 * qb)))
  return 'merge', balanced_block(n, block), qb, n


def topk_blocked_by(score_fn: ScoreFn, queries, corpus, k: int, *, aux=None,
                    block_size: int | None = None, query_block: int | None = None,
                    strategy: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Exact top-k by any blocked score: the scan of ``topk_blocked`` with a pluggable score.

  Args:
    score_fn: a module-level (hashable, static) function
      ``(aux, query_rows, corpus_rows) -> (B, rows)`` scores, larger = better.
    queries: pytree of arrays whose leaves share the leading dimension Q.
    corpus: pytree of arrays (numpy or jax) whose leaves share the leading dimension N.
    k: results per query; clamped to N.
    aux: pytree handed to every score_fn call (not split into blocks).
    block_size: corpus rows scored at most at once (None: ``plan``'s default; clamped to N and
      balanced, see ``balanced_block``).
    query_block: queries scored at once (None: ``plan``'s default; clamped to Q).
    strategy: 'merge', 'maxima' or None (``plan`` picks); the results are the same.

  Returns:
    scores (Q, min(k, N)) float32 descending and indices (Q, min(k, N)) int32; ties by index.
  """
  n = _leading(corpus)
  q_rows = _leading(queries)
  if n == 0:
    raise ValueError('the corpus is empty')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if (block_size is not None and block_size < 1) or (query_block is not None and query_block < 1):
    raise ValueError(f'block sizes must be >= 1, got block_size={block_size}, '
                     f'query_block={query_block}')
  k = min(k, n)
  strategy, block, qb, n_main = plan(n, k, block_size, query_block, strategy)
  corpus = jax.tree.map(jnp.asarray, corpus)
  if q_rows == 0:
    return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
  results = [
      _topk_scan(aux, jax.tree.map(lambda x: jnp.asarray(x[start:start + qb]), queries), corpus,
                 score_fn=score_fn, k=k, block=block, n_main=n_main, strategy=strategy)
      for start in range(0, q_rows, qb)]
  if len(results) == 1:
    return results[0]
  return (jnp.concatenate([r[0] for r in results], axis=0),
          jnp.concatenate([r[1] for r in results], axis=0))


def topk_blocked(queries, corpus, k: int, *, block_size: int | None = None,
                 query_block: int | None = None, strategy: str | None = None
                 ) -> tuple[jax.Array, jax.Array]:
  """Exact top-k corpus rows by inner product for every query.

  Args:
    queries: (Q, D) numpy or jax array.
    corpus: (N, D) numpy or jax array (numpy is transferred to the device once, whole).
    k: results per query; clamped to N when larger (the outputs then have N columns).
    block_size: corpus rows scored at once (None: ``plan``'s default).
    query_block: queries scored at once (None: ``plan``'s default; clamped to Q).
    strategy: 'merge', 'maxima' or None (see ``plan``).

  Returns:
    scores (Q, min(k, N)) float32, descending per row, and indices (Q, min(k, N)) int32 into the
    corpus; equal scores are ordered by increasing index.
  """
  chex.assert_rank([queries, corpus], 2)
  dim = queries.shape[1]
  n, corpus_dim = corpus.shape
  if corpus_dim != dim:
    raise ValueError(f'queries have dimension {dim} but the corpus has {corpus_dim}')
  return topk_blocked_by(inner_product_scores, queries, corpus, k, block_size=block_size,
                         query_block=query_block, strategy=strategy)
