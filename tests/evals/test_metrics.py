"""Retrieval metrics against pytrec_eval, hand computations and properties."""

from __future__ import annotations

import gzip
import json
import math
import re

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given, settings
from hypothesis import strategies as st

from embedjax.evals import metrics
from embedjax.paths import shared_data_dir

KS = (1, 3, 5, 10, 100, 1000)


def _trec_measures(ks):
  cut = ','.join(str(k) for k in ks)
  return {f'ndcg_cut.{cut}', f'recall.{cut}', f'P.{cut}', f'map_cut.{cut}', 'recip_rank', 'map'}


def _trec_run(run_indices, scores, query_ids, corpus_ids):
  return {qid: {corpus_ids[d]: float(s) for d, s in zip(row, srow) if d >= 0}
          for qid, row, srow in zip(query_ids, run_indices, scores)}


def _reference(run_indices, scores, qrels, query_ids, corpus_ids, ks):
  """pytrec_eval per-query values under our key names; MRR@k from recip_rank on the cut run."""
  run = _trec_run(run_indices, scores, query_ids, corpus_ids)
  per_query = pytrec_eval.RelevanceEvaluator(qrels, _trec_measures(ks)).evaluate(run)
  out = {}
  for qid, v in per_query.items():
    row = {'mrr': v['recip_rank'], 'map': v['map']}
    for k in ks:
      row[f'ndcg@{k}'] = v[f'ndcg_cut_{k}']
      row[f'recall@{k}'] = v[f'recall_{k}']
      row[f'precision@{k}'] = v[f'P_{k}']
      row[f'map@{k}'] = v[f'map_cut_{k}']
    out[qid] = row
  for k in ks:
    cut = _trec_run(run_indices[:, :k], scores[:, :k], query_ids, corpus_ids)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {'recip_rank'}).evaluate(cut)
    for qid, v in rr.items():
      out[qid][f'mrr@{k}'] = v['recip_rank']
  return out


def _compare(run_indices, scores, qrels, query_ids, corpus_ids, ks=KS):
  ref = _reference(run_indices, scores, qrels, query_ids, corpus_ids, ks)
  rel = metrics.run_relevance(run_indices, qrels, query_ids, corpus_ids)
  ours = metrics.per_query_metrics(rel, ks)
  assert set(ours) == set(next(iter(ref.values())))
  evaluated = [i for i, q in enumerate(query_ids) if q in ref]
  skipped = [i for i, q in enumerate(query_ids) if q not in ref]
  for name, values in ours.items():
    np.testing.assert_allclose(values[evaluated], [ref[query_ids[i]][name] for i in evaluated],
                               atol=1e-6, rtol=0, err_msg=name)
    assert np.isnan(values[skipped]).all()
  means = metrics.retrieval_metrics(run_indices, qrels, query_ids, corpus_ids, ks)
  for name, value in means.items():
    expected = np.mean([ref[q][name] for q in ref])
    assert abs(value - expected) <= 1e-6, (name, value, expected)
  return means


@pytest.mark.parametrize('seed', range(4))
def test_random_runs_match_pytrec_eval(seed):
  rng = np.random.default_rng(seed)
  n_docs, n_queries, depth = 300, 40, 120
  corpus_ids = [f'd{i}' for i in rng.permutation(n_docs)]
  query_ids = [f'q{i}' for i in range(n_queries)]
  qrels = {}
  for qid in query_ids:
    kind = rng.random()
    if kind < 0.1:
      continue  # not judged: pytrec_eval skips it
    n_judged = rng.integers(1, 30)
    docs = rng.choice(n_docs, n_judged, replace=False)
    rels = rng.integers(0, 4, n_judged) if kind > 0.2 else np.zeros(n_judged, int)  # some all-0
    judged = {corpus_ids[d]: int(r) for d, r in zip(docs, rels)}
    if rng.random() < 0.3:
      judged[f'missing{qid}'] = int(rng.integers(1, 3))  # relevant doc the corpus lacks
    qrels[qid] = judged
  qrels['q_without_run'] = {corpus_ids[0]: 1}
  # Random depth-K runs that favour judged docs, with distinct continuous scores.
  run_indices = np.empty((n_queries, depth), np.int64)
  scores = np.empty((n_queries, depth))
  for i, qid in enumerate(query_ids):
    boost = np.zeros(n_docs)
    for cid, r in qrels.get(qid, {}).items():
      if cid.startswith('d'):
        boost[corpus_ids.index(cid)] = r
    s = rng.random(n_docs) + 0.4 * boost
    order = np.argsort(-s)[:depth]
    run_indices[i], scores[i] = order, s[order]
  _compare(run_indices, scores, qrels, query_ids, corpus_ids, ks=(1, 3, 5, 10, 100, 1000))


