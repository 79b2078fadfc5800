r"""The post-hoc adapters study (ADR and QDC on SciFact): one record per (cell, seed); the summary is
computed from the records.

python -m experiments.adapters --cells frozen,adr_query,adr_both --seeds 0,1
python -m experiments.adapters --cells qdc --seeds 0,1    # trains (or resumes) the new query model
python -m experiments.adapters --summarize

Cells are the configs of configs/adapters.py (its docstring says what each measures). The frozen
model's embeddings of the SciFact corpus and queries are cached in ``runs/cache`` (keyed by model
and texts); a fine-tuned model is always encoded afresh. Every cell evaluates SciFact test nDCG@10
(exact inner-product search over L2-normalised embeddings, the recipes study's scorer, per query
kept for paired comparisons). Records: ``results/adapters/runs/CELL/seedN.json``; the summary
(``summary.json``, ``adapters.md``, ``adapters.png``) is recomputed from them, also by
tests/test_result_summaries.py.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import numpy as np

from embedjax import paths, posthoc
from embedjax.config import ConfigError, config_overrides, load_config
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run
from experiments import cells

CONFIG = 'configs/adapters.py'


def results_dir() -> Path:
  return paths.repo_root() / 'results' / 'adapters'


def record_path(cell: str, seed: int, root: Path | None = None) -> Path:
  return cells.record_path(root or results_dir(), cell, seed)


def _cells() -> list[str]:
  return list(cells.configs_module(CONFIG).CELLS)


def cell_config(cell: str, seed: int = 0, overrides=()):
  return cells.cell_config(CONFIG, cell, seed, overrides)


def config_is_current(cell: str, seed: int, root: Path | None = None) -> bool:
  return cells.is_current(record_path(cell, seed, root), cell_config(cell, seed)[1])


def expected_runs(seeds=None) -> list[tuple[str, int]]:
  """Every (cell, seed): the frozen cell at seed 0 (nothing random), the others at each seed."""
  configs = cells.configs_module(CONFIG)
  seeds = configs.SEEDS if seeds is None else seeds
  return [(cell, seed) for cell in configs.CELLS for seed in ((0,) if cell == 'frozen' else seeds)]


def dry_run(cfg) -> dict:
  """Checks a cell's config without data: the method, the adapter rank, the fine-tuning config."""
  if cfg.method not in ('frozen', 'adr', 'qdc'):
    raise ConfigError(f'method {cfg.method!r}: one of frozen, adr, qdc')
  if cfg.adr.sides not in ('query', 'both') or cfg.adr.rank < 1:
    raise ConfigError(f'adr: sides {cfg.adr.sides!r} and rank {cfg.adr.rank} (query|both, >= 1)')
  out = {'cell': cfg.cell, 'method': cfg.method}
  if cfg.method == 'qdc':
    out['finetune_steps'] = load_config(str(paths.repo_root() / cfg.qdc.finetune_config),
                                        [f'--config.seed={cfg.seed}']).steps
  return out


# --- data and scoring -------------------------------------------------------------------------


def scifact(data_dir: Path) -> dict:
  """SciFact's texts: train (claim, cited abstract) pairs and claims, test data for scoring."""
  from embedjax.data import readers
  train = readers.read_beir(data_dir / 'scifact', 'train')
  test = readers.read_beir(data_dir / 'scifact', 'test')
  doc = dict(zip(train.corpus_ids, train.corpus_texts))
  query = dict(zip(train.query_ids, train.query_texts))
  pairs = [(query[q], doc[d]) for q in train.query_ids
           for d, r in sorted(train.qrels.get(q, {}).items()) if r > 0]
  return {'pairs': pairs, 'train_claims': list(train.query_texts), 'test': test}


def ndcg(q: np.ndarray, d: np.ndarray, test) -> dict:
  """SciFact test nDCG@10 (mean and per judged query) of queries ``q`` over corpus ``d``."""
  from embedjax.ops import l2_normalize
  from experiments.recipes import _retrieval_scores
  return _retrieval_scores(np.asarray(l2_normalize(q)), np.asarray(l2_normalize(d)), test)


