"""The beyond-single-vector study's bookkeeping: the runs it expects, the summary and table
computed from records (fake ones here), and BM25's storage count on hand-computed texts. The
evaluation functions are checked against the eval runner in
tests/train/test_representation_runs.py."""

from __future__ import annotations

import json

import pytest

from tests.experiments.study_modules import load_experiment

study = load_experiment('beyond_single_vector', 'beyond_single_vector_study')


def test_expected_runs_are_untrained_cells_once_and_trained_cells_per_seed():
  runs = study.expected_runs()
  assert ('bm25', 0) in runs and ('single_pretrained', 0) in runs
  assert ('bm25', 1) not in runs and ('single_pretrained', 1) not in runs
  for cell in ('single_finetuned', 'multi_vector', 'sparse'):
    assert (cell, 0) in runs and (cell, 1) in runs


def test_every_trained_cell_trains_on_the_same_mixture_at_its_own_seed():
  configs = [study.cell_config(c, seed)[0] for c in ('single_finetuned', 'multi_vector', 'sparse')
             for seed in (0, 1)]
  assert {c.train.data.train for c in configs} == {'limit_gen,scifact'}
  assert {(c.train.steps, c.train.optim.lr, c.train.data.batch_size) for c in configs} == {
      (92, 5e-5, 32)}
  assert [study.training_config(c).seed for c in configs] == [0, 1] * 3
  assert study.cell_config('multi_vector', 0)[1] != study.cell_config('multi_vector', 1)[1]


def test_recall_of_exact_search_by_hand():
  import numpy as np
  exact = np.array([[0, 1, 2], [3, 4, 5]])
  got = np.array([[2, 9, 0], [-1, -1, 3]])  # -1: no candidate
  assert study.recall_of_exact(got, exact, 3) == pytest.approx((2 / 3 + 1 / 3) / 2)
  assert study.recall_of_exact(got, exact, 1) == pytest.approx(0.0)


def test_bm25_postings_are_distinct_terms_without_stopwords():
  # 'the' and 'a' are English stopwords; 'cat' counted once in the second text.
  assert study.bm25_postings_per_doc(['the cat sat', 'cat cat dog a']) == pytest.approx(2.0)


def _record(cell, seed, searches):
  return {'cell': cell, 'seed': seed,
          'test': {'limit_small': {s: {'recall@2': v, 'recall@10': v + .1, 'recall@20': v + .2,
                                       'bytes_per_doc': b} for s, (v, b) in searches.items()},
                   'scifact': {s: {'ndcg@10': v / 2, 'bytes_per_doc': 10 * b}
                               for s, (v, b) in searches.items()}}}


def test_summary_means_over_seeds_and_table(tmp_path):
  records = {'bm25': {0: _record('bm25', 0, {'bm25': (0.9, 100.0)})},
             'multi_vector': {0: _record('multi_vector', 0, {'exact': (0.4, 1000.0),
                                                              'plaid_2bit': (0.3, 200.0)}),
                              1: _record('multi_vector', 1, {'exact': (0.6, 1200.0),
                                                              'plaid_2bit': (0.5, 220.0)})}}
  for seed, agree in ((0, 0.9), (1, 0.8)):
    records['multi_vector'][seed]['test']['scifact']['plaid_2bit']['recall@10_of_exact'] = agree
  s = study.summarize(records, {'m1': {'4': 9}, 'm2': {'4': 15}})
  assert s['limit_small']['bm25'] == {'recall@2': 0.9, 'recall@10': pytest.approx(1.0),
                                      'recall@20': pytest.approx(1.1)}
  assert s['limit_small']['multi_vector']['recall@2'] == pytest.approx(0.5)
  assert s['scifact']['multi_vector'] == {'ndcg@10': pytest.approx(0.25)}
  assert s['bytes_per_doc'] == {'bm25': 1000.0, 'multi_vector': 11000.0,
                                'multi_vector_plaid_2bit': 2100.0}
  assert s['bytes_per_doc_limit_small']['multi_vector'] == 1100.0
  detail = s['detail']['limit_small']['multi_vector']['recall@2']
  assert detail['n_seeds'] == 2 and detail['std'] == pytest.approx(0.1414213562, rel=1e-6)
  assert 'sparse/seed0' in s['missing'] and 'multi_vector/seed0' not in s['missing']
  assert s['plaid_recall@10_of_exact'] == {
      'scifact': {'multi_vector_plaid_2bit': pytest.approx(0.85)}}
  md = study.markdown(s)
  assert ('| multi_vector | 50.00 ± 14.14 | 60.00 ± 14.14 | 70.00 ± 14.14 | 25.00 ± 7.07 | '
          '11,000 | 2 |') in md
  assert 'scifact multi_vector_plaid_2bit 0.850' in md
  assert '| 4 | 9 | 15 |' in md and 'sparse' not in md.split('Not yet run')[0]
  # write_summary reads the records and the critical-n files of a folder
  for cell, per in records.items():
    for seed, rec in per.items():
      path = study.record_path(cell, seed, tmp_path)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(rec))
  (tmp_path / 'critical_n_m2.json').write_text(json.dumps({'critical_n': {'4': 15}}))
  again = study.write_summary(tmp_path)
  assert again['critical_n'] == {'m2': {'4': 15}}
  assert json.loads((tmp_path / 'summary.json').read_text())['bytes_per_doc'] == s['bytes_per_doc']
