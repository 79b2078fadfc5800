"""PLAID-style search settings against exact MaxSim on the SciFact corpus's tokens (CPU): which
(nprobe, ndocs, centroid threshold) keep recall@10 >= 0.95 of exact search, at what speed, and how
much of the loss is the 2-bit compression rather than the candidate generation.

    .venv/bin/python benchmarks/multivector_sweep_cpu.py [--dim 128] [--k 10] [--bits 2,4]
        [--out results/bench_multivector_sweep_cpu.json]
    .venv/bin/python benchmarks/multivector_sweep_cpu.py --quick   # smoke: synthetic tokens

Token vectors, codec and index exactly as benchmarks/multivector_cpu.py builds them (its
functions: all-MiniLM-L6-v2 token states of the corpus and the test queries through a fixed random
orthogonal projection; k-means on every counted token, ColBERTv2's centroid count, random seeds, 4
Lloyd steps; residuals at each of ``--bits``, one codec and one sweep per width). Two references:
  exact               top-k MaxSim over the float token vectors (``multivector.topk_maxsim``);
  exact_decompressed  the same over the decompressed tokens, which is what PLAID's last stage
                      scores: the best its candidate generation can return.
For each setting of ``SWEEP`` (the first is ``plaid.search``'s defaults): one warm-up pass over
the queries (compilation), one timed pass, queries/s, recall@k against both references (mean over
queries of |ids ∩ reference ids| / k; missing results count as misses).
Writes ``--out`` atomically with ``embedjax.provenance.Run`` provenance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import multivector_cpu as mv  # noqa: E402  (this folder: the tokens and timing of the benchmark)

# (nprobe, ndocs, centroid_threshold). plaid.search's defaults are ColBERTv2's for k = 100; PLAID's
# paper uses nprobe 1 / ndocs 256 at k = 10 and 4 / 4096 at k = 1000.
SWEEP = ((2, 1024, 0.45), (2, 1024, None), (4, 1024, 0.45), (2, 4096, 0.45), (4, 4096, 0.45),
         (4, 4096, None), (8, 4096, None), (8, 8192, None))


def recall_vs(ids, reference, k: int) -> float:
  """Mean over queries of |ids ∩ reference ids| / k (ids -1, no result, count as misses)."""
  return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, reference)]))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--k', type=int, default=10)
  p.add_argument('--bits', default='2,4', help='residual widths, one codec and sweep each')
  p.add_argument('--quick', action='store_true', help='synthetic tokens, small: a smoke run')
  p.add_argument('--out', default=None)
  args = p.parse_args(argv)
  if not args.bits or any(b.strip() not in ('1', '2', '4', '8') for b in args.bits.split(',')):
    p.error(f'--bits {args.bits!r}: a comma-separated list of 1, 2, 4 or 8')
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  from embedjax.search import plaid
  from embedjax.search.multivector import topk_maxsim
  out = Path(args.out or ('results/bench_multivector_sweep_cpu' + ('.quick' if args.quick else '')
                          + '.json'))
  run = Run(config=vars(args), seeds={'projection': 0, 'kmeans': 0}).start()
  load_start = os.getloadavg()
  q, qm, d, dm, about = (mv.synthetic_tokens if args.quick else mv.scifact_tokens)(args.dim)
  run.add_inputs(*about['inputs'])
  k = min(args.k, len(d))
  tokens = d[dm != 0]
  n_centroids = min(int(2 ** np.floor(np.log2(16 * np.sqrt(len(tokens))))), len(tokens))
  bits_list = [int(b) for b in args.bits.split(',')]
  reference = {'exact': np.asarray(topk_maxsim(q, qm, d, dm, k)[1])}
  codecs = []
  for bits in bits_list:
    start = time.perf_counter()
    codec = plaid.fit_codec(jax.random.key(0), tokens, n_centroids, bits=bits, iters=4)
    index = plaid.build_index(codec, d, dm)
    build_s = time.perf_counter() - start
    decompressed = np.array(plaid.decompress(codec, index.ids, index.residuals))
    decompressed[dm == 0] = 0.0
    reference['exact_decompressed'] = np.asarray(topk_maxsim(q, qm, decompressed, dm, k)[1])
    del decompressed
    compression = recall_vs(reference['exact_decompressed'], reference['exact'], k)
    print(f'{bits} bits: exact on decompressed tokens: recall@{k} of exact {compression:.4f}',
          flush=True)
    rows = []
    for nprobe, ndocs, threshold in SWEEP:
      found = {}

      def search():
        found['ids'] = plaid.search(index, q, qm, k, nprobe=nprobe, ndocs=ndocs,
                                    centroid_threshold=threshold)[1]
      warm, times = mv.timed(search, 1)
      rows.append({'nprobe': nprobe, 'ndocs': ndocs, 'centroid_threshold': threshold,
                   'queries_per_second': round(len(q) / float(np.median(times)), 2),
                   'seconds': [round(t, 4) for t in times], 'warmup_s': round(warm, 3),
                   **{f'recall_at_k_vs_{name}': round(recall_vs(found['ids'], ref, k), 4)
                      for name, ref in reference.items()}})
      print(f'  {rows[-1]}', flush=True)
    codecs.append({'bits': bits, 'bytes_per_token': plaid.bytes_per_token(codec),
                   'index_build_s': round(build_s, 1),
                   'exact_decompressed_recall_at_k_vs_exact': round(compression, 4),
                   'sweep': rows})
  record = {
      'benchmark': 'multivector_sweep_cpu', 'quick': args.quick, 'corpus': about['corpus'],
      'queries': len(q), 'documents': len(d), 'dim': args.dim, 'k': k,
      'counted_doc_tokens': int(dm.sum()), 'centroids': n_centroids, 'codecs': codecs,
      'timing': 'per setting: one warm-up pass over all queries, then one timed pass',
      'loadavg_start': load_start, 'loadavg_end': os.getloadavg(), 'peak_rss_bytes': mv.peak_rss(),
      'command': run.command, 'provenance': run.finish().provenance()}
  atomic_write_json(out, record)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
