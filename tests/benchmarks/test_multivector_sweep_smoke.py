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
  assert [(r['nprobe'], r['ndocs'], r['centroid_threshold']) for r in rec['sweep']] == [
      tuple(s) for s in sweep.SWEEP]
  assert sweep.SWEEP[0] == (2, 1024, 0.45)  # plaid.search's defaults
  for row in rec['sweep']:
    assert 0 <= row['recall_at_k_vs_exact'] <= 1 and row['queries_per_second'] > 0
    assert 0 <= row['recall_at_k_vs_exact_decompressed'] <= 1
  assert 0 < rec['exact_decompressed_recall_at_k_vs_exact'] <= 1
  assert rec['provenance']['git_commit']


def test_recall_by_hand():
  import numpy as np
  sys.path.insert(0, str(REPO / 'benchmarks'))
  import multivector_sweep_cpu
  assert multivector_sweep_cpu.recall_vs(np.array([[1, 2], [-1, 4]]), np.array([[2, 3], [4, 5]]), 2) \
      == 0.5
