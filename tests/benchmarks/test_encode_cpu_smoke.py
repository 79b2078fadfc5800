"""Smoke run of benchmarks/encode_cpu.py: --quick on a handful of synthetic texts, no timing checks."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from embedjax.paths import repo_root

pytest.importorskip('torch')
pytest.importorskip('sentence_transformers')

# Short texts only, so both sets use the same (rows, 64) shape and compile once.
SHORT = ['A man is playing a guitar.', 'Embeddings compress meaning into vectors.',
         'The weather is lovely today!', 'JAX composes pure functions under jit.',
         'Two dogs run across a snowy field.', 'Packing several texts into one row saves work.']
LONGER = [' '.join(f'word{i}' for i in range(n)) + ' end.' for n in (9, 17, 25)]


def _load_script():
  path = repo_root() / 'benchmarks' / 'encode_cpu.py'
  spec = importlib.util.spec_from_file_location('bench_encode_cpu', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quick_run_writes_the_result_file(tmp_path, monkeypatch, minilm):
  # main() sets thread variables in os.environ; give them back after the test.
  for key in ('XLA_FLAGS', 'TOKENIZERS_PARALLELISM', 'RAYON_NUM_THREADS', 'OMP_NUM_THREADS'):
    if key in os.environ:
      monkeypatch.setenv(key, os.environ[key])
    else:
      monkeypatch.setenv(key, '')
      monkeypatch.delenv(key)
  bench = _load_script()
  out = tmp_path / 'bench.json'
  record = bench.main(['--quick', '--out', str(out)], texts={'stsb': SHORT, 'scifact': LONGER})

  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(record))
  for key in ('ratio_vs_sentence_transformers', 'texts_per_s', 'runs', 'min_cosine', 'threads',
              'settings', 'provenance'):
    assert key in saved, key
  assert set(saved['ratio_vs_sentence_transformers']) == {'stsb', 'scifact'}
  for name in ('stsb', 'scifact'):
    assert saved['ratio_vs_sentence_transformers'][name] > 0
    assert saved['min_cosine'][name] >= 0.99999, saved['min_cosine']
    for system in ('embedjax', 'sentence_transformers'):
      assert len(saved['runs'][name][system]) == 1
      assert saved['texts_per_s'][name][system] > 0
  assert saved['texts']['stsb']['count'] == len(SHORT)
  assert saved['threads'] == os.cpu_count()
  assert saved['quick'] is True
  assert {'command', 'date', 'versions', 'machine'} <= set(saved['provenance'])
