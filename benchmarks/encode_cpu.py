"""Encode throughput on CPU: embedjax vs sentence-transformers (torch), same texts, same threads.

    .venv/bin/python benchmarks/encode_cpu.py [--threads T] [--runs-stsb 5] [--runs-scifact 3]
    .venv/bin/python benchmarks/encode_cpu.py --quick      # smoke run: few texts, one timed run

Sets: every STS-B test sentence (both columns, 2,758 short texts) and the SciFact corpus (5,183
abstracts, title + " " + text, most cut at the 256-token limit). Both systems embed the same list
of texts with all-MiniLM-L6-v2: ``embedjax.encoding.encode`` and
``SentenceTransformer(..., device='cpu').encode(texts, batch_size=32)`` (its defaults: length
sorted batches, normalised output). Each system gets one untimed warm-up run (jit compilation,
allocator and thread-pool warm-up), then the timed runs are interleaved (A B, B A, A B ...) so
drift from other work on a shared machine hits both. Reported: per-run wall seconds, process CPU
seconds, medians, texts/s, the ratio (sentence-transformers median / embedjax median) and the
minimum cosine between the two systems' embeddings.

Threads: T (default os.cpu_count()) for both. torch: ``torch.set_num_threads(T)``. XLA CPU has no
thread-count flag in jax 0.10 (``intra_op_parallelism_threads`` is not an XLA flag and is ignored;
``--xla_cpu_multi_thread_eigen`` only switches the Eigen pool on or off): its pool is sized from
the CPUs the process may run on, so for T below the machine's CPU count the process is pinned to
T CPUs (``os.sched_setaffinity``), which bounds torch too. Tokenizers (used by both) get
RAYON_NUM_THREADS=T. All of it has to happen before jax or torch start, hence the late imports.
Writes ``results/bench_encode_cpu.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

_REPO = Path(__file__).resolve().parents[1]
SETS = ('stsb', 'scifact')
SYSTEMS = ('embedjax', 'sentence_transformers')


def configure_threads(threads: int) -> dict:
  """Applies the thread settings (before jax / torch initialise) and returns what was set."""
  jax_started = 'jax' in sys.modules
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_cpu_multi_thread_eigen' not in flags:
    os.environ['XLA_FLAGS'] = (flags + ' --xla_cpu_multi_thread_eigen=true').strip()
  # setdefault: an explicit choice in the environment (e.g. the test suite's) wins.
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'true')
  os.environ.setdefault('RAYON_NUM_THREADS', str(threads))
  os.environ.setdefault('OMP_NUM_THREADS', str(threads))
  allowed = sorted(os.sched_getaffinity(0))
  if threads < len(allowed):
    os.sched_setaffinity(0, allowed[:threads])
  return {
      'XLA_FLAGS': os.environ['XLA_FLAGS'],
      'TOKENIZERS_PARALLELISM': os.environ['TOKENIZERS_PARALLELISM'],
      'RAYON_NUM_THREADS': os.environ['RAYON_NUM_THREADS'],
      'OMP_NUM_THREADS': os.environ['OMP_NUM_THREADS'],
      'cpu_affinity': sorted(os.sched_getaffinity(0)),
      # True when jax was imported before these settings (e.g. under pytest): XLA flags then
      # only apply if its backend had not started yet.
      'jax_imported_before_settings': jax_started,
  }


def load_sets(data_dir: Path, names: Sequence[str]) -> dict[str, list[str]]:
  from embedjax.data.readers import read_beir, read_stsb
  texts = {}
  if 'stsb' in names:
    pairs = read_stsb(data_dir / 'stsb', 'test')
    texts['stsb'] = [t for a, b in zip(pairs.sentences1, pairs.sentences2) for t in (a, b)]
  if 'scifact' in names:
    texts['scifact'] = read_beir(data_dir / 'scifact').corpus_texts
  return texts


def _timed(fn: Callable[[], object]) -> tuple[float, float, object]:
  cpu, wall = time.process_time(), time.perf_counter()
  out = fn()
  return time.perf_counter() - wall, time.process_time() - cpu, out


def min_cosine(a, b) -> float:
  import numpy as np
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  return float(cos.min())


def bench_set(systems: dict[str, Callable], texts: list[str], runs: int, log=print) -> dict:
  """Warm-up once each, then ``runs`` interleaved timed runs; returns seconds and the outputs' cosine."""
  result = {'warmup_s': {}, 'runs': {n: [] for n in systems}, 'cpu_s': {n: [] for n in systems}}
  outputs = {}
  for name, fn in systems.items():
    wall, _, outputs[name] = _timed(lambda: fn(texts))
    result['warmup_s'][name] = round(wall, 3)
    log(f'  warm-up {name}: {wall:.1f} s')
  names = list(systems)
  for r in range(runs):
    # Alternate the order so neither system always runs right after the other (cache, turbo).
    for name in (names if r % 2 == 0 else names[::-1]):
      wall, cpu, outputs[name] = _timed(lambda: systems[name](texts))
      result['runs'][name].append(round(wall, 4))
      result['cpu_s'][name].append(round(cpu, 4))
      log(f'  run {r + 1}/{runs} {name}: {wall:.2f} s (cpu {cpu:.1f} s)')
  result['min_cosine'] = min_cosine(outputs['embedjax'], outputs['sentence_transformers'])
  return result


