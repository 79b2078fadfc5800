"""Can fine-tuning fix LIMIT-small? MiniLM trained on generated LIMIT-style data vs on the test
qrels themselves, at several Matryoshka dims.

python -m experiments.limit_finetune [--only train|test] [--epochs N] [--runs-dir runs] [--config.x=y ...]

Runs configs/limit_finetune.py:train and :test (each resumable) and writes
results/limit/finetune.json: recall@2/@10/@20 on LIMIT-small at every dim, before and after
(``finetune_<split>`` with --only, ``_e<N>`` with --epochs N other than 1; one epoch = 62 steps
of 32 rows over the 2,000 (query, relevant person) rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from embedjax import paths
from embedjax.cli import training_sources
from embedjax.config import config_overrides, load_config, run_main
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run
from embedjax.train.loop import dry_build, train

METRICS = ('recall@2', 'recall@10', 'recall@20')


def _flags(fv) -> None:
  flags.DEFINE_enum('only', None, ['train', 'test'], 'run one of the two', flag_values=fv)
  flags.DEFINE_integer('epochs', 1, 'passes over the training rows', lower_bound=1, flag_values=fv)
  flags.DEFINE_string('runs-dir', str(paths.repo_root() / 'runs'), 'workdirs go here',
                      flag_values=fv)


def main(cfg, fv) -> int:
  del cfg  # the ':train' config: both splits are loaded below, with the same overrides
  args = {name: fv[name].value for name in ('only', 'epochs', 'runs-dir')}
  repo = paths.repo_root()
  config = repo / 'configs' / 'limit_finetune.py'
  run = Run(config={}, seeds={}).start()  # filled per split below (each split's own config)
  out, runs = {}, {}
  for split in ('train', 'test'):
    if args['only'] and args['only'] != split:
      continue
    cfg = load_config(f'{config}:{split}', config_overrides(sys.argv[1:]))
    cfg.steps *= args['epochs']
    cfg.ckpt_every *= args['epochs']
    run.config[split], run.seeds[split] = cfg, cfg.seed
    dry_build(cfg, training_sources())
    suffix = '' if args['epochs'] == 1 else f"_e{args['epochs']}"
    print(f'== fine-tune on {split}: {cfg.data.train}, {cfg.steps} steps', flush=True)
    s = train(cfg, Path(args['runs-dir']) / f'limit_finetune_{split}{suffix}',
              sources=training_sources())
    dims = cfg.evals.limit_small.dims
    out[split] = {str(d): {'before': {m: s['before'][f'limit_small_{m}@{d}'] for m in METRICS},
                           'after': {m: s['after'][f'limit_small_{m}@{d}'] for m in METRICS}}
                  for d in dims}
    runs[split] = {'seconds': s['seconds'], 'steps': s['steps'], 'train_rows': s['train_rows'],
                   'epochs': args['epochs'], 'source': cfg.data.train,
                   'config_hash': s['config_hash'], 'inputs': s['inputs']}
    run.add_inputs(hashed=s['inputs'])
  record = {'limit_small': out, 'runs': runs,
            'note': 'train = generated LIMIT-style set (other people and assignments); '
                    'test = the LIMIT-small qrels themselves', **run.finish().provenance()}
  out_dir = repo / 'results' / 'limit'
  name = ('finetune' if not args['only'] else f"finetune_{args['only']}") + (
      '' if args['epochs'] == 1 else f"_e{args['epochs']}")
  atomic_write_json(out_dir / f'{name}.json', record)
  lines = ['| trained on | dim | ' + ' | '.join(f'{m} before -> after' for m in METRICS) + ' |',
           '|---|---|' + '---|' * len(METRICS)]
  for split, table in out.items():
    for d, r in table.items():
      lines.append(f'| {split} | {d} | ' + ' | '.join(
          f'{100 * r["before"][m]:.1f} -> {100 * r["after"][m]:.1f}' for m in METRICS) + ' |')
  atomic_write_text(out_dir / f'{name}.md', '\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main, 'configs/limit_finetune.py', define_flags=_flags))
