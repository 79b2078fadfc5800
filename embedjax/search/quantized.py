"""Exact top-k over quantized corpora: int8 codes (integer inner products) and any quantizer's
asymmetric score (float queries against stored codes), both through the blocked loop of
``embedjax.search.exact``.

int8: scores are the exact integer inner products of the int8 codes (as usearch / sentence-
transformers' int8 search computes them), accumulated in float32 over chunks of at most 1024
dimensions: every partial sum is an integer of magnitude <= 1024 * 128^2 = 2^24, exactly
representable, and the chunk sums are added in int32. XLA's CPU int8 GEMM is far slower than its
float32 GEMM, which is why the codes are widened per block rather than multiplied as int8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embedjax.search.exact import topk_blocked_by

_EXACT_CHUNK = 1024  # dimensions per float32 partial sum: 1024 * 128 * 128 = 2^24


def int8_scores(aux, queries: jax.Array, rows: jax.Array) -> jax.Array:
  """(B, D) int8 x (block, D) int8 -> (B, block) exact integer inner products (as float32)."""
  del aux
  d = queries.shape[1]
  total = None
  for start in range(0, d, _EXACT_CHUNK):
    qa = queries[:, start:start + _EXACT_CHUNK].astype(jnp.float32)
    ra = rows[:, start:start + _EXACT_CHUNK].astype(jnp.float32)
    part = jnp.dot(qa, ra.T, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32).astype(jnp.int32)
    total = part if total is None else total + part
  # Exact as float32 below 2^24 in magnitude, i.e. for D <= 1024; above that only the ranking
  # among scores beyond 2^24 could round (the returned int32 scores are recomputed exactly).
  return total.astype(jnp.float32)


def int8_topk(query_codes, corpus_codes, k: int, *, block_size: int | None = None,
              query_block: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Exact top-k by the integer inner product of int8 codes.

  Args:
    query_codes: (Q, D) int8 (e.g. ``quant.int8.encode`` of the queries, same ranges).
    corpus_codes: (N, D) int8.
    k: results per query (clamped to N).

  Returns:
    scores (Q, min(k, N)) int32 descending and indices (Q, min(k, N)) int32; ties by index.
  """
  q = jnp.asarray(query_codes)
  c = jnp.asarray(corpus_codes)
  if q.dtype != jnp.int8 or c.dtype != jnp.int8:
    raise TypeError(f'int8_topk takes int8 codes, got {q.dtype} and {c.dtype}')
  if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
    raise ValueError(f'codes must be (Q, D) and (N, D), got {q.shape} and {c.shape}')
  _, idx = topk_blocked_by(int8_scores, q, c, k, block_size=block_size, query_block=query_block)
  # Recompute the selected scores exactly in int32 (cheap: Q x k x D).
  picked = jnp.take(c, idx, axis=0).astype(jnp.int32)
  scores = jnp.einsum('qd,qkd->qk', q.astype(jnp.int32), picked)
  return scores, idx


def asymmetric_topk(quantizer, params, queries, codes, k: int, *, block_size: int | None = None,
                    query_block: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Exact top-k of ``quantizer.score(params, queries, codes)`` without forming (Q, N).

  Args:
    quantizer: an ``embedjax.quant`` Quantizer (duck-typed: ``prepare_query``,
      ``score_prepared``).
    params: its fitted params.
    queries: (Q, D) float queries.
    codes: (N, ...) stored codes (any pytree of arrays with leading N).
    k: results per query (clamped to N).

  Returns:
    scores (Q, min(k, N)) float32 descending and indices (Q, min(k, N)) int32; ties by index.
  """
  prepared = quantizer.prepare_query(params, jnp.asarray(queries, jnp.float32))
  return topk_blocked_by(quantizer.score_prepared, prepared, codes, k, aux=params,
                         block_size=block_size, query_block=query_block)