def token_stats(tokenizer, texts: list[str]) -> dict:
  lengths = [len(x) for x in tokenizer.encode(texts)]
  return {'count': len(texts), 'tokens': sum(lengths), 'mean_tokens': round(sum(lengths) / len(lengths), 1),
          'max_tokens': max(lengths), 'at_limit': sum(n == tokenizer.max_length for n in lengths)}


def format_table(record: dict) -> str:
  lines = [f'{"set":8s} {"texts":>6s} {"embedjax s":>11s} {"texts/s":>8s} {"ST s":>8s} '
           f'{"texts/s":>8s} {"ratio":>6s} {"min cos":>9s}']
  for name in record['ratio_vs_sentence_transformers']:
    med, tps = record['median_s'][name], record['texts_per_s'][name]
    lines.append(f'{name:8s} {record["texts"][name]["count"]:6d} {med["embedjax"]:11.2f} '
                 f'{tps["embedjax"]:8.1f} {med["sentence_transformers"]:8.2f} '
                 f'{tps["sentence_transformers"]:8.1f} '
                 f'{record["ratio_vs_sentence_transformers"][name]:6.2f} '
                 f'{record["min_cosine"][name]:9.6f}')
  return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                 help='threads for both systems (default: os.cpu_count())')
  p.add_argument('--runs-stsb', type=int, default=5, help='timed runs on STS-B')
  p.add_argument('--runs-scifact', type=int, default=3, help='timed runs on SciFact')
  p.add_argument('--sets', default=','.join(SETS), help='comma-separated subset of stsb,scifact')
  p.add_argument('--data-dir', default=None, help='shared data folder (default: embedjax.paths)')
  p.add_argument('--model', default='all-MiniLM-L6-v2')
  p.add_argument('--st-batch-size', type=int, default=32, help="sentence-transformers batch_size")
  p.add_argument('--limit', type=int, default=None,
                 help='use only the first N texts of each set (default: all; 64 with --quick)')
  p.add_argument('--quick', action='store_true',
                 help='smoke run: the first --limit (64) texts of each set, one timed run')
  p.add_argument('--out', default=None, help='result JSON (default: results/bench_encode_cpu.json, '
                                             'or results/bench_encode_cpu.quick.json with --quick)')
  return p


