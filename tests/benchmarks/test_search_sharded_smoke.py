"""Smoke run of benchmarks/search_sharded_cpu.py: tiny sizes on 8 forced CPU devices, in a
subprocess (the script sets XLA_FLAGS before it imports jax). No timing or memory checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from embedjax.paths import repo_root


def test_tiny_run_writes_the_record(tmp_path):
  out = tmp_path / 'x.json'
  script = repo_root() / 'benchmarks' / 'search_sharded_cpu.py'
  # 5,003 rows: not a multiple of 8, so the last shard holds padding; check chunks of 1,000 rows
  # so that the unsharded reference merges several chunk top-ks.
  cmd = [sys.executable, str(script), '--rows', '5003', '--dim', '64', '--queries', '40',
         '--check', '10', '--devices', '8', '--reps', '1', '--check-chunk-rows', '1000',
         '--out', str(out)]
  env = {key: value for key, value in os.environ.items() if key != 'XLA_FLAGS'}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=repo_root(),
                        env=env)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

  record = json.loads(out.read_text())
  assert set(record['results']) == {'int8', 'binary'}
  assert record['mismatches'] == 0
  for kind, result in record['results'].items():
    assert result['devices'] == 8 and result['n'] == 5003, kind
    assert result['queries_per_second'] > 0, kind
    assert len(result['seconds']) == 1, kind
    check = result['check']
    assert check['queries'] == 10 and check['mismatches'] == 0, (kind, check)
    assert check['score_mismatches'] == 0 and check['codes_identical'], (kind, check)
    memory = result['memory']
    assert memory['formula']['padded_rows'] == 8 * 626, kind
    assert memory['peak_rss_search_bytes'] > 0 and memory['bound_bytes'] > 0, kind
  prov = record['provenance']
  assert prov['git'] is not None and prov['git']['commit']
  assert prov['config_hash'] and prov['config']['rows'] == 5003
  assert prov['machine']['device_count'] == 8
  assert 'search_sharded_cpu.py' in record['command']