class Encoder:
  """Encodes texts with one model; the packaged (frozen) model through the on-disk cache."""

  def __init__(self, model, cached: bool, progress: bool):
    self.model, self.cached, self.progress = model, cached, progress

  def __call__(self, texts, label: str) -> np.ndarray:
    from embedjax.embedding_cache import cached_encode
    from embedjax.encoding import encode
    if self.cached:
      return cached_encode(self.model, list(texts), label, progress=self.progress)
    return np.asarray(encode(self.model, list(texts), progress=self.progress))


# --- cells ------------------------------------------------------------------------------------


def run_adr(cfg, old: Encoder, data: dict) -> dict:
  a = cfg.adr
  q = old([p[0] for p in data['pairs']], 'scifact_train_claims_paired')
  d = old([p[1] for p in data['pairs']], 'scifact_train_cited')
  params, losses = posthoc.adr_fit(jax.random.key(cfg.seed), q, d, rank=a.rank, steps=a.steps,
                                   batch_size=a.batch_size, lr=a.lr, scale=a.scale, sides=a.sides)
  test = data['test']
  tq = np.asarray(posthoc.adr_apply(params, old(test.query_texts, 'scifact_test_queries')))
  td = old(test.corpus_texts, 'scifact_corpus')
  if a.sides == 'both':
    td = np.asarray(posthoc.adr_apply(params, td))
  return {'scifact': ndcg(tq, td, test),
          'adapter_params': int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
          'loss_first_last': [losses[0], losses[-1]]}


def run_qdc(cfg, old: Encoder, data: dict, runs_root: Path, progress: bool) -> tuple[dict, dict]:
  """The new query model (trained or resumed in its workdir) against the old index: no
  compensation, QDC, full re-indexing. Returns (test results, the training run's inputs)."""
  from embedjax.models.pretrained import load_pretrained
  from embedjax.train.loop import dry_build, train
  tcfg = load_config(str(paths.repo_root() / cfg.qdc.finetune_config), [f'--config.seed={cfg.seed}'])
  dry_build(tcfg)
  summary = train(tcfg, runs_root / cfg.qdc.finetune_workdir / f'seed{cfg.seed}', progress=progress)
  new = Encoder(load_pretrained(summary['export']), cached=False, progress=progress)
  test = data['test']
  w = posthoc.qdc_fit(new(data['train_claims'], ''), old(data['train_claims'], 'scifact_train_claims'),
                      ridge=cfg.qdc.ridge)
  new_q = new(test.query_texts, '')
  old_d = old(test.corpus_texts, 'scifact_corpus')
  out = {'no_compensation': ndcg(new_q, old_d, test),
         'qdc': ndcg(np.asarray(new_q @ np.asarray(w)), old_d, test),
         'reindex': ndcg(new_q, new(test.corpus_texts, ''), test),
         'finetune': {k: summary[k] for k in ('steps_done', 'steps', 'seconds')}}
  return out, summary['inputs']


def run_cell(cell: str, seed: int, *, data_dir: Path, runs_root: Path | None = None, overrides=(),
             results: Path | None = None, progress: bool = True, force: bool = False):
  from embedjax.models.pretrained import load_pretrained
  cfg, chash = cell_config(cell, seed, overrides)
  out = record_path(cell, seed, results)
  if not force and cells.is_current(out, chash):
    print(f'== {cell} seed {seed}: current ({out})', flush=True)
    return None
  print(f'== {cell} seed {seed}', flush=True)
  run = Run(config=cfg, seeds=seed).start()
  old = Encoder(load_pretrained(cfg.model), cached=True, progress=progress)
  data = scifact(data_dir)
  record = {'cell': cell, 'seed': seed, 'method': cfg.method, 'config_hash': chash}
  if cfg.method == 'frozen':
    test = data['test']
    record['test'] = {'scifact': ndcg(old(test.query_texts, 'scifact_test_queries'),
                                      old(test.corpus_texts, 'scifact_corpus'), test)}
  elif cfg.method == 'adr':
    record['test'] = run_adr(cfg, old, data)
  else:
    record['test'], hashed = run_qdc(cfg, old, data, runs_root or paths.repo_root(), progress)
    run.add_inputs(hashed=hashed)
  run.add_inputs(data_dir / 'scifact')
  record.update(run.finish().provenance())
  record['config_hash'] = chash
  atomic_write_json(out, record)
  print(f'   -> {out}', flush=True)
  return record


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path | None = None) -> dict[str, dict[int, dict]]:
  return cells.load_records(root or results_dir())


