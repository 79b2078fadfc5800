"""Smoke run of benchmarks/input_cpu.py (--quick: synthetic pairs, three batches of 32 per
padding and thread count, with and without the token-id cache); no timing checks."""

from __future__ import annotations

import json
import subprocess
import sys

from embedjax.paths import repo_root


def test_quick_run_writes_every_padding_and_thread_count(tmp_path):
  out = tmp_path / 'bench.json'
  proc = subprocess.run([sys.executable, str(repo_root() / 'benchmarks' / 'input_cpu.py'),
                         '--quick', '--threads', '2', '--out', str(out)], capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  assert set(record['results']) == {f'{p}/threads{t}{c}' for p in ('max_length', 'bucket', 'pack')
                                    for t in (1, 2) for c in ('', '/cached')}
  assert {r['token_cache'] for r in record['results'].values()} == {False, True}
  for r in record['results'].values():
    assert r['pairs_per_s'] > 0 and r['array_tokens_per_batch'] > 0
  # Packing never makes larger arrays than padding to the maximum length.
  r = record['results']
  assert r['pack/threads1']['array_tokens_per_batch'] <= r['max_length/threads1'][
      'array_tokens_per_batch']
  assert record['provenance']['git']['commit']
