r"""The training-recipes study: each (cell, seed) a resumable run with its own record; the summary
is computed from the records.

python -m experiments.recipes --cells stsb_cosent,stsb_angle --seeds 0,1   # run (resumable)
python -m experiments.recipes --list                                       # what is done
python -m experiments.recipes --summarize                                  # summary only
(``--config.x=y`` overrides apply to every trained cell run, and so change its config hash)

Cells are the configs of configs/recipes.py. A cell at a seed trains in
``runs/recipes/CELL/seedN`` (a rerun continues from its last checkpoint), then its exported model
is evaluated on the cell group's test split, and the record goes to
``results/recipes/runs/CELL/seedN.json``: the config and its hash, the training summary, the test
metrics (per query for SciFact, for the paired bootstrap) and the provenance of the call that
finished it. A cell whose record has the current config hash is skipped. Pretrained cells evaluate
the packaged all-MiniLM-L6-v2 once (seed 0: nothing random).

The summary (``results/recipes/summary.json`` and ``recipes.md``) is recomputed from every record
by :func:`summarize` after each run; tests/test_result_summaries.py recomputes it in CI. Means and
spreads are over the seeds a cell has; SciFact differences against the in-batch cell are paired
bootstrap intervals over the 300 test queries (per-query nDCG@10 averaged over the seeds of each
side; 10,000 resamples, fixed seed).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import flags

from embedjax import paths
from embedjax.config import ConfigError, config_overrides, load_config, run_main
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run, config_hash

GROUPS = ('stsb', 'scifact', 'elastic', 'distill')
# The metric of each group's per-cell statistics (records hold more).
METRIC = {'stsb': 'spearman', 'scifact': 'ndcg@10', 'elastic': 'ndcg@10',
          'distill': 'asymmetric_fraction'}
ELASTIC_DIMS = (384, 256, 128, 64, 32)
# The elastic cell whose numbers summary.json reports (the issue's goal: >= 0.90 retention at 64
# dims with 2DMSE and multi-task data); the others are in the table.
ELASTIC_HEADLINE = 'elastic_2dmse_multi_task'
DISTILL_CELL = 'distill_leaf'
# The data folders each group's evaluation reads (provenance inputs).
EVAL_FOLDERS = {'stsb': ('stsb',), 'scifact': ('scifact',), 'elastic': ('scifact',),
                'distill': ('scifact', 'stsb')}
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
BASELINE = {'scifact': 'scifact_in_batch', 'stsb': 'stsb_pretrained'}
# summary.json's keys (the dashboard's names) -> cells
SUMMARY_KEYS = {
    'stsb_spearman': {'pretrained': 'stsb_pretrained', 'cosent': 'stsb_cosent',
                      'angle': 'stsb_angle', 'info_nce': 'stsb_info_nce'},
    'scifact_ndcg@10': {'pretrained': 'scifact_pretrained', 'in_batch': 'scifact_in_batch',
                        'mined': 'scifact_mined', 'mined_filtered': 'scifact_mined_filtered',
                        'focal': 'scifact_focal', 'hardness': 'scifact_hardness',
                        'multi_task': 'scifact_multi_task'},
}


def results_dir() -> Path:
  return paths.repo_root() / 'results' / 'recipes'


def record_path(cell: str, seed: int, root: Path | None = None) -> Path:
  return (root or results_dir()) / 'runs' / cell / f'seed{seed}.json'


def group_of(cell: str) -> str:
  return cell.split('_', 1)[0]


def _configs():
  import importlib.util
  spec = importlib.util.spec_from_file_location('_recipes_configs',
                                                paths.repo_root() / 'configs' / 'recipes.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# --- evaluation -------------------------------------------------------------------------------


def _retrieval_scores(q: np.ndarray, d: np.ndarray, data) -> dict:
  """nDCG@10 (mean and per judged query, in the qrels' query order) and recall@100 of exact
  inner-product search of queries ``q`` over corpus ``d``."""
  from embedjax.evals import metrics
  from embedjax.search.exact import topk_blocked
  _, idx = topk_blocked(q, d, 100)
  rel = metrics.run_relevance(np.asarray(idx), data.qrels, data.query_ids, data.corpus_ids)
  per_query = metrics.per_query_metrics(rel, (10, 100))
  judged = np.asarray(rel.judged)
  ids = [str(x) for x, j in zip(data.query_ids, judged) if j]
  ndcg = [round(float(v), 10) for v in per_query['ndcg@10'][judged]]
  return {'ndcg@10': float(np.mean(ndcg)),
          'recall@100': float(per_query['recall@100'][judged].mean()),
          'queries': len(ids), 'query_ids': ids, 'per_query_ndcg@10': ndcg}


def evaluate(model, group: str, data_dir: Path, *, progress: bool = True) -> dict:
  """The group's test metrics of ``model`` (a ``Pretrained``):
    stsb     STS-B test Spearman (and Pearson)
    scifact  SciFact test nDCG@10 (mean, and per query for the paired bootstrap), recall@100
    elastic  SciFact test nDCG@10 at every (layer 1..n, Matryoshka dim) cell; per query at the
             last layer, full width and 64 dims
    distill  SciFact nDCG@10 and STS-B Spearman of the teacher (the packaged all-MiniLM-L6-v2),
             of the student alone and of student queries (sentence1) against teacher documents
             (sentence2), with fractions of the teacher's, and the student's parameter count
  """
  from embedjax.data import readers
  from embedjax.encoding import encode
  from embedjax.evals import sts
  from embedjax.evals.tasks import encode_unique
  from embedjax.ops import l2_normalize

  def encode_fn(texts):
    return encode(model, list(texts), progress=progress)

  if group == 'stsb':
    data = readers.read_stsb(data_dir / 'stsb', 'test')
    emb = encode_unique(encode_fn, list(data.sentences1) + list(data.sentences2))
    n = len(data.sentences1)
    scores = sts.sts_scores(emb[:n], emb[n:], data.scores)
    return {'spearman': float(scores['spearman']), 'pearson': float(scores['pearson']),
            'pairs': n}
  if group == 'scifact':
    data = readers.read_beir(data_dir / 'scifact', 'test')
    return _retrieval_scores(encode_fn(data.query_texts), encode_fn(data.corpus_texts), data)
  if group == 'elastic':
    from embedjax.evals.elastic_grid import encode_layers
    data = readers.read_beir(data_dir / 'scifact', 'test')
    layers = list(range(1, model.spec.backbone.num_hidden_layers + 1))
    q = encode_layers(model, list(data.query_texts), layers, progress=progress)
    d = encode_layers(model, list(data.corpus_texts), layers, progress=progress)
    grid, last = {}, {}
    for i, layer in enumerate(layers):
      for dim in ELASTIC_DIMS:
        r = _retrieval_scores(np.asarray(l2_normalize(q[i][:, :dim])),
                              np.asarray(l2_normalize(d[i][:, :dim])), data)
        grid[f'{layer}x{dim}'] = r['ndcg@10']
        if layer == layers[-1]:
          last[dim] = r
    full, small = last[ELASTIC_DIMS[0]], last[64]
    out = dict(full)
    out.update({'ndcg@10_at_64': small['ndcg@10'], 'per_query_ndcg@10_at_64':
                small['per_query_ndcg@10'], 'retention_at_64': small['ndcg@10'] / full['ndcg@10'],
                'grid_ndcg@10': grid, 'layers': layers, 'dims': list(ELASTIC_DIMS)})
    return out
  if group == 'distill':
    from embedjax.models.pretrained import load_pretrained
    from embedjax.train.distillation import MINILM_PARAMS, evaluate_distillation
    teacher = load_pretrained('all-MiniLM-L6-v2')
    r = evaluate_distillation(model, model.params, teacher, teacher.params, ['scifact', 'stsb'],
                              data_dir, progress=progress)
    params = sum(int(x.size) for x in jax.tree_util.tree_leaves(model.params))
    return {'scifact': r['scifact'], 'stsb': r['stsb'], 'params': params,
            'teacher_params': MINILM_PARAMS, 'params_fraction': params / MINILM_PARAMS,
            'asymmetric_fraction': r['scifact']['asymmetric_fraction'],
            'symmetric_fraction': r['scifact']['symmetric_fraction']}
  raise ValueError(f'unknown group {group!r}')


# --- mining -----------------------------------------------------------------------------------


def mine_scifact(out_path: Path, data_dir: Path, *, relative_margin: float | None,
                 progress: bool = True) -> dict:
  """Mines one hard negative per SciFact train pair with the pretrained model: the top-ranked
  abstract that is not a positive of its claim (and, with ``relative_margin``, scores at most
  ``p - |p| * margin`` for the claim's smallest positive score ``p``), over the whole corpus."""
  from embedjax.data import readers
  from embedjax.encoding import encode
  from embedjax.models.pretrained import load_pretrained
  from embedjax.train.mining import mine_to_file

  model = load_pretrained('all-MiniLM-L6-v2')
  train = readers.read_beir(data_dir / 'scifact', 'train')
  doc_text = dict(zip(train.corpus_ids, train.corpus_texts))
  query_text = dict(zip(train.query_ids, train.query_texts))
  pairs = [(query_text[q], doc_text[d]) for q in train.query_ids
           for d, r in sorted(train.qrels.get(q, {}).items()) if r > 0]
  mined = mine_to_file(pairs, lambda t: encode(model, t, progress=progress), out_path,
                       corpus=list(train.corpus_texts), num_negatives=1,
                       relative_margin=relative_margin)
  return {'path': str(out_path), 'rows': mined.rows, 'pairs': len(pairs),
          'relative_margin': relative_margin}


# --- running cells ----------------------------------------------------------------------------


def cell_config(cell: str, seed: int, overrides=()):
  """(config, its hash) of one cell at one seed; (None, hash of the cell's name) for a pretrained
  cell, which trains nothing."""
  if _configs().CELLS[cell]() is None:
    return None, config_hash({'cell': cell})
  cfg = load_config(f'{paths.repo_root() / "configs" / "recipes.py"}:{cell}',
                    [*overrides, f'--config.seed={seed}'])
  return cfg, config_hash(cfg)


def expected_runs(seeds=(0, 1)) -> list[tuple[str, int]]:
  """Every (cell, seed) the study is made of: each trained cell at ``seeds``, each pretrained cell
  once (seed 0)."""
  configs = _configs()
  return [(cell, seed) for cell, factory in configs.CELLS.items()
          for seed in (seeds if factory() is not None else (0,))]


def config_is_current(cell: str, seed: int, root: Path | None = None) -> bool:
  """Whether the record of (cell, seed) exists and was made with the config the study runs now
  (``make results`` asks this besides the record's commit and code)."""
  return _current(record_path(cell, seed, root), *cell_config(cell, seed))


def _current(path: Path, cfg, chash: str) -> bool:
  """The record exists and was made with this config: equal hash, or (a record made before
  embedjax gained some fields) no change but new fields at their defaults."""
  if not path.exists():
    return False
  rec = json.loads(path.read_text())
  if rec.get('config_hash') == chash:
    return True
  from embedjax.train.run_config import config_changes
  return cfg is not None and 'config' in rec and not config_changes(rec['config'], cfg.to_dict())


def _restart_workdir(workdir: Path) -> None:
  """Empties a run's workdir for a run made again at this commit, unless a run at this commit
  already started there (an interrupted redo resumes). The old record stays until the new one
  replaces it."""
  from embedjax.provenance import git_state
  marker = workdir / 'redo_commit.txt'
  commit = (git_state() or {}).get('commit') or ''
  if marker.is_file() and marker.read_text().strip() == commit:
    return
  shutil.rmtree(workdir, ignore_errors=True)
  workdir.mkdir(parents=True)
  atomic_write_text(marker, commit + '\n')


def run_cell(cell: str, seed: int, *, runs_dir: Path, data_dir: Path, overrides=(),
             results: Path | None = None, progress: bool = True,
             force: bool = False) -> dict | None:
  """Trains (resuming) and evaluates one cell at one seed (``overrides``: ``--config.x=y``
  arguments applied to its config); writes and returns its record, or None when its record is
  already current (``force``: made again all the same)."""
  from embedjax.models.pretrained import load_pretrained
  from embedjax.train.loop import dry_build, train

  configs = _configs()
  group = group_of(cell)
  cfg, chash = cell_config(cell, seed, overrides)
  out = record_path(cell, seed, results)
  if not force and _current(out, cfg, chash):
    print(f'== {cell} seed {seed}: current ({out.relative_to(paths.repo_root())})', flush=True)
    return None
  print(f'== {cell} seed {seed}', flush=True)
  run = Run(config=cfg if cfg is not None else {'cell': cell}, seeds=seed,
            store_config=False).start()
  record = {'cell': cell, 'group': group, 'seed': seed, 'config_hash': chash}
  if cfg is None:
    model = load_pretrained('all-MiniLM-L6-v2')
    record['model'] = 'all-MiniLM-L6-v2 (packaged, not trained)'
  else:
    if cell in getattr(configs, 'MINED_FILES', {}):
      mined = Path(configs.MINED_FILES[cell])
      if not mined.exists():
        margin = configs.MINED_RELATIVE_MARGIN if cell.endswith('_filtered') else None
        record['mining'] = mine_scifact(mined, data_dir, relative_margin=margin,
                                        progress=progress)
    dry_build(cfg)
    workdir = runs_dir / cell / f'seed{seed}'
    summary = train(cfg, workdir, progress=progress)
    run.add_inputs(hashed=summary['inputs'])
    record['config'] = summary['config']
    record['train'] = {k: summary[k] for k in ('steps_done', 'steps', 'seconds', 'pairs_per_s',
                                               'train_rows', 'started_at', 'finished_at')}
    record['train']['loss_log'] = _loss_log(workdir)
    model = load_pretrained(summary['export'])
  t0 = time.perf_counter()
  record['test'] = evaluate(model, group, data_dir, progress=progress)
  record['test']['seconds'] = round(time.perf_counter() - t0, 1)
  run.add_inputs(*(data_dir / f for f in EVAL_FOLDERS[group]))
  record.update(run.finish().provenance())
  record['config_hash'] = chash
  atomic_write_json(out, record)
  print(f'   {METRIC[group]} {record["test"][METRIC[group]]:.4f} -> {out}', flush=True)
  return record


def _loss_log(workdir: Path) -> list:
  """(step, loss) of the run's metric log, for the record (the curve shows a run converged)."""
  log = workdir / 'metrics.jsonl'
  if not log.exists():
    return []
  out = []
  for line in log.read_text().splitlines():
    row = json.loads(line)
    if 'train/loss' in row:
      out.append([row['step'], round(float(row['train/loss']), 6)])
  return out


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path | None = None) -> dict[str, dict[int, dict]]:
  """{cell: {seed: record}} of every record under ``root/runs``."""
  out: dict[str, dict[int, dict]] = {}
  for path in sorted(((root or results_dir()) / 'runs').glob('*/seed*.json')):
    rec = json.loads(path.read_text())
    out.setdefault(rec['cell'], {})[int(rec['seed'])] = rec
  return out


def _stats(values: list[float]) -> dict:
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
  return {'mean': mean, 'std': std, 'min': min(values), 'max': max(values), 'n_seeds': n}


def _mean_per_query(records: dict[int, dict]) -> tuple[list[str], np.ndarray]:
  ids = None
  rows = []
  for seed in sorted(records):
    t = records[seed]['test']
    if ids is None:
      ids = t['query_ids']
    elif t['query_ids'] != ids:
      raise ValueError(f"cell {records[seed]['cell']}: seeds evaluated different queries")
    rows.append(t['per_query_ndcg@10'])
  return ids, np.mean(np.asarray(rows, np.float64), axis=0)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
  """Mean of ``a - b`` over paired items and its 95% percentile bootstrap interval (queries
  resampled with replacement), with the fraction of resamples where the difference is <= 0."""
  diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  rng = np.random.default_rng(seed)
  means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  return {'diff': float(diff.mean()), 'ci95': [float(lo), float(hi)],
          'p_not_better': float((means <= 0).mean()), 'resamples': resamples, 'items': len(diff)}


def _mean(values) -> float:
  values = list(values)
  return sum(values) / len(values)


def _extras(cell: str, records: dict[int, dict]) -> dict:
  """Per-group means over seeds besides the cell's main metric."""
  tests = [records[s]['test'] for s in sorted(records)]
  group = group_of(cell)
  if group == 'elastic':
    grid = {k: _mean(t['grid_ndcg@10'][k] for t in tests) for k in tests[0]['grid_ndcg@10']}
    return {'ndcg@10_at_64': _mean(t['ndcg@10_at_64'] for t in tests),
            'retention_at_64': _mean(t['retention_at_64'] for t in tests),
            'grid_ndcg@10': grid}
  if group == 'distill':
    out = {'params': tests[0]['params'], 'params_fraction': tests[0]['params_fraction']}
    for task in ('scifact', 'stsb'):
      for k in ('teacher', 'symmetric', 'asymmetric', 'symmetric_fraction',
                'asymmetric_fraction'):
        out[f'{task}_{k}'] = _mean(t[task][k] for t in tests)
    return out
  return {}


def summarize(records: dict[str, dict[int, dict]]) -> dict:
  """The study's summary from its records (pure: the CI test recomputes it)."""
  cells = {}
  for cell in sorted(records):
    group = group_of(cell)
    values = [records[cell][s]['test'][METRIC[group]] for s in sorted(records[cell])]
    cells[cell] = {'metric': f'{group} test {METRIC[group]}', **_stats(values),
                   'seeds': sorted(records[cell]),
                   'commits': sorted({records[cell][s]['git_commit'] or '?'
                                      for s in records[cell]}),
                   **_extras(cell, records[cell])}
  out: dict = {}
  for key, names in SUMMARY_KEYS.items():
    out[key] = {short: (cells[c]['mean'] if c in cells else None) for short, c in names.items()}
  head = cells.get(ELASTIC_HEADLINE)
  out['elastic_cell'] = ELASTIC_HEADLINE
  out['ndcg@10_at_64'] = head['ndcg@10_at_64'] if head else None
  out['ndcg@10_at_384'] = head['mean'] if head else None
  out['retention_at_64'] = head['retention_at_64'] if head else None
  leaf = cells.get(DISTILL_CELL)
  out['distill'] = {k: (leaf[f'scifact_{k}'] if k != 'params_fraction' else leaf[k])
                    if leaf else None
                    for k in ('params_fraction', 'symmetric_fraction', 'asymmetric_fraction')}
  bootstrap = {}
  base = BASELINE['scifact']
  for cell in sorted(c for c in records if group_of(c) in ('scifact', 'elastic') and c != base):
    if base not in records:
      break
    ids_a, a = _mean_per_query(records[cell])
    ids_b, b = _mean_per_query(records[base])
    if ids_a != ids_b:
      raise ValueError(f'{cell} and {base} were evaluated on different queries')
    bootstrap[f'{cell} - {base}'] = paired_bootstrap(a, b)
  out['scifact_paired_bootstrap'] = bootstrap
  out['cells'] = cells
  out['missing'] = sorted({c for names in SUMMARY_KEYS.values() for c in names.values()
                           if c not in cells} | {c for c in (ELASTIC_HEADLINE, DISTILL_CELL)
                                                 if c not in cells})
  return out


def _fmt(x, digits=4):
  return '-' if x is None else f'{x:.{digits}f}'


def markdown(summary: dict) -> str:
  lines = ['# Training recipes: results', '',
           'Generated by `python -m experiments.recipes --summarize` from the per-run records in',
           '`results/recipes/runs/` (each names its commit and command). Means over seeds; spread is',
           'the sample standard deviation (- with one seed). Test splits only; no checkpoint',
           'selection. Reading and protocol: docs/recipes.md.', '',
           '| cell | metric | mean | std | min | max | seeds | commits |', '|---|---|---|---|---|---|---|---|']
  for cell, c in summary['cells'].items():
    lines.append(f"| {cell} | {c['metric']} | {_fmt(c['mean'])} | {_fmt(c['std'])} | "
                 f"{_fmt(c['min'])} | {_fmt(c['max'])} | {c['n_seeds']} | "
                 f"{', '.join(c['commits'])} |")
  elastic = {c: v for c, v in summary['cells'].items() if group_of(c) == 'elastic'}
  if elastic:
    lines += ['', 'Elastic cells (SciFact test nDCG@10 at the last layer; retention = 64 dims / '
              '384 dims, per seed, then averaged; the full layer x dim grid is in summary.json and '
              'the plots `elastic_grid_CELL.png`):', '',
              '| cell | nDCG@10 at 384 | at 64 | retention at 64 | seeds |', '|---|---|---|---|---|']
    for cell, c in elastic.items():
      lines.append(f"| {cell} | {_fmt(c['mean'])} | {_fmt(c['ndcg@10_at_64'])} | "
                   f"{_fmt(c['retention_at_64'], 3)} | {c['n_seeds']} |")
  distill = {c: v for c, v in summary['cells'].items() if group_of(c) == 'distill'}
  if distill:
    lines += ['', 'Distillation (teacher: the packaged all-MiniLM-L6-v2; asymmetric = student '
              'queries against teacher documents, or student sentence1 against teacher sentence2):',
              '', '| cell | params (fraction) | task | teacher | symmetric (fraction) | '
              'asymmetric (fraction) |', '|---|---|---|---|---|---|']
    for cell, c in distill.items():
      for task in ('scifact', 'stsb'):
        lines.append(f"| {cell} | {c['params']:,} ({c['params_fraction']:.3f}) | {task} | "
                     f"{_fmt(c[f'{task}_teacher'])} | {_fmt(c[f'{task}_symmetric'])} "
                     f"({c[f'{task}_symmetric_fraction']:.3f}) | {_fmt(c[f'{task}_asymmetric'])} "
                     f"({c[f'{task}_asymmetric_fraction']:.3f}) |")
  if summary['scifact_paired_bootstrap']:
    lines += ['', 'SciFact nDCG@10 differences, paired bootstrap over the test queries '
              f'({BOOTSTRAP_RESAMPLES:,} resamples):', '',
              '| comparison | diff | 95% interval | P(diff <= 0) |', '|---|---|---|---|']
    for name, b in summary['scifact_paired_bootstrap'].items():
      lines.append(f"| {name} | {b['diff']:+.4f} | [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] | "
                   f"{b['p_not_better']:.3f} |")
  if summary['missing']:
    lines += ['', f"Not yet run: {', '.join(summary['missing'])}."]
  return '\n'.join(lines) + '\n'


def write_summary(root: Path | None = None) -> dict:
  root = root or results_dir()
  summary = summarize(load_records(root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'recipes.md', markdown(summary))
  for cell, c in summary['cells'].items():
    if 'grid_ndcg@10' in c:
      from embedjax.evals.elastic_grid import plot_grid
      import matplotlib.pyplot as plt
      grid = {tuple(int(x) for x in k.split('x')): v for k, v in c['grid_ndcg@10'].items()}
      fig = plot_grid(grid, root / f'elastic_grid_{cell}.png', metric='SciFact nDCG@10',
                      title=f'{cell} (mean of {c["n_seeds"]} seeds)')
      plt.close(fig)
  return summary


# --- command line -----------------------------------------------------------------------------


def _flags(fv) -> None:
  flags.DEFINE_list('cells', [], 'cells to run (configs/recipes.py CELLS); none = every cell',
                    flag_values=fv)
  flags.DEFINE_list('seeds', ['0', '1'], 'seeds of each trained cell', flag_values=fv)
  flags.DEFINE_string('runs-dir', str(paths.repo_root() / 'runs' / 'recipes'),
                      'workdirs go here', flag_values=fv)
  flags.DEFINE_string('results-dir', str(results_dir()), 'records and summary go here',
                      flag_values=fv)
  flags.DEFINE_list('redo', [], 'CELL/seedN runs to make again from scratch (workdir and record '
                    'removed first) although their config is current: `make results` names the '
                    'runs whose code changed', flag_values=fv)
  flags.DEFINE_bool('list', False, 'only say which (cell, seed) records exist', flag_values=fv)
  flags.DEFINE_bool('summarize', False, 'only recompute the summary from the records',
                    flag_values=fv)


def main(cfg, fv) -> int:
  del cfg  # the default cell's config; every cell's own is loaded, with the same overrides
  configs = _configs()
  cells = fv['cells'].value or list(configs.CELLS)
  unknown = [c for c in cells if c not in configs.CELLS]
  if unknown:
    raise ConfigError(f'--cells {unknown[0]!r}: not a cell of configs/recipes.py '
                      f'({sorted(configs.CELLS)})')
  seeds = [int(s) for s in fv['seeds'].value]
  results = Path(fv['results-dir'].value)
  if fv['list'].value:
    for cell in configs.CELLS:
      have = sorted(int(p.stem[4:]) for p in (results / 'runs' / cell).glob('seed*.json'))
      print(f'{cell:28s} seeds done: {have or "-"}')
    return 0
  if not fv['summarize'].value:
    data_dir = paths.shared_data_dir()
    if data_dir is None:
      raise ConfigError('the recipes study reads ../shared/data (or $EMBEDJAX_DATA_DIR)')
    runs = expected_runs(seeds)
    redo = set(fv['redo'].value)
    unknown = sorted(redo - {f'{c}/seed{s}' for c, s in runs})
    if unknown:
      raise ConfigError(f'--redo {unknown[0]!r}: not a run of the study (CELL/seedN)')
    for cell, seed in [r for c in cells for r in runs if r[0] == c]:  # in the order asked
      force = f'{cell}/seed{seed}' in redo
      if force:
        _restart_workdir(Path(fv['runs-dir'].value) / cell / f'seed{seed}')
      run_cell(cell, seed, runs_dir=Path(fv['runs-dir'].value), data_dir=data_dir,
               overrides=config_overrides(sys.argv[1:]), results=results, force=force)
      write_summary(results)
  summary = write_summary(results)
  print(markdown(summary))
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main, 'configs/recipes.py:scifact_in_batch', define_flags=_flags))
