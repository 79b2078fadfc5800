"""Exhaustive search on CPU: embedjax vs faiss-cpu, flat inner product, binary Hamming and PQ.

    .venv/bin/python benchmarks/search_cpu.py [--threads T] [--reps 3] [--sizes 100000,1000000]
    .venv/bin/python benchmarks/search_cpu.py --quick     # 20k vectors, one timed run

Datasets: synthetic 384-d unit vectors (100k and 1M; a mixture of 1,000 Gaussian clusters in a
random 64-d subspace plus isotropic noise, so that neighbours and PQ/binary recall mean something),
with 1,000 queries from the same distribution; and SciFact (5,183 all-MiniLM-L6-v2 corpus
embeddings, 1,000 of its train + test claims as queries; the embeddings cached by
experiments/storage_tradeoff.py, or encoded here on a miss). Top-10 everywhere.

Index types, same inputs for both libraries:
  flat    float32 inner product: ``embedjax.search.exact.topk_blocked`` vs ``faiss.IndexFlatIP``.
  binary  sign bits packed 8 per byte (``np.packbits(x > 0)``), Hamming distance, queries
          binarised too: ``embedjax.search.hamming.hamming_topk`` vs ``faiss.IndexBinaryFlat``.
  pq      M=16 sub-quantizers x 8 bits (16 bytes/vector), trained on the same 65,536 (or all, if
          fewer) base vectors, 25 k-means iterations, inner-product scores of the PQ codes:
          ``embedjax.quant.pq`` (``scoring='gemm'``: each corpus block decoded and multiplied
          with the query block - the same scores as distance tables, at matrix-multiply speed
          for query batches) + ``embedjax.search.quantized.asymmetric_topk`` vs
          ``faiss.IndexPQ(METRIC_INNER_PRODUCT)`` (table look-ups).

Each (dataset, index, library) runs in its own process, so that its peak RSS
(``VmHWM`` of /proc/self/status) is its own: the process loads the data, builds the
index (timed, not part of queries/s), runs one untimed warm-up search (jit compilation, faiss
thread start), then waits. The two processes of a (dataset, index) are then timed turn by turn:
``--reps`` rounds (default 7), each one search of all 1,000 queries by each library (results
copied to host numpy), the one to go first alternating, each after a 0.5 s pause in which the
other process's threads park. queries/s = 1000 / median seconds. ratio_vs_faiss = the median over
rounds of faiss seconds / embedjax seconds: on a shared machine speed drifts by 10-40% from one
minute to the next, and a round's two searches, seconds apart, see the same drift
(ratio_of_median_qps is kept beside it). recall@10 = overlap with the exact float32 top-10
(computed once by faiss IndexFlatIP).

Threads: T (default: the CPUs this process may use) for both. faiss: ``faiss.omp_set_num_threads``.
XLA's CPU pool is sized from the CPUs the process may run on (no thread-count flag in jax 0.10), so
for T below the machine's count the worker is pinned to T CPUs (``os.sched_setaffinity``), which
bounds faiss too. The load average at start and end is recorded: timings taken on a loaded
machine are noisy.

Memory bound (flat, blocked): embedjax holds the corpus (N x D x 4 bytes; given as numpy it is
copied once into a device buffer, so the numpy copy and the buffer can coexist) plus
query_block x block_size x 4 bytes of scores per step, the sub-chunk maxima of its default
top-10 strategy (query_block x N / 16 x 4 bytes) and (Q, k) outputs, on top of the runtime
(~0.3-0.5 GB for jax/XLA). The measured peak RSS is reported per case beside that bound.
Writes ``results/bench_search_cpu.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used (the parent process stays light)
  import numpy as np

_REPO = Path(__file__).resolve().parents[1]
DIM = 384
NUM_QUERIES = 1000
K = 10
PQ_M = 16
LIBS = ('embedjax', 'faiss')
# Both runtimes keep worker threads spinning for a moment after a search (OpenMP's wait policy,
# Eigen's pool): each search starts after a pause, once the other process's threads have parked.
PAUSE_SECONDS = 0.5
INDEXES = ('flat', 'binary', 'pq')


def _set_threads(threads: int) -> None:
  allowed = sorted(os.sched_getaffinity(0))
  if threads < len(allowed):
    os.sched_setaffinity(0, allowed[:threads])
  os.environ['OMP_NUM_THREADS'] = str(threads)


def _peak_rss() -> int:
  """Peak resident set size of this process image (VmHWM).

  Not ``getrusage(...).ru_maxrss``: Linux carries that high-water mark across ``execve``, so a
  worker started from a parent holding the 1M-vector data set would report the parent's peak.
  """
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) * 1024  # kB
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


# ----------------------------------------------------------------------------------------------
# Data (prepared once by the parent, read by every worker)


def synthetic(n: int, seed: int) -> np.ndarray:
  """(n, 384) float32 unit vectors: 1,000 clusters in a random 64-d subspace plus noise."""
  import numpy as np
  from embedjax.ops import l2_normalize
  rng = np.random.default_rng(1234)  # the subspace and centres are shared by base and queries
  basis = np.linalg.qr(rng.standard_normal((DIM, 64)))[0].T.astype(np.float32)  # (64, 384)
  centres = rng.standard_normal((1000, 64)).astype(np.float32)
  rng = np.random.default_rng(seed)
  out = np.empty((n, DIM), np.float32)
  for s in range(0, n, 100_000):  # in chunks: the peak stays near the output's size
    m = min(100_000, n - s)
    z = centres[rng.integers(0, 1000, m)] + 0.7 * rng.standard_normal((m, 64), dtype=np.float32)
    x = z @ basis + 0.15 * rng.standard_normal((m, DIM), dtype=np.float32)
    out[s:s + m] = l2_normalize(x)
  return out


def scifact_embeddings() -> tuple[np.ndarray, np.ndarray]:
  import numpy as np
  from embedjax.data.readers import read_beir
  from embedjax.embedding_cache import cached_encode
  from embedjax.models.pretrained import load_pretrained
  from embedjax.paths import shared_data_dir
  d = shared_data_dir()
  if d is None:
    raise FileNotFoundError('SciFact needs the shared data folder')
  model = load_pretrained('all-MiniLM-L6-v2')
  test, train = read_beir(d / 'scifact', 'test'), read_beir(d / 'scifact', 'train')
  corpus = cached_encode(model, test.corpus_texts, 'scifact-corpus')
  queries = np.concatenate([cached_encode(model, test.query_texts, 'scifact-test-queries'),
                            cached_encode(model, train.query_texts, 'scifact-train-queries')])
  return corpus, queries[:NUM_QUERIES]


def prepare(datasets: list[str], folder: Path) -> dict[str, dict]:
  """Writes base/queries/ground truth .npy files per dataset; returns their paths."""
  import faiss
  import numpy as np
  folder.mkdir(parents=True, exist_ok=True)
  out = {}
  for name in datasets:
    paths = {k: folder / f'{name}.{k}.npy' for k in ('base', 'queries', 'truth')}
    if not all(p.exists() for p in paths.values()):
      print(f'preparing {name} ...', flush=True)
      if name == 'scifact':
        base, queries = scifact_embeddings()
      else:
        n = int(name.removeprefix('synthetic'))
        base, queries = synthetic(n, seed=1), synthetic(NUM_QUERIES, seed=2)
      index = faiss.IndexFlatIP(DIM)
      index.add(base)
      truth = index.search(queries, K)[1]
      for key, arr in (('base', base), ('queries', queries), ('truth', truth)):
        np.save(paths[key], arr)
      del base, index
    out[name] = {k: str(p) for k, p in paths.items()}
  return out


# ----------------------------------------------------------------------------------------------
# One case, in a worker process


def _recall(found, truth) -> float:
  return float(sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist()))
               / truth.size)


def _build_and_search(lib: str, index: str, base, queries, threads: int):
  """Returns (build_seconds, search_fn) where search_fn() -> (Q, K) numpy indices."""
  import numpy as np
  start = time.perf_counter()
  train = base[:65536]
  if lib == 'faiss':
    import faiss
    faiss.omp_set_num_threads(threads)
    if index == 'flat':
      ix = faiss.IndexFlatIP(DIM)
      ix.add(base)
      q = queries
    elif index == 'binary':
      ix = faiss.IndexBinaryFlat(DIM)
      ix.add(np.packbits(base > 0, axis=-1))
      q = np.packbits(queries > 0, axis=-1)
    else:
      ix = faiss.IndexPQ(DIM, PQ_M, 8, faiss.METRIC_INNER_PRODUCT)
      ix.train(train)
      ix.add(base)
      q = queries
    return time.perf_counter() - start, lambda: ix.search(q, K)[1]
  import jax
  if index == 'flat':
    from embedjax.search.exact import topk_blocked
    corpus = jax.block_until_ready(jax.device_put(base))
    fn = lambda: np.asarray(topk_blocked(queries, corpus, K)[1])
  elif index == 'binary':
    from embedjax.search.hamming import hamming_topk
    codes = jax.block_until_ready(jax.device_put(np.packbits(base > 0, axis=-1)))
    qcodes = np.packbits(queries > 0, axis=-1)
    fn = lambda: np.asarray(hamming_topk(qcodes, codes, K)[1])
  else:
    from embedjax.quant import pq
    from embedjax.search.quantized import asymmetric_topk
    q = pq.product_quantizer(PQ_M, scoring='gemm')  # batches of 1,000 queries: decode + GEMM
    params = q.fit(train, key=jax.random.key(0))
    codes = jax.block_until_ready(q.encode(params, base))
    fn = lambda: np.asarray(asymmetric_topk(q, params, queries, codes, K)[1])
  return time.perf_counter() - start, fn


def worker(spec: dict) -> None:
  """Loads, builds, warms up, then times one search per 'search' line on stdin (printing its
  seconds), until 'done': then prints the case record. Idle between searches, blocked on stdin."""
  _set_threads(spec['threads'])
  import numpy as np
  files = spec['files']
  base = np.load(files['base'])
  queries = np.load(files['queries'])
  truth = np.load(files['truth'])
  rss_data = _rss_now()
  n = base.shape[0]
  build_s, search = _build_and_search(spec['lib'], spec['index'], base, queries,
                                      spec['threads'])
  if spec['lib'] == 'embedjax':
    del base  # the device buffer (or codes) is all the search needs
  rss_built = _rss_now()
  t0 = time.perf_counter()
  found = search()  # warm-up: compilation / thread start
  warm_s = time.perf_counter() - t0
  print('ready', flush=True)
  times = []
  for line in sys.stdin:
    if line.strip() != 'search':
      break
    t0 = time.perf_counter()
    found = search()
    times.append(time.perf_counter() - t0)
    print(times[-1], flush=True)
  med = statistics.median(times)
  print(json.dumps({
      'lib': spec['lib'], 'index': spec['index'], 'dataset': spec['dataset'],
      'n': int(n), 'threads': spec['threads'],
      'seconds': times, 'median_seconds': med, 'queries_per_second': NUM_QUERIES / med,
      'first_search_seconds': warm_s, 'build_seconds': build_s,
      'recall@10': _recall(np.asarray(found), truth), 'indices_head': found[:3].tolist(),
      'rss_after_load_bytes': rss_data, 'rss_after_build_bytes': rss_built,
      'peak_rss_bytes': _peak_rss()}), flush=True)


# ----------------------------------------------------------------------------------------------
# Driver

# OpenBLAS falls back to its generic 'Prescott' (SSE3) kernels on a CPU model it does not know.
# faiss-cpu's wheel bundles an older OpenBLAS than numpy's, so on a recent Xeon faiss' flat GEMM
# can run on SSE3 kernels while numpy's (and XLA's own) use AVX-512: not like for like. The driver
# then starts the faiss worker with OPENBLAS_CORETYPE set to the architecture numpy's OpenBLAS
# detected on the same CPU, and records both.
_BLAS_PROBE = (
    'import json, faiss, numpy, threadpoolctl\n'
    'info = threadpoolctl.threadpool_info()\n'
    'arch = {i["filepath"].split("/")[-2]: i.get("architecture") for i in info '
    'if i.get("internal_api") == "openblas"}\n'
    'print(json.dumps(arch))')


def faiss_blas_env() -> tuple[dict, dict]:
  """(extra environment for the faiss worker, record of the OpenBLAS kernels each library uses)."""
  out = subprocess.run([sys.executable, '-c', _BLAS_PROBE], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != 'OPENBLAS_CORETYPE'})
  if out.returncode:
    return {}, {'probe_failed': out.stderr.strip().splitlines()[-1:]}
  arch = json.loads(out.stdout)
  faiss_arch = next((a for lib, a in arch.items() if lib.startswith('faiss')), None)
  numpy_arch = next((a for lib, a in arch.items() if lib.startswith('numpy')), None)
  record = {'faiss_openblas_detected': faiss_arch, 'numpy_openblas_detected': numpy_arch}
  if faiss_arch == 'Prescott' and numpy_arch and numpy_arch != 'Prescott':
    record['faiss_openblas_coretype_set'] = numpy_arch
    return {'OPENBLAS_CORETYPE': numpy_arch}, record
  return {}, record



def run_pair(spec: dict, rounds: int, first: str, faiss_env: dict | None = None
             ) -> tuple[dict, list[float]]:
  """Both libraries, each in its own worker process, timed turn by turn.

  Each round times one search of each library (the one to go first alternates), with a pause
  before each so that the other process's worker threads have parked. Returns ({lib: record},
  per-round ratios faiss seconds / embedjax seconds).
  """
  procs = {}
  for lib in LIBS:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker',
           json.dumps({**spec, 'lib': lib})]
    env = {**os.environ, **(faiss_env or {})} if lib == 'faiss' else None
    procs[lib] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=_REPO, env=env)

  def read(lib: str) -> str:
    line = procs[lib].stdout.readline()
    if not line:
      raise RuntimeError(f'worker {lib}/{spec["index"]}/{spec["dataset"]} failed:\n'
                         f'{procs[lib].stderr.read()[-3000:]}')
    return line.strip()

  try:
    for lib in LIBS:  # both built and warmed up (one at a time: build times are their own)
      while read(lib) != 'ready':
        pass
    order = [first] + [lib for lib in LIBS if lib != first]
    times = {lib: [] for lib in LIBS}
    for r in range(rounds):
      for lib in (order if r % 2 == 0 else order[::-1]):
        time.sleep(PAUSE_SECONDS)
        procs[lib].stdin.write('search\n')
        procs[lib].stdin.flush()
        times[lib].append(float(read(lib)))
    records = {}
    for lib in LIBS:
      procs[lib].stdin.write('done\n')
      procs[lib].stdin.flush()
      records[lib] = json.loads(read(lib))
  finally:
    for proc in procs.values():
      proc.kill() if proc.poll() is None else None
  return records, [f / e for e, f in zip(times['embedjax'], times['faiss'])]


def search_plan(n: int) -> dict:
  """The strategy and block sizes embedjax's defaults pick for n rows, top-K."""
  from embedjax.search.exact import plan
  strategy, block, query_block, n_main = plan(n, K)
  return {'strategy': strategy, 'block_size': block,
          'query_block': min(query_block, NUM_QUERIES), 'rows_in_blocks': n_main}


