"""Rescoring pipelines: retrieve k x m candidates with a cheap code, rescore them with a better one.

``rescore`` takes any candidate lists (Q, C) and reorders them by a second score computed only on
those rows: float32 embeddings, a quantizer's asymmetric score (e.g. the float query against the
same binary codes, as sentence-transformers' ``semantic_search_faiss(rescore=True)`` does, or
against int8 codes kept on disk). ``binary_rescore`` is the whole two-stage pipeline of the
sentence-transformers / Hugging Face "binary + rescore" recipe: Hamming top (k x m) over packed
bits, then rescoring.

Candidates with index -1 (fewer than C found, e.g. after filtering) score -inf and come back as -1.
Among equal rescored scores the first-stage order is kept (stable).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from embedjax.ops import unpack_signs
from embedjax.search.hamming import hamming_topk


@functools.partial(jax.jit, static_argnames=('score_fn', 'k'))
def _rescore_block(aux, prepared, corpus, candidates, score_fn, k):
  safe = jnp.maximum(candidates, 0)

  def one(p, cand):
    rows = jax.tree.map(lambda c: jnp.take(c, cand, axis=0), corpus)
    p1 = jax.tree.map(lambda x: x[None], p)
    return score_fn(aux, p1, rows)[0]

  scores = jax.vmap(one)(prepared, safe).astype(jnp.float32)
  scores = jnp.where(candidates >= 0, scores, -jnp.inf)
  top, pos = jax.lax.top_k(scores, k)
  idx = jnp.take_along_axis(candidates, pos, axis=1)
  return top, jnp.where(jnp.isneginf(top), -1, idx)


def rescore(score_fn, prepared, corpus, candidates, k: int | None = None, *, aux=None,
            query_block: int = 1024) -> tuple[jax.Array, jax.Array]:
  """Reorders candidate lists by ``score_fn`` evaluated on the candidates only.

  Args:
    score_fn: static ``(aux, query_rows (1, ...), corpus_rows (C, ...)) -> (1, C)`` scores, the
      same signature as a quantizer's ``score_prepared`` or ``exact.inner_product_scores``.
    prepared: pytree of per-query leaves (Q, ...) (float queries, or a quantizer's prepared form).
    corpus: pytree of stored rows (N, ...) to rescore from.
    candidates: (Q, C) int corpus indices, -1 = none.
    k: results kept per query (default C).
    aux: handed to score_fn (quantizer params).

  Returns:
    scores (Q, k) float32 descending (-inf for missing) and indices (Q, k) int32 (-1 missing).
  """
  candidates = jnp.asarray(candidates, jnp.int32)
  q_rows, c = candidates.shape
  k = c if k is None else min(k, c)
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  corpus = jax.tree.map(jnp.asarray, corpus)
  outs = []
  for start in range(0, q_rows, query_block):
    p = jax.tree.map(lambda x: jnp.asarray(x[start:start + query_block]), prepared)
    outs.append(_rescore_block(aux, p, corpus, candidates[start:start + query_block],
                               score_fn=score_fn, k=k))
  if len(outs) == 1:
    return outs[0]
  return (jnp.concatenate([o[0] for o in outs]), jnp.concatenate([o[1] for o in outs]))


def rescore_with(quantizer, params, queries, codes, candidates, k: int | None = None):
  """``rescore`` by a quantizer's asymmetric score of the float queries against its codes."""
  prepared = quantizer.prepare_query(params, jnp.asarray(queries, jnp.float32))
  return rescore(quantizer.score_prepared, prepared, codes, candidates, k, aux=params)


def binary_rescore(queries, query_codes, corpus_codes, k: int, multiplier: int = 4, *,
                   rescorer=None, block_size: int | None = None):
  """Binary first stage (Hamming top k * multiplier), then rescoring to the top k.

  Args:
    queries: (Q, D) float queries (used by the rescoring stage).
    query_codes: (Q, W) packed query bits (e.g. ``quant.binary.encode``).
    corpus_codes: (N, W) packed corpus bits.
    k: results per query.
    multiplier: candidates per result from the binary stage (sentence-transformers' default is
      2; the Hugging Face binary-quantization write-up uses 4).
    rescorer: None to rescore with the float query against the same binary codes (+-1 decode, no
      extra storage), or ``(quantizer, params, codes)`` to rescore from another stored form
      (e.g. int8 codes on disk, or float32 embeddings with ``quant.scalar.float32``).

  Returns:
    scores (Q, k) float32 and indices (Q, k) int32, from the rescoring stage.
  """
  _, cand = hamming_topk(query_codes, corpus_codes, k * multiplier, block_size=block_size)
  if rescorer is None:
    prepared = jnp.asarray(queries, jnp.float32)
    return rescore(_pm1_scores, prepared, jnp.asarray(corpus_codes), cand, k)
  quantizer, params, codes = rescorer
  return rescore_with(quantizer, params, queries, codes, cand, k)


def _pm1_scores(aux, queries, rows):
  """(B, D) float queries x (C, W) packed bits -> (B, C) q . (2b - 1) over the first D bits."""
  del aux
  signs = unpack_signs(rows, queries.shape[1])
  return jnp.dot(queries, signs.T, precision=jax.lax.Precision.HIGHEST)
