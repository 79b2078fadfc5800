"""Command line: ``embedjax eval`` and ``embedjax encode`` (``python -m embedjax.cli ...``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from embedjax import paths


def _model_label(name_or_path: str) -> str:
  return Path(name_or_path.rstrip('/')).name or name_or_path


def _resolve_tasks(spec: str, data_dir: Path | None) -> list[str]:
  from embedjax.evals.tasks import DEFAULT_TASKS, SYNTHETIC_TASKS, TASKS
  if spec == 'default':
    return list(DEFAULT_TASKS if data_dir is not None else SYNTHETIC_TASKS)
  names = [t.strip() for t in spec.split(',') if t.strip()]
  unknown = [t for t in names if t not in TASKS]
  if unknown or not names:
    raise SystemExit(f'embedjax eval: unknown task(s) {unknown or spec!r}; choose from '
                     f'{", ".join(TASKS)} or "default"')
  return names


def cmd_eval(args) -> int:
  from embedjax.encoding import encode
  from embedjax.evals.tasks import format_table, run_task, task_inputs
  from embedjax.io import atomic_write_json
  from embedjax.models.pretrained import load_pretrained
  from embedjax.provenance import Run

  data_dir = Path(args.data_dir) if args.data_dir else paths.shared_data_dir()
  if data_dir is not None and not data_dir.is_dir():
    raise SystemExit(f'embedjax eval: data dir {data_dir} does not exist')
  tasks = _resolve_tasks(args.tasks, data_dir)
  run = Run(config={k: v for k, v in vars(args).items() if not callable(v)},
            inputs=task_inputs(tasks, data_dir)).start()
  synthetic_only = all(t.startswith('synthetic_') for t in tasks)
  print(f'data: {data_dir if data_dir else "none found: using the synthetic tasks"}', flush=True)
  model = load_pretrained(args.model, dtype=args.dtype)
  print(f'model: {args.model} ({model.source}) pooling={model.spec.pooling} '
        f'normalize={model.spec.normalize} max_seq_length={model.spec.max_seq_length}', flush=True)
  encode_fn = lambda texts: encode(model, texts, rows_per_batch=args.rows_per_batch,
                                   progress=not args.quiet)
  results = {}
  for name in tasks:
    print(f'[{name}] running', flush=True)
    results[name] = run_task(name, encode_fn, data_dir)
    r = results[name]
    print(f'[{name}] {r["main_metric"]} = {100 * r[r["main_metric"]]:.2f} '
          f'({r["counts"]}, {r["seconds"]:.1f} s)', flush=True)
  out = Path(args.out) if args.out else (
      paths.repo_root() / 'results' / 'eval' /
      (_model_label(args.model) + ('.synthetic' if synthetic_only else '') + '.json'))
  record = dict(results)
  record.update(model=args.model, dtype=args.dtype, data_dir=str(data_dir) if data_dir else None,
                **run.finish().provenance())
  atomic_write_json(out, record)
  print()
  print(format_table(results))
  print(f'\nwrote {out}')
  return 0


def _read_texts(path: Path, field: str) -> list[str]:
  """One text per line (.txt) or a JSON-lines field (.jsonl[.gz]; BEIR docs join title + text)."""
  from embedjax.data.readers import read_jsonl
  from embedjax.errors import DataFormatError
  if not path.exists():
    raise SystemExit(f'embedjax encode: {path}: no such file')
  texts = []
  if path.suffix == '.txt':
    with open(path, 'rb') as f:  # bytes, so a bad byte is reported with its line number
      for number, raw in enumerate(f, 1):
        try:
          text = raw.decode('utf-8').rstrip('\n').rstrip('\r')
        except UnicodeDecodeError as e:
          raise DataFormatError(path, number, None, f'not UTF-8 ({e.reason} at byte {e.start})') from e
        if not text.strip():
          raise DataFormatError(path, number, None, 'empty line (one text per line expected)')
        texts.append(text)
  else:
    for number, obj in read_jsonl(path):
      if field not in obj or not isinstance(obj[field], str):
        raise DataFormatError(path, number, field, 'missing or not a string')
      text = (str(obj.get('title') or '') + ' ' + obj[field]).strip()
      if not text:
        raise DataFormatError(path, number, field, 'empty text')
      texts.append(text)
  if not texts:
    raise SystemExit(f'embedjax encode: {path}: no texts')
  return texts


def cmd_encode(args) -> int:
  from embedjax.encoding import encode
  from embedjax.models.pretrained import load_pretrained
  texts = _read_texts(Path(args.input), args.field)
  model = load_pretrained(args.model, dtype=args.dtype)
  start = time.perf_counter()
  emb = encode(model, texts, rows_per_batch=args.rows_per_batch, out=args.output,
               chunk_size=args.chunk_size, progress=not args.quiet)
  seconds = time.perf_counter() - start
  print(f'wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} float32 '
        f'({emb.shape[0] / seconds:.1f} texts/s)')
  return 0


def training_sources() -> dict:
  """Every training source ``embedjax train`` knows: the loop's own and the studies'."""
  from embedjax.limit.training_sources import SOURCES as LIMIT_SOURCES
  from embedjax.train.data import SOURCES
  return {**SOURCES, **LIMIT_SOURCES}


def _train_flags(fv) -> None:
  from absl import flags
  flags.DEFINE_string('workdir', None, 'checkpoints, logs and the exported model', flag_values=fv)
  flags.DEFINE_boolean('no-resume', False, 'ignore checkpoints in the workdir', flag_values=fv)
  flags.DEFINE_boolean('quiet', False, 'no progress bars', flag_values=fv)
  flags.DEFINE_boolean('dry-run', False, 'build the run abstractly (no weights, no data), print '
                       'its shapes and stop', flag_values=fv)


def _train_main(cfg, fv) -> int:
  from embedjax.train.loop import dry_build, train
  if fv['dry-run'].value:
    r = dry_build(cfg, training_sources())
    print(f"dry run: {r['param_count']:,} encoder params; batch "
          f"{ {k: v.shape for k, v in r['batch'].items()} }; metrics {sorted(r['metrics'])}")
    return 0
  if not fv['workdir'].value:
    raise SystemExit('embedjax train: --workdir is required')
  summary = train(cfg, fv['workdir'].value, sources=training_sources(),
                  resume=not fv['no-resume'].value, progress=not fv['quiet'].value)
  print(f"trained {summary['steps_done']}/{summary['steps']} steps in {summary['seconds']} s "
        f"({summary['pairs_per_s']} pairs/s); before: {summary['before']}; after: {summary['after']}")
  return 0


def cmd_train(argv: Sequence[str]) -> int:
  """``embedjax train --config FILE[:arg] --workdir DIR [--config.a.b=v | --config.a.b v ...]``."""
  from embedjax.config import run_main
  return run_main(_train_main, None, argv, prog='embedjax train', define_flags=_train_flags)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='embedjax', description=__doc__)
  sub = parser.add_subparsers(dest='command', required=True)

  def model_args(p):
    p.add_argument('--model', default='all-MiniLM-L6-v2',
                   help='packaged model name or a local HF / sentence-transformers folder')
    p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                   help='compute dtype (params stay float32)')
    p.add_argument('--rows-per-batch', type=int, default=16,
                   help='packed rows per device call (row length 64-256 tokens)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')

  ev = sub.add_parser('eval', help='evaluate a model on benchmark tasks')
  model_args(ev)
  ev.add_argument('--tasks', default='default',
                  help='comma-separated task names, or "default" (the shared benchmarks when '
                       '../shared/data exists, else the synthetic tasks)')
  ev.add_argument('--data-dir', default=None, help='shared data folder (default: ../shared/data)')
  ev.add_argument('--out', default=None, help='result JSON (default: results/eval/<model>.json)')
  ev.set_defaults(fn=cmd_eval)

  # Listed for --help only: main() hands 'train' to the config parser (embedjax.config.run).
  sub.add_parser('train', help='train from a config: --config configs/NAME.py --workdir DIR '
                 '[--config.a.b=value ...] [--no-resume] [--quiet] [--dry-run]')

  en = sub.add_parser('encode', help='embed texts from a file into an .npy file')
  model_args(en)
  en.add_argument('--input', required=True, help='.txt (one text a line) or .jsonl[.gz]')
  en.add_argument('--field', default='text', help='JSON field holding the text')
  en.add_argument('--output', required=True, help='.npy file (written atomically)')
  en.add_argument('--chunk-size', type=int, default=32768, help='texts held in memory at a time')
  en.set_defaults(fn=cmd_encode)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'true')
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ['train'] and not {'-h', '--help'} & set(argv):
    return cmd_train(argv[1:])
  args, rest = build_parser().parse_known_args(argv)
  if rest:
    raise SystemExit(f'embedjax {args.command}: unrecognized arguments {rest}')
  return args.fn(args)


if __name__ == '__main__':
  sys.exit(main())