def main(argv: Sequence[str] | None = None, texts: dict[str, list[str]] | None = None) -> dict:
  """Runs the benchmark; ``texts`` (set name -> texts) replaces reading the data (tests)."""
  args = build_parser().parse_args(argv)
  if args.threads < 1:
    raise SystemExit('--threads must be at least 1')
  thread_settings = configure_threads(args.threads)

  import jax
  import torch
  from sentence_transformers import SentenceTransformer

  from embedjax import paths
  from embedjax.encoding import TOKENS_PER_BATCH, encode
  from embedjax.io import atomic_write_json
  from embedjax.models.pretrained import load_pretrained
  from embedjax.provenance import Run

  torch.set_num_threads(args.threads)
  # Taken at the start: the commit and command that the timed code came from, even if the
  # repository moves on during a long run.
  run = Run(config={k: v for k, v in vars(args).items()},
            extra_packages=('torch', 'sentence-transformers', 'transformers')).start()
  names = [n.strip() for n in args.sets.split(',') if n.strip()]
  if texts is None:
    unknown = sorted(set(names) - set(SETS))
    if unknown:
      raise SystemExit(f'unknown set(s) {unknown}; choose from {SETS}')
    data_dir = Path(args.data_dir) if args.data_dir else paths.shared_data_dir()
    if data_dir is None:
      raise SystemExit('no shared data folder found: pass --data-dir or set EMBEDJAX_DATA_DIR')
    texts = load_sets(data_dir, names)
    run.add_inputs(*(data_dir / n for n in ('stsb', 'scifact') if n in names))
  else:
    texts = {n: texts[n] for n in names if n in texts}
  runs = {'stsb': args.runs_stsb, 'scifact': args.runs_scifact}
  limit = 64 if args.quick and args.limit is None else args.limit
  if limit is not None:
    texts = {n: t[:limit] for n, t in texts.items()}
  if args.quick:
    runs = {n: 1 for n in runs}

  model = load_pretrained(args.model)
  st = SentenceTransformer(model.source, device='cpu')
  systems = {
      'embedjax': lambda t: encode(model, t, progress=False),
      'sentence_transformers': lambda t: st.encode(t, batch_size=args.st_batch_size,
                                                   show_progress_bar=False, convert_to_numpy=True),
  }
  record: dict = {'ratio_vs_sentence_transformers': {}, 'texts_per_s': {}, 'median_s': {},
                  'runs': {}, 'cpu_s': {}, 'warmup_s': {}, 'min_cosine': {}, 'texts': {}}
  load_before = os.getloadavg()
  for name, set_texts in texts.items():
    n_runs = runs.get(name, 1)
    print(f'[{name}] {len(set_texts)} texts, {n_runs} timed run(s) each', flush=True)
    r = bench_set(systems, set_texts, n_runs, log=lambda s: print(s, flush=True))
    med = {k: statistics.median(v) for k, v in r['runs'].items()}
    record['median_s'][name] = {k: round(v, 4) for k, v in med.items()}
    record['texts_per_s'][name] = {k: round(len(set_texts) / v, 2) for k, v in med.items()}
    record['ratio_vs_sentence_transformers'][name] = round(
        med['sentence_transformers'] / med['embedjax'], 4)
    for key in ('runs', 'cpu_s', 'warmup_s', 'min_cosine'):
      record[key][name] = r[key]
    record['texts'][name] = token_stats(model.tokenizer, set_texts)

  record.update(
      benchmark='encode_cpu', quick=args.quick, limit=limit, model=args.model, model_source=model.source,
      threads=args.threads,
      settings={
          **thread_settings,
          'torch_num_threads': torch.get_num_threads(),
          'torch_interop_threads': torch.get_num_interop_threads(),
          'jax_backend': jax.default_backend(),
          'jax_default_matmul_precision': str(jax.config.jax_default_matmul_precision),
          'embedjax_encode': {'rows_per_batch': None, 'tokens_per_batch': TOKENS_PER_BATCH,
                              'max_segments': 32, 'dtype': model.spec.bert.dtype},
          'sentence_transformers': {'batch_size': args.st_batch_size,
                                    'max_seq_length': st.max_seq_length, 'device': 'cpu'},
          'warmup_runs': 1, 'timed_runs': runs, 'order': 'interleaved, alternating',
          'ratio': 'sentence-transformers median seconds / embedjax median seconds',
          'load_average_before': [round(x, 2) for x in load_before],
          'load_average_after': [round(x, 2) for x in os.getloadavg()],
      },
      provenance=run.finish().provenance(),
  )
  out = Path(args.out) if args.out else (
      _REPO / 'results' / ('bench_encode_cpu.quick.json' if args.quick else 'bench_encode_cpu.json'))
  atomic_write_json(out, record)
  print(format_table(record))
  print(f'wrote {out}')
  return record


if __name__ == '__main__':
  main()
