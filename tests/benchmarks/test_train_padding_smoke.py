"""Smoke run of benchmarks/train_padding_cpu.py (--quick: synthetic texts, two batches of 8 at 128
tokens): every padding runs and writes its record; no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from embedjax.paths import repo_root


def test_quick_run_writes_every_padding_with_the_same_first_loss(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, str(repo_root() / 'benchmarks' / 'train_padding_cpu.py'),
                         '--quick', '--out', str(out)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  r = record['results']
  assert r['max_length']['shapes'] == ['8x128']
  assert all(s.startswith('8x') for s in r['bucket']['shapes'])
  assert r['pack']['rows_per_batch'] < 8  # two of these texts share a row
  assert r['max_length']['fill'] < r['bucket']['fill'] and r['max_length']['fill'] < r['pack']['fill']
  # The student trains without dropout: one loss whatever the padding.
  for padding in ('bucket', 'pack'):
    assert r[padding]['first_loss'] == pytest.approx(r['max_length']['first_loss'], rel=1e-5)
    assert len(r[padding]['seconds']) == 2 and r[padding]['speedup_vs_max_length'] > 0
  assert record['provenance']['git']['commit']
