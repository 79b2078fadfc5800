"""The pruning study's parts on the packaged model with synthetic pairs: every cell's config loads,
each method prunes what it says, and the summary is what the records hold."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from embedjax.paths import repo_root


def _load():
  spec = importlib.util.spec_from_file_location('_pruning_study',
                                                repo_root() / 'experiments' / 'pruning.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


study = _load()


def test_every_cell_config_loads_and_names_its_method():
  for cell in study._cells():
    cfg, chash = study.cell_config(cell)
    assert cfg.cell == cell and cfg.method in ('none', 'magnitude', 'gaprune', 'structured')
    assert len(chash) >= 16
  runs = study.expected_runs()
  assert ('gaprune_50_recovered', 1) in runs and ('gaprune_50', 0) in runs
  assert ('gaprune_50', 1) not in runs  # one-shot cells run once
  with pytest.raises(Exception, match='unknown pruning cell'):
    study.cell_config('magnitude_99')


def test_each_method_prunes_what_it_says(minilm, monkeypatch, tmp_path):
  pairs = [(f'claim number {i} about cells', f'an abstract that cites finding {i}') for i in range(8)]
  monkeypatch.setattr(study, 'training_pairs', lambda name, data_dir: pairs)
  small = ['--config.gaprune.batches=2', '--config.gaprune.batch_size=2',
           '--config.gaprune.query_len=16', '--config.gaprune.doc_len=16']
  cache = {}
  cfg, _ = study.cell_config('gaprune_50', overrides=small)
  pruned, facts = study.prune(minilm, cfg, tmp_path, cache)
  assert facts['layer_matrix_sparsity'] == pytest.approx(0.5, abs=1e-6)
  assert len(cache) == 2  # the domain and the general side, computed once each
  cfg, _ = study.cell_config('magnitude_50', overrides=small)
  magnitude, _ = study.prune(minilm, cfg, tmp_path, cache)
  zeros = lambda m: np.asarray(m.params['layer_0']['intermediate_dense']['kernel']) == 0
  assert not np.array_equal(zeros(pruned), zeros(magnitude))  # GAPrune ranks differently
  np.testing.assert_array_equal(pruned.params['word_embeddings']['embedding'],
                                minilm.params['word_embeddings']['embedding'])
  cfg, _ = study.cell_config('structured_heads_25_neurons_25')
  smaller, facts = study.prune(minilm, cfg, tmp_path)
  assert facts['backbone'] == {'num_hidden_layers': 6, 'num_attention_heads': 9,
                               'attention_head_size': 32, 'head_size': 32,
                               'intermediate_size': 1152}
  assert smaller.spec.bert.intermediate_size == 1152
  # neurons alone: the heads keep the default width, stated as 0 in the config, 32 in head_size
  cfg, _ = study.cell_config('structured_neurons_50')
  _, facts = study.prune(minilm, cfg, tmp_path)
  assert facts['backbone']['attention_head_size'] == 0 and facts['backbone']['head_size'] == 32
  speed = study.encode_speed(smaller, minilm, ['a short text', 'another one'], repeats=1)
  assert speed['speedup'] == speed['median_dense_s'] / speed['median_pruned_s']


def test_summary_follows_the_records():
  def rec(cell, method, sparsity, sci, sts, **extra):
    return {'cell': cell, 'method': method, 'config': {'sparsity': sparsity},
            'test': {'scifact': {'ndcg@10': sci}, 'stsb': {'spearman': sts}}, **extra}

  def structured(cell, heads, attention_head_size, ffn, params, speedup):  # 32-wide heads
    backbone = {'num_hidden_layers': 6, 'num_attention_heads': heads,
                'attention_head_size': attention_head_size, 'head_size': 32,
                'intermediate_size': ffn}
    return rec(cell, 'structured', 0.0, 0.5, 0.7, params=params, dense_params=22_713_216,
               pruning={'backbone': backbone}, encode_speed={'speedup': speedup})
  records = {
      'dense': {0: rec('dense', 'none', 0.0, 0.645, 0.82)},
      'magnitude_50': {0: rec('magnitude_50', 'magnitude', 0.5, 0.40, 0.61)},
      'gaprune_50': {0: rec('gaprune_50', 'gaprune', 0.5, 0.45, 0.60)},
      'gaprune_50_recovered': {0: rec('gaprune_50_recovered', 'gaprune', 0.5, 0.60, 0.70,
                                      recovered=True),
                               1: rec('gaprune_50_recovered', 'gaprune', 0.5, 0.62, 0.74,
                                      recovered=True)},
      'structured_heads_50': {0: structured('structured_heads_50', 6, 32, 1536, 15_000_000, 1.3)},
      'structured_neurons_50': {0: structured('structured_neurons_50', 12, 0, 768, 19_000_000,
                                              1.4)},
  }
  s = study.summarize(records)
  assert s['scores']['none']['0'] == {'scifact_ndcg@10': 0.645, 'stsb_spearman': 0.82,
                                      'n_seeds': 1}
  assert s['scores']['gaprune']['50']['scifact_ndcg@10'] == 0.45
  recovered = s['scores']['gaprune+recovery']['50']
  assert recovered['scifact_ndcg@10'] == pytest.approx(0.61) and recovered['n_seeds'] == 2
  assert recovered['stsb_spearman'] == pytest.approx(0.72)
  assert s['structured']['structured_heads_50']['params_fraction'] == pytest.approx(15 / 22.713216)
  assert 'magnitude_30/seed0' in s['missing'] and 'dense/seed0' not in s['missing']
  assert 'magnitude_30_recovered/seed1' in s['missing']
  table = study.markdown(s)
  assert '| gaprune | 50 | 0.4500 | 0.6000 | 1 |' in table and '1.30x' in table
  assert '| gaprune+recovery | 50 | 0.6100 | 0.7200 | 2 |' in table
  assert '| structured_neurons_50 | 12 x 32 | 768 | 0.84 |' in table