def _mean(recs, get) -> float:
  return statistics.fmean(get(r) for r in recs)


def summarize(records: dict[str, dict[int, dict]]) -> dict:
  """summary.json: SciFact test nDCG@10 per row, means over seeds (with their number and spread):
  ``adr`` rows (frozen, adr_query, adr_both, full_finetune) and ``qdc`` rows (old_model,
  no_compensation, qdc, reindex), and paired bootstraps over the test queries (COMPARISONS)."""
  def row(recs, get):
    values = [get(r) for r in recs]
    return {'ndcg@10': statistics.fmean(values), 'n_seeds': len(values),
            'std': statistics.stdev(values) if len(values) > 1 else None}

  by = {c: [s[k] for k in sorted(s)] for c, s in records.items()}
  out: dict = {'adr': {}, 'qdc': {}, 'adapter_params': {}, 'missing': []}
  if 'frozen' in by:
    frozen = row(by['frozen'], lambda r: r['test']['scifact']['ndcg@10'])
    out['adr']['frozen'] = frozen
    out['qdc']['old_model'] = frozen
  for cell in ('adr_query', 'adr_both'):
    if cell in by:
      out['adr'][cell] = row(by[cell], lambda r: r['test']['scifact']['ndcg@10'])
      out['adapter_params'][cell] = by[cell][0]['test']['adapter_params']
  if 'qdc' in by:
    out['adr']['full_finetune'] = row(by['qdc'], lambda r: r['test']['reindex']['ndcg@10'])
    for key in ('no_compensation', 'qdc', 'reindex'):
      out['qdc'][key] = row(by['qdc'], lambda r, k=key: r['test'][k]['ndcg@10'])
  out['paired_bootstrap'] = _paired(by)
  out['missing'] = [f'{c}/seed{s}' for c, s in expected_runs() if s not in records.get(c, {})]
  return out


# (name, (cell, test key), (cell, test key)): the differences the reading rests on, each over the
# same 300 test queries (per-query nDCG@10 averaged over the seeds of each side)
COMPARISONS = (
    ('adr_query - frozen', ('adr_query', 'scifact'), ('frozen', 'scifact')),
    ('adr_query - full_finetune', ('adr_query', 'scifact'), ('qdc', 'reindex')),
    ('adr_query - adr_both', ('adr_query', 'scifact'), ('adr_both', 'scifact')),
    ('adr_both - full_finetune', ('adr_both', 'scifact'), ('qdc', 'reindex')),
    ('qdc - no_compensation', ('qdc', 'qdc'), ('qdc', 'no_compensation')),
    ('reindex - qdc', ('qdc', 'reindex'), ('qdc', 'qdc')),
)


def _per_query(recs: list[dict], key: str) -> tuple[list[str], np.ndarray]:
  """(query ids, per-query nDCG@10 averaged over the seeds of ``recs``) of the evaluation under
  ``test[key]``: the recipes study's helper, which also checks that the seeds scored the same
  queries."""
  from experiments.recipes import _mean_per_query
  return _mean_per_query({i: {'cell': r['cell'], 'test': r['test'][key]}
                          for i, r in enumerate(recs)})


def _paired(by: dict[str, list[dict]]) -> dict:
  """Paired bootstraps over the test queries of COMPARISONS whose records exist."""
  from experiments.recipes import paired_bootstrap
  out = {}
  for name, (cell_a, key_a), (cell_b, key_b) in COMPARISONS:
    if cell_a not in by or cell_b not in by:
      continue
    ids_a, a = _per_query(by[cell_a], key_a)
    ids_b, b = _per_query(by[cell_b], key_b)
    if ids_a != ids_b:
      raise ValueError(f'{name}: the two sides were evaluated on different queries')
    out[name] = paired_bootstrap(a, b)
  return out


