"""The adapters study's parts on synthetic embeddings: ADR trained through the study's path beats
the frozen embeddings it adapts, and the summary is what the records hold."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.data.readers import RetrievalData
from experiments import adapters as study


def test_every_cell_config_loads_and_the_runs_are_listed():
  for cell in study._cells():
    cfg, _ = study.cell_config(cell)
    assert study.dry_run(cfg)['method'] == cfg.method
  runs = study.expected_runs()
  assert ('frozen', 0) in runs and ('frozen', 1) not in runs and ('qdc', 1) in runs


def test_adr_through_the_study_improves_distorted_queries():
  """Documents are random unit vectors; a query is its document through a fixed linear distortion.
  The adapter learns the inverse on train pairs and lifts test nDCG@10."""
  rng = np.random.default_rng(0)
  dim, n_docs = 24, 300
  docs = rng.standard_normal((n_docs, dim))
  distortion = np.eye(dim) + 2.5 * rng.standard_normal((dim, dim)) / np.sqrt(dim)
  train_docs, test_docs = np.arange(200), np.arange(200, 300)
  embeddings = {
      'scifact_train_claims_paired': docs[train_docs] @ distortion,
      'scifact_train_cited': docs[train_docs],
      'scifact_test_queries': docs[test_docs] @ distortion,
      'scifact_corpus': docs,
  }
  old = lambda texts, label: embeddings[label].astype(np.float32)
  test = RetrievalData(corpus_ids=[f'd{i}' for i in range(n_docs)], corpus_texts=[''] * n_docs,
                       query_ids=[f'q{i}' for i in test_docs], query_texts=[''] * len(test_docs),
                       qrels={f'q{i}': {f'd{i}': 1} for i in test_docs})
  data = {'pairs': [('', '')] * len(train_docs), 'test': test}
  cfg, _ = study.cell_config('adr_query', overrides=['--config.adr.steps=150',
                                                     '--config.adr.lr=5e-3'])
  frozen = study.ndcg(embeddings['scifact_test_queries'], docs, test)['ndcg@10']
  out = study.run_adr(cfg, old, data)
  assert out['adapter_params'] == 2 * 16 * dim
  assert out['scifact']['ndcg@10'] > frozen + 0.1, (frozen, out['scifact']['ndcg@10'])
  assert out['loss_first_last'][1] < out['loss_first_last'][0]


def test_summary_follows_the_records():
  def rec(cell, seed, **test):
    return {'cell': cell, 'seed': seed, 'test': test}

  def scores(*per_query):  # an evaluation of two queries
    return {'ndcg@10': float(np.mean(per_query)), 'query_ids': ['q1', 'q2'],
            'per_query_ndcg@10': list(per_query)}
  records = {
      'frozen': {0: rec('frozen', 0, scifact=scores(0.6, 0.69))},
      'adr_query': {0: rec('adr_query', 0, scifact=scores(0.62, 0.70), adapter_params=12288),
                    1: rec('adr_query', 1, scifact=scores(0.64, 0.70), adapter_params=12288)},
      'qdc': {0: rec('qdc', 0, no_compensation=scores(0.1, 0.3), qdc=scores(0.5, 0.7),
                     reindex=scores(0.68, 0.7))},
  }
  s = study.summarize(records)
  assert s['adr']['frozen']['ndcg@10'] == 0.645 and s['qdc']['old_model']['n_seeds'] == 1
  assert s['adr']['adr_query']['ndcg@10'] == pytest.approx(0.665)
  assert s['adr']['adr_query']['std'] == pytest.approx(np.std([0.66, 0.67], ddof=1))
  assert s['adr']['full_finetune']['ndcg@10'] == 0.69 and s['qdc']['qdc']['ndcg@10'] == 0.6
  assert 'adr_both/seed0' in s['missing'] and 'qdc/seed1' in s['missing']
  # paired over the two queries, each side averaged over its seeds: adr_query (0.63, 0.70)
  b = s['paired_bootstrap']
  assert b['adr_query - frozen']['diff'] == pytest.approx(0.02)
  assert b['adr_query - full_finetune']['diff'] == pytest.approx(-0.025)
  assert b['qdc - no_compensation']['diff'] == pytest.approx(0.4)
  assert b['qdc - no_compensation']['p_not_better'] == 0.0
  assert 'adr_query - adr_both' not in b  # adr_both has no record
  table = study.markdown(s)
  assert '| qdc - no_compensation | +0.4000 | [+0.4000, +0.4000] | 0.000 |' in table
  assert '| adr_query | 0.6650 ± 0.0071 | 2 | 12288 |' in table
  assert '| no_compensation | 0.2000 | 1 |' in table