def flat_memory_bound(n: int) -> dict:
  p = search_plan(n)
  corpus = n * DIM * 4
  scores = p['query_block'] * p['block_size'] * 4
  maxima = p['query_block'] * (p['rows_in_blocks'] // 16) * 4 if p['strategy'] == 'maxima' else 0
  return {'corpus_bytes': corpus, 'score_block_bytes': scores, 'maxima_bytes': maxima,
          'bound_bytes': 2 * corpus + 4 * scores + maxima + (512 << 20),
          'bound_formula': '2 x corpus (numpy + device copy) + 4 x score block (scores and the '
                           'work of the step) + sub-chunk maxima (query block x rows / 16, '
                           "strategy 'maxima') + 512 MiB runtime"}


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)))
  ap.add_argument('--reps', type=int, default=7, help='timed rounds (one search of each library)')
  ap.add_argument('--sizes', default='100000,1000000')
  ap.add_argument('--indexes', default=','.join(INDEXES))
  ap.add_argument('--no-scifact', action='store_true')
  ap.add_argument('--quick', action='store_true', help='20k synthetic vectors, one timed run')
  ap.add_argument('--out', default=str(_REPO / 'results' / 'bench_search_cpu.json'))
  ap.add_argument('--update', action='store_true',
                  help='merge into --out: keep the entries of datasets/indexes not run this time '
                       '(each entry carries the time it was measured)')
  ap.add_argument('--worker', help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.worker:
    worker(json.loads(args.worker))
    return 0

  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run, merge_entries, stamp_entries
  run = Run(config={k: v for k, v in vars(args).items() if k != 'worker'},
            seeds={'synthetic_base': 1, 'synthetic_queries': 2},
            extra_packages=('faiss-cpu',)).start()
  sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(',') if s]
  reps = 1 if args.quick else args.reps
  datasets = [f'synthetic{n}' for n in sizes] + ([] if args.quick or args.no_scifact
                                                  else ['scifact'])
  indexes = args.indexes.split(',')
  faiss_env, blas_record = faiss_blas_env()
  print(f'OpenBLAS kernels: {blas_record}', flush=True)
  load_start = os.getloadavg()
  files = prepare(datasets, _REPO / 'runs' / 'bench_search')
  if 'scifact' in datasets:
    from embedjax.paths import shared_data_dir
    run.add_inputs(shared_data_dir() / 'scifact')
  run.add_inputs(*(p for ds in datasets for p in files[ds].values()))
  cases, results = [], {}
  for di, ds in enumerate(datasets):
    for ii, index in enumerate(indexes):
      first = LIBS[(di + ii) % 2]  # alternate who runs first
      spec = {'index': index, 'dataset': ds, 'files': files[ds], 'threads': args.threads}
      print(f'{ds:>18} {index:>6} ...', end=' ', flush=True)
      records, ratios = run_pair(spec, reps, first, faiss_env)
      e, f = records['embedjax'], records['faiss']
      print(f'embedjax {e["queries_per_second"]:9.1f} q/s, faiss {f["queries_per_second"]:9.1f} '
            f'q/s, median round ratio {statistics.median(ratios):.2f}; recall@10 '
            f'{e["recall@10"]:.4f} / {f["recall@10"]:.4f}; peak RSS '
            f'{e["peak_rss_bytes"] / 2**30:.2f} / {f["peak_rss_bytes"] / 2**30:.2f} GiB',
            flush=True)
      cases += [e, f]
      results.setdefault(ds, {})[index] = {**records, 'round_ratios': ratios}
  summary = {}
  for ds, per_index in results.items():
    for index, libs in per_index.items():
      e, f = libs['embedjax'], libs['faiss']
      entry = {'embedjax_qps': e['queries_per_second'], 'faiss_qps': f['queries_per_second'],
               'ratio_vs_faiss': statistics.median(libs['round_ratios']),
               'round_ratios': libs['round_ratios'],
               'ratio_of_median_qps': e['queries_per_second'] / f['queries_per_second'],
               'embedjax_recall@10': e['recall@10'], 'faiss_recall@10': f['recall@10'],
               'embedjax_peak_rss_gib': e['peak_rss_bytes'] / 2**30,
               'faiss_peak_rss_gib': f['peak_rss_bytes'] / 2**30,
               'embedjax_build_seconds': e['build_seconds'],
               'faiss_build_seconds': f['build_seconds'],
               'measured_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
               'command': 'python ' + ' '.join(sys.argv)}
      if index == 'flat':
        entry['memory_bound'] = flat_memory_bound(e['n'])
        entry['embedjax_plan'] = search_plan(e['n'])
        entry['embedjax_within_bound'] = e['peak_rss_bytes'] <= entry['memory_bound'][
            'bound_bytes']
      summary.setdefault(ds, {})[index] = entry
  record = {
      'summary': summary, 'cases': cases,
      'settings': {'threads': args.threads, 'reps': reps, 'queries': NUM_QUERIES, 'k': K,
                   'dim': DIM, 'pq_m': PQ_M,
                   'embedjax_blocks': 'library defaults (embedjax.search.exact.plan; the '
                                      'chosen plan per dataset is in summary[...].flat)',
                   'faiss': f'omp_set_num_threads({args.threads})',
                   'openblas': blas_record,
                   'xla': f'pool sized from the CPUs the worker may use '
                          f'(pinned to {args.threads} when fewer than the machine has)',
                   'loadavg_start': load_start, 'loadavg_end': os.getloadavg()},
      'provenance': run.finish().provenance(),
  }
  stamp_entries(summary, record['provenance'], depth=2)
  out = Path(args.out)
  if args.quick:
    out = out.with_name(out.stem + '.quick.json')
  if args.update and out.exists():
    old = json.loads(out.read_text())
    ran = {(c['dataset'], c['index']) for c in cases}
    # entries not rerun keep their own provenance (or, lacking one, the earlier file's, marked
    # inherited_from_file)
    summary = record['summary'] = merge_entries(old.get('summary', {}), summary, depth=2,
                                                old_provenance=old.get('provenance'))
    record['cases'] = [c for c in old.get('cases', []) if (c['dataset'], c['index']) not in ran
                       ] + cases
    record['earlier_runs'] = old.get('earlier_runs', []) + [
        {'settings': old.get('settings'), 'provenance': old.get('provenance')}]
  atomic_write_json(out, record)
  print(f'\n{"dataset":>18} {"index":>6} {"embedjax q/s":>13} {"faiss q/s":>10} {"ratio":>6} '
        f'{"qps ratio":>9} {"recall ej/faiss":>16}')
  for ds, per_index in summary.items():
    for index, s in per_index.items():
      print(f'{ds:>18} {index:>6} {s["embedjax_qps"]:13.1f} {s["faiss_qps"]:10.1f} '
            f'{s["ratio_vs_faiss"]:6.2f} {s["ratio_of_median_qps"]:9.2f} '
            f'{s["embedjax_recall@10"]:7.4f}/{s["faiss_recall@10"]:.4f}')
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
