"""Long inputs on CPU: encode time and peak memory of all-MiniLM-L6-v2 against input length, with
attention in query blocks and plain.

    .venv/bin/python benchmarks/long_context_cpu.py [--lengths 512,1024,2048,4096,8192] [--runs 3]
    .venv/bin/python benchmarks/long_context_cpu.py --quick     # smoke run: 512 and 1024, one run

The packaged model's position table is stretched to each length by linear interpolation
(``embedjax.models.positions.extend_positions``); one text of that many random token ids (seed 0)
goes through the jitted model (``embedjax.models.embedder.embed``: encoder, mean pooling,
normalisation). Each (length, attention) cell runs in a fresh Python process, so that its peak
resident memory (``VmHWM``, :mod:`embedjax.process_memory`) is its own: after one untimed call (compilation), ``--runs`` timed
calls; reported: the median seconds, tokens/s and the peak RSS in GiB. ``blocked`` attends queries
in blocks of ``--block`` tokens (``BertConfig.attention_block``); ``plain`` builds the (L, L)
attention arrays. Writes ``results/bench_long_context_cpu.json`` with provenance (``--quick``:
``results/bench_long_context_cpu.quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

CELL = r'''
import dataclasses, json, sys, time
import jax, numpy as np
from embedjax.models.pretrained import load_pretrained
from embedjax.models.positions import extend_positions
from embedjax.models.embedder import embed
from embedjax.process_memory import peak_rss_bytes
length, block, runs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
m = load_pretrained('all-MiniLM-L6-v2')
params, bert = extend_positions(m.params, m.spec.bert, max(length, m.spec.bert.max_positions))
spec = dataclasses.replace(m.spec, bert=dataclasses.replace(bert, attention_block=block),
                           max_seq_length=length)
ids = np.random.default_rng(0).integers(1000, 20000, (1, length)).astype(np.int32)
mask = np.ones_like(ids)
fn = jax.jit(lambda p, i, a: embed(p, spec, i, a))
fn(params, ids, mask).block_until_ready()
times = []
for _ in range(runs):
  t0 = time.perf_counter()
  fn(params, ids, mask).block_until_ready()
  times.append(time.perf_counter() - t0)
print(json.dumps({'seconds': times, 'peak_rss_gib': peak_rss_bytes() / 2 ** 30}))
'''


def cell(length: int, block: int, runs: int) -> dict:
  proc = subprocess.run([sys.executable, '-c', CELL, str(length), str(block), str(runs)],
                        capture_output=True, text=True, cwd=_REPO)
  if proc.returncode:
    return {'error': proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'failed'}
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  med = statistics.median(out['seconds'])
  return {**out, 'median_s': med, 'tokens_per_s': length / med}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--lengths', default='512,1024,2048,4096,8192')
  parser.add_argument('--block', type=int, default=512)
  parser.add_argument('--runs', type=int, default=3)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  if args.quick:
    args.lengths, args.runs = '512,1024', 1
  out = Path(args.out or _REPO / 'results' / (
      'bench_long_context_cpu.quick.json' if args.quick else 'bench_long_context_cpu.json'))

  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  run = Run(config=vars(args), seeds=0).start()
  lengths = [int(x) for x in args.lengths.split(',')]
  results = {}
  for length in lengths:
    for name, block in (('blocked', args.block), ('plain', 0)):
      r = cell(length, block, args.runs)
      results.setdefault(str(length), {})[name] = r
      print(f'{length:6d} {name:8s} ' + (r['error'] if 'error' in r else
            f"{r['median_s']:.2f} s  {r['tokens_per_s']:.0f} tokens/s  "
            f"peak {r['peak_rss_gib']:.2f} GiB"), flush=True)
  record = {'model': 'all-MiniLM-L6-v2 (positions stretched by interpolation)',
            'block': args.block, 'threads': os.cpu_count(), 'results': results,
            'provenance': run.finish().provenance()}
  atomic_write_json(out, record)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
