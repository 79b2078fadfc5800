"""Smoke run of benchmarks/long_context_cpu.py at one short length (both attention forms, one
timed call each, each in its own process); no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys

from embedjax.paths import repo_root


def test_one_length_writes_the_result_file(tmp_path, minilm):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, str(repo_root() / 'benchmarks' / 'long_context_cpu.py'),
                         '--lengths', '384', '--runs', '1', '--out', str(out)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  cells = record['results']['384']
  assert set(cells) == {'blocked', 'plain'}
  for name, r in cells.items():
    assert 'error' not in r, (name, r)
    assert len(r['seconds']) == 1 and r['peak_rss_gib'] > 0 and r['tokens_per_s'] > 0
  assert record['provenance']['git']['commit']
