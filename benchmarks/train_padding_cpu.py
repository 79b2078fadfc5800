"""Train steps of one config under each padding of its batches (data.padding): every batch to
the maximum length, length buckets, and texts packed into rows; on the config's real texts.

    .venv/bin/python benchmarks/train_padding_cpu.py                 # the RoPE student, 12 batches
    .venv/bin/python benchmarks/train_padding_cpu.py --quick         # smoke run: synthetic texts

The config (default: configs/distill_leaf_decoder.py, the long-context study's RoPE student, which
pads every text to 512 tokens though the median training text has 19) trains on distillation
rows: its texts (``--texts``, distillation sets, default its own 'all') with random teacher
targets (a step's time does not depend on their values). The same ``--batches`` batches (the
loader's seed-0 order) go through the same jitted step (random init, no buffer donation, so every
batch starts from one state) under each padding. Each distinct batch shape is compiled before
timing (compile seconds reported apart); then every batch runs once, timed. Reported per padding:
the shapes, rows per batch, the share of real tokens in the padded arrays (fill), total seconds,
texts/s and the ratio to ``max_length``. ``--check-loss``: the step's loss on the first batch
under each padding (equal without dropout; the student trains without it).
Writes ``results/bench_train_padding_cpu.json`` with provenance (``--quick``: ``.quick.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

PADDINGS = ('max_length', 'bucket', 'pack')


def _shape_key(batch: dict) -> tuple:
  return tuple(sorted((k, v.shape) for k, v in batch.items()))


def measure(cfg, texts: list[str], batches: int, seed: int = 0) -> dict:
  """{padding: its measures} for ``batches`` batches of ``texts`` under every padding."""
  import jax
  import numpy as np

  from embedjax.models.pretrained import init_model_params
  from embedjax.train import batches as train_batches
  from embedjax.train import loop
  from embedjax.train.state import create_state
  from embedjax.train.step import make_train_step

  spec, tokenizer = loop.model_spec(cfg.model)
  params = loop.train_params(cfg, init_model_params(spec, jax.random.key(seed)))
  tx = loop.optimizer(cfg, params)
  state = create_state(params, tx)
  targets = np.random.default_rng(seed).standard_normal((len(texts), spec.embedding_dim))
  rows = [{'query': t, 'target': targets[i].astype(np.float32)} for i, t in enumerate(texts)]
  b, length = int(cfg.data.batch_size), int(cfg.data.query_len)
  out = {}
  for padding in PADDINGS:
    with cfg.unlocked():
      cfg.data.padding = padding
    step = jax.jit(make_train_step(loop.step_config(cfg, spec), tx))
    loader = train_batches.make_loader(rows, tokenizer, batch_size=b, query_len=length,
                                       doc_len=int(cfg.data.doc_len), seed=seed, padding=padding,
                                       pack_segments=int(cfg.data.pack_segments),
                                       token_cache_texts=int(cfg.data.token_cache_texts))
    data = [next(loader) for _ in range(batches)]
    compile_s, shapes = 0.0, {}
    for batch in data:
      key = _shape_key(batch)
      if key not in shapes:
        t0 = time.perf_counter()
        jax.block_until_ready(step(state, batch, jax.random.key(1)))
        compile_s += time.perf_counter() - t0
        shapes[key] = batch['query_ids'].shape
    seconds, losses = [], []
    for batch in data:
      t0 = time.perf_counter()
      _, metrics = jax.block_until_ready(step(state, batch, jax.random.key(1)))
      seconds.append(time.perf_counter() - t0)
      losses.append(float(metrics['loss']))
    real = sum(int(((x['query_mask'] if 'query_mask' in x else x['query_segments']) > 0).sum())
               for x in data)
    padded = sum(x['query_ids'].size for x in data)
    total = sum(seconds)
    out[padding] = {'shapes': sorted({f'{r}x{c}' for r, c in shapes.values()}),
                    'rows_per_batch': statistics.mean(x['query_ids'].shape[0] for x in data),
                    'fill': real / padded, 'compile_s': compile_s, 'seconds': seconds,
                    'total_s': total, 'median_step_s': statistics.median(seconds),
                    'texts_per_s': batches * b / total, 'first_loss': losses[0]}
    print(f'{padding:10s} shapes {out[padding]["shapes"]}  fill {real / padded:.3f}  '
          f'{total:.1f} s  {batches * b / total:.1f} texts/s  (compile {compile_s:.0f} s)',
          flush=True)
  base = out['max_length']['total_s']
  for padding in PADDINGS:
    out[padding]['speedup_vs_max_length'] = base / out[padding]['total_s']
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=str(_REPO / 'configs' / 'distill_leaf_decoder.py'))
  parser.add_argument('--texts', default='all', help="distillation text sets, '+'-joined")
  parser.add_argument('--batches', type=int, default=12)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--out', default='')
  args = parser.parse_args(argv)
  overrides = []
  if args.quick:  # synthetic texts (no shared data), short rows, small batches
    args.texts, args.batches = 'synthetic_corpus', 2
    overrides = ['--config.data.query_len=128', '--config.data.batch_size=8',
                 '--config.model.max_seq_length=128']
  out = Path(args.out or _REPO / 'results' / (
      'bench_train_padding_cpu.quick.json' if args.quick else 'bench_train_padding_cpu.json'))

  from embedjax import paths
  from embedjax.config import load_config
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  from embedjax.train.distillation import distill_texts, text_sets
  cfg = load_config(args.config, overrides)
  sets = text_sets(args.texts)
  data_dir = paths.shared_data_dir()
  texts = distill_texts(sets, data_dir)
  run = Run(config={**vars(args), 'overrides': overrides}, seeds=0,
            inputs=[data_dir] if data_dir and sets != ('synthetic_corpus',) else ()).start()
  results = measure(cfg, texts, args.batches)
  config = Path(args.config).resolve()
  record = {'config': str(config.relative_to(_REPO) if config.is_relative_to(_REPO) else config),
            'texts': args.texts, 'batch_size': int(cfg.data.batch_size),
            'query_len': int(cfg.data.query_len), 'pack_segments': int(cfg.data.pack_segments),
            'batches': args.batches, 'threads': os.cpu_count(), 'results': results,
            'provenance': run.finish().provenance()}
  atomic_write_json(out, record)
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
