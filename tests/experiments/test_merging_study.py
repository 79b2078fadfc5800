"""The merging study's parts: its cells, the validation set carved from train, scaling selection
on a validation score, and the summary from records."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import merging as study


def test_cells_and_runs():
  runs = study.expected_runs()
  assert ('pretrained', 0) in runs and ('pretrained', 1) not in runs
  assert ('slerp_stsb_sick', 1) in runs and ('self_positioning', 0) in runs
  for cell in ('pretrained', 'ties', 'slerp_scifact_mrpc'):
    cfg, _ = study.cell_config(cell)
    assert study.dry_run(cfg)['cell'] == cell


def test_validation_is_carved_from_train(data_dir):
  cfg, _ = study.cell_config('greedy_soup')
  val = study.validation_data(cfg.validation, data_dir)
  s = val['scifact']
  assert len(s.query_ids) == 100 and len(s.corpus_ids) == 1000
  from embedjax.data import readers
  test_queries = set(readers.read_beir(data_dir / 'scifact', 'test').query_ids)
  assert not set(s.query_ids) & test_queries
  assert all(set(s.qrels[q]) <= set(s.corpus_ids) for q in s.query_ids)
  for task in ('stsb', 'mrpc', 'sick'):
    assert len(val[task].sentences1) == 300
  test_pairs = set(zip(readers.read_stsb(data_dir / 'stsb', 'test').sentences1,
                       readers.read_stsb(data_dir / 'stsb', 'test').sentences2))
  assert not set(zip(val['stsb'].sentences1, val['stsb'].sentences2)) & test_pairs


def test_scaling_is_chosen_on_the_validation_score():
  cfg, _ = study.cell_config('task_arithmetic')
  base = {'w': jnp.zeros(3)}
  specialists = {'a': {'w': jnp.full(3, 1.0)}, 'b': {'w': jnp.full(3, 1.8)}}
  # the score prefers a merged weight near 1.5: of s * (1 + 1.8), s = 0.5 comes closest
  score = lambda p: -float(jnp.abs(p['w'] - 1.5).sum())
  params, chosen = study.merge('task_arithmetic', cfg, base, specialists, score)
  assert chosen['scaling'] == 0.5 and set(chosen['validation_by_scaling']) == {0.3, 0.5, 0.7, 1.0}
  np.testing.assert_allclose(params['w'], 1.4, rtol=1e-6)
  soup, chosen = study.merge('greedy_soup', cfg, base, specialists, score)
  assert chosen['kept'] == ['b', 'a'] and float(soup['w'][0]) == pytest.approx(1.4)
  mid, _ = study.merge('slerp_a_b', cfg, base, specialists, score)
  np.testing.assert_allclose(mid['w'], 1.4, rtol=1e-6)  # colinear: linear interpolation


def test_summary_follows_the_records():
  def rec(cell, seed, sci):
    return {'cell': cell, 'seed': seed, 'test': {'scifact': sci, 'stsb': 0.8, 'mrpc': 0.85,
                                                 'sick': 0.78}}
  records = {'pretrained': {0: rec('pretrained', 0, 0.645)},
             'ties': {0: rec('ties', 0, 0.66), 1: rec('ties', 1, 0.67)}}
  s = study.summarize(records)
  assert s['scifact']['ties'] == pytest.approx(0.665) and s['n_seeds'] == {'pretrained': 1,
                                                                           'ties': 2}
  assert 'uniform_soup/seed0' in s['missing']
  assert s['std']['scifact']['ties'] == pytest.approx(np.std([0.66, 0.67], ddof=1))
  assert s['std']['scifact']['pretrained'] is None
  assert s['goal'] == {} and s['goal_met_by'] == []  # no specialist has a record yet
  table = study.markdown(s)
  assert '| ties | 0.6650 | 0.8000 | 0.8500 | 0.7800 | 2 |' in table
  assert 'goal' not in table


def test_the_goal_is_checked_against_each_specialist_and_the_pretrained_model(tmp_path):
  def rec(cell, **test):
    return {0: {'cell': cell, 'seed': 0, 'test': test}}
  base = dict(scifact=0.60, stsb=0.80, mrpc=0.80, sick=0.75)
  records = {'pretrained': rec('pretrained', **base)}
  for task in base:  # each specialist 5 points up on its own task, 1 point down elsewhere
    records[f'specialist_{task}'] = rec(f'specialist_{task}', **{
        t: v + (0.05 if t == task else -0.01) for t, v in base.items()})
  # 0.9 points under each specialist: within one point, and ahead of pretrained on all
  records['ties'] = rec('ties', **{t: v + 0.041 for t, v in base.items()})
  # 1.1 points under the SciFact specialist: misses the goal there alone
  records['uniform_soup'] = rec('uniform_soup', **{t: v + (0.039 if t == 'scifact' else 0.045)
                                                   for t, v in base.items()})
  # a hair under pretrained on SICK-R: not ahead of it on all
  records['slerp_stsb_mrpc'] = rec('slerp_stsb_mrpc', **{
      t: v + (-0.001 if t == 'sick' else 0.045) for t, v in base.items()})
  # a second seed whose SciFact specialist is 2 points stronger, and a merge of it 1.5 points
  # under it: -0.9 and -1.5 against each seed's own specialist, a mean of -1.2: not within
  records['specialist_scifact'][1] = {'cell': 'specialist_scifact', 'seed': 1, 'test': {
      t: v + (0.07 if t == 'scifact' else -0.01) for t, v in base.items()}}
  for task in ('stsb', 'mrpc', 'sick'):
    records[f'specialist_{task}'][1] = records[f'specialist_{task}'][0]
  records['dare_ties'] = {s: {'cell': 'dare_ties', 'seed': s, 'test': {
      t: v + 0.041 + (0.014 if s and t == 'scifact' else 0.0) for t, v in base.items()}}
      for s in (0, 1)}
  # a cell with seed 1 alone is set against seed 1's specialists, not their mean over seeds:
  # -0.8 points, where the mean (0.66) would give +0.2
  records['task_arithmetic'] = {1: {'cell': 'task_arithmetic', 'seed': 1, 'test': {
      t: v + (0.062 if t == 'scifact' else 0.041) for t, v in base.items()}}}
  # a cell whose seed has no specialists yet is not compared
  records['greedy_soup'] = {2: {'cell': 'greedy_soup', 'seed': 2, 'test': dict(base)}}
  s = study.summarize(records)
  g = s['goal']
  assert set(g) == {'uniform_soup', 'ties', 'task_arithmetic', 'dare_ties', 'slerp_stsb_mrpc'}
  assert g['task_arithmetic']['minus_specialist']['scifact'] == pytest.approx(-0.008)
  assert g['dare_ties']['minus_specialist']['scifact'] == pytest.approx((-0.009 - 0.015) / 2)
  assert g['dare_ties']['seeds'] == [0, 1] and not g['dare_ties']['meets_goal']
  assert g['ties']['minus_specialist']['scifact'] == pytest.approx(-0.009)
  assert g['ties']['meets_goal'] and g['ties']['ahead_of_pretrained']
  assert not g['uniform_soup']['within_1_point_of_specialists']
  assert g['uniform_soup']['ahead_of_pretrained'] and not g['uniform_soup']['meets_goal']
  assert g['slerp_stsb_mrpc']['minus_pretrained']['sick'] == pytest.approx(-0.001)
  assert not g['slerp_stsb_mrpc']['ahead_of_pretrained']
  assert s['goal_met_by'] == ['task_arithmetic', 'ties']  # in the study's cell order
  table = study.markdown(s)
  assert '| ties | -0.90 | -0.90 | -0.90 | -0.90 | yes | met |' in table
  assert '| uniform_soup | -1.10 | -0.50 | -0.50 | -0.50 | yes | not met |' in table
  assert 'Goal met by: task_arithmetic, ties.' in table
  study.plot(s, tmp_path / 'merging.png')
  assert (tmp_path / 'merging.png').stat().st_size > 0


def test_the_probe_loss_is_a_finite_positive_number(minilm):
  from embedjax.data.readers import PairData, RetrievalData
  words = ['cells', 'proteins', 'planets', 'music', 'boats', 'bread']
  sci = RetrievalData(corpus_ids=[f'd{i}' for i in range(6)],
                      corpus_texts=[f'an abstract about {w}' for w in words],
                      query_ids=[f'q{i}' for i in range(6)],
                      query_texts=[f'a claim about {w}' for w in words],
                      qrels={f'q{i}': {f'd{i}': 1} for i in range(6)})
  pairs = PairData(sentences1=[f'a sentence on {w}' for w in words],
                   sentences2=[f'another sentence on {w}' for w in words],
                   scores=np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0]))
  mrpc = PairData(sentences1=pairs.sentences1, sentences2=pairs.sentences2,
                  scores=np.ones(6))
  cfg, _ = study.cell_config('self_positioning', overrides=['--config.self_positioning.batch_size=2'])
  loss, batches = study.probe_loss_fn(minilm, {'scifact': sci, 'stsb': pairs, 'mrpc': mrpc,
                                               'sick': pairs}, cfg.self_positioning)
  assert len(batches) == 8
  value = float(loss(minilm.params, batches[0]))
  assert np.isfinite(value) and value > 0
