"""Every committed summary equals what its own program computes from the committed per-run records.

A summary (mean over seeds, a fit, a median of round ratios, a retention) is only trustworthy if a
program wrote it from the records beside it: each test below recomputes one summary from the
records in the same file, with the function that wrote it, and fails on any mismatch.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys

import ml_collections
import numpy as np
import pytest

from embedjax.paths import repo_root

RESULTS = repo_root() / 'results'


def _load(rel: str):
  path = repo_root() / rel
  spec = importlib.util.spec_from_file_location(f'_summary_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _json(rel: str) -> dict:
  return json.loads((RESULTS / rel).read_text())


TABLE_STUDIES = ('table_compression', 'table_compression_criteo')  # MovieLens, Criteo-shaped


@pytest.mark.parametrize('stem', TABLE_STUDIES)
def test_table_compression_summary_is_the_mean_over_its_runs(stem):
  rec = _json(f'{stem}.json')
  recomputed = _load('experiments/table_compression.py')._summarise(rec['runs'])
  by_key = {(r['method'], r['budget']): r for r in recomputed}
  assert len(by_key) == len(rec['summary'])
  for row in rec['summary']:
    again = by_key[row['method'], row['budget']]
    assert again.keys() == row.keys(), (row['method'], row['budget'])
    for key, value in row.items():
      if isinstance(value, float):
        assert again[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (row['method'], key)
      else:
        assert again[key] == value, (row['method'], row['budget'], key)


def test_critical_n_summary_and_fit_follow_from_the_probe_records():
  rec = _json('limit/critical_n.json')
  fe_exp = _load('experiments/limit_free_embedding.py')
  dims = sorted(int(d) for d in rec['runs'])
  cfg = ml_collections.ConfigDict({'dims': dims, 'protocol': rec['protocol'],
                                   'extrapolate': [int(d) for d in rec['extrapolated']]})
  again = fe_exp.summarise(cfg, rec['runs'])
  for key in ('critical_n', 'first_failure', 'extrapolated', 'paper_fit_extrapolated', 'fit_r2'):
    assert again[key] == rec[key], key
  np.testing.assert_allclose(again['fit'], rec['fit'], rtol=1e-12)
  for d, run in rec['runs'].items():
    bounds = fe_exp.probe_bounds(run)
    assert bounds['largest_solved'] == rec['critical_n'][d]


def test_search_benchmark_ratios_are_the_medians_of_their_rounds():
  rec = _json('bench_search_cpu.json')
  cases = {(c['dataset'], c['index'], c['lib']): c for c in rec['cases']}
  cells = [(ds, index, entry) for ds, per in rec['summary'].items() for index, entry in per.items()]
  assert cells
  for ds, index, entry in cells:
    assert entry['ratio_vs_faiss'] == statistics.median(entry['round_ratios']), (ds, index)
    e, f = cases[ds, index, 'embedjax'], cases[ds, index, 'faiss']
    assert entry['embedjax_qps'] == e['queries_per_second']
    assert entry['faiss_qps'] == f['queries_per_second']
    assert entry['ratio_of_median_qps'] == pytest.approx(
        e['queries_per_second'] / f['queries_per_second'], rel=1e-12)


def test_storage_tradeoff_retention_and_compression_follow_from_each_row():
  rec = _json('storage_tradeoff.json')
  for task, metric in (('scifact', 'ndcg@10'), ('stsb', 'spearman')):
    rows = rec[task]
    base = rows['float32'][metric]
    for name, row in rows.items():
      assert row['retention'] == pytest.approx(row[metric] / base, rel=1e-12), (task, name)
      assert row['compression'] == pytest.approx(1536 / row['bytes_per_vector'], rel=1e-12)


def test_matryoshka_training_retention_is_each_dim_over_the_full_width():
  rec = _json('train/minilm_scifact_mrl.json')
  table = rec['ndcg@10']
  full = table['384']
  for d, row in table.items():
    for run in ('plain', 'mrl'):
      assert row[f'{run}_retention'] == pytest.approx(row[run] / full[run], rel=1e-12), (d, run)


def test_generated_doc_tables_are_their_result_files():
  regen = _load('experiments/regenerate.py')
  readme = (repo_root() / 'README.md').read_text()
  assert regen.readme_eval_block() in readme, 'run: python -m experiments.regenerate --readme'
  doc = (repo_root() / 'docs' / 'storage_tradeoff.md').read_text()
  assert regen.storage_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  doc = (repo_root() / 'docs' / 'table_compression.md').read_text()
  assert regen.tables_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.tables_doc_block('table_compression_criteo') in doc, \
      'run: python -m experiments.regenerate --readme'
  doc = (repo_root() / regen.SHARDED_DOC).read_text()
  assert regen.sharded_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.decoder_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.gradcache_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.encode_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.train_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.losses_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.long_context_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  assert regen.multivector_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  doc = (repo_root() / regen.LIMIT_DOC).read_text()
  assert regen.patterns_doc_block() in doc, 'run: python -m experiments.regenerate --readme'
  doc = (repo_root() / regen.LLM_DOC).read_text()
  assert regen.llm_doc_block() in doc, 'run: python -m experiments.regenerate --readme'


def test_criteo_table_study_records_are_its_committed_runs_file():
  # the Criteo-shaped study is resumable cells, one committed JSONL line each: its results file
  # must summarise exactly those lines (in the study's plan order, which may differ from the
  # file's)
  rec = _json('table_compression_criteo.json')
  path = repo_root() / rec['config']['workdir'] / 'runs.jsonl'
  lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  key = lambda r: (r['method'], r['budget'], r['seed'])
  assert len({key(r) for r in lines}) == len(lines) == len(rec['runs'])
  assert {key(r): r for r in rec['runs']} == {key(r): r for r in lines}


def test_table_memory_check_is_its_committed_lines_and_renders_from_its_json():
  # the 10M-id memory check finishes over sessions: its results file must hold each job's line
  # from the committed runs file (the made one, else the last failure) and its markdown that JSON
  rec = _json('table_compression_memory_pipelines.json')
  exp = _load('experiments/table_memory_pipelines.py')
  cfg = ml_collections.ConfigDict(rec['config'])
  done, failed = exp.read_runs(repo_root() / cfg.workdir / 'runs.jsonl')
  assert rec['records'] == exp.job_records(cfg, done, failed)
  assert exp.markdown(cfg, rec) == (RESULTS / 'table_compression_memory_pipelines.md').read_text()


@pytest.mark.parametrize('stem', TABLE_STUDIES)
def test_table_compression_markdown_is_rendered_from_its_json(stem):
  # the doc's table is copied from results/<stem>.md: that file must be the JSON's
  rec = _json(f'{stem}.json')
  exp = _load('experiments/table_compression.py')
  cfg = ml_collections.ConfigDict(rec['config'])
  main = [s for s in rec['summary'] if not s['method'].startswith('model:')]
  sweep = [s for s in rec['summary'] if s['method'].startswith('model:')]
  again = exp._benchmark_markdown(cfg, main, sweep, rec['full_table_bytes'], rec)
  assert again == (RESULTS / f'{stem}.md').read_text()


def test_recipes_summary_and_table_follow_from_the_run_records():
  root = RESULTS / 'recipes'
  if not (root / 'summary.json').exists():
    pytest.skip('the recipes study has no records yet')
  exp = _load('experiments/recipes.py')
  again = json.loads(json.dumps(exp.summarize(exp.load_records(root))))  # as stored (JSON types)
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.recipes --summarize'
  assert exp.markdown(again) == (root / 'recipes.md').read_text()
  for cell, seeds in exp.load_records(root).items():
    for seed, rec in seeds.items():
      assert rec['git_commit'] and rec['config_hash'], (cell, seed)  # a program wrote it


def test_elastic_retention_summary_and_table_follow_from_the_run_records():
  root = RESULTS / 'elastic_retention'
  if not (root / 'summary.json').exists():
    pytest.skip('the elastic-retention study has no records yet')
  exp = _load('experiments/elastic_retention.py')
  again = json.loads(json.dumps(exp.summarize(*exp.load_records(root, RESULTS / 'recipes'))))
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.elastic_retention --summarize'
  assert exp.markdown(again) == (root / 'elastic_retention.md').read_text()
  for cell, seeds in exp.load_records(root, RESULTS / 'recipes')[0].items():
    for seed, rec in seeds.items():
      assert rec['git_commit'] and rec['config_hash'], (cell, seed)  # a program wrote it


def test_adapters_summary_and_table_follow_from_the_run_records():
  root = RESULTS / 'adapters'
  if not (root / 'summary.json').exists():
    pytest.skip('the adapters study has no records yet')
  exp = _load('experiments/adapters.py')
  again = json.loads(json.dumps(exp.summarize(exp.load_records(root))))
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.adapters --summarize'
  assert exp.markdown(again) == (root / 'adapters.md').read_text()


def test_beyond_single_vector_summary_and_table_follow_from_the_run_records():
  root = RESULTS / 'beyond_single_vector'
  if not (root / 'summary.json').exists():
    pytest.skip('the beyond-single-vector study has no records yet')
  exp = _load('experiments/beyond_single_vector.py')
  again = json.loads(json.dumps(exp.summarize(exp.load_records(root),
                                              exp.load_free_embedding(root))))
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.beyond_single_vector --summarize'
  assert exp.markdown(again) == (root / 'beyond_single_vector.md').read_text()
  for cell, seeds in exp.load_records(root).items():
    for seed, rec in seeds.items():
      assert rec['git_commit'] and rec['config_hash'], (cell, seed)  # a program wrote it


def test_long_context_summary_and_table_follow_from_the_cell_records():
  root = RESULTS / 'long_context'
  if not (root / 'summary.json').exists():
    pytest.skip('the long-context study has no records yet')
  exp = _load('experiments/long_context.py')
  again = json.loads(json.dumps(exp.summarize(exp.load_records(root))))
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.long_context --summarize'
  assert exp.markdown(again) == (root / 'long_context.md').read_text()


def test_merging_summary_and_table_follow_from_the_run_records():
  root = RESULTS / 'merging'
  if not (root / 'summary.json').exists():
    pytest.skip('the merging study has no records yet')
  exp = _load('experiments/merging.py')
  again = json.loads(json.dumps(exp.summarize(exp.load_records(root))))
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.merging --summarize'
  assert exp.markdown(again) == (root / 'merging.md').read_text()


def test_pruning_summary_and_table_follow_from_the_run_records():
  root = RESULTS / 'pruning'
  if not (root / 'summary.json').exists():
    pytest.skip('the pruning study has no records yet')
  exp = _load('experiments/pruning.py')
  again = json.loads(json.dumps(exp.summarize(exp.load_records(root))))
  assert again == json.loads((root / 'summary.json').read_text()), \
      'run: python -m experiments.pruning --summarize'
  assert exp.markdown(again) == (root / 'pruning.md').read_text()
  for cell, seeds in exp.load_records(root).items():
    for seed, rec in seeds.items():
      assert rec['git_commit'] and rec['config_hash'], (cell, seed)  # a program wrote it
