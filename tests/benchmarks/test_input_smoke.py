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
                         '--quick', '--threads', '2', '--out', str(out)], check=False,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  assert set(record['results']) == {f'{p}/threads{t}{c}' for p in ('max_length', 'bucket', 'pack')
                                    for t in (1, 2) for c in ('', '/cached')}
  assert {r['token_cache_texts'] > 0 for r in record['results'].values()} == {False, True}
  for r in record['results'].values():
    assert r['pairs_per_s'] > 0 and r['array_tokens_per_batch'] > 0
  # Packing never makes larger arrays than padding to the maximum length.
  r = record['results']
  assert r['pack/threads1']['array_tokens_per_batch'] <= r['max_length/threads1'][
      'array_tokens_per_batch']
  assert record['provenance']['git']['commit']


def test_the_gpu_hosts_run_reads_carried_texts_without_tensorflow_datasets(tmp_path):
  # GPU suite E's form: a gzip'd corpus and a tokenizer.json, on a host whose image has no
  # tensorflow-datasets (made unimportable here).
  import gzip

  from embedjax.models.pretrained import resolve_model_dir
  corpus = tmp_path / 'corpus.jsonl.gz'
  docs = [{'_id': str(i), 'title': f'title {i}', 'text': f'the text of document {i} ' * 3}
          for i in range(40)] + [{'_id': 'x', 'title': '', 'text': 'no title: not a pair'}]
  with gzip.open(corpus, 'wt') as f:
    f.write(''.join(json.dumps(d) + '\n' for d in docs))
  tokenizer = resolve_model_dir('all-MiniLM-L6-v2') / 'tokenizer.json'
  out = tmp_path / 'bench.json'
  script = repo_root() / 'benchmarks' / 'input_cpu.py'
  code = ("import runpy, sys; sys.modules['tensorflow_datasets'] = None; "
          f"sys.argv = [{str(script)!r}, '--texts', {str(corpus)!r}, '--tokenizer', "
          f"{str(tokenizer)!r}, '--smoke', '--threads', '1', '--out', {str(out)!r}]; "
          f"runpy.run_path({str(script)!r}, run_name='__main__')")
  proc = subprocess.run([sys.executable, '-c', code], check=False, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  record = json.loads(out.read_text())
  assert record['source'] == 'texts:corpus.jsonl.gz' and record['rows'] == 40
  assert set(record['results']) == {f'{p}/threads1{c}' for p in ('max_length', 'bucket', 'pack')
                                    for c in ('', '/cached')}
