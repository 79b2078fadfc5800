"""The training input pipeline alone: how many pairs a second the loader tokenizes and batches
(``embedjax.train.batches.make_loader``: grain, its prefetch thread, the tokenizer), against the
step rates the GPU benchmark measured, so that host input is known not to be the bottleneck.

    .venv/bin/python benchmarks/input_cpu.py            # SciFact title -> text pairs, 40 batches
    .venv/bin/python benchmarks/input_cpu.py --quick    # smoke run: synthetic pairs, 3 batches
    # on a GPU host (GPU suite E): the carried corpus and tokenizer, no ../shared, no tfds
    python3 benchmarks/input_cpu.py --texts CARRY/scifact_corpus.jsonl.gz \
        --tokenizer CARRY/tokenizer.json --site /tmp/peer_site --out bench_input_gpu_host.json

Rows: the training source ``--source`` (default ``scifact_titles``: 5,183 SciFact corpus titles
paired with their abstracts, from ../shared/data; ``synthetic`` needs no data) or the same pairs
from ``--texts``, MiniLM's tokenizer, the GPU training benchmark's batch (``--batch`` 256 pairs,
queries and documents cut at ``--query-len`` / ``--doc-len`` 128 tokens), every padding of
``data.padding``. The loader is consumed as fast as it produces (nothing else runs): after
``--warmup`` batches (the prefetch threads filling their buffer), ``--batches`` batches are timed,
with one read thread (the training loop's) and with ``--threads`` (default: the cores; batches
are then made in parallel, in order), each without the token-id cache (``data.token_cache_texts``
0: every batch tokenized, as a run's first epoch is) and with it, timed after a whole epoch
has filled it (a run's later epochs); reported: pairs/s and the tokens of the arrays.
``headroom`` divides that by the fastest training step in ``results/bench_train_gpu.json``
(pairs/s of any system and model there): above 1 the host makes batches faster than that device
consumes them, on this machine's cores (a GPU host has more).
Writes ``results/bench_input_cpu.json`` with provenance (``--quick``: ``.quick.json``).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

PADDINGS = ('max_length', 'bucket', 'pack')
CACHE_TEXTS = 1_000_000  # data.token_cache_texts's default: every text here is kept


def fastest_gpu_step(path: Path) -> dict | None:
  """The highest pairs/s of any (model, system) in the GPU training benchmark's file."""
  if not path.is_file():
    return None
  record = json.loads(path.read_text())
  runs = [(r['pairs_per_s'], m, s) for m, per in record.get('results', {}).items()
          for s, r in per.items() if r.get('pairs_per_s')]
  if record.get('smoke') or not runs:
    return None
  rate, model, system = max(runs)
  return {'pairs_per_s': rate, 'model': model, 'system': system, 'device': record.get('device'),
          'file': str(path.relative_to(_REPO))}