def test_hand_computed():
  corpus_ids = ['a', 'b', 'c', 'd', 'z']
  qrels = {'q1': {'a': 2, 'b': 1, 'c': 0, 'z': 1, 'ghost': 1},
           'q2': {'a': 0},            # judged, nothing relevant -> all zeros
           'q3': {'a': -1, 'b': 1}}   # negative relevance: not relevant, zero gain
  query_ids = ['q1', 'q2', 'q3', 'q4']  # q4 has no qrels -> skipped
  run = np.array([[2, 3, 0, 1], [0, 1, 2, 3], [0, 1, 4, -1], [0, 1, 2, 3]])
  scores = np.array([[4., 3, 2, 1]] * 4)
  rel = metrics.run_relevance(run, qrels, query_ids, corpus_ids)
  # q1 ranks c(0) d(-) a(2) b(1); relevant: a, b, z, ghost (4).
  dcg = 2 / math.log2(4) + 1 / math.log2(5)
  idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
  assert metrics.ndcg_at_k(rel, 10)[0] == pytest.approx(dcg / idcg, abs=1e-12)
  assert metrics.ndcg_at_k(rel, 2)[0] == 0.0
  idcg3 = 2 + 1 / math.log2(3) + 1 / math.log2(4)
  assert metrics.ndcg_at_k(rel, 3)[0] == pytest.approx((2 / math.log2(4)) / idcg3, abs=1e-12)
  assert metrics.recall_at_k(rel, 3)[0] == pytest.approx(1 / 4)
  assert metrics.recall_at_k(rel, 100)[0] == pytest.approx(2 / 4)
  assert metrics.precision_at_k(rel, 10)[0] == pytest.approx(2 / 10)
  assert metrics.mrr_at_k(rel)[0] == pytest.approx(1 / 3)
  assert metrics.mrr_at_k(rel, 2)[0] == 0.0
  assert metrics.map_at_k(rel)[0] == pytest.approx((1 / 3 + 2 / 4) / 4)
  assert metrics.map_at_k(rel, 3)[0] == pytest.approx((1 / 3) / 4)
  # q2: nothing relevant.
  for fn in (metrics.ndcg_at_k, metrics.recall_at_k, metrics.precision_at_k, metrics.map_at_k):
    assert fn(rel, 10)[1] == 0.0
  # q3: a has relevance -1 -> b at rank 2 is the only relevant doc; the -1 pad is "no document".
  assert metrics.ndcg_at_k(rel, 10)[2] == pytest.approx(1 / math.log2(3), abs=1e-12)
  assert metrics.mrr_at_k(rel)[2] == pytest.approx(0.5)
  per_query = metrics.per_query_metrics(rel, (1, 10))
  assert np.isnan(per_query['ndcg@10'][3]) and not np.isnan(per_query['ndcg@10'][:3]).any()
  means = _compare(run, scores, qrels, query_ids, corpus_ids, ks=(1, 2, 3, 10, 100))
  assert means['recall@100'] == pytest.approx((2 / 4 + 0 + 1) / 3)
  assert set(means) == {f'{m}@{k}' for m in ('ndcg', 'recall', 'precision', 'mrr', 'map')
                        for k in (1, 2, 3, 10, 100)} | {'mrr', 'map'}


def test_no_judged_query_raises():
  with pytest.raises(ValueError, match='qrels'):
    metrics.retrieval_metrics(np.zeros((1, 2), int), {1: {'a': 1}}, ['1'], ['a', 'b'])


# --- property test -------------------------------------------------------------------------------

@st.composite
def _ranking_case(draw):
  n_docs = draw(st.integers(1, 25))
  rels = draw(st.lists(st.integers(0, 3), min_size=n_docs, max_size=n_docs))
  depth = draw(st.integers(1, n_docs))
  perm = draw(st.permutations(range(n_docs)))
  return np.array(rels), np.array(perm[:depth])