def markdown(summary: dict) -> str:
  def fmt(r):
    spread = f" ± {r['std']:.4f}" if r['std'] is not None else ''
    return f"{r['ndcg@10']:.4f}{spread} | {r['n_seeds']}"

  lines = ['# Post-hoc adapters on SciFact (test nDCG@10)', '',
           'Written by `python -m experiments.adapters` from results/adapters/runs/ (mean ± sample '
           'std over seeds). ADR is trained on the train qrels\' pairs over frozen '
           'all-MiniLM-L6-v2 embeddings; full fine-tuning is the recipes study\'s in-batch run.', '',
           '| ADR row | nDCG@10 | seeds | adapter params |', '|---|---|---|---|']
  for name, r in summary['adr'].items():
    lines.append(f"| {name} | {fmt(r)} | {summary['adapter_params'].get(name, '-')} |")
  lines += ['', 'Query drift: a fine-tuned query model against the pretrained model\'s index.', '',
            '| QDC row | nDCG@10 | seeds |', '|---|---|---|']
  for name, r in summary['qdc'].items():
    lines.append(f'| {name} | {fmt(r)} |')
  if summary['paired_bootstrap']:
    lines += ['', 'Differences in nDCG@10, paired bootstrap over the test queries (per-query '
              'scores averaged over each side\'s seeds; full_finetune and reindex are the same '
              'fine-tuned model re-embedding the corpus):', '',
              '| difference | mean | 95% interval | P(not better) |', '|---|---|---|---|']
    for name, b in summary['paired_bootstrap'].items():
      lines.append(f"| {name} | {b['diff']:+.4f} | [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] "
                   f"| {b['p_not_better']:.3f} |")
  if summary['missing']:
    lines += ['', f"Not yet run: {', '.join(summary['missing'])}."]
  return '\n'.join(lines) + '\n'


def write_summary(root: Path | None = None) -> dict:
  root = root or results_dir()
  summary = summarize(load_records(root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'adapters.md', markdown(summary))
  if summary['adr']:
    plot(summary, root / 'adapters.png')
  return summary


def plot(summary: dict, path: Path) -> None:
  """SciFact test nDCG@10 per row (ADR rows, then QDC rows) as points with the seed spread (the
  axis does not start at 0, so points, not bars)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = [(f'ADR: {k}', r) for k, r in summary['adr'].items()]
  rows += [(f'QDC: {k}', r) for k, r in summary['qdc'].items() if k != 'old_model']
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1))
  y = np.arange(len(rows))[::-1]
  for yi, (name, r) in zip(y, rows):
    ax.errorbar(r['ndcg@10'], yi, xerr=r['std'] or 0.0, fmt='o', capsize=3,
                color='tab:blue' if name.startswith('ADR') else 'tab:orange')
  ax.grid(axis='x', alpha=0.3)
  ax.set_yticks(y, [n for n, _ in rows])
  lo = min(r['ndcg@10'] for _, r in rows)
  ax.set_xlim(lo - 0.03, max(r['ndcg@10'] for _, r in rows) + 0.02)
  ax.set_xlabel('SciFact test nDCG@10 (mean over seeds)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --- command line -----------------------------------------------------------------------------


def _flags(fv) -> None:
  cells.define_flags(fv, config_rel=CONFIG, results_dir=results_dir(),
                     seeds_help='seeds of the adr and qdc cells')


def main(cfg, fv) -> int:
  del cfg  # each cell loads its own config, with the same overrides
  results = Path(fv['results-dir'].value)
  selected = cells.selected_runs(fv, _cells(), expected_runs)
  if fv['list'].value:
    cells.list_runs(expected_runs(), lambda c, s: record_path(c, s, results))
    return 0
  if not fv['summarize'].value:
    data_dir = paths.shared_data_dir()
    if data_dir is None:
      raise ConfigError('the adapters study reads ../shared/data (or $EMBEDJAX_DATA_DIR)')
    for cell, seed, force in selected:
      run_cell(cell, seed, data_dir=data_dir, overrides=config_overrides(sys.argv[1:]),
               results=results, force=force)
      write_summary(results)
  print(markdown(write_summary(results)))
  return 0


if __name__ == '__main__':
  sys.exit(cells.run_study(main, f'{CONFIG}:frozen', _flags))
