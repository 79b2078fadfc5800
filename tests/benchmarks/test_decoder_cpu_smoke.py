"""Smoke run of benchmarks/decoder_cpu.py: --quick (a tiny decoder, one timed run) in its own
process, no timing checks; both systems must give the same pooled embeddings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from embedjax.paths import repo_root

pytest.importorskip('torch')
pytest.importorskip('transformers')


def test_quick_run_writes_the_result_file(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, str(repo_root() / 'benchmarks' / 'decoder_cpu.py'),
                         '--quick', '--out', str(out)], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  assert set(record['results']) == {'causal', 'bidirectional'}
  for mode, r in record['results'].items():
    assert r['min_cosine_pooled'] > 0.99999, mode
    assert r['ratio_vs_transformers'] > 0
    assert len(r['seconds']['embedjax']) == len(r['seconds']['transformers']) == 1
  assert record['provenance']['git']['commit'] and record['settings']['param_count'] > 0