@settings(max_examples=60, deadline=None)
@given(_ranking_case())
def test_properties(case):
  rels, ranking = case
  corpus_ids = [str(i) for i in range(len(rels))]
  qrels = {'q': {str(i): int(r) for i, r in enumerate(rels)}}
  ks = (1, 2, 3, 5, 10, 30)
  rel = metrics.run_relevance(ranking[None, :], qrels, ['q'], corpus_ids)
  values = metrics.per_query_metrics(rel, ks)
  for name, v in values.items():
    assert 0.0 <= v[0] <= 1.0 + 1e-12, name
  recalls = [values[f'recall@{k}'][0] for k in ks]
  assert all(a <= b for a, b in zip(recalls, recalls[1:]))
  if (rels > 0).any():
    # The ideal ranking (stable by relevance) scores 1 on nDCG at every cut, MRR and MAP.
    ideal = np.argsort(-rels, kind='stable')
    rel_ideal = metrics.run_relevance(ideal[None, :], qrels, ['q'], corpus_ids)
    for k in ks:
      assert metrics.ndcg_at_k(rel_ideal, k)[0] == pytest.approx(1.0, abs=1e-12)
    assert metrics.map_at_k(rel_ideal)[0] == pytest.approx(1.0)
    assert metrics.mrr_at_k(rel_ideal)[0] == 1.0
    assert metrics.recall_at_k(rel_ideal, len(rels))[0] == 1.0


# --- real SciFact run ----------------------------------------------------------------------------

def _load_scifact(folder):
  with gzip.open(folder / 'corpus.jsonl.gz', 'rt', encoding='utf-8') as f:
    corpus = [json.loads(line) for line in f]
  with open(folder / 'queries.jsonl', encoding='utf-8') as f:
    queries = {q['_id']: q['text'] for q in map(json.loads, f)}
  qrels: dict[str, dict[str, int]] = {}
  with open(folder / 'qrels' / 'test.tsv', encoding='utf-8') as f:
    next(f)
    for line in f:
      qid, did, score = line.rstrip('\n').split('\t')
      qrels.setdefault(qid, {})[did] = int(score)
  corpus_ids = [d['_id'] for d in corpus]
  texts = [f"{d['title']} {d['text']}" for d in corpus]
  query_ids = sorted(qrels, key=int)
  return corpus_ids, texts, query_ids, [queries[q] for q in query_ids], qrels


def _tfidf(doc_texts, query_texts):
  """Dense TF-IDF (log tf, smooth idf, l2-normalised) over the query vocabulary only.

  Cosine only needs the terms a query has, but doc norms use every term of the doc.
  """
  tokenize = lambda s: re.findall(r'\w+', s.lower())
  docs = [tokenize(t) for t in doc_texts]
  queries = [tokenize(t) for t in query_texts]
  df: dict[str, int] = {}
  for toks in docs:
    for t in set(toks):
      df[t] = df.get(t, 0) + 1
  idf = {t: math.log((1 + len(docs)) / (1 + c)) + 1 for t, c in df.items()}
  vocab = {t: i for i, t in enumerate(sorted({t for q in queries for t in q if t in df}))}

  def embed(token_lists):
    out = np.zeros((len(token_lists), len(vocab)), np.float32)
    for row, toks in enumerate(token_lists):
      counts: dict[str, int] = {}
      for t in toks:
        counts[t] = counts.get(t, 0) + 1
      weights = {t: (1 + math.log(c)) * idf.get(t, 0.0) for t, c in counts.items()}
      norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
      for t, w in weights.items():
        if t in vocab:
          out[row, vocab[t]] = w / norm
    return out

  return embed(docs), embed(queries)


def test_scifact_tfidf_run_matches_pytrec_eval():
  root = shared_data_dir()
  if root is None or not (root / 'scifact' / 'corpus.jsonl.gz').exists():
    pytest.skip('shared SciFact data not available')
  from embedjax.search.exact import topk_blocked
  corpus_ids, doc_texts, query_ids, query_texts, qrels = _load_scifact(root / 'scifact')
  doc_emb, query_emb = _tfidf(doc_texts, query_texts)
  scores, indices = topk_blocked(query_emb, doc_emb, 1000, block_size=2048, query_block=128)
  indices = np.asarray(indices)
  # TF-IDF ties (many zeros in the tail): give trec_eval rank-derived scores so it keeps our order.
  rank_scores = np.broadcast_to(np.arange(indices.shape[1], 0, -1, dtype=np.float64),
                                indices.shape)
  means = _compare(indices, rank_scores, qrels, query_ids, corpus_ids)
  # Sanity: a lexical baseline on SciFact is far from random (BM25 reaches nDCG@10 ~ 0.66).
  assert 0.4 < means['ndcg@10'] < 0.8
  assert means['recall@1000'] > 0.9
