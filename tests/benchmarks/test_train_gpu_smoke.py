"""benchmarks/train_gpu.py --smoke: the GPU benchmark's whole path (embedjax, torch eager,
torch.compile, the JAX peer representax, FLOP counting, JSON) on the CPU with tiny shapes, in a
subprocess."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_smoke_checks import check_embedjax_runs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'benchmarks' / 'train_gpu.py'

pytestmark = pytest.mark.slow  # about 60 s of CPU time: two compilers, three frameworks


def test_smoke_writes_the_result_keys(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  pytest.importorskip('representax')
  out = tmp_path / 'bench_train_gpu.json'
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['JAX_PLATFORMS'] = 'cpu'        # a CPU run even where a GPU is visible
  env['CUDA_VISIBLE_DEVICES'] = ''
  # Generous: the wall time depends on what else the (shared) machine is running.
  proc = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--out', str(out)], env=env,
                        capture_output=True, text=True, timeout=900, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  record = json.loads(out.read_text())
  assert record['smoke'] is True and record['errors'] == {}
  assert record['device'] == 'cpu'
  for key in ('ratio_vs_torch_compile', 'ratio_vs_torch_eager', 'ratio_vs_embedjax_xla',
              'ratio_vs_representax'):
    assert set(record[key]) == {'minilm_l6', 'bert_base'}
    assert all(isinstance(v, float) and v > 0 for v in record[key].values())
  for model in ('minilm_l6', 'bert_base'):
    runs = record['results'][model]
    assert set(runs) == {'embedjax', 'torch_eager', 'torch_compile', 'embedjax_xla',
                         'representax'}
    for r in runs.values():
      assert r['pairs_per_s'] > 0 and r['step_ms'] > 0 and r['achieved_tflops'] > 0
      assert r['mfu'] is None  # no known peak for a CPU
      assert r['loss'] > 0
      assert 0 <= r['setup_s'] <= r['run_s']  # where the wall time went
    check_embedjax_runs(runs, 'steps')
    peer = runs['representax']  # its own step, in bf16 by its mixed policy, on this batch
    assert 'bfloat16_mixed policy' in peer['step'] and peer['attention_implementation'] == 'xla'
    assert peer['versions']['representax'] == '0.0.2'
    assert abs(peer['loss_no_dropout_at_init'] - math.log(4)) < 0.5  # random init: ~log(B)
    flops = record['flops_per_step'][model]
    assert flops['total'] == flops['dense'] + flops['attention'] > 0
  assert {'command', 'versions', 'machine'} <= set(record['provenance'])
  assert record['settings']['torch_compile']['backend'] == 'aot_eager'


def test_flop_count_by_hand():
  sys.path.insert(0, str(SCRIPT.parent))
  import train_gpu
  f = train_gpu.flops_per_step(dict(hidden=768, layers=12, heads=12, intermediate=3072),
                               batch=256, query_len=128, doc_len=128, vocab=30522)
  n = 12 * (4 * 768 ** 2 + 2 * 768 * 3072)  # 84,934,656 matmul parameters in BERT-base
  assert f['matmul_params'] == n == 84_934_656
  assert f['tokens'] == 256 * 256
  assert f['dense'] == 6 * n * 65_536
  assert f['attention'] == 12 * 12 * 768 * 256 * 2 * 128 ** 2
  assert f['total'] == f['dense'] + f['attention']


def test_a_spent_time_budget_skips_runs_and_still_writes_the_file(tmp_path):
  out = tmp_path / 'bench_train_gpu.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--time-budget', '1', '--out',
                         str(out)], env=env, capture_output=True, text=True, timeout=600,
                        cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())
  assert record['finished'] is True and record['results'] == {'minilm_l6': {}, 'bert_base': {}}
  assert set(record['errors']) == {f'{m}/{s}' for m in ('minilm_l6', 'bert_base')
                                   for s in ('embedjax', 'torch_eager', 'torch_compile',
                                             'embedjax_xla', 'representax')}
  assert all(e.startswith('skipped: time budget') for e in record['errors'].values())


def test_representax_falls_back_to_its_xla_attention_when_cudnn_fails(tmp_path):
  # On the GPU the peer tries its cuDNN attention first; a failure there must not cost the
  # window its number. On a CPU the cuDNN attention always fails, which exercises the fallback.
  pytest.importorskip('representax')
  out = tmp_path / 'bench_train_gpu.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='')
  proc = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--models', 'minilm_l6',
                         '--systems', 'representax', '--representax-attention', 'cudnn,xla',
                         '--out', str(out)], env=env, capture_output=True, text=True,
                        timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())
  assert record['errors'] == {}
  peer = record['results']['minilm_l6']['representax']
  assert peer['attention_implementation'] == 'xla' and peer['pairs_per_s'] > 0
  assert set(peer['attention_failed']) == {'cudnn'}


def test_suite_r_variants_run_beside_embedjax_and_a_child_applies_its_xla_flags(tmp_path):
  # Suite R's systems: a remat policy reaches the model, and a variant's XLA flags reach XLA in
  # its own process (an in-process run cannot apply them and says so).
  env = dict(os.environ, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='')
  env.pop('XLA_FLAGS', None)
  out = tmp_path / 'variants.json'
  proc = subprocess.run([sys.executable, str(SCRIPT), '--smoke', '--models', 'minilm_l6',
                         '--systems', 'embedjax,embedjax_remat_dots,embedjax_cublas', '--out',
                         str(out)], env=env, capture_output=True, text=True, timeout=600,
                        cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())
  runs = record['results']['minilm_l6']
  assert runs['embedjax_remat_dots']['remat'] == 'dots' and runs['embedjax']['remat'] == 'none'
  assert runs['embedjax_cublas']['variant']['xla_flags_applied'] is False
  assert set(record['variant_vs_embedjax']['minilm_l6']) == {'embedjax_remat_dots',
                                                             'embedjax_cublas'}
  child = tmp_path / 'child.json'
  proc = subprocess.run([sys.executable, str(SCRIPT), '--child', '--smoke', '--models',
                         'minilm_l6', '--systems', 'embedjax_cublas', '--child-out', str(child)],
                        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  raw = json.loads(child.read_text())
  assert raw['variant']['xla_flags_applied'] is True
  assert '--xla_gpu_enable_triton_gemm=false' in raw['xla_flags']
