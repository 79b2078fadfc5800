r"""The elastic-retention study: each (cell, seed) a resumable run with its own record; the summary
is computed from the records.

python -m experiments.elastic_retention --cells lr_5x,small_dims_3x --seeds 0   # run (resumable)
python -m experiments.elastic_retention --list                                  # what is done
python -m experiments.elastic_retention --summarize                             # summary only

Cells are the configs of configs/elastic_retention.py: the recipes study's ``elastic_mrl`` with one
lever changed (learning rate, weights of the small Matryoshka dims, steps). A cell at a seed trains
in ``runs/elastic_retention/CELL/seedN`` (a rerun continues from its last checkpoint), its exported
model is evaluated like the recipes study's elastic cells (experiments/recipes.py ``evaluate``:
SciFact test nDCG@10 at every layer x dim, per query at 384 and 64 dims), and the record goes to
``results/elastic_retention/runs/CELL/seedN.json``.

The summary (``summary.json``, ``elastic_retention.md``) is recomputed from these records and from
the recipes study's ``elastic_mrl`` (the base) and ``scifact_in_batch`` (the 384-dim baseline the
goal names) records, by :func:`summarize`; tests/test_result_summaries.py recomputes it in CI.
384-dim differences against the in-batch baseline are paired bootstrap intervals over the test
queries, as in the recipes study.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from embedjax import paths
from embedjax.config import ConfigError
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run
from experiments import cells

CONFIG = 'configs/elastic_retention.py'
GOAL_RETENTION = 0.90  # issue 18's goal at 64 dims
BASE_CELL = 'elastic_mrl'       # the recipes study's cell every variant changes one lever of
BASELINE = 'scifact_in_batch'   # the recipes study's 384-dim baseline
CONTROL = 'in_batch_lr_5x'      # this study's cell without Matryoshka loss, at the raised rate
AGAINST_CONTROL = ('lr_5x', 'long_lr_5x_small_dims_3x')  # the cells at the control's rate


def results_dir() -> Path:
  return paths.repo_root() / 'results' / 'elastic_retention'


def recipes_results_dir() -> Path:
  return paths.repo_root() / 'results' / 'recipes'


def record_path(cell: str, seed: int, root: Path | None = None) -> Path:
  return cells.record_path(root or results_dir(), cell, seed)


def _configs():
  return cells.configs_module(CONFIG)


def cell_config(cell: str, seed: int = 0, overrides=()):
  return cells.cell_config(CONFIG, cell, seed, overrides)


def config_is_current(cell: str, seed: int, root: Path | None = None) -> bool:
  return cells.is_current(record_path(cell, seed, root), cell_config(cell, seed)[1])


def expected_runs(seeds=None) -> list[tuple[str, int]]:
  configs = _configs()
  seeds = configs.SEEDS if seeds is None else seeds
  return [(cell, seed) for cell in configs.CELLS for seed in seeds]


def run_cell(cell: str, seed: int, *, runs_dir: Path, data_dir: Path, overrides=(),
             results: Path | None = None, progress: bool = True,
             force: bool = False) -> dict | None:
  """Trains (resuming), evaluates and records one cell at one seed; None when its record is
  current (``force``: made again all the same)."""
  from embedjax.models.pretrained import load_pretrained
  from embedjax.train.loop import dry_build, train
  from experiments.recipes import _loss_log, evaluate

  cfg, chash = cell_config(cell, seed, overrides)
  out = record_path(cell, seed, results)
  if not force and cells.is_current(out, chash):
    print(f'== {cell} seed {seed}: current ({out})', flush=True)
    return None
  print(f'== {cell} seed {seed}', flush=True)
  run = Run(config=cfg, seeds=seed, store_config=False).start()
  dry_build(cfg)
  workdir = runs_dir / cell / f'seed{seed}'
  summary = train(cfg, workdir, progress=progress)
  run.add_inputs(hashed=summary['inputs'])
  record = {'cell': cell, 'seed': seed, 'config_hash': chash, 'config': summary['config'],
            'train': {k: summary[k] for k in ('steps_done', 'steps', 'seconds', 'pairs_per_s',
                                              'train_rows', 'started_at', 'finished_at')}}
  record['train']['loss_log'] = _loss_log(workdir)
  t0 = time.perf_counter()
  record['test'] = evaluate(load_pretrained(summary['export']), 'elastic', data_dir,
                            progress=progress)
  record['test']['seconds'] = round(time.perf_counter() - t0, 1)
  run.add_inputs(data_dir / 'scifact')
  record.update(run.finish().provenance())
  record['config_hash'] = chash
  atomic_write_json(out, record)
  t = record['test']
  print(f"   nDCG@10 {t['ndcg@10']:.4f} at 384, {t['ndcg@10_at_64']:.4f} at 64 "
        f"(retention {t['retention_at_64']:.3f}) -> {out}", flush=True)
  return record


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path | None = None, recipes_root: Path | None = None):
  """(this study's {cell: {seed: record}}, the recipes study's records of the base cell and the
  in-batch baseline)."""
  recipes = cells.load_records(recipes_root or recipes_results_dir())
  return (cells.load_records(root or results_dir()),
          {c: recipes[c] for c in (BASE_CELL, BASELINE) if c in recipes})


def _cell_stats(by_seed: dict[int, dict]) -> dict:
  tests = [by_seed[s]['test'] for s in sorted(by_seed)]

  def stats(key):
    values = [t[key] for t in tests]
    return {'mean': statistics.fmean(values),
            'std': statistics.stdev(values) if len(values) > 1 else None}

  last = tests[0]['layers'][-1]
  return {'seeds': sorted(by_seed), 'n_seeds': len(tests),
          'commits': sorted({by_seed[s].get('git_commit') or '?' for s in by_seed}),
          'steps': by_seed[min(by_seed)].get('train', {}).get('steps'),
          'ndcg@10_at_384': stats('ndcg@10'), 'ndcg@10_at_64': stats('ndcg@10_at_64'),
          'retention_at_64': stats('retention_at_64'),
          'last_layer_by_dim': {str(d): statistics.fmean(t['grid_ndcg@10'][f'{last}x{d}']
                                                    for t in tests)
                                for d in tests[0]['dims']}}


def summarize(records: dict[str, dict[int, dict]], recipes: dict[str, dict[int, dict]]) -> dict:
  """summary.json from this study's records and the recipes study's base and baseline records
  (pure: the CI test recomputes it)."""
  from experiments.recipes import _mean_per_query, paired_bootstrap
  rows = {}
  if BASE_CELL in recipes:
    rows[f'recipes/{BASE_CELL}'] = _cell_stats(recipes[BASE_CELL])
  for cell in _configs().CELLS:
    if cell in records:
      rows[cell] = _cell_stats(records[cell])
  bootstrap = {}
  if BASELINE in recipes:
    ids_b, b = _mean_per_query(recipes[BASELINE])
    for name in rows:
      by_seed = recipes[BASE_CELL] if name.startswith('recipes/') else records[name]
      ids_a, a = _mean_per_query(by_seed)
      if ids_a != ids_b:
        raise ValueError(f'{name} and {BASELINE} were evaluated on different queries')
      bootstrap[f'{name} - {BASELINE}'] = paired_bootstrap(a, b)
  against_control = {}
  for name in AGAINST_CONTROL:
    if name in records and CONTROL in records:
      for dims, key in (('384', 'per_query_ndcg@10'), ('64', 'per_query_ndcg@10_at_64')):
        a = np.mean([records[name][s]['test'][key] for s in sorted(records[name])], axis=0)
        b = np.mean([records[CONTROL][s]['test'][key] for s in sorted(records[CONTROL])], axis=0)
        against_control[f'{name} - {CONTROL} at {dims}'] = paired_bootstrap(a, b)
  baseline = (statistics.fmean(recipes[BASELINE][s]['test']['ndcg@10'] for s in recipes[BASELINE])
              if BASELINE in recipes else None)
  meets = {name: (r['retention_at_64']['mean'] >= GOAL_RETENTION and baseline is not None
                  and r['ndcg@10_at_384']['mean'] >= baseline)
           for name, r in rows.items()}
  return {'goal': {'retention_at_64': GOAL_RETENTION, 'ndcg@10_at_384_at_least': baseline,
                   'baseline_cell': f'recipes/{BASELINE}'},
          'cells': rows, 'meets_goal': meets, 'paired_bootstrap_384': bootstrap,
          'paired_bootstrap_against_control': against_control,
          'missing': sorted({c for c, _ in expected_runs()} - set(records))}


def _fmt(stat: dict, digits: int = 4) -> str:
  if stat['std'] is None:
    return f"{stat['mean']:.{digits}f}"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(summary: dict) -> str:
  goal = summary['goal']
  base = goal['ndcg@10_at_384_at_least']
  lines = ['# Elastic retention: results', '',
           'Generated by `python -m experiments.elastic_retention --summarize` from the per-run',
           'records in `results/elastic_retention/runs/` and the recipes study\'s `elastic_mrl` and',
           '`scifact_in_batch` records (each names its commit and command). SciFact test nDCG@10',
           'at the last layer; mean ± sample standard deviation over seeds (no ± with one seed);',
           'retention = 64 dims / 384 dims per seed, then averaged. Reading: docs/recipes.md.', '',
           f"Goal: retention at 64 dims >= {goal['retention_at_64']:.2f} with nDCG@10 at 384 >= "
           f"the in-batch baseline ({'-' if base is None else f'{base:.4f}'}).", '',
           '| cell | steps | nDCG@10 at 384 | at 64 | retention at 64 | meets goal | seeds |',
           '|---|---|---|---|---|---|---|']
  for name, r in summary['cells'].items():
    lines.append(f"| {name} | {r['steps']} | {_fmt(r['ndcg@10_at_384'])} | "
                 f"{_fmt(r['ndcg@10_at_64'])} | {_fmt(r['retention_at_64'], 3)} | "
                 f"{'yes' if summary['meets_goal'][name] else 'no'} | {r['n_seeds']} |")
  lines += ['', 'nDCG@10 by dim at the last layer:', '',
            '| cell | ' + ' | '.join(str(d) for d in (384, 256, 128, 64, 32)) + ' |',
            '|---|' + '---|' * 5]
  for name, r in summary['cells'].items():
    lines.append(f'| {name} | ' + ' | '.join(f'{r["last_layer_by_dim"][d]:.4f}'
                                             for d in r['last_layer_by_dim']) + ' |')
  if summary['paired_bootstrap_384']:
    lines += ['', 'nDCG@10 at 384 dims against the in-batch baseline, paired bootstrap over the '
              'test queries:', '', '| comparison | diff | 95% interval | P(diff <= 0) |',
              '|---|---|---|---|']
    for name, b in summary['paired_bootstrap_384'].items():
      lines.append(f"| {name} | {b['diff']:+.4f} | [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] | "
                   f"{b['p_not_better']:.3f} |")
  if summary['paired_bootstrap_against_control']:
    lines += ['', f'Matryoshka cells at lr 1e-4 against the control `{CONTROL}` (the same rate, '
              'no Matryoshka loss), at 384 and at 64 dims, paired bootstrap over the test queries:',
              '', '| comparison | diff | 95% interval | P(diff <= 0) |', '|---|---|---|---|']
    for name, b in summary['paired_bootstrap_against_control'].items():
      lines.append(f"| {name} | {b['diff']:+.4f} | [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] | "
                   f"{b['p_not_better']:.3f} |")
  if summary['missing']:
    lines += ['', f"Not yet run: {', '.join(summary['missing'])}."]
  return '\n'.join(lines) + '\n'


def write_summary(root: Path | None = None, recipes_root: Path | None = None) -> dict:
  root = root or results_dir()
  summary = summarize(*load_records(root, recipes_root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'elastic_retention.md', markdown(summary))
  return summary


# --- command line -----------------------------------------------------------------------------


def _flags(fv) -> None:
  cells.define_flags(fv, config_rel=CONFIG, results_dir=results_dir(),
                     seeds_help='seeds of each cell',
                     runs_dir=paths.repo_root() / 'runs' / 'elastic_retention')


def main(cfg, fv) -> int:
  del cfg  # each cell loads its own config, with the same overrides
  from embedjax.config import config_overrides
  from experiments.recipes import _restart_workdir
  results = Path(fv['results-dir'].value)
  selected = cells.selected_runs(fv, list(_configs().CELLS), expected_runs)
  if fv['list'].value:
    cells.list_runs(expected_runs(), lambda c, s: record_path(c, s, results))
    return 0
  if not fv['summarize'].value:
    data_dir = paths.shared_data_dir()
    if data_dir is None:
      raise ConfigError('the elastic-retention study reads ../shared/data (or $EMBEDJAX_DATA_DIR)')
    for cell, seed, force in selected:
      if force:
        _restart_workdir(Path(fv['runs-dir'].value) / cell / f'seed{seed}')
      run_cell(cell, seed, runs_dir=Path(fv['runs-dir'].value), data_dir=data_dir,
               overrides=config_overrides(sys.argv[1:]), results=results, force=force)
      write_summary(results)
  print(markdown(write_summary(results)))
  return 0


if __name__ == '__main__':
  sys.exit(cells.run_study(main, f'{CONFIG}:lr_5x', _flags))
