"""benchmarks/encode_gpu.py --smoke: the GPU encoding benchmark's whole path (fixed shapes with
embedjax, torch eager and torch.compile; real text through embedjax's encode and the
sentence-transformers-style torch loop; --prepare-texts; JSON) on the CPU with tiny shapes.

The runs go through a wrapper that makes ml_collections, grain, tensorflow_datasets and
array_record unimportable first, as on the GPU machine (which has none of them): an import of one
of them anywhere on the script's path fails the run."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_smoke_checks import check_embedjax_runs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / 'benchmarks' / 'encode_gpu.py'
BLOCKED = ('ml_collections', 'grain', 'tensorflow_datasets', 'array_record')
WRAPPER = f"""
import runpy, sys
for m in {BLOCKED!r}:
  sys.modules[m] = None
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name='__main__')
"""
ROWS = [{'_id': 'd1', 'title': 'Guitars', 'text': 'A man is playing a guitar.', 'metadata': {}},
        {'_id': 'd2', 'title': '', 'text': 'Embeddings compress meaning into vectors.'},
        {'_id': 'd3', 'title': 'Long', 'text': ' '.join(f'word{i}' for i in range(60))},
        {'_id': 'd4', 'title': 'JAX', 'text': 'Pure functions under jit.'},
        {'_id': 'd5', 'title': 'Dogs', 'text': 'Two dogs run across a snowy field.'}]


def _env() -> dict:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env['JAX_PLATFORMS'] = 'cpu'        # a CPU run even where a GPU is visible
  env['CUDA_VISIBLE_DEVICES'] = ''
  env['HF_HUB_OFFLINE'] = '1'         # nothing may come from a hub
  env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH')) if p)
  return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
  # Generous: the wall time depends on what else the (shared) machine is running.
  proc = subprocess.run([sys.executable, '-c', WRAPPER, str(SCRIPT), *args], env=_env(),
                        capture_output=True, text=True, timeout=600, cwd=cwd)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _corpus(tmp_path: Path) -> Path:
  src = tmp_path / 'corpus.jsonl'
  src.write_text(''.join(json.dumps(r) + '\n' for r in ROWS))
  return src


def _load_script():
  sys.path.insert(0, str(SCRIPT.parent))
  spec = importlib.util.spec_from_file_location('bench_encode_gpu', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow  # about 20-30 s of CPU time: two compilers, two frameworks
def test_smoke_writes_the_result_keys(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  texts = tmp_path / 'carry' / 'texts.jsonl.gz'
  _run(['--prepare-texts', str(_corpus(tmp_path)), str(texts)], tmp_path)
  assert (texts.parent / 'tokenizer.json').is_file()
  out = tmp_path / 'bench_encode_gpu.json'
  _run(['--smoke', '--texts', str(texts), '--out', str(out)], tmp_path)

  record = json.loads(out.read_text())
  assert record['benchmark'] == 'encode_gpu'
  assert record['smoke'] is True and record['errors'] == {}, record['errors']
  assert record['device'] == 'cpu'
  for key in ('ratio_vs_torch_eager', 'ratio_vs_torch_compile', 'ratio_vs_embedjax_xla'):
    assert set(record[key]) == {'minilm_l6', 'bert_base'}
    assert all(isinstance(v, float) and v > 0 for v in record[key].values())
  for model in ('minilm_l6', 'bert_base'):
    runs = record['results'][model]
    assert set(runs) == {'embedjax', 'torch_eager', 'torch_compile', 'embedjax_xla'}
    for r in runs.values():
      assert r['seqs_per_s'] > 0 and r['call_ms'] > 0 and r['achieved_tflops'] > 0
      assert 0 <= r['setup_s'] <= r['run_s']  # where the wall time went
      assert r['mfu'] is None  # no known peak for a CPU
      assert r['out_shape'] == [4, 32] and abs(r['norm_mean'] - 1) < 1e-3
    check_embedjax_runs(runs, 'calls')
    flops = record['flops_per_call'][model]
    assert flops['total'] == flops['dense'] + flops['attention'] > 0

  text = record['text']
  assert text['token_stats']['count'] == len(ROWS)
  assert text['token_stats']['at_limit'] == 1  # the long text, cut at the smoke limit of 32
  assert text['tokenizer'] == str((texts.parent / 'tokenizer.json').resolve())
  ours = ('embedjax', 'embedjax_tpb256', 'embedjax_tpb256_s1')
  assert set(text['systems']) == {*ours, 'torch_eager_bs2', 'torch_eager_bs4'}
  for r in text['systems'].values():
    assert r['texts_per_s'] > 0 and r['pretokenized_texts_per_s'] > 0
    assert r['device_tokens'] >= text['token_stats']['tokens']
  assert text['systems']['embedjax_tpb256_s1']['max_segments'] == 1  # one text per row
  assert text['systems']['embedjax_tpb256']['max_segments'] == 32
  assert set(text['ratio_vs_torch_eager']) == {
      f'{a}/{b}' for a in ours for b in ('torch_eager_bs2', 'torch_eager_bs4')}
  assert all(v > 0 for v in text['pretokenized_ratio_vs_torch_eager'].values())
  # The same weights on both sides: the two systems' embeddings agree (bf16 compute).
  for name, agreement in text['agreement'].items():
    assert agreement['min_cosine'] > 0.99, (name, agreement)
  assert {'command', 'versions', 'machine', 'date', 'git'} <= set(record['provenance'])
  assert str(texts) in record['provenance']['inputs']
  assert record['settings']['torch_compile']['backend'] == 'aot_eager'
  assert record['settings']['isolation'] == 'one process'


@pytest.mark.slow  # about 15 s: two child processes (jax, torch)
def test_smoke_in_child_processes(tmp_path):
  """The path the GPU run takes: one subprocess per run, flags handed down to each."""
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  out = tmp_path / 'bench.json'
  _run(['--smoke', '--isolate', '--models', 'minilm_l6', '--systems', 'torch_eager',
        '--text-systems', 'embedjax', '--text-tokens-per-batch', '128', '--out', str(out)],
       tmp_path)
  record = json.loads(out.read_text())
  assert record['errors'] == {}, record['errors']
  assert record['settings']['isolation'].startswith('one subprocess')
  assert set(record['results']['minilm_l6']) == {'torch_eager'}
  assert set(record['text']['systems']) == {'embedjax_tpb128'}  # the built-in smoke texts
  assert record['text']['token_stats']['count'] > 0


def test_prepare_and_read_texts(tmp_path):
  bench = _load_script()
  out = tmp_path / 'carry' / 'texts.jsonl.gz'
  info = bench.prepare_texts(_corpus(tmp_path), out)
  assert info['count'] == len(ROWS) and (out.parent / 'tokenizer.json').is_file()
  assert gzip.decompress(out.read_bytes()).decode().count('\n') == len(ROWS)
  first = out.read_bytes()
  bench.prepare_texts(tmp_path / 'corpus.jsonl', out)
  assert out.read_bytes() == first  # reproducible bytes (gzip mtime 0)
  texts = bench.read_texts(out)
  assert texts[0] == 'Guitars A man is playing a guitar.'
  assert texts[1] == 'Embeddings compress meaning into vectors.'  # no title: stripped
  assert bench.read_texts(out, limit=2) == texts[:2]
  assert bench.resolve_tokenizer(None, str(out)) == (out.parent / 'tokenizer.json').resolve()
  # A gzip'd source named without .gz is found (the shared folder keeps corpus.jsonl.gz).
  gz_src = tmp_path / 'gz' / 'corpus.jsonl'
  gz_src.parent.mkdir()
  Path(f'{gz_src}.gz').write_bytes(gzip.compress((tmp_path / 'corpus.jsonl').read_bytes()))
  assert bench.prepare_texts(gz_src, tmp_path / 'o2.jsonl.gz')['count'] == len(ROWS)


def test_shared_weights_load_into_both_frameworks():
  bench = _load_script()
  from embedjax.models.pretrained import params_from_hf
  shape = bench.SMOKE_MODELS['minilm_l6']
  state = bench.hf_random_state(shape, vocab=50, seed=0)
  params, extra = params_from_hf(state, bench._bert_config(shape, 50, 'bfloat16'))
  assert extra == {}
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  model = transformers.BertModel(bench._hf_config(shape, 50), add_pooling_layer=False)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


def test_forward_flops_by_hand():
  bench = _load_script()
  f = bench.forward_flops(dict(hidden=768, layers=12, heads=12, intermediate=3072),
                          batch=512, length=128)
  n = 12 * (4 * 768 ** 2 + 2 * 768 * 3072)
  assert f['matmul_params'] == n and f['tokens'] == 512 * 128
  assert f['dense'] == 2 * n * 512 * 128
  assert f['attention'] == 4 * 12 * 768 * 512 * 128 ** 2
  assert f['total'] == f['dense'] + f['attention']
