"""Exact maximum-inner-product top-k, blocked so that (Q, N) is never materialised.

The corpus is scanned in blocks of ``block_size`` rows inside one jitted loop; each block's top-k is
merged with a running top-k by ``lax.top_k`` over their concatenation. Queries go through the same
compiled step ``query_block`` rows at a time, so one call compiles at most two programs (full query
blocks and the last, shorter one) per (corpus shape, block sizes, k).

Memory (device): the corpus itself (N x D, transferred once, whole, when given as numpy) plus about
``query_block x block_size`` float32 scores and the (Q, k) outputs. Nothing is padded: instead of
copying the corpus to a multiple of ``block_size``, the last block is read from ``N - block_size``
and the rows it shares with the previous block get score -inf, which is what -inf pad rows would do.

Ties are broken towards the lower corpus index (``lax.top_k`` is stable and the running top-k, which
only holds earlier blocks, comes first in every merge). Scores are assumed finite: with NaN or -inf
scores the order among those rows is unspecified.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=('k', 'block'))
def _topk_one_query_block(queries: jax.Array, corpus: jax.Array, k: int, block: int):
  """Top-k of one query block against the whole corpus.

  Args:
    queries: (B, D).
    corpus: (N, D), N >= block and N >= k.
    k: outputs per query.
    block: corpus rows scored at once.

  Returns:
    scores (B, k) float32 descending, indices (B, k) int32.
  """
  n = corpus.shape[0]
  num_blocks = -(-n // block)
  kb = min(k, block)
  b_rows = queries.shape[0]

  def body(b, carry):
    run_scores, run_indices = carry
    # The last block is shifted back to stay inside the corpus; rows it re-reads were already seen.
    start = jnp.minimum(b * block, n - block)
    rows = jax.lax.dynamic_slice_in_dim(corpus, start, block, axis=0)
    scores = jnp.dot(queries, rows.T, precision=jax.lax.Precision.HIGHEST,
                     preferred_element_type=jnp.float32)
    global_idx = start + jnp.arange(block, dtype=jnp.int32)
    scores = jnp.where(global_idx[None, :] >= b * block, scores, -jnp.inf)
    blk_scores, blk_pos = jax.lax.top_k(scores, kb)
    blk_indices = blk_pos + start
    # Running entries come first: they hold lower indices, so the stable top_k keeps the lower
    # index on ties.
    cat_scores = jnp.concatenate([run_scores, blk_scores], axis=1)
    cat_indices = jnp.concatenate([run_indices, blk_indices], axis=1)
    new_scores, pos = jax.lax.top_k(cat_scores, k)
    new_indices = jnp.take_along_axis(cat_indices, pos, axis=1)
    return new_scores, new_indices

  init = (jnp.full((b_rows, k), -jnp.inf, jnp.float32), jnp.full((b_rows, k), -1, jnp.int32))
  return jax.lax.fori_loop(0, num_blocks, body, init)


def topk_blocked(queries, corpus, k: int, *, block_size: int = 65536,
                 query_block: int = 1024) -> tuple[jax.Array, jax.Array]:
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
  q_rows, dim = queries.shape
  n, corpus_dim = corpus.shape
  if corpus_dim != dim:
    raise ValueError(f'queries have dimension {dim} but the corpus has {corpus_dim}')
  if n == 0:
    raise ValueError('the corpus is empty')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  if block_size < 1 or query_block < 1:
    raise ValueError(f'block sizes must be >= 1, got block_size={block_size}, '
                     f'query_block={query_block}')
  k = min(k, n)
  block = min(block_size, n)
  corpus = jnp.asarray(corpus)
  if q_rows == 0:
    return jnp.zeros((0, k), jnp.float32), jnp.zeros((0, k), jnp.int32)
  qb = min(query_block, q_rows)
  all_scores, all_indices = [], []
  for start in range(0, q_rows, qb):
    q = jnp.asarray(queries[start:start + qb])
    s, i = _topk_one_query_block(q, corpus, k=k, block=block)
    all_scores.append(s)
    all_indices.append(i)
  if len(all_scores) == 1:
    return all_scores[0], all_indices[0]
  return jnp.concatenate(all_scores, axis=0), jnp.concatenate(all_indices, axis=0)

