"""Command line: ``embedjax eval | encode | train`` (also ``python -m embedjax``).

Expected problems (a bad argument, a malformed or missing input file, an output path that is a
folder, a config error, Ctrl-C) print one line, ``embedjax COMMAND: WHERE: WHAT``, and exit with
status 2 (130 after Ctrl-C). Any other exception is a bug and keeps its traceback. ``--debug``,
anywhere on the command line, prints the traceback of an expected problem too.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from embedjax import paths
from embedjax.config import ConfigError
from embedjax.errors import DataFormatError, UsageError

COMMANDS = ('eval', 'encode', 'train')
# The errors a user can cause and fix from the message alone; everything else shows its traceback.
EXPECTED_ERRORS = (DataFormatError, ConfigError, UsageError, FileNotFoundError, IsADirectoryError,
                   NotADirectoryError, PermissionError)


def _model_label(name_or_path: str) -> str:
  return Path(name_or_path.rstrip('/')).name or name_or_path


def default_eval_output(model: str, synthetic_only: bool) -> Path:
  """``results/eval/<model>[.synthetic].json``, relative to the current directory.

  Relative on purpose: results belong to the user's working directory, never to the folder the
  package is installed in.
  """
  return Path('results', 'eval', _model_label(model) + ('.synthetic' if synthetic_only else '')
              + '.json')


def check_output_file(path: str | os.PathLike) -> Path:
  """``path``, after checking that a file can be written there, before any work is done.

  Raises IsADirectoryError when ``path`` is a folder, NotADirectoryError when one of its parents
  is a file, PermissionError when the nearest existing parent is not writable. Missing parent
  folders are fine: the writers create them.
  """
  path = Path(path)
  if path.is_dir():
    raise IsADirectoryError(errno.EISDIR, 'is a directory (give a file path)', str(path))
  parent = path.parent
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if not parent.is_dir():
    raise NotADirectoryError(errno.ENOTDIR, 'is not a directory (in the output path)', str(parent))
  if not os.access(parent, os.W_OK | os.X_OK):
    raise PermissionError(errno.EACCES, 'is not writable', str(parent))
  return path


def _check_folder(path: Path, what: str) -> Path:
  if not path.exists():
    raise FileNotFoundError(errno.ENOENT, f'no such {what}', str(path))
  if not path.is_dir():
    raise NotADirectoryError(errno.ENOTDIR, f'is not a directory ({what})', str(path))
  return path


def load_model(name: str, dtype: str):
  """The model ``--model`` names; a name that resolves to nothing is a UsageError naming --model."""
  from embedjax.models.pretrained import load_pretrained, resolve_model_dir
  try:
    folder = resolve_model_dir(name)  # cheap: finds the folder, reads no weights
  except FileNotFoundError as e:
    if e.filename is not None:
      raise
    raise UsageError(f'--model: {e}') from e
  from embedjax.train.representation import SETTINGS_FILE
  if (Path(folder) / SETTINGS_FILE).is_file():  # its pooled vector is not what was trained
    raise UsageError(f'--model: {folder} is a multi-vector or sparse model ({SETTINGS_FILE}); '
                     'evaluate it with embedjax.evals.representations.evaluate_retrieval')
  return load_pretrained(name, dtype=dtype)


def list_tasks() -> str:
  """One line a task: name, kind, main metric, the data it reads, and whether it runs by default."""
  from embedjax.evals.tasks import DATA_FOLDERS, DEFAULT_TASKS, SYNTHETIC_TASKS, TASKS
  lines = []
  for name, task in TASKS.items():
    data = (f'shared data {DATA_FOLDERS[name]}/' if task.needs_shared_data else
            'built-in synthetic data')
    if name in DEFAULT_TASKS:
      data += ' (default)'
    elif name in SYNTHETIC_TASKS:
      data += ' (default without shared data)'
    lines.append(f'{name:<25} {task.kind:<15} {task.main_metric:<10} {data}')
  return '\n'.join(lines)


def _resolve_tasks(spec: str, data_dir: Path | None) -> list[str]:
  from embedjax.evals.tasks import DEFAULT_TASKS, SYNTHETIC_TASKS, TASKS
  if spec == 'default':
    return list(DEFAULT_TASKS if data_dir is not None else SYNTHETIC_TASKS)
  names = [t.strip() for t in spec.split(',') if t.strip()]
  unknown = [t for t in names if t not in TASKS]
  if unknown or not names:
    raise UsageError(f'--tasks: unknown task(s) {", ".join(unknown) or repr(spec)}; choose from '
                     f'{", ".join(TASKS)} or "default" (see --list-tasks)')
  need_data = [t for t in names if TASKS[t].needs_shared_data]
  if need_data and data_dir is None:
    raise UsageError(f'--tasks: {", ".join(need_data)} need the shared data folder (--data-dir, '
                     'EMBEDJAX_DATA_DIR or ../shared/data); the synthetic tasks need none')
  return names


def cmd_eval(args) -> int:
  if args.list_tasks:
    print(list_tasks())
    return 0
  from embedjax.evals.tasks import task_inputs
  data_dir = Path(args.data_dir) if args.data_dir else paths.shared_data_dir()
  if data_dir is not None:
    _check_folder(data_dir, 'data folder')
  tasks = _resolve_tasks(args.tasks, data_dir)
  inputs = [_check_folder(folder, 'data folder') for folder in task_inputs(tasks, data_dir)]
  synthetic_only = all(t.startswith('synthetic_') for t in tasks)
  # Checked before the model loads and the tasks run, so a bad path costs nothing.
  out = check_output_file(args.output or default_eval_output(args.model, synthetic_only))

  from embedjax.encoding import encode
  from embedjax.evals.tasks import format_table, run_task
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run
  run = Run(config={k: v for k, v in vars(args).items() if not callable(v)}, inputs=inputs).start()
  print(f'data: {data_dir if data_dir else "none found: using the synthetic tasks"}', flush=True)
  model = load_model(args.model, args.dtype)
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
  record = dict(results)
  record.update(model=args.model, dtype=args.dtype, data_dir=str(data_dir) if data_dir else None,
                **run.finish().provenance())
  atomic_write_json(out, record)
  print()
  print(format_table(results))
  print(f'\nwrote {out}')
  return 0


def cmd_encode(args) -> int:
  from embedjax.data.readers import read_texts
  out = check_output_file(args.output)
  if Path(args.input).resolve() == out.resolve():
    raise UsageError(f'--output {out}: is the --input file; choose another path')
  # The input is read (and checked) before the model loads: a bad line costs no model load.
  source = read_texts(args.input, args.format, field=args.field, title_field=args.title_field or None)
  from embedjax.encoding import encode
  model = load_model(args.model, args.dtype)
  start = time.perf_counter()
  emb = encode(model, source.texts, rows_per_batch=args.rows_per_batch, out=out,
               chunk_size=args.chunk_size, progress=not args.quiet)
  seconds = time.perf_counter() - start
  blank = source.trailing_blank_lines
  ignored = f' ({blank} trailing blank line{"" if blank == 1 else "s"} ignored)' if blank else ''
  print(f'wrote {out}: {emb.shape[0]} x {emb.shape[1]} float32{ignored} '
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
  flags.DEFINE_boolean('allow-config-change', False, 'resume although config fields other than '
                       'steps, intervals and evals changed since the run started (they are '
                       'printed)', flag_values=fv)
  flags.DEFINE_boolean('quiet', False, 'no progress bars', flag_values=fv)
  flags.DEFINE_boolean('dry-run', False, 'build the run abstractly (no weights, no data), print '
                       'its shapes and stop', flag_values=fv)


def _train_main(cfg, fv) -> int:
  from embedjax.train.loop import Interrupted, dry_build, format_summary, train
  if fv['dry-run'].value:
    r = dry_build(cfg, training_sources())
    print(f"dry run: {r['param_count']:,} encoder params; batch "
          f"{ {k: v.shape for k, v in r['batch'].items()} }; metrics {sorted(r['metrics'])}")
    return 0
  if not fv['workdir'].value:
    raise UsageError('--workdir is required')
  try:
    summary = train(cfg, fv['workdir'].value, sources=training_sources(),
                    resume=not fv['no-resume'].value,
                    allow_config_change=fv['allow-config-change'].value,
                    progress=not fv['quiet'].value)
  except Interrupted:  # train() saved what it could and said where to resume
    return 130
  print(format_summary(summary))
  return 0


def cmd_train(argv: Sequence[str]) -> int:
  """``embedjax train --config FILE[:arg] --workdir DIR [--config.a.b=v | --config.a.b v ...]``."""
  from embedjax.config import run_main
  return run_main(_train_main, None, argv, prog='embedjax train', define_flags=_train_flags)


class _Parser(argparse.ArgumentParser):
  """Reports a bad argument as a UsageError, so that main prints it as one line."""

  def error(self, message: str):
    raise UsageError(f'{message} (see {self.prog} --help)')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows each option's default, unless there is none to show or the help text states it."""

  def _get_help_string(self, action):
    if action.default is None or action.default is False or 'default' in (action.help or ''):
      return action.help
    return super()._get_help_string(action)


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='embedjax', formatter_class=_HelpFormatter,
                   description='Learn, compress and evaluate text embeddings.',
                   epilog='Problems are reported as one line "embedjax COMMAND: WHERE: WHAT" '
                          '(exit status 2); --debug adds the traceback.')
  parser.add_argument('--debug', action='store_true',
                      help='print the full traceback of an error (accepted anywhere on the line)')
  sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND',
                              parser_class=_Parser)

  def command(name, summary, description):
    p = sub.add_parser(name, help=summary, description=description, formatter_class=_HelpFormatter)
    p.add_argument('--debug', action='store_true', help='print the full traceback of an error')
    return p

  def model_args(p):
    p.add_argument('--model', default='all-MiniLM-L6-v2',
                   help='packaged model name or a local HF / sentence-transformers folder')
    p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                   help='compute dtype (params stay float32)')
    p.add_argument('--rows-per-batch', type=positive_int, default=16,
                   help='packed rows per device call (row length 64-256 tokens)')
    p.add_argument('--quiet', action='store_true', help='no progress bars')

  ev = command('eval', 'evaluate a model on benchmark tasks and write a result JSON',
               'Evaluate a model on benchmark tasks; print a table and write a result JSON.')
  model_args(ev)
  ev.add_argument('--tasks', default='default',
                  help='comma-separated task names, or "default" (the shared benchmarks when '
                       '../shared/data exists, else the synthetic tasks)')
  ev.add_argument('--list-tasks', action='store_true',
                  help='list the tasks (name, kind, main metric, data) and exit')
  ev.add_argument('--data-dir', default=None,
                  help='shared data folder (default: $EMBEDJAX_DATA_DIR, else ../shared/data)')
  ev.add_argument('--output', default=None, metavar='FILE',
                  help='result JSON (default: ./results/eval/<model>.json in the current '
                       'directory; <model>.synthetic.json for synthetic tasks only)')
  ev.add_argument('--out', dest='output', help=argparse.SUPPRESS)  # the earlier name
  ev.set_defaults(fn=cmd_eval)

  en = command('encode', 'embed the texts of a file into an .npy file',
               'Embed the texts of a file into an (N, D) float32 .npy file, row i for text i.')
  model_args(en)
  en.add_argument('--input', required=True, metavar='FILE',
                  help='one text a line, or JSON lines (.jsonl[.gz]); blank lines after the last '
                       'text are ignored')
  en.add_argument('--format', default='auto', choices=('auto', 'txt', 'jsonl'),
                  help='auto: by suffix (.txt -> txt; .jsonl, .jsonl.gz, .json -> jsonl), else '
                       "jsonl when the first line starts with '{'")
  en.add_argument('--field', default='text', help='JSON field holding the text')
  en.add_argument('--title-field', default='title',
                  help="JSON field of a title: when a row has one, the text is joined as "
                       "TITLE + ' ' + TEXT, as BEIR corpora expect; '' ignores titles")
  en.add_argument('--output', required=True, metavar='FILE',
                  help='.npy file (written atomically: no partial file on error)')
  en.add_argument('--chunk-size', type=positive_int, default=32768,
                  help='texts held in memory at a time')
  en.set_defaults(fn=cmd_encode)

  # Listed for --help only: main() hands 'train' to the config parser (embedjax.config).
  command('train', 'train from a config file (configs/NAME.py)',
          'Train from a config: embedjax train --config configs/NAME.py[:arg] --workdir DIR '
          '[--config.a.b=value ...] [--no-resume] [--allow-config-change] [--quiet] [--dry-run]. '
          'Every config field can be overridden; an unknown field or a wrong type is a one-line '
          'error. A rerun resumes from the last checkpoint in --workdir; on resume only steps, '
          'the log/eval/checkpoint intervals and the eval lists may change, unless '
          '--allow-config-change.')
  return parser


