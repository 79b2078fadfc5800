"""Ranked-retrieval metrics with trec_eval (pytrec_eval) semantics, vectorised over queries.

A run is ``run_indices (Q, K)``: row q lists corpus positions in rank order (e.g. the indices from
``embedjax.search.exact.topk_blocked``); a negative index means "no document" at that rank. The
given order *is* the ranking: tied scores are not re-ordered (trec_eval would order them by docid
descending), so a run with ties should be evaluated with rank-derived scores on the trec_eval side.

Semantics (as trec_eval 9 with the default relevance level 1):
  * relevant = qrels relevance > 0; gain = relevance (linear), negative relevance counts as 0;
  * nDCG@k: DCG over the top k with discount log2(rank + 1); ideal DCG from *all* judged relevant
    docs of the query (also those the corpus lacks), sorted by gain, cut at k;
  * recall@k = relevant in top k / all relevant; P@k = relevant in top k / k (k, not K, also when
    fewer than k documents were returned);
  * MAP@k = sum over relevant docs in the top k of precision at their rank / all relevant; ``map``
    is MAP over the whole returned list; MRR@k = 1 / rank of the first relevant doc in the top k,
    0 if none; ``mrr`` is over the whole list (trec_eval's ``recip_rank``);
  * queries present in the qrels but without any relevant doc are evaluated and score 0 everywhere;
  * queries absent from the qrels are not evaluated (NaN per query, left out of the means); qrels
    queries without a run row are ignored (trec_eval averages over queries that have both).

Host numpy in float64: a run is small (Q x K) and float64 is what matching trec_eval to 1e-6 needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence

import chex
import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 100, 1000)


@dataclasses.dataclass(frozen=True)
class RunRelevance:
  """What the vectorised metrics need, for a run of Q queries and K ranks.

  Attributes:
    gains: (Q, K) float64, qrels relevance (clipped at 0) of the doc at each rank; 0 if unjudged.
    ideal_gains: (Q, R) float64, the query's positive judged relevances sorted descending, 0-padded.
    num_relevant: (Q,) int64, judged docs with relevance > 0 (whether or not the corpus holds them).
    judged: (Q,) bool, whether the query appears in the qrels (only those are evaluated).
  """
  gains: np.ndarray
  ideal_gains: np.ndarray
  num_relevant: np.ndarray
  judged: np.ndarray


def run_relevance(run_indices, qrels: Mapping[Hashable, Mapping[Hashable, int]],
                  query_ids: Sequence[Hashable], corpus_ids: Sequence[Hashable]) -> RunRelevance:
  """Gathers qrels relevance for a ranked run.

  Args:
    run_indices: (Q, K) integer corpus positions in rank order; negative = no document.
    qrels: {query_id: {corpus_id: relevance}}, ids of the same type as ``query_ids``/``corpus_ids``.
    query_ids: the Q query ids, row order of ``run_indices``.
    corpus_ids: the N corpus ids, so that ``corpus_ids[run_indices[q, r]]`` is a doc id.

  Returns:
    RunRelevance for the Q queries.
  """
  run = np.asarray(run_indices)
  chex.assert_rank(run, 2)
  if not np.issubdtype(run.dtype, np.integer):
    raise ValueError(f'run_indices must be integers, got {run.dtype}')
  q_rows, k_cols = run.shape
  n = len(corpus_ids)
  if len(query_ids) != q_rows:
    raise ValueError(f'{len(query_ids)} query ids for {q_rows} run rows')
  if run.size and run.max() >= n:
    raise ValueError(f'run index {run.max()} out of range for {n} corpus ids')

  # Positions of only the judged doc ids: one pass over the corpus, memory ~ size of the qrels.
  wanted = set()
  for qid in query_ids:
    wanted.update(qrels.get(qid, {}).keys())
  position: dict[Hashable, int] = {}
  for i, cid in enumerate(corpus_ids):
    if cid in wanted:
      if cid in position:
        raise ValueError(f'corpus id {cid!r} appears more than once')
      position[cid] = i

  judged = np.zeros(q_rows, bool)
  num_relevant = np.zeros(q_rows, np.int64)
  per_query_ideal = []
  key_rows, key_docs, key_gain = [], [], []
  for row, qid in enumerate(query_ids):
    docs = qrels.get(qid)
    if docs is None:
      per_query_ideal.append(np.zeros(0))
      continue
    judged[row] = True
    positive = [(cid, float(rel)) for cid, rel in docs.items() if rel > 0]
    num_relevant[row] = len(positive)
    per_query_ideal.append(np.sort(np.array([g for _, g in positive], np.float64))[::-1])
    for cid, gain in positive:
      if cid in position:
        key_rows.append(row)
        key_docs.append(position[cid])
        key_gain.append(gain)

  width = max([1] + [len(g) for g in per_query_ideal])
  ideal_gains = np.zeros((q_rows, width), np.float64)
  for row, g in enumerate(per_query_ideal):
    ideal_gains[row, :len(g)] = g

  # Relevance lookup as a sorted (row, doc) key table, then one searchsorted for the whole run.
  gains = np.zeros((q_rows, k_cols), np.float64)
  if key_rows:
    keys = np.asarray(key_rows, np.int64) * n + np.asarray(key_docs, np.int64)
    order = np.argsort(keys)
    keys, table_gain = keys[order], np.asarray(key_gain, np.float64)[order]
    run_keys = np.arange(q_rows, dtype=np.int64)[:, None] * n + run.astype(np.int64)
    slot = np.minimum(np.searchsorted(keys, run_keys), len(keys) - 1)
    # run >= 0 also guards against -1 aliasing the previous row's last doc.
    found = (run >= 0) & (keys[slot] == run_keys)
    gains = np.where(found, table_gain[slot], 0.0)
  return RunRelevance(gains=gains, ideal_gains=ideal_gains,
                      num_relevant=num_relevant, judged=judged)


def _discount(length: int) -> np.ndarray:
  """(length,) 1 / log2(rank + 1) for ranks 1..length."""
  return 1.0 / np.log2(np.arange(2, length + 2, dtype=np.float64))


def _check_k(k):
  if k is not None and k < 1:
    raise ValueError(f'k must be >= 1, got {k}')


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)


def ndcg_at_k(rel: RunRelevance, k: int) -> np.ndarray:
  """(Q,) nDCG@k (trec_eval ``ndcg_cut.k``); 0 for queries without relevant docs."""
  _check_k(k)
  gains = rel.gains[:, :k]
  dcg = gains @ _discount(gains.shape[1])
  ideal = rel.ideal_gains[:, :k]
  idcg = ideal @ _discount(ideal.shape[1])
  return _safe_divide(dcg, idcg)


def recall_at_k(rel: RunRelevance, k: int) -> np.ndarray:
  """(Q,) recall@k (trec_eval ``recall.k``)."""
  _check_k(k)
  hits = (rel.gains[:, :k] > 0).sum(axis=1)
  return _safe_divide(hits.astype(np.float64), rel.num_relevant.astype(np.float64))


def precision_at_k(rel: RunRelevance, k: int) -> np.ndarray:
  """(Q,) P@k (trec_eval ``P.k``): divides by k even when fewer than k docs were returned."""
  _check_k(k)
  return (rel.gains[:, :k] > 0).sum(axis=1) / float(k)


def mrr_at_k(rel: RunRelevance, k: int | None = None) -> np.ndarray:
  """(Q,) reciprocal rank of the first relevant doc within the top k (whole list if k is None)."""
  _check_k(k)
  hit = rel.gains[:, :k] > 0
  first = np.argmax(hit, axis=1)
  return np.where(hit.any(axis=1), 1.0 / (first + 1.0), 0.0)


def map_at_k(rel: RunRelevance, k: int | None = None) -> np.ndarray:
  """(Q,) average precision in the top k (trec_eval ``map_cut.k``; whole list if None: ``map``)."""
  _check_k(k)
  hit = rel.gains[:, :k] > 0
  precision = np.cumsum(hit, axis=1) / np.arange(1, hit.shape[1] + 1, dtype=np.float64)
  return _safe_divide((precision * hit).sum(axis=1), rel.num_relevant.astype(np.float64))


def per_query_metrics(rel: RunRelevance, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
  """All metrics per query.

  Returns:
    {'ndcg@k', 'recall@k', 'precision@k', 'mrr@k', 'map@k' for k in ks, 'mrr', 'map'}, each (Q,)
    float64, NaN for queries absent from the qrels (not evaluated).
  """
  out = {}
  for k in ks:
    out[f'ndcg@{k}'] = ndcg_at_k(rel, k)
    out[f'recall@{k}'] = recall_at_k(rel, k)
    out[f'precision@{k}'] = precision_at_k(rel, k)
    out[f'mrr@{k}'] = mrr_at_k(rel, k)
    out[f'map@{k}'] = map_at_k(rel, k)
  out['mrr'] = mrr_at_k(rel)
  out['map'] = map_at_k(rel)
  return {name: np.where(rel.judged, v, np.nan) for name, v in out.items()}


def retrieval_metrics(run_indices, qrels: Mapping[Hashable, Mapping[Hashable, int]],
                      query_ids: Sequence[Hashable], corpus_ids: Sequence[Hashable],
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """Means over the evaluated queries (those in the qrels) of ``per_query_metrics``.

  Args:
    run_indices: (Q, K) integer corpus positions in rank order.
    qrels: {query_id: {corpus_id: relevance}}.
    query_ids: (Q,) ids of the run rows.
    corpus_ids: (N,) ids of the corpus positions.
    ks: cut-offs.

  Returns:
    {'ndcg@k', 'recall@k', 'precision@k', 'mrr@k', 'map@k' for k in ks, 'mrr', 'map'} -> float.
  """
  rel = run_relevance(run_indices, qrels, query_ids, corpus_ids)
  if not rel.judged.any():
    raise ValueError('no run query appears in the qrels (do the id types match?)')
  per_query = per_query_metrics(rel, ks)
  return {name: float(v[rel.judged].mean()) for name, v in per_query.items()}
