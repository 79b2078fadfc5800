"""benchmarks/multivector_sweep_cpu.py --quick: the sweep's whole path on synthetic tokens, in a
subprocess, and its bookkeeping (its first setting is plaid.search's defaults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_sweep_writes_recalls_against_both_references(tmp_path):
  out = tmp_path / 'mv.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'multivector_sweep_cpu.py'),
                         '--quick', '--out', str(out)], env=env,
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  rec = json.loads(out.read_text())
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import multivector_sweep_cpu as sweep
  assert [c['bits'] for c in rec['codecs']] == [2, 4]
  assert rec['codecs'][0]['bytes_per_token'] < rec['codecs'][1]['bytes_per_token']
  assert sweep.SWEEP[0] == (2, 1024, 0.45)  # plaid.search's defaults
  for codec in rec['codecs']:
    assert [(r['nprobe'], r['ndocs'], r['centroid_threshold']) for r in codec['sweep']] == [
        tuple(s) for s in sweep.SWEEP]
    for row in codec['sweep']:
      assert 0 <= row['recall_at_k_vs_exact'] <= 1 and row['queries_per_second'] > 0
      assert 0 <= row['recall_at_k_vs_exact_decompressed'] <= 1
    assert 0 < codec['exact_decompressed_recall_at_k_vs_exact'] <= 1
  assert rec['provenance']['git_commit']


def test_bad_bits_are_refused_in_one_line():
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import pytest
  import multivector_sweep_cpu
  with pytest.raises(SystemExit):
    multivector_sweep_cpu.parse_args(['--bits', '2,3'])


def test_recall_by_hand():
  import numpy as np
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import multivector_sweep_cpu
  assert multivector_sweep_cpu.recall_vs(np.array([[1, 2], [-1, 4]]), np.array([[2, 3], [4, 5]]), 2) \
      == 0.5