def measure(rows, tokenizer, args) -> dict:
  from embedjax.train import batches as train_batches
  out = {}
  epoch = -(-len(rows) // args.batch) + 1  # batches after which every row has been read
  for threads, padding, cached in itertools.product(sorted({1, args.threads}), PADDINGS,
                                                    (False, True)):
    loader = train_batches.make_loader(rows, tokenizer, batch_size=args.batch,
                                       query_len=args.query_len, doc_len=args.doc_len, seed=0,
                                       padding=padding, pack_segments=16,
                                       token_cache_texts=CACHE_TEXTS if cached else 0,
                                       read_threads=threads)
    # cached: timed after a whole epoch, every text's ids kept (a run's later epochs)
    for _ in range(args.warmup + (epoch if cached else 0)):
      next(loader)
    tokens = 0
    t0 = time.perf_counter()
    for _ in range(args.batches):
      batch = next(loader)
      tokens += batch['query_ids'].size + batch['doc_ids'].size
    seconds = time.perf_counter() - t0
    name = f'{padding}/threads{threads}' + ('/cached' if cached else '')
    out[name] = {'padding': padding, 'read_threads': threads, 'token_cache_texts': CACHE_TEXTS if cached else 0,
                 'seconds': seconds,
                 'pairs_per_s': args.batches * args.batch / seconds,
                 'array_tokens_per_batch': tokens / args.batches}
    print(f'{name:22s} {out[name]["pairs_per_s"]:9.0f} pairs/s', flush=True)
  return out


def text_rows(path: Path) -> list[dict]:
  """``--texts``: title -> text pairs of a gzip'd BEIR corpus (``encode_gpu.py --prepare-texts``
  writes it, and GPU suite E carries it), as the ``scifact_titles`` source pairs them."""
  from embedjax.train.batches import text_key
  rows = []
  with gzip.open(path, 'rt', encoding='utf-8') as f:
    for line in f:
      obj = json.loads(line)
      title, text = str(obj.get('title') or '').strip(), str(obj.get('text') or '').strip()
      if title and text:
        rows.append({'query': title, 'positive': text, 'doc_key': text_key(str(obj['_id']))})
  return rows


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--source', default='scifact_titles')
  parser.add_argument('--texts', default='',
                      help="gzip'd BEIR corpus JSON lines instead of --source (GPU suite E's "
                           'carried SciFact corpus: the device has no ../shared)')
  parser.add_argument('--tokenizer', default='',
                      help="a tokenizer.json instead of the installed all-MiniLM-L6-v2's")
  parser.add_argument('--site', default=None,
                      help='a folder of packages appended to sys.path (the GPU suite\'s carried '
                           'grain, which the device image lacks)')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--query-len', type=int, default=128)
  parser.add_argument('--doc-len', type=int, default=128)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                      help="the loader's read threads besides 1 (make_loader's read_threads)")
  parser.add_argument('--quick', '--smoke', dest='smoke', action='store_true',
                      help='synthetic pairs (or --texts), batches of 32, 3 timed')
  parser.add_argument('--out', default='')
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.site:
    sys.path.append(args.site)
  if args.smoke:
    args.source, args.batch, args.warmup, args.batches = 'synthetic', 32, 1, 3
  out = Path(args.out or _REPO / 'results' / (
      'bench_input_cpu.quick.json' if args.smoke else 'bench_input_cpu.json'))

  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  if args.texts:  # no ../shared and no tensorflow-datasets needed (the GPU host)
    source, inputs = f'texts:{Path(args.texts).name}', [Path(args.texts)]
    run = Run(config=vars(args), seeds=0, inputs=inputs).start()
    rows = text_rows(Path(args.texts))
  else:
    from embedjax import paths
    from embedjax.train import data as train_data
    data_dir = paths.shared_data_dir()
    found = train_data.check_sources(args.source, train_data.SOURCES)[0]
    source, inputs = args.source, [data_dir / f for f in found.folders] if data_dir else []
    run = Run(config=vars(args), seeds=0, inputs=inputs).start()
    rows = train_data.load_rows(args.source, data_dir)
  if args.tokenizer:
    from embedjax.models.tokenizer import TextTokenizer
    tokenizer = TextTokenizer.from_folder(Path(args.tokenizer).parent, 512)
  else:
    from embedjax.models.pretrained import load_spec
    tokenizer = load_spec('all-MiniLM-L6-v2')[1]
  results = measure(rows, tokenizer, args)
  gpu = fastest_gpu_step(_REPO / 'results' / 'bench_train_gpu.json')
  for r in results.values():
    r['headroom'] = r['pairs_per_s'] / gpu['pairs_per_s'] if gpu else None
  record = {'source': source, 'rows': len(rows), 'batch': args.batch,
            'query_len': args.query_len, 'doc_len': args.doc_len, 'batches': args.batches,
            'cores': os.cpu_count(), 'smoke': args.smoke,
            'loader': 'grain MapDataset, prefetch buffer 2',
            'fastest_gpu_step': gpu, 'results': results,
            'provenance': run.finish().provenance()}
  atomic_write_json(out, record)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
