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
  table = study.markdown(s)
  assert '| ties | 0.6650 | 0.8000 | 0.8500 | 0.7800 | 2 |' in table


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
