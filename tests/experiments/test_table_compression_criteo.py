"""The benchmark on the synthetic Criteo-shaped data, shrunk: ROBE, the dedup pipeline
(pre-train, deduplicate, fine-tune) PEP's (search, cut, retrain) AdaEmbed (its own train step) MGQE (tiers from the data's counts) and AutoDim (search, choose, retrain) run, a budget dedup cannot reach is recorded as infeasible
with its reason, a rerun resumes from the records, and the summary is recomputed from them."""

from __future__ import annotations

import json

import ml_collections as mlc
import pytest

from embedjax.config import load_config
from embedjax.paths import repo_root
from study_modules import load_experiment  # this folder (pytest puts it on sys.path)

REPO = repo_root()


@pytest.fixture(scope='module')
def experiment():
  return load_experiment('table_compression', '_table_compression_criteo')


def test_shrunk_criteo_benchmark_runs_resumes_and_summarises(experiment, tmp_path):
  cfg = load_config(str(REPO / 'configs' / 'table_compression.py:criteo'))
  cfg.criteo.rows, cfg.criteo.total_ids = 6000, 20_000
  cfg.methods = ('robe', 'dedup', 'pep', 'adaembed', 'mgqe', 'autodim', 'optembed')
  cfg.method_kw = mlc.ConfigDict({m: {} for m in cfg.methods})
  cfg.method_kw.optembed = {'dim_choices': (2, 8)}
  cfg.optembed.population, cfg.optembed.generations = 4, 1
  cfg.method_kw.adaembed = {'period': 5}
  cfg.method_kw.autodim = {'choices': (2, 8)}  # two widths: a short compile
  cfg.dedup.attempts = 1  # the tolerance is not raised: the infeasible path is recorded
  cfg.budgets, cfg.seeds, cfg.batch_size, cfg.dim = (1.0, 0.1), (0,), 256, 8
  cfg.workdir, cfg.results = str(tmp_path / 'run'), str(tmp_path / 'out' / 'tc')
  experiment.run_benchmark(cfg)
  result = json.loads((tmp_path / 'out' / 'tc.json').read_text())
  by = {(s['method'], s['budget']): s for s in result['summary']}
  assert by['robe', 0.1]['feasible'] and by['robe', 0.1]['bytes'] <= 0.1 * result['full_table_bytes']
  assert by['pep', 0.1]['bytes'] == 8 * by['pep', 0.1]['config']['kept_entries'] <= 0.1 * result['full_table_bytes']
  assert by['adaembed', 0.1]['bytes'] <= 0.1 * result['full_table_bytes']
  assert by['mgqe', 0.1]['config']['frequency_tiers']
  assert len(by['autodim', 1.0]['config']['dims']) == 26  # at dim 8, width 2 is 25%: not 10%
  assert not by['autodim', 0.1]['feasible'] and 'exceeds' in by['autodim', 0.1]['reason']
  assert by['dedup', 1.0]['feasible'] and by['dedup', 1.0]['config']['distinct_blocks'] > 0
  # one attempt at the fixed tolerance: one epoch leaves most rows farther apart than it
  assert not by['dedup', 0.1]['feasible'] and 'near-duplicate blocks found' in by['dedup', 0.1]['reason']
  # the first stages (PEP's search, dedup's pre-training) are trained at the first budget and
  # reused at the next: the same search, not a second one
  for m in ('pep', 'dedup'):
    assert by[m, 1.0]['config']['stage_one_reused'] is False, m
  assert by['pep', 0.1]['config']['stage_one_reused'] is True
  assert by['optembed', 1.0]['config']['stage_one_reused'] is False
  assert by['optembed', 0.1]['config']['stage_one_reused'] is True  # its supernet
  assert by['pep', 0.1]['config']['search_valid_auc'] == by['pep', 1.0]['config']['search_valid_auc']
  assert result['data']['name'] == 'criteo_synthetic' and len(result['data']['vocab_sizes']) == 26
  assert experiment._summarise(result['runs']) == result['summary']
  md = (tmp_path / 'out' / 'tc.md').read_text()
  assert 'synthetic Criteo-shaped' in md and (tmp_path / 'out' / 'tc.png').exists()
  lines = (tmp_path / 'run' / 'runs.jsonl').read_text().splitlines()
  experiment.run_benchmark(cfg)  # everything is recorded: nothing runs again
  assert (tmp_path / 'run' / 'runs.jsonl').read_text().splitlines() == lines


