"""The recipes study's summary arithmetic: means, spreads and the paired bootstrap, by hand."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from embedjax.paths import repo_root


@pytest.fixture(scope='module')
def recipes():
  path = repo_root() / 'experiments' / 'recipes.py'
  spec = importlib.util.spec_from_file_location('_recipes_study', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


def _rec(cell, seed, value, per_query=None):
  test = {'spearman': value} if cell.startswith('stsb') else {
      'ndcg@10': value, 'query_ids': ['q1', 'q2', 'q3'], 'per_query_ndcg@10': per_query}
  return {'cell': cell, 'seed': seed, 'test': test, 'git_commit': 'abc1234'}


def test_summary_means_spreads_and_missing_cells(recipes):
  records = {'stsb_cosent': {0: _rec('stsb_cosent', 0, 0.80), 1: _rec('stsb_cosent', 1, 0.84)},
             'stsb_pretrained': {0: _rec('stsb_pretrained', 0, 0.82)}}
  s = recipes.summarize(records)
  assert s['stsb_spearman']['cosent'] == pytest.approx(0.82)
  assert s['stsb_spearman']['pretrained'] == 0.82
  assert s['stsb_spearman']['angle'] is None
  cell = s['cells']['stsb_cosent']
  assert cell['std'] == pytest.approx(np.std([0.80, 0.84], ddof=1))
  assert (cell['min'], cell['max'], cell['n_seeds']) == (0.80, 0.84, 2)
  assert s['cells']['stsb_pretrained']['std'] is None
  assert 'stsb_angle' in s['missing'] and 'stsb_cosent' not in s['missing']


def test_paired_bootstrap_pairs_queries_and_averages_seeds(recipes):
  base = {0: _rec('scifact_in_batch', 0, 0.5, [0.2, 0.5, 0.8])}
  focal = {0: _rec('scifact_focal', 0, 0.6, [0.4, 0.5, 0.9]),
           1: _rec('scifact_focal', 1, 0.6, [0.2, 0.7, 0.9])}
  s = recipes.summarize({'scifact_in_batch': base, 'scifact_focal': focal})
  b = s['scifact_paired_bootstrap']['scifact_focal - scifact_in_batch']
  # seeds averaged per query: [0.3, 0.6, 0.9] - [0.2, 0.5, 0.8] = 0.1 for every query, so every
  # resample's mean difference is 0.1
  assert b['diff'] == pytest.approx(0.1)
  assert b['ci95'] == pytest.approx([0.1, 0.1])
  assert b['p_not_better'] == 0.0


def test_paired_bootstrap_interval_matches_a_direct_numpy_resampling(recipes):
  rng = np.random.default_rng(5)
  a, b = rng.random(50), rng.random(50)
  got = recipes.paired_bootstrap(a, b, resamples=2000, seed=3)
  idx = np.random.default_rng(3).integers(0, 50, size=(2000, 50))
  means = np.array([(a[i] - b[i]).mean() for i in idx])
  assert got['ci95'] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
  assert got['p_not_better'] == pytest.approx((means <= 0).mean())


def test_seeds_evaluated_on_different_queries_are_an_error(recipes):
  r0 = _rec('scifact_focal', 0, 0.5, [0.1, 0.2, 0.3])
  r1 = _rec('scifact_focal', 1, 0.5, [0.1, 0.2, 0.3])
  r1['test']['query_ids'] = ['q1', 'q2', 'q4']
  base = {0: _rec('scifact_in_batch', 0, 0.5, [0.1, 0.2, 0.3])}
  with pytest.raises(ValueError, match='different queries'):
    recipes.summarize({'scifact_focal': {0: r0, 1: r1}, 'scifact_in_batch': base})


def test_elastic_and_distill_summaries_come_from_their_headline_cells(recipes):
  def elastic(seed, full, small):
    return {'cell': 'elastic_2dmse_multi_task', 'seed': seed, 'git_commit': 'abc1234',
            'test': {'ndcg@10': full, 'ndcg@10_at_64': small, 'retention_at_64': small / full,
                     'grid_ndcg@10': {'6x384': full, '6x64': small},
                     'query_ids': ['q1'], 'per_query_ndcg@10': [full]}}
  leaf = {'cell': 'distill_leaf', 'seed': 0, 'git_commit': 'abc1234', 'test': {
      'params': 10, 'params_fraction': 0.25, 'asymmetric_fraction': 0.9,
      'symmetric_fraction': 0.8,
      **{t: {'teacher': 0.5, 'symmetric': 0.4, 'asymmetric': 0.45, 'symmetric_fraction': 0.8,
             'asymmetric_fraction': 0.9} for t in ('scifact', 'stsb')}}}
  s = recipes.summarize({'elastic_2dmse_multi_task': {0: elastic(0, 0.6, 0.5),
                                                      1: elastic(1, 0.7, 0.7)},
                         'distill_leaf': {0: leaf}})
  assert s['ndcg@10_at_384'] == pytest.approx(0.65)
  assert s['ndcg@10_at_64'] == pytest.approx(0.6)
  assert s['retention_at_64'] == pytest.approx((0.5 / 0.6 + 1.0) / 2)  # per seed, then the mean
  assert s['cells']['elastic_2dmse_multi_task']['grid_ndcg@10'] == pytest.approx(
      {'6x384': 0.65, '6x64': 0.6})
  assert s['distill'] == pytest.approx({'params_fraction': 0.25, 'symmetric_fraction': 0.8,
                                        'asymmetric_fraction': 0.9})
  assert 'distill_leaf' not in s['missing'] and 'elastic_mrl' not in s['missing']
  assert recipes.markdown(s).count('| distill_leaf |') == 3  # the main table, SciFact, STS-B


def test_expected_runs_and_config_currency(recipes, tmp_path):
  runs = recipes.expected_runs()
  assert ('stsb_pretrained', 0) in runs and ('stsb_pretrained', 1) not in runs  # nothing random
  assert {('stsb_cosent', 0), ('stsb_cosent', 1)} <= set(runs)
  assert len(runs) == len(set(runs))
  cfg, chash = recipes.cell_config('stsb_cosent', 1)
  assert cfg.seed == 1
  path = recipes.record_path('stsb_cosent', 1, tmp_path)
  assert not recipes.config_is_current('stsb_cosent', 1, tmp_path)
  path.parent.mkdir(parents=True)
  path.write_text(f'{{"config_hash": "{chash}"}}')
  assert recipes.config_is_current('stsb_cosent', 1, tmp_path)
  path.write_text('{"config_hash": "other", "config": {"seed": 0}}')
  assert not recipes.config_is_current('stsb_cosent', 1, tmp_path)


def test_a_redo_empties_the_workdir_once_per_commit(recipes, tmp_path):
  work = tmp_path / 'cell' / 'seed0'
  work.mkdir(parents=True)
  (work / 'old_checkpoint').write_text('made by older code')
  recipes._restart_workdir(work)
  assert [p.name for p in work.iterdir()] == ['redo_commit.txt']
  (work / 'new_checkpoint').write_text('made by this redo')
  recipes._restart_workdir(work)  # an interrupted redo at the same commit resumes
  assert (work / 'new_checkpoint').exists()
  (work / 'redo_commit.txt').write_text('0' * 40)
  recipes._restart_workdir(work)
  assert not (work / 'new_checkpoint').exists()
