"""benchmarks/decoder_gpu.py (the GPU suite's suite B): its whole path (embedjax full and LoRA
steps with both attention settings, transformers + peft eager and torch.compile, FLOP counting,
JSON) on the CPU with a tiny decoder, run the way the GPU machine can run it (no grain,
tensorflow_datasets or array_record); and its FLOP count checked by hand for Qwen3-0.6B."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'benchmarks' / 'decoder_gpu.py'
SYSTEMS = {'embedjax', 'embedjax_xla', 'torch_eager', 'torch_compile'}
# The GPU image lacks these: the script runs with them made unimportable.
WRAPPER = """
import runpy, sys
for name in ('grain', 'tensorflow_datasets', 'array_record'):
  sys.modules[name] = None
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name='__main__')
"""


def _env() -> dict:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['JAX_PLATFORMS'] = 'cpu'        # a CPU run even where a GPU is visible
  env['CUDA_VISIBLE_DEVICES'] = ''
  env['HF_HUB_OFFLINE'] = '1'
  return env


def _run(tmp_path, *flags) -> dict:
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  pytest.importorskip('peft')
  out = tmp_path / 'bench_decoder_gpu.json'
  # Generous: the wall time depends on what else the (shared) machine is running.
  proc = subprocess.run([sys.executable, '-c', WRAPPER, str(SCRIPT), '--smoke', '--out', str(out),
                         *flags], check=False, env=_env(), capture_output=True, text=True,
                        timeout=900, cwd=tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(out.read_text())


@pytest.mark.slow  # about 40 s of CPU: two compilers, two frameworks, eight runs
def test_smoke_writes_the_result_keys(tmp_path):
  record = _run(tmp_path)
  assert record['smoke'] is True and record['finished'] is True
  assert record['errors'] == {} and record['skipped'] == {}
  assert record['device'] == 'cpu'
  for key in ('ratio_vs_torch_compile', 'ratio_vs_torch_eager'):
    assert set(record[key]) == {'full', 'lora'}
    assert all(isinstance(v, float) and v > 0 for v in record[key].values())
  for kind in ('full', 'lora'):
    assert set(record['ratios_vs_torch_compile'][kind]) == {'embedjax', 'embedjax_xla'}
    runs = record['results'][kind]
    assert set(runs) == SYSTEMS
    for system, r in runs.items():
      assert r['tokens_per_s'] > 0 and r['pairs_per_s'] > 0 and r['step_ms'] > 0, system
      assert r['achieved_tflops'] > 0 and r['mfu'] is None  # no known peak for a CPU
      assert math.isfinite(r['loss']) and r['loss'] > 0
      assert r['trainable_params'] <= r['param_count']
      assert (r['lora'] is not None) == (kind == 'lora')
    assert runs['embedjax']['attention_impl'] == 'auto'
    assert runs['embedjax_xla']['attention_impl'] == 'xla'
    prof = runs['embedjax']['profile']  # the smoke run's host ops, summed
    assert prof['rows'] == 'host' and prof['total_ms'] > 0 and prof['steps'] >= 1
    assert prof['top'] and all(t['ms'] > 0 for t in prof['top'])
    for system in ('embedjax', 'embedjax_xla'):  # a CPU has no cuDNN: both take XLA's path
      assert runs[system]['attention_path'] == 'xla'
      assert runs[system]['hlo_calls_cudnn_fmha'] is False
      assert runs[system]['compile_s'] > 0
    assert runs['torch_compile']['compile'] == {'backend': 'aot_eager', 'mode': None}
    assert runs['torch_eager']['attn_implementation'] == 'sdpa'
    flops = record['flops_per_step'][kind]
    assert flops['total'] == flops['dense'] + flops['adapter'] + flops['attention'] > 0
  # the same model on both sides; LoRA trains the same adapter size in both
  assert record['param_counts_agree'] is True
  lora = record['results']['lora']
  assert lora['embedjax']['trainable_params'] == lora['torch_eager']['trainable_params'] \
      == record['flops_per_step']['lora']['lora_params']
  full = record['results']['full']
  assert full['embedjax']['trainable_params'] == full['embedjax']['param_count']
  assert record['settings']['torch_compile']['backend'] == 'aot_eager'
  assert record['settings']['remat'] == 'full'
  assert record['settings']['tokens_per_step'] == 2 * (16 + 16)
  assert {'command', 'versions', 'machine', 'date'} <= set(record['provenance'])
  assert {'torch', 'transformers', 'peft'} <= set(record['provenance']['versions'])


def test_subprocess_runs(tmp_path):  # about 10 s: the GPU run's path, a subprocess per run
  record = _run(tmp_path, '--subprocess', '--kinds', 'lora', '--systems', 'embedjax,torch_eager')
  assert set(record['results']['lora']) == {'embedjax', 'torch_eager'}
  assert record['errors'] == {} and record['skipped'] == {} and record['finished'] is True
  assert record['settings']['isolation'] == 'one subprocess per (kind, system)'
  assert record['ratio_vs_torch_eager']['lora'] > 0
  assert record['ratio_vs_torch_compile']['lora'] is None
  assert not list(tmp_path.glob('.bench_decoder_gpu.*'))  # the runs' own files are cleaned up


def test_runs_beyond_the_budget_are_skipped(tmp_path):
  record = _run(tmp_path, '--subprocess', '--budget-s', '10', '--min-run-s', '45')
  assert record['results'] == {'full': {}, 'lora': {}} and record['errors'] == {}
  assert set(record['skipped']) == {f'{k}/{s}' for k in ('full', 'lora') for s in SYSTEMS}
  assert record['finished'] is True
  assert record['ratio_vs_torch_compile'] == {'full': None, 'lora': None}


def _module():
  sys.path.insert(0, str(SCRIPT.parent))
  import decoder_gpu
  return decoder_gpu


def test_run_order_puts_the_comparison_first():
  dg = _module()
  assert dg.run_order(('full', 'lora'), dg.SYSTEMS) == [
      ('full', 'embedjax'), ('full', 'torch_compile'), ('lora', 'embedjax'),
      ('lora', 'torch_compile'), ('full', 'torch_eager'), ('lora', 'torch_eager'),
      ('full', 'embedjax_xla'), ('lora', 'embedjax_xla')]


def test_flop_count_by_hand():
  dg = _module()
  shape = dg.model_shape(smoke=False)
  # Qwen3-0.6B: hidden 1024, 28 layers, 16 query heads and 8 key-value heads of 128, SwiGLU 3072
  assert (shape['hidden_size'], shape['num_hidden_layers'], shape['num_attention_heads'],
          shape['num_key_value_heads'], shape['head_dim'], shape['intermediate_size'],
          shape['vocab_size']) == (1024, 28, 16, 8, 128, 3072, 151669)
  q_width, kv_width = 16 * 128, 8 * 128                 # 2048 and 1024: wider / narrower than h
  per_layer = (1024 * q_width + 1024 * kv_width + 1024 * kv_width + q_width * 1024  # q, k, v, o
               + 3 * 1024 * 3072)                       # gate, up, down
  assert per_layer == 2_097_152 + 2 * 1_048_576 + 2_097_152 + 9_437_184 == 15_728_640
  n = 28 * per_layer
  assert n == 440_401_920
  tokens = 32 * (512 + 512)
  attention = 12 * 28 * q_width * 32 * (512 ** 2 + 512 ** 2)

  full = dg.flops_per_step(shape, 'full', batch=32, query_len=512, doc_len=512)
  assert full['matmul_params'] == n and full['tokens'] == tokens == 32_768
  assert full['dense'] == 6 * n * tokens
  assert full['attention'] == attention
  assert full['total'] == 6 * n * tokens + attention
  assert full['embedding_params'] == 151669 * 1024
  assert full['all_params_convention'] == 6 * (n + 151669 * 1024) * tokens

  lora = dg.flops_per_step(shape, 'lora', batch=32, query_len=512, doc_len=512, lora_rank=16,
                           lora_targets=('q_proj', 'k_proj', 'v_proj', 'o_proj'))
  p = 28 * 16 * ((1024 + q_width) + 2 * (1024 + kv_width) + (q_width + 1024))
  assert lora['lora_params'] == p == 4_587_520
  assert lora['dense'] == 4 * n * tokens            # frozen base: no weight gradients
  assert lora['adapter'] == 6 * p * tokens
  assert lora['attention'] == attention
  assert lora['total'] == 4 * n * tokens + 6 * p * tokens + attention
  assert lora['merged_path_extra'] == 2 * 28 * (2 * 2_097_152 + 2 * 1_048_576) * tokens


def test_counts_match_both_models():
  """The by-hand parameter counts are the models': embedjax's params (abstract, eval_shape) and
  adapter, and transformers' Qwen3Model + peft on the meta device (nothing allocated)."""
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  pytest.importorskip('peft')
  import jax
  import numpy as np

  from embedjax.models.decoder import init_decoder_params
  from embedjax.models.lora import init_lora, lora_param_count
  dg = _module()
  shape = dg.model_shape(smoke=False)
  args = dg.build_parser().parse_args([])
  flops = dg.flops_per_step(shape, 'lora', 32, 512, 512)
  spec = dg.embedjax_spec(shape, args, 'auto')
  lora_cfg = dg.embedjax_lora_config(args)

  def init():
    encoder = init_decoder_params(spec.decoder, jax.random.key(0))
    return encoder, init_lora(jax.random.key(0), encoder, lora_cfg)

  encoder, adapter = jax.eval_shape(init)
  leaves = jax.tree_util.tree_leaves_with_path(encoder)
  total = sum(int(np.prod(x.shape)) for _, x in leaves)
  matmul = sum(int(np.prod(x.shape)) for path, x in leaves
               if x.ndim == 2 and 'embed_tokens' not in jax.tree_util.keystr(path))
  assert matmul == flops['matmul_params']
  assert lora_param_count(adapter) == flops['lora_params']
  assert 0.59e9 < total < 0.6e9  # "0.6B"
  for kind in ('full', 'lora'):
    model, trainable = dg.torch_model(shape, kind, args, 'meta')
    assert sum(p.numel() for n, p in model.named_parameters() if 'lora_' not in n) == total
    assert sum(p.numel() for p in trainable) == (total if kind == 'full' else flops['lora_params'])