def test_identical_tables_share_runs_and_out_of_memory_is_recorded(experiment, tmp_path,
                                                                   monkeypatch):
  """int8 sized for 100% and 50% is the same table (its bytes are below both): the 50% cell is
  the 100% run, not repeated. A run XLA cannot allocate is recorded with its reason and the
  study goes on."""
  import jax
  cfg = load_config(str(REPO / 'configs' / 'table_compression.py:criteo'))
  cfg.criteo.rows, cfg.criteo.total_ids = 3000, 20_000
  cfg.methods = ('int8', 'tt')
  cfg.method_kw = mlc.ConfigDict({m: {} for m in cfg.methods})
  cfg.budgets, cfg.seeds, cfg.batch_size, cfg.dim = (1.0, 0.5), (0,), 256, 4
  cfg.workdir, cfg.results = str(tmp_path / 'run'), str(tmp_path / 'out' / 'tc')

  def out_of_memory(*args):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 56338043012 '
                                     'bytes.')
  monkeypatch.setitem(experiment.PIPELINES, 'tt', out_of_memory)
  experiment.run_benchmark(cfg)
  runs = [json.loads(line) for line in (tmp_path / 'run' / 'runs.jsonl').read_text().splitlines()]
  by = {(r['method'], r['budget']): r for r in runs}
  full, half = by['int8', 1.0], by['int8', 0.5]
  assert half['same_run_as_budget'] == 1.0 and 'same_run_as_budget' not in full
  assert half['test_auc'] == full['test_auc'] and half['provenance'] == full['provenance']
  assert half['budget_bytes'] == full['budget_bytes'] // 2
  for b in (1.0, 0.5):
    assert not by['tt', b]['feasible']
    assert by['tt', b]['reason'] == ('out of memory on this machine: RESOURCE_EXHAUSTED: Out of '
                                     'memory allocating 56338043012 bytes.')
  result = json.loads((tmp_path / 'out' / 'tc.json').read_text())
  summary = {(s['method'], s['budget']): s for s in result['summary']}
  assert summary['int8', 0.5]['same_run_as_budget'] == 1.0
  assert '(= 1x)' in (tmp_path / 'out' / 'tc.md').read_text()

  def not_memory(*args):
    raise jax.errors.JaxRuntimeError('INTERNAL: something else')
  monkeypatch.setitem(experiment.PIPELINES, 'tt', not_memory)
  cfg.budgets = (0.1,)
  with pytest.raises(jax.errors.JaxRuntimeError, match='INTERNAL'):
    experiment.run_benchmark(cfg)  # other runtime errors are not results


def test_a_subset_of_methods_keeps_the_other_entries_and_a_typo_is_named(experiment):
  cfg = load_config(str(REPO / 'configs' / 'table_compression.py:criteo'))
  cfg.methods = ('full', 'qr')  # as `--config.methods="('full','qr')"` gives it
  vocab = (40, 7, 300)
  assert set(experiment.dry_run(cfg, vocab)) == {(m, b) for m in cfg.methods for b in cfg.budgets}
  kw = cfg.method_kw.to_dict()
  cfg.method_kw = mlc.ConfigDict({**kw, 'hashnig': {}})
  with pytest.raises(ValueError, match=r"not a family: \['hashnig'\], missing: \[\]"):
    experiment.dry_run(cfg, vocab)
  cfg.method_kw = mlc.ConfigDict({m: v for m, v in kw.items() if m != 'qr'})
  with pytest.raises(ValueError, match=r"missing: \['qr'\]"):
    experiment.dry_run(cfg, vocab)


def test_a_first_stage_is_trained_once_per_seed_and_handed_out_as_copies(experiment):
  """Two budgets of one two-stage method share its first stage (same seed, same config but the
  budget); another seed or another setting trains its own. Each caller gets its own copy."""
  import numpy as np
  from embedjax.tables import base
  calls = []

  def table(budget, blocks=3, std=0.01):
    return base.Table('dedup', (4,), 2, None, None, config={
        'init_std': std, 'budget_bytes': budget, 'max_blocks': blocks})

  def train(seed):
    def fn():
      calls.append(seed)
      return {'table': {'embedding': np.full((4, 2), float(seed))}}, {'history': []}
    return fn
  cache: dict = {}
  a, log_a = experiment._stage_one(table(100), 0, 1, cache, train(0))
  b, log_b = experiment._stage_one(table(10, blocks=1), 0, 1, cache, train(0))
  assert calls == [0] and not log_a['stage_one_reused'] and log_b['stage_one_reused']
  a['table']['embedding'][:] = 7.0  # a caller changing its copy changes nobody else's
  np.testing.assert_array_equal(b['table']['embedding'], 0.0)
  experiment._stage_one(table(10), 1, 1, cache, train(1))  # another seed
  experiment._stage_one(table(10, std=0.1), 0, 1, cache, train(0))  # another setting
  experiment._stage_one(table(10), 0, 2, cache, train(0))  # another number of epochs
  assert calls == [0, 1, 0, 0]
