"""Sharded exact search on forced CPU devices: int8 and binary codes split by rows over a mesh axis.

    .venv/bin/python benchmarks/search_sharded_cpu.py [--rows 10000000] [--dim 384] [--queries 1000]
        [--k 10] [--devices 8] [--check 50] [--reps 3] [--kinds int8,binary]
        [--out results/bench_search_sharded_cpu.json]

What it measures, per kind (one after the other; each kind's corpus is freed before the next):

  int8    int8 codes (D bytes per row), exact integer inner products:
          ``embedjax.search.sharded.sharded_int8_topk``.
  binary  sign bits packed 8 per byte (ceil(D / 8) bytes per row), Hamming distance (popcount):
          ``embedjax.search.sharded.sharded_hamming_topk``.

Data. A synthetic corpus of ``--rows`` x ``--dim`` that never exists as float32 as a whole: it is
generated in fixed chunks of ``GEN_ROWS`` rows, chunk i from ``np.random.default_rng((seed, 0,
i))`` (queries: stream 1), each a standard normal float32 block quantised at once: int8 =
clip(rint(32 x), -127, 127), binary = ``np.packbits(x > 0)``. Any row range can therefore be
regenerated, bit for bit, without the rest (the sha256 of the codes is recorded and compared).
The codes are placed on a 1-D mesh of ``--devices`` forced CPU devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=N``, set here before jax is imported) with
``sharded.place_rows``; the host copy is then dropped.

Timing. One warm-up call of all queries (compilation), then ``--reps`` timed calls (default 3) of
all queries, results copied to host; queries/s = queries / median seconds.

Memory (peak resident set, VmHWM of /proc/self/status, reset between phases through
/proc/self/clear_refs so that each phase's peak is its own; ``ru_maxrss`` is the whole process's).
The stated formula is the one of ``embedjax/search/sharded.py`` (module docstring and
``place_rows``), summed over the S devices (forced CPU devices share the host's memory), with the
terms of ``exact.plan`` that the per-shard scan picks: per device its R = ceil(n / S) rows x
bytes_per_row + R bools of the real-row mask; per query block of B queries the scan's B x block
float32 scores, the 'maxima' strategy's sub-chunk maxima (B x n_main / 16 float32) when the plan
picks it, the block's rows as the score widens them (int8: block x D float32, plus B x D for the
queries), the local (B, k') and gathered (B, S k') candidates (8 bytes each), the int8 path's
exact re-scoring of the selected rows (B x k' x D int32) and the (B, k) result. The runtime
overhead is measured: the RSS when the kind starts, before its codes are generated or placed.
``within_bound`` says whether the peak of the timed searches (after the warm-up call, so
compilation is not counted) is <= runtime + formula; ``within_bound_with_warmup_residue`` adds
what the warm-up call left resident (compiled programs, thread pools: RSS after it minus RSS
before it, 80-160 MB in small runs), which the runtime measured before placement cannot include.
Placing the corpus needs more for a moment:
the host codes (n x bytes_per_row), the padded copy ``place_rows`` makes (S R x bytes_per_row) and
the device buffers (S R x bytes_per_row) coexist, with the generator's scratch (one chunk:
GEN_ROWS x D x 6 bytes); that bound is recorded beside its measured peak.

Correctness. ``--check`` queries (evenly spaced over the query set) are searched without sharding
(``embedjax.search.quantized.int8_topk`` / ``embedjax.search.hamming.hamming_topk`` on device 0)
over the regenerated corpus in host chunks of ``--check-chunk-rows``; the chunk top-ks are merged
on the host, best score first, ties to the lower row id. The ids must equal the sharded ones (and
the scores too); mismatches are counted, the record is written, and the script exits 1 if any.

Writes ``--out`` atomically (``embedjax.io.atomic_write_json``) with ``embedjax.provenance.Run``
provenance.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import re
import resource
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
GEN_ROWS = 65536  # rows per generated chunk: fixed, so the data do not depend on any run setting
INT8_SCALE = 32.0  # int8 code = clip(rint(32 x), -127, 127) of a standard normal x
CORPUS_STREAM, QUERY_STREAM = 0, 1
KINDS = ('int8', 'binary')


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--rows', type=int, default=10_000_000)
  ap.add_argument('--dim', type=int, default=384)
  ap.add_argument('--queries', type=int, default=1000)
  ap.add_argument('--k', type=int, default=10)
  ap.add_argument('--devices', type=int, default=8, help='forced CPU devices (the mesh axis)')
  ap.add_argument('--check', type=int, default=50, help='queries checked against unsharded search')
  ap.add_argument('--reps', type=int, default=3, help='timed calls after one warm-up call')
  ap.add_argument('--kinds', default=','.join(KINDS))
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--check-chunk-rows', type=int, default=16 * GEN_ROWS,
                  help='corpus rows per unsharded search in the check (host chunks)')
  ap.add_argument('--out', default=str(_REPO / 'results' / 'bench_search_sharded_cpu.json'))
  args = ap.parse_args(argv)
  kinds = [k for k in args.kinds.split(',') if k]
  bad = [k for k in kinds if k not in KINDS]
  if bad or not kinds:
    ap.error(f'--kinds must name some of {KINDS}, got {args.kinds!r}')
  for name in ('rows', 'dim', 'queries', 'k', 'devices', 'reps', 'check_chunk_rows'):
    if getattr(args, name) < 1:
      ap.error(f'--{name.replace("_", "-")} must be >= 1')
  if not 0 <= args.check <= args.queries:
    ap.error('--check must be between 0 and --queries')
  return args


def force_devices(n: int) -> None:
  """Sets the forced CPU device count in XLA_FLAGS (replacing any earlier count); jax must not be
  imported yet."""
  if 'jax' in sys.modules:
    raise RuntimeError('jax is already imported: the device count can no longer be set')
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 os.environ.get('XLA_FLAGS', '')).split()
  os.environ['XLA_FLAGS'] = ' '.join(flags + [f'--xla_force_host_platform_device_count={n}'])


# ----------------------------------------------------------------------------------------------
# Memory


# Memory of this process (VmRSS / VmHWM, and the reset of VmHWM between phases).
from embedjax.process_memory import peak_rss_bytes as peak_rss  # noqa: E402
from embedjax.process_memory import reset_peak  # noqa: E402
from embedjax.process_memory import rss_bytes as rss_now  # noqa: E402


def bytes_per_row(kind: str, dim: int) -> int:
  return dim if kind == 'int8' else -(-dim // 8)


def memory_formula(kind: str, n: int, dim: int, queries: int, k: int, devices: int) -> dict:
  """The stated memory (module docstring) of sharded search for this configuration, in bytes."""
  from embedjax.search import exact, sharded
  s = devices
  r = sharded.rows_per_shard(n, s)
  bpr = bytes_per_row(kind, dim)
  b = min(sharded.DEFAULT_QUERY_BLOCK, queries)  # queries per sharded call
  k = min(k, n)
  k_local = min(k, r)
  strategy, block, _, n_main = exact.plan(r, k_local, None, b, None)  # as each shard's scan
  per_device = {
      'rows': r * bpr,
      'real_row_mask': r,
      'scan_scores': b * block * 4,
      'maxima': b * (n_main // 16) * 4 if strategy == 'maxima' else 0,
      'widened_block': (block * dim * 4 + b * dim * 4) if kind == 'int8' else 0,
      'candidates': b * k_local * 8 + b * s * k_local * 8,
      'int8_rescore': b * k_local * dim * 4 + b * s * k_local * 4 if kind == 'int8' else 0,
      'result': b * k * 8,
  }
  total = s * sum(per_device.values())
  return {
      'devices': s, 'rows_per_shard': r, 'padded_rows': s * r, 'bytes_per_row': bpr,
      'query_block': b, 'k_local': k_local,
      'plan': {'strategy': strategy, 'block_size': block, 'query_block': b,
               'rows_in_blocks': n_main},
      'per_device_bytes': per_device, 'per_device_total_bytes': sum(per_device.values()),
      'total_bytes': total,
      'generation_scratch_bytes': min(GEN_ROWS, n) * dim * 6,
      'placement_staging_bytes': n * bpr + 2 * s * r * bpr + min(GEN_ROWS, n) * dim * 6,
  }


FORMULA_TEXT = (
    'S x [R x bytes_per_row (rows) + R (real-row mask) + B x block x 4 (scan scores) + '
    "B x n_main/16 x 4 (sub-chunk maxima, if exact.plan picks 'maxima') + block x D x 4 + "
    'B x D x 4 '
    "(int8: rows and queries widened to float32) + B x k' x 8 + B x S x k' x 8 (local and gathered "
    "candidates) + B x k' x D x 4 + B x S x k' x 4 (int8: exact re-scoring) + B x k x 8 (result)], "
    "S devices, R = ceil(n / S), k' = min(k, R), B = min(1024, queries), block and n_main from "
    'exact.plan(R, k\', query_block=B); bound = runtime RSS (measured when the kind starts) + that '
    '(second bound: + the RSS the warm-up call left behind). '
    'Placement staging: host codes n x bytes_per_row + padded copy and device buffers 2 x S R x '
    'bytes_per_row + generation scratch (one chunk of 65,536 rows: D x 4 float32 + D x 2 bool/'
    'codes bytes per row); placement bound = runtime RSS + staging.')


# ----------------------------------------------------------------------------------------------
# Data


def _encode(kind: str, x):
  import numpy as np
  if kind == 'int8':  # in place: one float32 chunk at a time, whatever the corpus size
    x *= np.float32(INT8_SCALE)
    np.rint(x, out=x)
    np.clip(x, -127, 127, out=x)
    return x.astype(np.int8)
  return np.packbits(x > 0, axis=-1)


class Codes:
  """Codes of rows [lo, hi) of one stream, generated in fixed chunks of GEN_ROWS rows (the last
  chunk generated is kept, so consecutive ranges do not regenerate it)."""

  def __init__(self, kind: str, seed: int, stream: int, n: int, dim: int):
    self.kind, self.seed, self.stream, self.n, self.dim = kind, seed, stream, n, dim
    self._cached = (None, None)

  def _chunk(self, i: int):
    import numpy as np
    if self._cached[0] != i:
      rows = min(GEN_ROWS, self.n - i * GEN_ROWS)
      rng = np.random.default_rng((self.seed, self.stream, i))
      x = rng.standard_normal((rows, self.dim), dtype=np.float32)
      self._cached = (i, _encode(self.kind, x))
    return self._cached[1]

  def rows(self, lo: int, hi: int, out=None):
    import numpy as np
    hi = min(hi, self.n)
    if out is None:
      out = np.empty((hi - lo, bytes_per_row(self.kind, self.dim)),
                     np.int8 if self.kind == 'int8' else np.uint8)
    pos = lo
    while pos < hi:
      i = pos // GEN_ROWS
      chunk = self._chunk(i)
      take = min(hi, (i + 1) * GEN_ROWS) - pos
      out[pos - lo:pos - lo + take] = chunk[pos - i * GEN_ROWS:pos - i * GEN_ROWS + take]
      pos += take
    return out


# ----------------------------------------------------------------------------------------------
# Search


def sharded_search(kind: str, mesh, queries, corpus, n: int, k: int):
  import numpy as np
  from embedjax.search import sharded
  fn = sharded.sharded_int8_topk if kind == 'int8' else sharded.sharded_hamming_topk
  scores, ids = fn(mesh, queries, corpus, n, k)
  return np.asarray(scores), np.asarray(ids)


def unsharded_search(kind: str, queries, codes: Codes, k: int, chunk_rows: int):
  """Single-device search over host chunks of the corpus, chunk top-ks merged on the host (best
  first, ties to the lower row id). Returns (scores, ids) as the library returns them."""
  import jax
  import numpy as np
  from embedjax.search.hamming import hamming_topk
  from embedjax.search.quantized import int8_topk
  device = jax.devices()[0]
  costs, ids, digest = [], [], hashlib.sha256()
  for lo in range(0, codes.n, chunk_rows):
    chunk = codes.rows(lo, lo + chunk_rows)
    digest.update(memoryview(chunk))
    on_device = jax.device_put(chunk, device)
    del chunk
    if kind == 'int8':
      s, i = int8_topk(queries, on_device, k)
      costs.append(-np.asarray(s, np.int64))  # larger score = better
    else:
      s, i = hamming_topk(queries, on_device, k)
      costs.append(np.asarray(s, np.int64))
    ids.append(np.asarray(i, np.int64) + lo)
    del on_device
  cost, idx = np.concatenate(costs, axis=1), np.concatenate(ids, axis=1)
  order = np.lexsort((idx, cost), axis=-1)[:, :min(k, codes.n)]  # by cost, then lower id
  cost, idx = np.take_along_axis(cost, order, 1), np.take_along_axis(idx, order, 1)
  scores = -cost if kind == 'int8' else cost
  return scores, idx, digest.hexdigest()


def run_kind(kind: str, args, mesh) -> dict:
  import jax
  import numpy as np
  from embedjax.search import sharded
  n, dim = args.rows, args.dim
  k = min(args.k, n)
  gc.collect()
  runtime_rss = rss_now()
  formula = memory_formula(kind, n, dim, args.queries, args.k, args.devices)
  queries = Codes(kind, args.seed, QUERY_STREAM, args.queries, dim).rows(0, args.queries)
  print(f'[{kind}] generating {n:,} x {dim} codes ({n * formula["bytes_per_row"] / 2**30:.2f} '
        f'GiB) ...', flush=True)

  reset_peak()
  t0 = time.perf_counter()
  host = Codes(kind, args.seed, CORPUS_STREAM, n, dim).rows(0, n)
  gen_s = time.perf_counter() - t0
  digest = hashlib.sha256(memoryview(host)).hexdigest()  # no copy
  t0 = time.perf_counter()
  corpus = jax.block_until_ready(sharded.place_rows(mesh, host, n))
  place_s = time.perf_counter() - t0
  peak_placement = peak_rss()
  del host
  gc.collect()
  rss_placed = rss_now()

  print(f'[{kind}] warm-up (compiles) ...', flush=True)
  reset_peak()
  t0 = time.perf_counter()
  scores, ids = sharded_search(kind, mesh, queries, corpus, n, k)
  first_s = time.perf_counter() - t0
  peak_warmup = peak_rss()
  gc.collect()
  rss_warm = rss_now()
  peak_reset = reset_peak()
  times = []
  for _ in range(args.reps):
    t0 = time.perf_counter()
    scores, ids = sharded_search(kind, mesh, queries, corpus, n, k)
    times.append(time.perf_counter() - t0)
  peak_search = peak_rss()
  med = statistics.median(times)
  print(f'[{kind}] {args.queries / med:,.1f} queries/s (median of {args.reps}: {med:.3f} s); '
        f'peak RSS of the searches {peak_search / 2**30:.3f} GiB', flush=True)
  del corpus
  gc.collect()

  check = {'queries': args.check}
  if args.check:
    print(f'[{kind}] checking {args.check} queries against unsharded search ...', flush=True)
    picked = np.unique(np.linspace(0, args.queries - 1, args.check).round().astype(np.int64))
    reset_peak()
    t0 = time.perf_counter()
    ref_scores, ref_ids, ref_digest = unsharded_search(
        kind, queries[picked], Codes(kind, args.seed, CORPUS_STREAM, n, dim), k,
        args.check_chunk_rows)
    id_bad = np.any(ids[picked] != ref_ids, axis=1)
    score_bad = np.any(scores[picked] != ref_scores, axis=1)
    check.update({
        'queries': int(picked.size), 'query_indices': picked.tolist(),
        'mismatches': int(id_bad.sum()), 'mismatched_queries': picked[id_bad].tolist()[:20],
        'score_mismatches': int(score_bad.sum()),
        'codes_identical': ref_digest == digest, 'chunk_rows': args.check_chunk_rows,
        'reference': ('embedjax.search.quantized.int8_topk' if kind == 'int8' else
                      'embedjax.search.hamming.hamming_topk') + ' on device 0 per host chunk, '
                     'chunk top-ks merged on the host (ties to the lower id)',
        'seconds': time.perf_counter() - t0, 'peak_rss_bytes': peak_rss()})
    print(f'[{kind}] {check["mismatches"]} id mismatches, {check["score_mismatches"]} score '
          f'mismatches in {check["queries"]} queries', flush=True)

  bound = runtime_rss + formula['total_bytes']
  compiled = max(0, rss_warm - rss_placed)  # what the warm-up call left resident (programs, pools)
  placement_bound = runtime_rss + formula['placement_staging_bytes']
  return {
      'n': n, 'dim': dim, 'k': k, 'queries': args.queries, 'devices': args.devices,
      'codes_sha256': digest, 'generation_seconds': gen_s, 'placement_seconds': place_s,
      'first_call_seconds': first_s, 'seconds': times, 'median_seconds': med,
      'queries_per_second': args.queries / med,
      'ids_head': ids[:2].tolist(), 'scores_head': scores[:2].tolist(),
      'memory': {
          'runtime_rss_bytes': runtime_rss, 'formula': formula,
          'bound_bytes': bound, 'peak_rss_search_bytes': peak_search,
          'peak_reset_worked': peak_reset,
          'within_bound': peak_search <= bound, 'bound_minus_peak_bytes': bound - peak_search,
          'peak_rss_warmup_bytes': peak_warmup, 'rss_after_warmup_bytes': rss_warm,
          'warmup_residue_bytes': compiled,
          'within_bound_with_warmup_residue': peak_search <= bound + compiled,
          'placement_bound_bytes': placement_bound, 'peak_rss_placement_bytes': peak_placement,
          'placement_within_bound': peak_placement <= placement_bound,
          'rss_after_placement_bytes': rss_placed,
      },
      'check': check,
  }


def main(argv=None) -> int:
  args = parse_args(argv)
  force_devices(args.devices)
  import jax
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  if jax.device_count() != args.devices:
    raise RuntimeError(f'asked for {args.devices} devices, jax has {jax.device_count()}')
  run = Run(config=vars(args), seeds={'seed': args.seed, 'corpus_stream': CORPUS_STREAM,
                                      'query_stream': QUERY_STREAM}).start()
  mesh = jax.make_mesh((args.devices,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  load_start = os.getloadavg()
  results = {}
  for kind in args.kinds.split(','):
    results[kind] = run_kind(kind, args, mesh)
  mismatches = sum(r['check'].get('mismatches', 0) + r['check'].get('score_mismatches', 0)
                   + (0 if r['check'].get('codes_identical', True) else 1)
                   for r in results.values())
  record = {
      'settings': {
          'rows': args.rows, 'dim': args.dim, 'queries': args.queries, 'k': args.k,
          'devices': args.devices, 'reps': args.reps, 'check': args.check,
          'check_chunk_rows': args.check_chunk_rows, 'kinds': list(results), 'seed': args.seed,
          'data': f'standard normal float32 in chunks of {GEN_ROWS} rows, chunk i from '
                  'default_rng((seed, stream, i)), stream 0 corpus / 1 queries; int8 = '
                  f'clip(rint({INT8_SCALE:g} x), -127, 127), binary = packbits(x > 0)',
          'mesh': f'1-D mesh ("data",) of {args.devices} forced CPU devices, '
                  'XLA_FLAGS=' + os.environ['XLA_FLAGS'],
          'timing': f'one warm-up call of all queries, then median of {args.reps} calls '
                    '(results copied to host)',
          'memory': 'VmHWM per phase (reset through /proc/self/clear_refs)',
          'cores': os.cpu_count(), 'loadavg_start': load_start, 'loadavg_end': os.getloadavg(),
      },
      'memory_formula': FORMULA_TEXT,
      'results': results,
      'mismatches': mismatches,
      'ru_maxrss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      'command': run.command,
      'provenance': run.finish().provenance(),
  }
  atomic_write_json(args.out, record)
  for kind, r in results.items():
    m = r['memory']
    print(f'{kind:>6}: {r["queries_per_second"]:10.1f} q/s; peak search RSS '
          f'{m["peak_rss_search_bytes"] / 2**30:.3f} GiB vs bound {m["bound_bytes"] / 2**30:.3f} '
          f'GiB ({"within" if m["within_bound"] else "ABOVE"}; + warm-up residue '
          f'{m["warmup_residue_bytes"] / 2**20:.0f} MiB: '
          f'{"within" if m["within_bound_with_warmup_residue"] else "ABOVE"}); placement peak '
          f'{m["peak_rss_placement_bytes"] / 2**30:.3f} GiB vs '
          f'{m["placement_bound_bytes"] / 2**30:.3f} GiB; check mismatches '
          f'{r["check"].get("mismatches", "-")}')
  print(f'wrote {args.out}')
  if mismatches:
    print(f'FAILED: {mismatches} mismatches against unsharded search', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