def describe(error: BaseException) -> str:
  """The one line shown for an expected error: 'WHERE: WHAT'."""
  if isinstance(error, OSError) and error.filename is not None:
    return f'{error.filename}: {error.strerror or error}'
  return ' '.join(str(error).split()) or type(error).__name__


def _report(prog: str, line: str, status: int, debug: bool) -> int:
  if debug:
    traceback.print_exc()
  print(f'{prog}: {line}', file=sys.stderr)
  return status


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; returns its exit status (0, 2 for an expected error, 130 after Ctrl-C)."""
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'true')
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = '--debug' in argv
  argv = [a for a in argv if a != '--debug']
  prog = f'embedjax {argv[0]}' if argv and argv[0] in COMMANDS else 'embedjax'
  try:
    if argv[:1] == ['train'] and not {'-h', '--help'} & set(argv):
      return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    return args.fn(args)
  except KeyboardInterrupt:
    return _report(prog, 'interrupted', 130, debug)
  except BrokenPipeError:
    # The reader of stdout went away (`embedjax eval --list-tasks | head -3`): stop quietly, as a
    # Unix tool does. stdout then points at /dev/null, so that the flush at exit cannot fail again.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, the status a shell reports for a tool killed by the signal
  except EXPECTED_ERRORS as e:
    return _report(prog, describe(e), 2, debug)


if __name__ == '__main__':
  sys.exit(main())
