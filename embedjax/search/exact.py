"""Exact maximum-inner-product top-k, blocked so that (Q, N) is never materialised.

The corpus is scanned in blocks of ``block_size`` rows inside one jitted loop; each block's top-k is
merged with a running top-k by ``lax.top_k`` over their concatenation. Queries go through the same
compiled step ``query_block`` rows at a time, so one call compiles at most two programs (full query
blocks and the last, shorter one) per (corpus shape, block sizes, k).

Memory (device): the corpus itself (N x D, transferred once, whole, when given as numpy) plus about
``query_block x block_size`` float32 scores and the (Q, k) outputs. Nothing is padded: the loop
covers the whole 64-row chunks of the corpus (N - N % 64 rows), its last block read from
``N - N % 64 - block`` with the rows it shares with the previous block scored -inf (what -inf pad
rows would do); the remaining N % 64 rows are scored in one final step.

Ties are broken towards the lower corpus index (``lax.top_k`` is stable and the running top-k, which
only holds earlier blocks, comes first in every merge). Scores are assumed finite: with NaN or -inf
scores the order among those rows is unspecified.

The same loop serves every other exhaustive search (``topk_blocked_by``): the score is any static
function ``score_fn(aux, query_rows, corpus_rows) -> (B, block) float32`` of pytrees whose leaves
share the leading query / corpus dimension (int8 codes, packed bits, PQ codes with per-query
distance tables, attributes for filtering). Within a block, when k is small the block's top-k is
found among the best 64-row chunks (chunk maxima first): the same result, ties included, at a
fraction of a full ``top_k`` over the block.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

ScoreFn = Callable[[Any, Any, Any], jax.Array]
_CHUNK = 64
# Default tile: 512 queries x 16,384 corpus rows (32 MiB of float32 scores). On a 2-core CPU at
# 5k and 100k x 384 it was within noise of the fastest of 128 ... 1,000 x 1,024 ... 65,536
# (benchmarks/search_cpu.py); larger corpus blocks were slower, smaller query blocks too.
BLOCK_SIZE, QUERY_BLOCK = 16384, 512


def inner_product_scores(aux, queries: jax.Array, rows: jax.Array) -> jax.Array:
  """(B, D) x (block, D) -> (B, block) float32 inner products (the default score)."""
  del aux
  return jnp.dot(queries, rows.T, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)


def _block_topk(scores: jax.Array, kb: int) -> tuple[jax.Array, jax.Array]:
  """``lax.top_k(scores, kb)`` (B, block), computed via chunk maxima when that is cheaper.

  The chunks holding the true top-kb are among the kb chunks with the largest maxima (stable
  top_k: on equal maxima the lower chunk wins, and so would its element); gathering those chunks
  in increasing chunk order keeps the candidates in index order, so the final stable top_k breaks
  ties towards the lower index exactly as a full top_k would. When ``block`` is not a whole
  number of chunks, the last ``block % 64`` columns join the candidates as they are, after the
  gathered chunks (they hold the highest indices); padding the scores to whole chunks instead
  costs a copy that made the whole step 4x slower on XLA:CPU.
  """
  b, block = scores.shape
  full = block // _CHUNK * _CHUNK
  if kb * _CHUNK * 4 > full:
    return jax.lax.top_k(scores, kb)
  head = scores[:, :full] if full != block else scores
  chunks = head.reshape(b, full // _CHUNK, _CHUNK)
  _, best = jax.lax.top_k(jnp.max(chunks, axis=2), kb)
  best = jnp.sort(best, axis=1)
  cand = jnp.take_along_axis(chunks, best[:, :, None], axis=1).reshape(b, kb * _CHUNK)
  if full != block:
    cand = jnp.concatenate([cand, scores[:, full:]], axis=1)
  vals, pos = jax.lax.top_k(cand, kb)
  in_chunks = pos < kb * _CHUNK
  chunk = jnp.take_along_axis(best, jnp.minimum(pos // _CHUNK, kb - 1), axis=1)
  rows = jnp.where(in_chunks, chunk * _CHUNK + pos % _CHUNK, full + pos - kb * _CHUNK)
  return vals, rows


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
  """Corpus rows scanned in blocks: the whole 64-row chunks of n (the rest, < 64 rows, is scored
  in one final step)."""
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


@functools.partial(jax.jit, static_argnames=('score_fn', 'k', 'block', 'n_main'))
def _topk_scan(aux, queries, corpus, score_fn: ScoreFn, k: int, block: int, n_main: int):
  """Top-k of one query block against the whole corpus.

  Args:
    aux: pytree passed to every ``score_fn`` call unchanged (e.g. quantizer params).
    queries: pytree, leaves (B, ...).
    corpus: pytree, leaves (N, ...), N >= k.
    score_fn: (aux, query leaves (B, ...), corpus leaves (rows, ...)) -> (B, rows) float32.
    k: outputs per query.
    block: corpus rows scored at once, <= n_main (unused when n_main = 0).
    n_main: rows [0, n_main) are scanned in blocks; the remaining N - n_main rows (fewer than 64
      when the caller splits as ``topk_blocked_by`` does) are scored in one last step. Keeping
      blocks whole 64-row chunks lets ``_block_topk`` skip the copy of a ragged tail, which cost
      about a sixth of the search on a 5,183-row corpus.

  Returns:
    scores (B, k) float32 descending, indices (B, k) int32.
  """
  n = _leading(corpus)
  b_rows = _leading(queries)
  carry = (jnp.full((b_rows, k), -jnp.inf, jnp.float32), jnp.full((b_rows, k), -1, jnp.int32))

  if n_main:
    num_blocks = -(-n_main // block)
    kb = min(k, block)

    def body(b, carry):
      # The last block is shifted back to stay inside [0, n_main); rows it re-reads were already
      # seen and are masked.
      start = jnp.minimum(b * block, n_main - block)
      rows = jax.tree.map(lambda c: jax.lax.dynamic_slice_in_dim(c, start, block, axis=0), corpus)
      scores = score_fn(aux, queries, rows).astype(jnp.float32)
      global_idx = start + jnp.arange(block, dtype=jnp.int32)
      scores = jnp.where(global_idx[None, :] >= b * block, scores, -jnp.inf)
      blk_scores, blk_pos = _block_topk(scores, kb)
      return _merge(*carry, blk_scores, blk_pos + start, k)

    carry = jax.lax.fori_loop(0, num_blocks, body, carry)

  if n_main < n:
    rows = jax.tree.map(lambda c: c[n_main:], corpus)
    scores = score_fn(aux, queries, rows).astype(jnp.float32)
    tail_scores, tail_pos = jax.lax.top_k(scores, min(k, n - n_main))
    carry = _merge(*carry, tail_scores, tail_pos + n_main, k)
  return carry


def topk_blocked_by(score_fn: ScoreFn, queries, corpus, k: int, *, aux=None,
                    block_size: int = BLOCK_SIZE, query_block: int = QUERY_BLOCK
                    ) -> tuple[jax.Array, jax.Array]:
  """Exact top-k by any blocked score: the loop of ``topk_blocked`` with a pluggable score.

  Args:
    score_fn: a module-level (hashable, static) function
      ``(aux, query_rows, corpus_rows) -> (B, block)`` scores, larger = better.
    queries: pytree of arrays whose leaves share the leading dimension Q.
    corpus: pytree of arrays (numpy or jax) whose leaves share the leading dimension N.
    k: results per query; clamped to N.
    aux: pytree handed to every score_fn call (not split into blocks).
    block_size: corpus rows scored at most at once (clamped to N; the blocks are made as even
      as possible, see ``balanced_block``).
    query_block: queries scored at once (clamped to Q).

  Returns:
    scores (Q, min(k, N)) float32 descending and indices (Q, min(k, N)) int32; ties by index.
  """
  n = _leading(corpus)
  q_rows = _leading(queries)
  if n == 0:
    raise ValueError('the corpus is empty')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if block_size < 1 or query_block < 1:
    raise ValueError(f'block sizes must be >= 1, got block_size={block_size}, '
                     f'query_block={query_block}')
  k = min(k, n)
  n_main = n_main_rows(n)
  block = balanced_block(n_main, block_size) if n_main else 0
  corpus = jax.tree.map(jnp.asarray, corpus)
  if q_rows == 0:
    return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
  qb = min(query_block, q_rows)
  all_scores, all_indices = [], []
  for start in range(0, q_rows, qb):
    q = jax.tree.map(lambda x: jnp.asarray(x[start:start + qb]), queries)
    s, i = _topk_scan(aux, q, corpus, score_fn=score_fn, k=k, block=block, n_main=n_main)
    all_scores.append(s)
    all_indices.append(i)
  if len(all_scores) == 1:
    return all_scores[0], all_indices[0]
  return jnp.concatenate(all_scores, axis=0), jnp.concatenate(all_indices, axis=0)


def topk_blocked(queries, corpus, k: int, *, block_size: int = BLOCK_SIZE,
                 query_block: int = QUERY_BLOCK) -> tuple[jax.Array, jax.Array]:
  """Exact top-k corpus rows by inner product for every query.

  Args:
    queries: (Q, D) numpy or jax array.
    corpus: (N, D) numpy or jax array (numpy is transferred to the device once, whole).
    k: results per query; clamped to N when larger (the outputs then have N columns).
    block_size: corpus rows scored at once (clamped to N).
    query_block: queries scored at once (clamped to Q).

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
                         query_block=query_block)
