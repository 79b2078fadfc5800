"""How much of a small-corpus search is the score itself: SciFact, embedjax vs faiss-cpu, CPU.

    .venv/bin/python benchmarks/search_floor_cpu.py [--rounds 21]

On SciFact (5,183 MiniLM corpus embeddings, 1,000 claims; see benchmarks/search_cpu.py), times
in one process, turn by turn (each call after a 0.5 s pause, the order fixed within a round):

  flat    faiss IndexFlatIP search | XLA's float32 product alone (jitted (1,000 x 384) x
          (384 x 5,183), the (1,000, 5,183) scores left in memory) | numpy's float32 product
          (its BLAS, the same shapes) | ``lax.top_k`` alone over the (1,000, 5,183) scores
          (the selection of embedjax's portable scan, which covers SciFact in one block) |
          embedjax ``topk_blocked``
  binary  faiss IndexBinaryFlat search | embedjax's popcount distances alone (the (1,000,
          5,183) int32 distances left in memory) | embedjax ``hamming_topk``

The products and distances are kept whole rather than reduced (say, by a max per row): on
XLA:CPU a max over each row of the (1,000, 5,183) scores alone took about 10 ms, which an
earlier version of this script counted as part of the product.

If the score alone takes as long as faiss' whole search, no selection can bring embedjax to
faiss' speed there; the gap between the score and embedjax's search is the selection's cost, and
``top_k`` alone shows how much of it one plain selection over the whole row takes.
Both libraries on the CPUs this process may use. Writes results/bench_search_floor_cpu.json
(medians in ms, every round's times, command, machine and versions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
PAUSE_SECONDS = 0.5


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--rounds', type=int, default=21)
  ap.add_argument('--out', default=str(_REPO / 'results' / 'bench_search_floor_cpu.json'))
  args = ap.parse_args()

  from search_cpu import faiss_blas_env
  blas_env, blas_record = faiss_blas_env()  # see search_cpu: faiss' OpenBLAS on an unknown CPU
  if any(os.environ.get(k) != v for k, v in blas_env.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **blas_env})
  print(f'OpenBLAS kernels: {blas_record}', flush=True)

  import faiss
  import jax
  import jax.numpy as jnp
  import numpy as np
  from search_cpu import K, scifact_embeddings

  from embedjax.io import atomic_write_json
  from embedjax.paths import shared_data_dir
  from embedjax.provenance import Run
  from embedjax.ops import bytes_to_words
  from embedjax.search import hamming
  from embedjax.search.exact import topk_blocked
  from embedjax.search.hamming import hamming_topk

  run = Run(config=vars(args), extra_packages=('faiss-cpu',),
            inputs=[shared_data_dir() / 'scifact']).start()
  corpus, queries = scifact_embeddings()
  d = corpus.shape[1]
  codes, qcodes = np.packbits(corpus > 0, axis=-1), np.packbits(queries > 0, axis=-1)
  flat, binary = faiss.IndexFlatIP(d), faiss.IndexBinaryFlat(8 * codes.shape[1])
  flat.add(corpus)
  binary.add(codes)
  jcorpus, jcodes = jax.device_put(corpus), jax.device_put(codes)
  jqueries, jwords = jnp.asarray(queries), bytes_to_words(jnp.asarray(qcodes))
  product = jax.jit(lambda q, c: jnp.dot(q, c.T, precision='highest'))
  distances = jax.jit(lambda q, c: -hamming._popcount_scores(None, q, c))
  scores = product(jqueries, jcorpus)
  top_k = jax.jit(lambda m: jax.lax.top_k(m, K))

  calls = {
      'flat: faiss search': lambda: flat.search(queries, K),
      'flat: XLA product alone': lambda: product(jqueries, jcorpus).block_until_ready(),
      'flat: numpy product alone': lambda: queries @ corpus.T,
      'flat: top_k alone, 1,000 x 5,183': lambda: jax.block_until_ready(top_k(scores)),
      'flat: embedjax search': lambda: np.asarray(topk_blocked(queries, jcorpus, K)[1]),
      'binary: faiss search': lambda: binary.search(qcodes, K),
      'binary: popcount distances alone': lambda: distances(jwords, jcodes).block_until_ready(),
      'binary: embedjax search': lambda: np.asarray(hamming_topk(qcodes, jcodes, K)[1]),
  }
  times = {name: [] for name in calls}
  for fn in calls.values():
    fn()  # compile, start threads
  for r in range(args.rounds):
    for name, fn in calls.items():
      time.sleep(PAUSE_SECONDS)
      start = time.perf_counter()
      fn()
      times[name].append(1e3 * (time.perf_counter() - start))
    print(f'round {r + 1}/{args.rounds}', flush=True)
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, ms in medians.items():
    print(f'{name:34s} {ms:7.1f} ms')
  atomic_write_json(Path(args.out), {
      'median_ms': medians, 'ms': times, 'rounds': args.rounds, 'pause_seconds': PAUSE_SECONDS,
      'corpus_rows': int(corpus.shape[0]), 'queries': int(queries.shape[0]), 'k': K,
      'openblas': blas_record,
      'command': 'python ' + ' '.join(sys.argv),
      'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
      'provenance': run.finish().provenance()})
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
