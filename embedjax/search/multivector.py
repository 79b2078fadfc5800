"""Late interaction (ColBERT): MaxSim scores and exact multi-vector top-k.

A text is a set of token vectors: (T, d) float with a (T,) mask of the tokens that count (padding
is 0; so are tokens removed by pruning). The MaxSim score of a query q and a document p
(Khattab & Zaharia, ColBERT, 2020) is

    score(q, p) = sum over counted query tokens i of  max over counted document tokens j of  <q_i, p_j>

With ColBERT's query augmentation the query's padding positions hold [MASK] tokens that count,
so the query mask is then all ones; the function does not assume it.

Exact search scores every document of a corpus stored as padded (N, Td, d) token vectors with
(N, Td) masks, through the blocked scan of ``exact.topk_blocked_by``. A step scores
``query_block x block`` (query, document) pairs and materialises their
``query_block x block x Tq x Td`` token similarities, so the blocks are sized from that (64 MiB of
float32 by default), not from the single-vector defaults. A document without counted tokens has
no MaxSim score (an empty maximum): the search refuses such a corpus and names the documents.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from embedjax.search.exact import topk_blocked_by

_SIMILARITY_BYTES = 64 << 20  # float32 token similarities of one search step at most
_QUERY_BLOCK = 64  # default queries per search step


def maxsim_scores(queries: jax.Array, query_mask: jax.Array, docs: jax.Array,
                  doc_mask: jax.Array) -> jax.Array:
  """MaxSim of every query against every document.

  Args:
    queries: (B, Tq, d) query token vectors.
    query_mask: (B, Tq), nonzero where a query token counts.
    docs: (N, Td, d) document token vectors.
    doc_mask: (N, Td), nonzero where a document token counts.

  Returns:
    (B, N) float32 scores. A document without counted tokens scores -inf; a query without
    counted tokens scores 0 against every document.
  """
  chex.assert_rank([queries, query_mask, docs, doc_mask], [3, 2, 3, 2])
  sims = jnp.einsum('bid,njd->bnij', queries, docs, precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)
  sims = jnp.where(doc_mask[None, :, None, :] != 0, sims, -jnp.inf)
  best = jnp.max(sims, axis=-1)  # (B, N, Tq)
  return jnp.sum(jnp.where(query_mask[:, None, :] != 0, best, 0.0), axis=-1)


def maxsim_paired(queries: jax.Array, query_mask: jax.Array, docs: jax.Array,
                  doc_mask: jax.Array) -> jax.Array:
  """MaxSim of query i against document i only: (B, Tq, d), (B, Tq), (B, Td, d), (B, Td) -> (B,)."""
  chex.assert_rank([queries, query_mask, docs, doc_mask], [3, 2, 3, 2])
  chex.assert_equal_shape_prefix([queries, query_mask, docs, doc_mask], 1)
  sims = jnp.einsum('bid,bjd->bij', queries, docs, precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)
  sims = jnp.where(doc_mask[:, None, :] != 0, sims, -jnp.inf)
  return jnp.sum(jnp.where(query_mask != 0, jnp.max(sims, axis=-1), 0.0), axis=-1)


def _maxsim_block(aux, query_rows, doc_rows) -> jax.Array:
  del aux
  return maxsim_scores(*query_rows, *doc_rows)


def check_corpus(doc_mask) -> None:
  """Raises a one-line ValueError naming the documents without counted tokens, if any."""
  counts = np.asarray(doc_mask).astype(bool).sum(axis=1)
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    raise ValueError(f'{empty.size} document(s) have no counted tokens (doc_mask all zero), '
                     f'e.g. index {empty[:5].tolist()}: MaxSim is undefined for them; drop them '
                     'or keep at least one token each')


def search_blocks(n_queries: int, n_docs: int, query_tokens: int, doc_tokens: int,
                  query_block: int | None = None, block_size: int | None = None
                  ) -> tuple[int, int]:
  """(query_block, block): queries and documents scored per step, so that the step's
  ``query_block x block x Tq x Td`` float32 similarities stay within 64 MiB."""
  qb = max(1, min(query_block or _QUERY_BLOCK, n_queries))
  per_pair = query_tokens * doc_tokens * 4
  block = block_size or max(1, _SIMILARITY_BYTES // (qb * per_pair))
  return qb, max(1, min(block, n_docs))


def topk_maxsim(queries, query_mask, docs, doc_mask, k: int, *, block_size: int | None = None,
                query_block: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Exact top-k documents by MaxSim for every query.

  Args:
    queries: (Q, Tq, d) query token vectors; query_mask (Q, Tq).
    docs: (N, Td, d) document token vectors (numpy is transferred once, whole); doc_mask (N, Td).
      Every document needs at least one counted token.
    k: results per query, clamped to N.
    block_size, query_block: documents / queries per step (None: ``search_blocks``).

  Returns:
    scores (Q, min(k, N)) float32 descending and indices (Q, min(k, N)) int32; equal scores are
    ordered by increasing index.
  """
  chex.assert_rank([queries, query_mask, docs, doc_mask], [3, 2, 3, 2])
  if queries.shape[2] != docs.shape[2]:
    raise ValueError(f'query tokens have dimension {queries.shape[2]} but document tokens '
                     f'{docs.shape[2]}')
  if query_mask.shape != queries.shape[:2] or doc_mask.shape != docs.shape[:2]:
    raise ValueError(f'masks {query_mask.shape}, {doc_mask.shape} do not match the token arrays '
                     f'{queries.shape[:2]}, {docs.shape[:2]}')
  check_corpus(doc_mask)
  qb, block = search_blocks(queries.shape[0], docs.shape[0], queries.shape[1], docs.shape[1],
                            query_block, block_size)
  return topk_blocked_by(_maxsim_block, (queries, query_mask), (docs, doc_mask), k,
                         block_size=block, query_block=qb, strategy='merge')


def _queries_as_given(aux, queries):
  del aux
  return queries


def sharded_maxsim_topk(mesh, queries, query_mask, docs, doc_mask, n: int, k: int, *,
                        block_size: int | None = None, query_block: int | None = None,
                        axis: str = 'data', **filters) -> tuple[jax.Array, jax.Array]:
  """``topk_maxsim`` over a corpus whose rows are sharded over ``mesh`` (``axis``): each shard
  scans its documents, the shards' top-k are merged (``sharded.sharded_topk_by``); ids and scores
  equal single-device search, ties by lower global id.

  Args:
    queries, query_mask: host arrays (Q, Tq, d), (Q, Tq), replicated onto the mesh.
    docs, doc_mask: (S R, Td, d), (S R, Td) from ``sharded.place_rows`` of the n real documents
      (each needing a counted token: ``check_corpus`` them before placing).
    filters: ``predicate``, ``query_attrs``, ``corpus_attrs`` as ``sharded_topk_by`` takes them.
  """
  from embedjax.search.sharded import sharded_topk_by
  chex.assert_rank([queries, query_mask, docs, doc_mask], [3, 2, 3, 2])
  rows = docs.shape[0] // mesh.shape[axis]
  qb, block = search_blocks(queries.shape[0], rows, queries.shape[1], docs.shape[1], query_block,
                            block_size)
  return sharded_topk_by(mesh, _maxsim_block, (np.asarray(queries), np.asarray(query_mask)),
                         (docs, doc_mask), n, k, prepare=_queries_as_given, block_size=block,
                         query_block=qb, strategy='merge', axis=axis, **filters)
