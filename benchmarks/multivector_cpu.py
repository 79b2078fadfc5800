"""Multi-vector (late interaction) search on the CPU: exact MaxSim against PLAID-style search over
the SciFact corpus, throughput, memory and recall.

    .venv/bin/python benchmarks/multivector_cpu.py [--dim 128] [--k 10] [--reps 3]
        [--out results/bench_multivector_cpu.json]
    .venv/bin/python benchmarks/multivector_cpu.py --quick   # smoke: synthetic tokens, seconds

Token vectors. The SciFact corpus (5,183 abstracts, title + " " + text, cut at 256 tokens) and its
300 test queries are encoded by all-MiniLM-L6-v2's encoder, each token state projected to
``--dim`` by a fixed random orthogonal matrix (seed 0) and normalised: the shapes and the token
statistics of a ColBERT index over this corpus, without a trained ColBERT (no quality is claimed;
the search's work and its agreement with exact search are what is measured). Punctuation tokens of
documents are left out of MaxSim as ColBERT does. ``--quick``: random clustered tokens instead.

Systems (``embedjax.search``):
  exact   ``multivector.topk_maxsim`` over float32 token vectors (padded (N, Td, dim)).
  int8, binary
          ``multivector_codes.topk_maxsim_codes``: every token stored as an ``embedjax.quant``
          code (int8: per-dimension ranges fitted on the counted tokens, dim bytes a token;
          binary: sign bits, dim / 8 bytes), float queries scored against the codes, exhaustive.
  plaid   ``plaid.fit_codec`` (k-means on all counted tokens, 2^floor(log2(16 sqrt(tokens)))
          centroids, ColBERTv2's rule, seeded by random rows with 4 Lloyd steps, ColBERTv2's
          ``kmeans_niters`` default; 2-bit residuals) and ``plaid.build_index``, then
          ``plaid.search`` at its defaults (nprobe 2, ndocs 1024, centroid threshold 0.45).
Timing: one warm-up pass over all queries (compilation), then the median of ``--reps`` passes;
queries/s = queries / median. Index build times are reported once. Memory: bytes of the stored
representation (float32 token vectors; codes + packed residuals) and the process's peak resident
set (VmHWM) after each phase. Recall: recall@k of each compressed system's ids against exact search's ids
(mean over queries), the issue's ">= 0.95 of exact" criterion.

Writes ``--out`` atomically with ``embedjax.provenance.Run`` provenance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024
  return 0


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--k', type=int, default=10)
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--quick', action='store_true', help='synthetic tokens, small: a smoke run')
  p.add_argument('--out', default=None)
  return p.parse_args(argv)


def scifact_tokens(dim: int):
  from embedjax import paths
  from embedjax.data import readers
  from embedjax.models.pretrained import load_pretrained
  data_dir = paths.shared_data_dir()
  if data_dir is None:
    raise SystemExit('multivector_cpu: ../shared/data is not present (or use --quick)')
  data = readers.read_beir(data_dir / 'scifact', 'test')
  from embedjax.evals.representations import TokenModel, encode_token_vectors
  from embedjax.train.representation import punctuation_ids
  model = load_pretrained('all-MiniLM-L6-v2')
  rng = np.random.default_rng(0)
  projection, _ = np.linalg.qr(rng.standard_normal((model.spec.bert.hidden_size, dim)))
  # The evaluator's own encoding, with a fixed random projection as the head (no augmentation).
  tokens = TokenModel(model=model, head={'kernel': projection.astype(np.float32)},
                      info={'representation': 'multi_vector', 'token_dim': dim,
                            'query_length': 0, 'skip_ids': punctuation_ids(model.tokenizer)})
  q, qm, _ = encode_token_vectors(tokens, data.query_texts, queries=True)
  d, dm, _ = encode_token_vectors(tokens, data.corpus_texts, queries=False)
  return q, qm, d, dm, {'corpus': 'SciFact BEIR corpus (5,183 abstracts), test queries',
                        'inputs': [data_dir / 'scifact']}


def synthetic_tokens(dim: int):
  rng = np.random.default_rng(0)
  centers = rng.standard_normal((32, dim))
  def make(n, t):
    x = centers[rng.integers(0, 32, (n, t))] + 0.5 * rng.standard_normal((n, t, dim))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    mask = (np.arange(t) < rng.integers(4, t + 1, n)[:, None]).astype(np.int32)
    return (x * mask[..., None]).astype(np.float32), mask
  q, qm = make(20, 8)
  d, dm = make(300, 24)
  return q, qm, d, dm, {'corpus': 'synthetic clustered tokens (--quick)', 'inputs': []}


def timed(fn, reps: int):
  start = time.perf_counter()
  fn()  # warm-up (compilation)
  warm = time.perf_counter() - start
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return warm, times


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  from embedjax.search import plaid
  from embedjax import quant
  from embedjax.search import multivector_codes
  from embedjax.search.multivector import topk_maxsim
  out = Path(args.out or ('results/bench_multivector_cpu' + ('.quick' if args.quick else '')
                          + '.json'))
  run = Run(config=vars(args), seeds={'projection': 0, 'kmeans': 0}).start()
  load_start = os.getloadavg()
  t0 = time.perf_counter()
  q, qm, d, dm, about = (synthetic_tokens if args.quick else scifact_tokens)(args.dim)
  run.add_inputs(*about['inputs'])
  encode_s = time.perf_counter() - t0
  counted = int(dm.sum())
  k = min(args.k, len(d))
  print(f'{len(q)} queries, {len(d)} documents, {counted:,} counted document tokens '
        f'(encoded in {encode_s:.0f} s)', flush=True)

  exact_ids = {}

  def exact():
    s, i = topk_maxsim(q, qm, d, dm, k)
    exact_ids['ids'] = np.asarray(i)
  warm, times = timed(exact, args.reps)
  rss_exact = peak_rss()
  results = {'exact': {'warmup_s': round(warm, 3), 'seconds': [round(t, 4) for t in times],
                       'queries_per_second': round(len(q) / float(np.median(times)), 2),
                       'stored_bytes': int(d.nbytes), 'bytes_per_doc': counted * 4 * args.dim
                       / len(d), 'peak_rss_bytes_after': rss_exact}}
  print(f'exact: {results["exact"]["queries_per_second"]} q/s', flush=True)

  def recall_vs_exact(ids) -> float:
    return float(np.mean([len(set(np.asarray(a).tolist()) & set(b.tolist())) / k
                          for a, b in zip(ids, exact_ids['ids'])]))

  tokens = d[dm != 0]
  for name in ('int8', 'binary'):
    qz = quant.get(name)
    start = time.perf_counter()
    params = qz.fit(tokens)
    codes = multivector_codes.encode_tokens(qz, params, d)
    jax.block_until_ready(codes)
    build_s = time.perf_counter() - start
    coded_ids = {}

    def coded_search():
      _, i = multivector_codes.topk_maxsim_codes(qz, params, q, qm, codes, dm, k)
      coded_ids['ids'] = np.asarray(i)
    warm, times = timed(coded_search, args.reps)
    results[name] = {
        'build_s': round(build_s, 2), 'warmup_s': round(warm, 3),
        'seconds': [round(t, 4) for t in times],
        'queries_per_second': round(len(q) / float(np.median(times)), 2),
        'stored_bytes_padded': int(np.asarray(codes).nbytes),
        'bytes_per_doc': multivector_codes.bytes_per_doc(qz, params, dm),
        'recall_at_k_vs_exact': round(recall_vs_exact(coded_ids['ids']), 4),
        'peak_rss_bytes_after': peak_rss(),
        'settings': f'quant.get({name!r}) fitted on the counted tokens; exhaustive MaxSim'}
    print(f'{name}: {results[name]["queries_per_second"]} q/s, recall@{k} vs exact '
          f'{results[name]["recall_at_k_vs_exact"]:.4f}', flush=True)

  n_centroids = int(2 ** np.floor(np.log2(16 * np.sqrt(len(tokens)))))
  n_centroids = min(n_centroids, len(tokens))
  start = time.perf_counter()
  codec = plaid.fit_codec(jax.random.key(0), tokens, n_centroids, bits=2, iters=4)
  jax.block_until_ready(codec.centroids)
  fit_s = time.perf_counter() - start
  start = time.perf_counter()
  index = plaid.build_index(codec, d, dm)
  build_s = time.perf_counter() - start
  plaid_ids = {}

  def search():
    _, i = plaid.search(index, q, qm, k)
    plaid_ids['ids'] = i
  warm, times = timed(search, args.reps)
  recall = recall_vs_exact(plaid_ids['ids'])
  stored = int(np.asarray(index.ids).nbytes + np.asarray(index.residuals).nbytes)
  results['plaid'] = {
      'centroids': n_centroids, 'bits': 2, 'kmeans': 'random seeds, 4 Lloyd steps', 'fit_s': round(fit_s, 2), 'build_s': round(build_s, 2),
      'warmup_s': round(warm, 3), 'seconds': [round(t, 4) for t in times],
      'queries_per_second': round(len(q) / float(np.median(times)), 2),
      'stored_bytes_padded': stored, 'bytes_per_doc': index.bytes_per_doc(),
      'recall_at_k_vs_exact': round(recall, 4), 'peak_rss_bytes_after': peak_rss(),
      'settings': 'nprobe 2, ndocs 1024, centroid_threshold 0.45 (plaid.search defaults)'}
  print(f'plaid: {results["plaid"]["queries_per_second"]} q/s, recall@{k} vs exact {recall:.4f}',
        flush=True)
  record = {
      'benchmark': 'multivector_cpu', 'quick': args.quick, 'corpus': about['corpus'],
      'queries': len(q), 'documents': len(d), 'dim': args.dim, 'k': k,
      'counted_doc_tokens': counted, 'query_tokens': int(q.shape[1]),
      'encode_seconds': round(encode_s, 1),
      'token_vectors': 'all-MiniLM-L6-v2 token states x a random orthogonal (384, dim) projection '
                       '(seed 0), normalised; document punctuation not counted',
      'timing': f'one warm-up pass, then the median of {args.reps} passes over all queries',
      'loadavg_start': load_start, 'loadavg_end': os.getloadavg(), 'results': results,
      'command': run.command, 'provenance': run.finish().provenance()}
  atomic_write_json(out, record)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
