"""The memory check's child process, on a tiny vocabulary: every job kind it runs (a compressed
table at a budget, and the full-table probes) trains and reports its record."""

from __future__ import annotations

import json

import pytest

from embedjax.config import load_config
from embedjax.paths import repo_root
from study_modules import load_experiment  # this folder (pytest puts it on sys.path)

REPO = repo_root()


@pytest.fixture(scope='module')
def experiment():
  return load_experiment('table_compression', '_table_compression')


@pytest.mark.parametrize('only', ['full:2000', 'hashing:0.1', 'adaembed:0.1'])
def test_memory_child_reports_a_record(experiment, capsys, only):
  cfg = load_config(str(REPO / 'configs' / 'table_compression.py:memory'), [
      '--config.memory.vocab_sizes=(1000,500,300,200)', '--config.memory.dim=8',
      '--config.memory.rows=2048', '--config.memory.steps=3', '--config.memory.batch_size=64',
      f'--config.memory.only={only}'])
  experiment._memory_child(cfg)
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  method, value = only.split(':')
  assert record['method'] == method and record['value'] == value
  if method == 'full':  # the probe's vocabulary is the fields scaled to about 2,000 ids
    assert record['vocab'] == sum(experiment.probe_vocab((1000, 500, 300, 200), 2000)) == 2000
    assert record['served_bytes'] == 2000 * 8 * 4
  assert record['steps_per_s'] > 0 and record['first_bce'] > 0
