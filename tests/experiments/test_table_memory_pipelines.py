"""The memory check of the full-size-table families (experiments/table_memory_pipelines.py) on a
tiny vocabulary: each family's whole pipeline runs in the child and reports its peak RSS, and the
parent runs children, resumes from its lines and writes its files."""

from __future__ import annotations

import json

import pytest
from study_modules import load_experiment  # this folder (pytest puts it on sys.path)

from embedjax.config import load_config
from embedjax.paths import repo_root

REPO = repo_root()
TINY = ['--config.vocab_sizes=(1000,500,300,200)', '--config.dim=8', '--config.rows=4096',
        '--config.steps=3', '--config.batch_size=256', '--config.eval_rows=512']


@pytest.fixture(scope='module')
def experiment():
  return load_experiment('table_memory_pipelines', '_table_memory_pipelines')


def _cfg(*overrides):
  return load_config(str(REPO / 'configs' / 'table_memory_pipelines.py'), [*TINY, *overrides])


def test_the_config_takes_the_memory_checks_sizes():
  memory = load_config(str(REPO / 'configs' / 'table_compression.py:memory'), []).memory
  cfg = _cfg()
  assert sum(memory.vocab_sizes) == 10_000_000
  full = load_config(str(REPO / 'configs' / 'table_memory_pipelines.py'), [])
  assert tuple(full.vocab_sizes) == tuple(memory.vocab_sizes) and full.dim == memory.dim == 64
  assert (full.steps, full.batch_size, full.rows) == (memory.steps, memory.batch_size, memory.rows)
  assert cfg.epochs == cfg.dedup.pretrain_epochs == cfg.pep.search_epochs == 1


@pytest.mark.parametrize('only', ['dedup:0.1', 'pep:0.1', 'optembed:0.1', 'mgqe:0.1',
                                  'autodim:0.5', 'lpt:0.5', 'full:1'])
def test_each_pipeline_runs_whole_and_reports_its_peak(experiment, only):
  record = experiment.child(_cfg(f'--config.only={only}'))
  method, budget = only.split(':')
  assert record['method'] == method and record['budget'] == float(budget)
  assert record['feasible'], record.get('reason')
  assert 0 < record['served_bytes'] <= record['budget_bytes'] == int(float(budget) * 2000 * 8 * 4)
  assert record['peak_rss_bytes'] >= record['rss_after_data_bytes'] > 0
  two_stage = method in ('dedup', 'pep', 'optembed', 'autodim')
  assert ('stage_one_reused' in record['config']) == two_stage  # the whole pipeline ran
  if two_stage:
    assert record['config']['stage_one_reused'] is False  # a process of its own trains it


def test_an_unsizable_budget_is_recorded_as_infeasible(experiment):
  record = experiment.child(_cfg('--config.only=autodim:0.1'))
  assert record['feasible'] is False and 'exceeds' in record['reason']


@pytest.mark.slow  # two child processes
def test_the_parent_runs_children_resumes_and_writes_its_files(experiment, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)  # the children run `python -m experiments...` from the repository
  cfg = _cfg("--config.methods=('full','pep')", '--config.budgets=(0.1,)',
             f'--config.workdir={tmp_path / "work"}', f'--config.results={tmp_path / "out"}')
  result = experiment.run(cfg)
  assert [(r['method'], r['budget']) for r in result['records']] == [('full', 1.0), ('pep', 0.1)]
  assert all(r['feasible'] and r['vocab'] == 2000 for r in result['records'])
  lines = (tmp_path / 'work' / 'runs.jsonl').read_text().splitlines()
  assert len(lines) == 2
  assert json.loads((tmp_path / 'out.json').read_text())['records'] == result['records']
  md = (tmp_path / 'out.md').read_text()
  assert '| pep | 0.1x |' in md and '| full | 1x |' in md
  experiment.run(cfg)  # everything made: nothing runs again
  assert len((tmp_path / 'work' / 'runs.jsonl').read_text().splitlines()) == 2


@pytest.mark.slow  # two child processes, each failing at once
def test_a_failed_child_is_recorded_and_tried_again(experiment, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  # 10 rows cannot hold 3 steps of 256: the child exits with status 1 before any training
  cfg = _cfg("--config.methods=('full',)", '--config.rows=10',
             f'--config.workdir={tmp_path / "work"}', f'--config.results={tmp_path / "out"}')
  result = experiment.run(cfg)
  (record,) = result['records']
  assert record['error'] == 'exit status 1' and 'cannot hold' in record['stderr_tail']
  assert '| full | 1x | failed: exit status 1 |' in (tmp_path / 'out.md').read_text()
  experiment.run(cfg)  # tried again, not taken as done
  assert len((tmp_path / 'work' / 'runs.jsonl').read_text().splitlines()) == 2


def test_run_missing_false_writes_the_files_from_the_lines_and_runs_nothing(
    experiment, tmp_path, monkeypatch):
  real_run = experiment.subprocess.run  # the provenance's git calls use it too

  def no_child(cmd, *args, **kwargs):
    assert 'experiments.table_memory_pipelines' not in cmd, 'a child ran'
    return real_run(cmd, *args, **kwargs)
  monkeypatch.setattr(experiment.subprocess, 'run', no_child)
  work = tmp_path / 'work'
  work.mkdir()
  made = {'method': 'full', 'budget': 1.0, 'feasible': True, 'served_bytes': 2 ** 20,
          'peak_rss_bytes': 3 * 2 ** 30, 'rss_after_data_bytes': 2 ** 30, 'seconds': 12.0,
          'config': {}, 'provenance': {'git_commit': 'aaaaaaa1234'}}
  failed = {'method': 'pep', 'budget': 0.1, 'error': 'killed by SIGKILL', 'stderr_tail': '',
            'provenance': {'git_commit': 'bbbbbbb5678'}}
  lines = [json.dumps(made), json.dumps(failed)]
  (work / 'runs.jsonl').write_text('\n'.join(lines) + '\n')
  cfg = _cfg("--config.methods=('full','pep','dedup')", '--config.budgets=(0.1,)',
             '--config.run_missing=False', f'--config.workdir={work}',
             f'--config.results={tmp_path / "out"}')
  result = experiment.run(cfg)
  assert result['records'] == [made, failed]  # the failure is reported, not dropped
  assert (work / 'runs.jsonl').read_text().splitlines() == lines  # nothing appended
  md = (tmp_path / 'out.md').read_text()
  assert '| full | 1x | 1.0 MiB | 3.00 GiB | 1.00 GiB | 12 | one | aaaaaaa |' in md
  assert '| pep | 0.1x | failed: killed by SIGKILL | | | | | bbbbbbb |' in md
  assert 'Not run yet: dedup 0.1x.' in md
