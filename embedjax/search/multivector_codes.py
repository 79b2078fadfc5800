"""Exact MaxSim over token vectors stored as codes of any ``embedjax.quant`` scheme: the
compressed multi-vector index without centroids (int8, int4, binary, float8, PQ ...).

    q = quant.get('int8')                       # or 'binary', 'int4', 'pq16', ...
    params = q.fit(tokens)                      # (M, d) counted document tokens
    codes = encode_tokens(q, params, docs)      # (N, Td, d) -> (N, Td, ...) codes
    scores, ids = topk_maxsim_codes(q, params, queries, query_mask, codes, doc_mask, k)

Queries stay float (asymmetric search, as for single vectors in ``search.quantized``): a query
token scores a stored token by the quantizer's own asymmetric score, ``q.score`` (for the scalar
schemes and binary this is the inner product with the decoded token: q . decode(code), with
binary's decode +-1), and MaxSim takes the best stored token of a document for each counted query
token and sums over them. So the result equals exact MaxSim (``multivector.topk_maxsim``) over the
tokens as ``q.decode`` reads them back, and ties go to the lower document index.

Why beside PLAID (``search.plaid``): residual codes need a k-means over the corpus's tokens and a
two-stage search to pay off; a scalar or binary code per token needs neither, costs more bytes
(int8: d bytes a token against PLAID's 2 + d * bits / 8) and is searched exhaustively. The
compressed rows of results/bench_multivector_cpu.json compare the three on the SciFact corpus.

Memory per search step: the ``query_block x block x Tq x Td`` float32 similarities (64 MiB at
most, ``multivector.search_blocks``) plus the block's tokens as the score widens them.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from embedjax.quant.base import Quantizer
from embedjax.search.exact import topk_blocked_by
from embedjax.search.multivector import check_corpus, search_blocks


def encode_tokens(quantizer: Quantizer, params, docs) -> jax.Array:
  """(N, Td, d) float token vectors -> (N, Td, ...) codes (padding rows are encoded too; the
  mask decides what counts)."""
  docs = jnp.asarray(docs, jnp.float32)
  chex.assert_rank(docs, 3)
  n, td, d = docs.shape
  codes = quantizer.encode(params, docs.reshape(n * td, d))
  return codes.reshape(n, td, *codes.shape[1:])


def decode_tokens(quantizer: Quantizer, params, codes) -> jax.Array:
  """(N, Td, ...) codes -> (N, Td, d) float32 tokens as the index reads them back."""
  codes = jnp.asarray(codes)
  n, td = codes.shape[:2]
  flat = quantizer.decode(params, codes.reshape(n * td, *codes.shape[2:]))
  return flat.reshape(n, td, -1)


def bytes_per_doc(quantizer: Quantizer, params, doc_mask) -> float:
  """Mean stored bytes of a document: its counted tokens times the code's bytes."""
  return float(np.asarray(doc_mask).astype(bool).sum(axis=1).mean()
               * quantizer.bytes_per_vector(params))


@functools.lru_cache(maxsize=None)
def _block_score(quantizer: Quantizer):
  """The blocked scan's static score function for one quantizer (cached, so that repeated
  searches with the same quantizer reuse the compiled scan)."""

  def score(params, query_rows, doc_rows) -> jax.Array:
    queries, query_mask = query_rows  # (B, Tq, d), (B, Tq)
    codes, doc_mask = doc_rows  # (block, Td, ...), (block, Td)
    b, tq, d = queries.shape
    n, td = codes.shape[:2]
    prepared = quantizer.prepare_query(params, queries.reshape(b * tq, d))
    sims = quantizer.score_prepared(params, prepared, codes.reshape(n * td, *codes.shape[2:]))
    sims = sims.reshape(b, tq, n, td)
    sims = jnp.where(doc_mask[None, None] != 0, sims, -jnp.inf)
    best = jnp.max(sims, axis=-1)  # (B, Tq, block)
    return jnp.sum(jnp.where(query_mask[:, :, None] != 0, best, 0.0), axis=1)

  return score


def topk_maxsim_codes(quantizer: Quantizer, params, queries, query_mask, codes, doc_mask,
                      k: int, *, block_size: int | None = None, query_block: int | None = None
                      ) -> tuple[jax.Array, jax.Array]:
  """Exact top-k documents by MaxSim of float query tokens against coded document tokens.

  Args:
    quantizer, params: the scheme (``quant.get(name)``) and its fitted params.
    queries: (Q, Tq, d) float query token vectors; query_mask (Q, Tq).
    codes: (N, Td, ...) from ``encode_tokens``; doc_mask (N, Td), every document needing a
      counted token.
    k: results per query, clamped to N.
    block_size, query_block: documents / queries per step (None: ``search_blocks``).

  Returns:
    scores (Q, min(k, N)) float32 descending and indices (Q, min(k, N)) int32; ties by index.
  """
  queries = np.asarray(queries, np.float32)
  chex.assert_rank([queries, query_mask, doc_mask], [3, 2, 2])
  if query_mask.shape != queries.shape[:2] or doc_mask.shape != codes.shape[:2]:
    raise ValueError(f'masks {query_mask.shape}, {doc_mask.shape} do not match the queries '
                     f'{queries.shape[:2]} and codes {codes.shape[:2]}')
  dim = quantizer.decode(params, jnp.asarray(codes[:1, 0])).shape[-1]  # one token, not the corpus
  if queries.shape[2] != dim:
    raise ValueError(f'query tokens have dimension {queries.shape[2]} but the coded tokens {dim}')
  check_corpus(doc_mask)
  qb, block = search_blocks(queries.shape[0], codes.shape[0], queries.shape[1], codes.shape[1],
                            query_block, block_size)
  return topk_blocked_by(_block_score(quantizer), (queries, np.asarray(query_mask)),
                         (codes, doc_mask), k, aux=params, block_size=block, query_block=qb,
                         strategy='merge')
