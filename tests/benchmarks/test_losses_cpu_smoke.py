"""Smoke run of benchmarks/losses_cpu.py --quick in its own process: every loss of LOSSES is
timed next to InfoNCE and a (shrunk) train step; no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys

from embedjax.losses import LOSSES
from embedjax.paths import repo_root


def test_quick_run_writes_the_result_file(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, str(repo_root() / 'benchmarks' / 'losses_cpu.py'),
                         '--quick', '--out', str(out)], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  assert set(record['results']) == {'8'}
  for row in record['results'].values():
    assert set(row) == set(LOSSES)
    assert row['info_nce']['ratio_vs_info_nce'] == 1.0
    assert all(r['median_ms'] > 0 for r in row.values())
  assert all('fraction_of_step' in r for r in record['results']['8'].values())
  assert record['step_median_ms'] > 0 and record['provenance']['git']['commit']
