"""Filtered search: top-k among the corpus rows whose attributes satisfy a per-query predicate.

Two strategies, both exhaustive over their scorer:
  * pre-filter ('pre'): the predicate is evaluated inside the blocked scan and failing rows score
    -inf, so every query gets the true top-k of the rows that pass (fewer, padded with -1, when
    fewer than k pass). With the float scorer this *is* exact filtered search.
  * post-filter ('post'): an unfiltered top-(k x oversample) first, then the predicate on those
    candidates only. Cheaper when the filter is an afterthought (an index that cannot filter), but
    a selective predicate leaves fewer than k results: ``filtered_recall`` measures what is lost.

Predicates are plain functions ``(query_attrs (B, ...), corpus_attrs (block, ...)) -> (B, block)``
bool, selected by name through ``PREDICATES``:
  equals     corpus category == the query's category            (int attributes (N,), (Q,))
  in_range   lo <= corpus value <= hi                           (corpus (N,), query (Q, 2) [lo, hi])
  any_tag    corpus tag bitset shares a bit with the query's    (uint32 bitsets (N,), (Q,))
  all_tags   corpus tag bitset holds every bit of the query's   (uint32 bitsets (N,), (Q,))
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from embedjax.search.exact import inner_product_scores, topk_blocked_by


def equals(query_attrs, corpus_attrs):
  return query_attrs[:, None] == corpus_attrs[None, :]


def in_range(query_attrs, corpus_attrs):
  lo, hi = query_attrs[:, 0:1], query_attrs[:, 1:2]
  return (corpus_attrs[None, :] >= lo) & (corpus_attrs[None, :] <= hi)


def any_tag(query_attrs, corpus_attrs):
  return jnp.bitwise_and(query_attrs[:, None], corpus_attrs[None, :]) != 0


def all_tags(query_attrs, corpus_attrs):
  q = query_attrs[:, None]
  return jnp.bitwise_and(q, corpus_attrs[None, :]) == q


PREDICATES: dict[str, Callable] = {'equals': equals, 'in_range': in_range, 'any_tag': any_tag,
                                   'all_tags': all_tags}


@functools.lru_cache(maxsize=None)
def _filtered_score_fn(base: Callable, predicate: Callable) -> Callable:
  """One function object per (scorer, predicate), so the jitted scan is compiled once per pair."""
  def score(aux, queries, rows):
    (prepared, q_attrs), (codes, c_attrs) = queries, rows
    s = base(aux, prepared, codes)
    return jnp.where(predicate(q_attrs, c_attrs), s, -jnp.inf)
  return score


def _scorer(queries, corpus, quantizer, params):
  if quantizer is None:
    return inner_product_scores, jnp.asarray(queries, jnp.float32), corpus, None
  prepared = quantizer.prepare_query(params, jnp.asarray(queries, jnp.float32))
  return quantizer.score_prepared, prepared, corpus, params


def _missing_to_minus_one(scores, idx):
  return scores, jnp.where(jnp.isneginf(scores), -1, idx)


def filtered_topk(queries, corpus, k: int, *, predicate: str | Callable, query_attrs,
                  corpus_attrs, mode: str = 'pre', oversample: int = 4, quantizer=None,
                  params=None, block_size: int | None = None, query_block: int | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Top-k under an attribute predicate, by pre- or post-filtering.

  Args:
    queries: (Q, D) float queries.
    corpus: (N, D) float embeddings, or the codes of ``quantizer``.
    k: results per query.
    predicate: a name in PREDICATES or a function of the same signature (module-level, so that
      it is hashable and the scan compiles once).
    query_attrs: (Q, ...) per-query predicate arguments.
    corpus_attrs: (N, ...) per-row attributes.
    mode: 'pre' or 'post'.
    oversample: post-filter candidates per result.
    quantizer, params: score with ``quantizer.score`` on codes instead of the float inner product.

  Returns:
    scores (Q, k) float32 descending and indices (Q, k) int32; -inf / -1 where fewer than k rows
    pass (pre) or survive (post).
  """
  pred = PREDICATES[predicate] if isinstance(predicate, str) else predicate
  base, prepared, codes, aux = _scorer(queries, corpus, quantizer, params)
  query_attrs, corpus_attrs = jnp.asarray(query_attrs), jnp.asarray(corpus_attrs)
  n = corpus_attrs.shape[0]
  if mode == 'pre':
    scores, idx = topk_blocked_by(_filtered_score_fn(base, pred), (prepared, query_attrs),
                                  (codes, corpus_attrs), k, aux=aux, block_size=block_size,
                                  query_block=query_block)
    return _missing_to_minus_one(scores, idx)
  if mode == 'post':
    scores, idx = topk_blocked_by(base, prepared, codes, min(k * oversample, n), aux=aux,
                                  block_size=block_size, query_block=query_block)
    cand_attrs = jnp.take(corpus_attrs, idx, axis=0)  # (Q, C, ...)
    keep = jax.vmap(lambda qa, ca: pred(qa[None], ca)[0])(query_attrs, cand_attrs)
    scores = jnp.where(keep, scores, -jnp.inf)
    top, pos = jax.lax.top_k(scores, min(k, scores.shape[1]))
    return _missing_to_minus_one(top, jnp.take_along_axis(idx, pos, axis=1))
  raise ValueError(f"mode must be 'pre' or 'post', got {mode!r}")


def filtered_recall(found, exact) -> float:
  """Mean over queries of |found & exact| / |exact|, ignoring -1 entries.

  Args:
    found: (Q, k) indices from an approximate or post-filtered search (-1 = none).
    exact: (Q, k) indices of exact filtered search (-1 = fewer than k rows pass).

  Returns:
    recall in [0, 1]; queries whose exact result is empty are left out (NaN if all are).
  """
  found, exact = np.asarray(found), np.asarray(exact)
  if found.shape[0] != exact.shape[0]:
    raise ValueError(f'{found.shape[0]} vs {exact.shape[0]} queries')
  per_query = []
  for f, e in zip(found, exact):
    truth = set(e[e >= 0].tolist())
    if truth:
      per_query.append(len(truth & set(f[f >= 0].tolist())) / len(truth))
  return float(np.mean(per_query)) if per_query else float('nan')
