r"""The beyond-single-vector study: single-vector, multi-vector (ColBERT), sparse (SPLADE) and BM25
on LIMIT-small and SciFact, each (cell, seed) a resumable run with its own record; the summary is
computed from the records.

python -m experiments.beyond_single_vector --cells bm25,single_pretrained --seeds 0
python -m experiments.beyond_single_vector --cells single_finetuned,multi_vector,sparse --seeds 0,1
python -m experiments.beyond_single_vector --list          # which records exist
python -m experiments.beyond_single_vector --summarize     # summary only

Cells: configs/beyond_single_vector.py (its docstring says what each is and what it trains on). A
trained cell trains in ``runs/beyond_single_vector/CELL/seedN`` (a rerun continues from its last
checkpoint), then its export is evaluated; the record goes to
``results/beyond_single_vector/runs/CELL/seedN.json`` with the config hash, the training summary,
the metrics per task and search, bytes per document, and the provenance of the call. A cell whose
record has the current config hash is skipped.

The summary (``summary.json``, ``beyond_single_vector.md``) is recomputed from every record after
each run (and by tests/test_result_summaries.py in CI); it also carries the multi-vector
free-embedding curves, ``critical_n_m{1,2,4}.json`` of the same folder, when they exist (made by
``experiments.limit_free_embedding --config configs/limit_free_embedding.py:mN``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from embedjax import paths
from embedjax.config import ConfigError, config_overrides
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run
from experiments import cells

CONFIG = 'configs/beyond_single_vector.py'
FREE_EMBEDDING_M = (1, 2, 4)  # the critical_n_mN.json files the summary reads
# summary.json's names (the dashboard's) of each cell's searches: (cell, search) -> row
ROWS = {('bm25', 'bm25'): 'bm25',
        ('single_pretrained', 'exact'): 'single_vector',
        ('single_finetuned', 'exact'): 'single_vector_finetuned',
        ('multi_vector', 'exact'): 'multi_vector',
        ('multi_vector', 'plaid_4bit'): 'multi_vector_plaid_4bit',
        ('multi_vector', 'plaid_2bit'): 'multi_vector_plaid_2bit',
        ('multi_vector', 'plaid_1bit'): 'multi_vector_plaid_1bit',
        ('sparse', 'inverted_index'): 'sparse'}
# What a PLAID row records of its agreement (recall@10 of a reference's top 10): its search against
# exact MaxSim over float tokens and against the exhaustive search over the same compressed
# tokens, and that exhaustive search against float MaxSim (compression's share of the loss).
PLAID_AGREEMENT = ('recall@10_of_exact', 'recall@10_of_exhaustive_compressed',
                   'exhaustive_compressed_recall@10_of_exact')
TASK_METRICS = {'limit_small': ('recall@2', 'recall@10', 'recall@20'), 'scifact': ('ndcg@10',)}


def results_dir() -> Path:
  return paths.repo_root() / 'results' / 'beyond_single_vector'


def record_path(cell: str, seed: int, root: Path | None = None) -> Path:
  return cells.record_path(root or results_dir(), cell, seed)


def _configs():
  return cells.configs_module(CONFIG)


def cell_config(cell: str, seed: int = 0, overrides=()):
  return cells.cell_config(CONFIG, cell, seed, overrides)


def config_is_current(cell: str, seed: int, root: Path | None = None) -> bool:
  return cells.is_current(record_path(cell, seed, root), cell_config(cell, seed)[1])


def expected_runs(seeds=None) -> list[tuple[str, int]]:
  """Every (cell, seed): untrained cells at seed 0 (nothing random), trained ones at each seed."""
  configs = _configs()
  seeds = configs.SEEDS if seeds is None else seeds
  return [(cell, seed) for cell in configs.CELLS
          for seed in ((0,) if cell in configs.UNTRAINED else seeds)]


def training_config(cfg):
  """The training run of a trained cell, at the cell's seed."""
  import ml_collections
  tcfg = ml_collections.ConfigDict(cfg.train)  # an unfrozen copy (dry runs pass frozen configs)
  tcfg.seed = cfg.seed
  return tcfg


def dry_run(cfg) -> dict:
  """Checks a cell's config without data: its method, its tasks, and its training run built
  abstractly (embedjax.train.loop.dry_build)."""
  from embedjax.evals.tasks import TASKS
  if cfg.method not in ('bm25', 'single', 'multi_vector', 'sparse'):
    raise ConfigError(f'method {cfg.method!r}: one of bm25, single, multi_vector, sparse')
  for task in cfg.tasks:
    if task not in TASKS or TASKS[task].kind != 'retrieval':
      raise ConfigError(f'tasks: {task!r} is not a retrieval task of embedjax.evals.tasks')
  if any(b not in (1, 2, 4, 8) for b in cfg.plaid.bits):
    raise ConfigError(f'plaid.bits {tuple(cfg.plaid.bits)}: each of 1, 2, 4, 8')
  out = {'cell': cfg.cell, 'method': cfg.method}
  if cfg.trained:
    from embedjax.cli import training_sources
    from embedjax.train.loop import dry_build
    out['train'] = dry_build(training_config(cfg), training_sources())
  return out


# --- evaluation of one task -------------------------------------------------------------------


def _metrics(idx: np.ndarray, data, elapsed: float) -> dict:
  from embedjax.evals import metrics
  from embedjax.evals.tasks import RETRIEVAL_KS
  out = metrics.retrieval_metrics(np.asarray(idx), data.qrels, data.query_ids, data.corpus_ids,
                                  ks=[k for k in RETRIEVAL_KS if k <= len(data.corpus_ids)])
  out['seconds'] = round(elapsed, 2)
  return out


def _k(data) -> int:
  return min(1000, len(data.corpus_ids))


def bm25_postings_per_doc(texts) -> float:
  """Mean distinct indexed terms per document: the postings a BM25 inverted index stores for it
  (bm25s' tokenizer and stopwords, as ``evals.bm25.bm25_topk``)."""
  import bm25s
  from embedjax.evals.bm25 import STOPWORDS
  tokens = bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=True, show_progress=False)
  return float(np.mean([len(set(ids)) for ids in tokens.ids]))


def eval_bm25(cfg, data) -> dict:
  from embedjax.evals.bm25 import bm25_topk
  start = time.perf_counter()
  idx, _ = bm25_topk(data.corpus_texts, data.query_texts, _k(data), **cfg.bm25)
  # one posting = a 4-byte document id + a 4-byte weight, as the sparse index counts them
  return {'bm25': {**_metrics(idx, data, time.perf_counter() - start),
                   'bytes_per_doc': 8 * bm25_postings_per_doc(data.corpus_texts)}}


def eval_single(model, data, progress: bool) -> dict:
  from embedjax.encoding import encode
  from embedjax.search.exact import topk_blocked
  start = time.perf_counter()
  q = np.asarray(encode(model, list(data.query_texts), progress=progress))
  d = np.asarray(encode(model, list(data.corpus_texts), progress=progress))
  _, idx = topk_blocked(q, d, _k(data))
  return {'exact': {**_metrics(idx, data, time.perf_counter() - start),
                    'bytes_per_doc': 4.0 * d.shape[1]}}


def eval_multi_vector(cfg, model, data) -> dict:
  """Exact MaxSim over float32 token vectors, then PLAID-style search over ColBERTv2 residual
  codes at each of ``cfg.plaid.bits`` (the texts encoded once for all of them)."""
  from embedjax.evals.representations import encode_token_vectors
  from embedjax.search import plaid
  from embedjax.search.multivector import topk_maxsim
  start = time.perf_counter()
  q, qm, qc = encode_token_vectors(model, data.query_texts, queries=True)
  d, dm, dc = encode_token_vectors(model, data.corpus_texts, queries=False)
  encode_seconds = time.perf_counter() - start
  start = time.perf_counter()
  _, exact_idx = topk_maxsim(q, qm, d, dm, _k(data))
  exact_idx = np.asarray(exact_idx)
  idx = exact_idx
  out = {'exact': {**_metrics(idx, data, encode_seconds + time.perf_counter() - start),
                   'bytes_per_doc': float(dm.sum(axis=1).mean() * 4 * d.shape[2]),
                   'counts': {'queries': qc, 'documents': dc}}}
  tokens = d[dm != 0]
  sample = min(cfg.plaid.kmeans_sample, len(tokens))
  # ColBERTv2's rule for the number of centroids: the power of two near 16 sqrt(tokens) (at most
  # the k-means sample)
  n_centroids = min(int(2 ** np.floor(np.log2(16 * np.sqrt(len(tokens))))), sample)
  for bits in cfg.plaid.bits:
    start = time.perf_counter()
    codec = plaid.fit_codec(jax.random.key(cfg.seed), tokens, n_centroids, bits=bits,
                            iters=cfg.plaid.kmeans_iters, sample=sample)
    index = plaid.build_index(codec, d, dm)
    _, idx = plaid.search(index, q, qm, _k(data))
    seconds = time.perf_counter() - start
    # The exhaustive search over the same compressed tokens (what PLAID's candidate generation
    # can at best return): it splits the loss against float MaxSim into compression's share and
    # the search's.
    stored = np.array(plaid.decompress(codec, index.ids, index.residuals))
    stored[dm == 0] = 0.0
    exhaustive_idx = np.asarray(topk_maxsim(q, qm, stored, dm, _k(data))[1])
    del stored
    out[f'plaid_{bits}bit'] = {**_metrics(idx, data, seconds),
                               'bytes_per_doc': index.bytes_per_doc(),
                               'centroids': n_centroids,
                               'recall@10_of_exact': recall_of_exact(idx, exact_idx, 10),
                               'recall@10_of_exhaustive_compressed': recall_of_exact(
                                   idx, exhaustive_idx, 10),
                               'exhaustive_compressed_recall@10_of_exact': recall_of_exact(
                                   exhaustive_idx, exact_idx, 10)}
  return out


def recall_of_exact(idx, exact_idx, k: int) -> float:
  """Mean over queries of |top-k ids of a search ∩ exact search's top-k| / k (PLAID's agreement
  with exact MaxSim on the same token vectors, whatever the relevance labels say)."""
  idx, exact_idx = np.asarray(idx)[:, :k], np.asarray(exact_idx)[:, :k]
  return float(np.mean([len(set(a[a >= 0]) & set(b)) / b.shape[0]
                        for a, b in zip(idx, exact_idx)]))


def eval_sparse(model, data) -> dict:
  from embedjax.evals.representations import encode_sparse
  from embedjax.search.sparse import SparseIndex, sparse_topk
  start = time.perf_counter()
  qw, qc = encode_sparse(model, data.query_texts)
  dw, dc = encode_sparse(model, data.corpus_texts)
  index = SparseIndex.build(dw)
  _, idx = sparse_topk(index, qw, _k(data))
  return {'inverted_index': {**_metrics(idx, data, time.perf_counter() - start),
                             'bytes_per_doc': index.bytes_per_doc(),
                             'nonzeros_per_query': float(qw.nnz / max(qw.shape[0], 1)),
                             'nonzeros_per_doc': index.nonzeros_per_doc(),
                             'counts': {'queries': qc, 'documents': dc}}}


# --- a cell -----------------------------------------------------------------------------------


def _model(cfg, runs_root: Path, progress: bool):
  """(the model a cell evaluates, its training summary or None)."""
  if cfg.method == 'bm25':
    return None, None
  from embedjax.models.pretrained import load_pretrained
  if not cfg.trained:
    return load_pretrained(cfg.model), None
  from embedjax.cli import training_sources
  from embedjax.train.loop import train
  summary = train(training_config(cfg), runs_root / 'beyond_single_vector' / cfg.cell /
                  f'seed{cfg.seed}', sources=training_sources(), progress=progress)
  if cfg.method == 'single':
    return load_pretrained(summary['export']), summary
  from embedjax.evals.representations import TokenModel
  return TokenModel.load(summary['export']), summary


def evaluate_task(cfg, model, data, progress: bool) -> dict:
  if cfg.method == 'bm25':
    return eval_bm25(cfg, data)
  if cfg.method == 'single':
    return eval_single(model, data, progress)
  if cfg.method == 'multi_vector':
    return eval_multi_vector(cfg, model, data)
  return eval_sparse(model, data)


def run_cell(cell: str, seed: int, *, data_dir: Path, runs_root: Path | None = None,
             overrides=(), results: Path | None = None, progress: bool = True,
             force: bool = False):
  from embedjax.evals.tasks import TASKS, task_inputs
  cfg, chash = cell_config(cell, seed, overrides)
  out = record_path(cell, seed, results)
  if not force and cells.is_current(out, chash):
    print(f'== {cell} seed {seed}: current ({out})', flush=True)
    return None
  print(f'== {cell} seed {seed}', flush=True)
  dry_run(cfg)
  run = Run(config=cfg, seeds=seed).start()
  model, summary = _model(cfg, runs_root or paths.repo_root() / 'runs', progress)
  record = {'cell': cell, 'seed': seed, 'method': cfg.method, 'config_hash': chash, 'test': {}}
  if summary is not None:
    record['train'] = {k: summary.get(k) for k in ('steps_done', 'steps', 'seconds', 'train_rows')}
    run.add_inputs(hashed=summary['inputs'])
  for task in cfg.tasks:
    record['test'][task] = evaluate_task(cfg, model, TASKS[task].load(data_dir), progress)
    print(f'   {task}: ' + ', '.join(f'{s} {m}={r[m]:.4f}' for s, r in record['test'][task].items()
                                      for m in TASK_METRICS.get(task, ()) if m in r), flush=True)
  run.add_inputs(*task_inputs(cfg.tasks, data_dir))
  record.update(run.finish().provenance())
  record['config_hash'] = chash
  atomic_write_json(out, record)
  print(f'   -> {out}', flush=True)
  return record


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path | None = None) -> dict[str, dict[int, dict]]:
  return cells.load_records(root or results_dir())


def load_free_embedding(root: Path | None = None) -> dict[str, dict]:
  """{'m1': {d: critical_n}, ...} from the critical_n_mN.json files that exist."""
  out = {}
  for m in FREE_EMBEDDING_M:
    path = (root or results_dir()) / f'critical_n_m{m}.json'
    if path.is_file():
      out[f'm{m}'] = json.loads(path.read_text())['critical_n']
  return out


def _stats(values: list[float]) -> dict:
  return {'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1
          else None, 'n_seeds': len(values)}


def summarize(records: dict[str, dict[int, dict]], free_embedding: dict | None = None) -> dict:
  """summary.json: per task, per row (ROWS) the mean over seeds of each metric, and bytes per
  document (SciFact's corpus; LIMIT-small's in ``bytes_per_doc_limit_small``); ``detail`` holds
  the spread and number of seeds; ``critical_n`` the free-embedding curves per m."""
  out: dict = {task: {} for task in TASK_METRICS}
  out.update(bytes_per_doc={}, bytes_per_doc_limit_small={}, detail={},
             **{f'plaid_{agreement}': {} for agreement in PLAID_AGREEMENT})
  for (cell, search), row in ROWS.items():
    recs = [records[cell][s] for s in sorted(records.get(cell, {}))]
    for task, names in TASK_METRICS.items():
      found = [r['test'][task][search] for r in recs if search in r['test'].get(task, {})]
      if not found:
        continue
      for name in names:
        st = _stats([f[name] for f in found])
        out[task].setdefault(row, {})[name] = st['mean']
        out['detail'].setdefault(task, {}).setdefault(row, {})[name] = st
      key = 'bytes_per_doc' if task == 'scifact' else f'bytes_per_doc_{task}'
      out[key][row] = statistics.fmean(f['bytes_per_doc'] for f in found)
      for agreement in PLAID_AGREEMENT:  # PLAID rows: agreement with exact MaxSim
        if agreement in found[0]:
          out[f'plaid_{agreement}'].setdefault(task, {})[row] = statistics.fmean(
              f[agreement] for f in found)
  out['critical_n'] = free_embedding or {}
  out['missing'] = [f'{c}/seed{s}' for c, s in expected_runs() if s not in records.get(c, {})]
  return out


def markdown(summary: dict) -> str:
  lines = ['# Beyond one vector per text: LIMIT-small and SciFact', '',
           'Written by `python -m experiments.beyond_single_vector` from '
           'results/beyond_single_vector/runs/ (means over seeds; ± the sample std where a row '
           'has two seeds). Trained rows: all-MiniLM-L6-v2 fine-tuned on one mixture (generated '
           'LIMIT-style pairs + SciFact train), one epoch, configs/beyond_single_vector.py.', '',
           '| row | LIMIT-small R@2 | R@10 | R@20 | SciFact nDCG@10 | bytes/doc (SciFact) | '
           'seeds |', '|---|---|---|---|---|---|---|']
  rows = list(dict.fromkeys(ROWS.values()))
  detail = summary['detail']
  for row in rows:
    cells_ = []
    seeds = set()
    for task, names in TASK_METRICS.items():
      for name in names:
        st = detail.get(task, {}).get(row, {}).get(name)
        if st is None:
          cells_.append('-')
          continue
        seeds.add(st['n_seeds'])
        spread = f" ± {100 * st['std']:.2f}" if st['std'] is not None else ''
        cells_.append(f"{100 * st['mean']:.2f}{spread}")
    if all(c == '-' for c in cells_):
      continue
    nbytes = summary['bytes_per_doc'].get(row)
    lines.append(f"| {row} | {' | '.join(cells_)} | "
                 f"{'-' if nbytes is None else f'{nbytes:,.0f}'} | "
                 f"{'/'.join(str(s) for s in sorted(seeds))} |")
  agreement = summary['plaid_recall@10_of_exact']
  if agreement:
    lines += ['', 'PLAID-style search at its defaults against exact MaxSim over the same token '
              'vectors (recall@10 of the exact top 10): ' + '; '.join(
                  f'{task} {row} {value:.3f}' for task, per in agreement.items()
                  for row, value in per.items()) + '.']
  split = summary.get('plaid_recall@10_of_exhaustive_compressed', {})
  if split:
    comp = summary['plaid_exhaustive_compressed_recall@10_of_exact']
    lines += ['', 'The same loss split in two: the search against the exhaustive search over '
              'the same compressed tokens, and that exhaustive search against exact float MaxSim '
              '(compression alone): ' + '; '.join(
                  f'{task} {row} {value:.3f} and {comp[task][row]:.3f}'
                  for task, per in split.items() for row, value in per.items()) + '.']
  crit = summary['critical_n']
  if crit:
    dims = sorted({int(d) for per in crit.values() for d in per})
    lines += ['', 'Free embeddings (no model: vectors optimised on the qrels), k = 2: the largest '
              'n whose C(n, 2) top-2 sets m vectors per document realise under MaxSim.', '',
              '| d | ' + ' | '.join(f'm = {m[1:]}' for m in crit) + ' |',
              '|---|' + '---|' * len(crit)]
    for d in dims:
      lines.append(f'| {d} | ' + ' | '.join(str(per.get(str(d), '-')) for per in crit.values())
                   + ' |')
  if summary['missing']:
    lines += ['', f"Not yet run: {', '.join(summary['missing'])}."]
  return '\n'.join(lines) + '\n'


def write_summary(root: Path | None = None) -> dict:
  root = root or results_dir()
  summary = summarize(load_records(root), load_free_embedding(root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'beyond_single_vector.md', markdown(summary))
  return summary


# --- command line -----------------------------------------------------------------------------


def _flags(fv) -> None:
  cells.define_flags(fv, config_rel=CONFIG, results_dir=results_dir(),
                     seeds_help='seeds of the trained cells',
                     runs_dir=paths.repo_root() / 'runs')


def main(cfg, fv) -> int:
  del cfg  # each cell loads its own config, with the same overrides
  results = Path(fv['results-dir'].value)
  selected = cells.selected_runs(fv, list(_configs().CELLS), expected_runs)
  if fv['list'].value:
    cells.list_runs(expected_runs(), lambda c, s: record_path(c, s, results))
    return 0
  if not fv['summarize'].value:
    data_dir = paths.shared_data_dir()
    if data_dir is None:
      raise ConfigError('the beyond-single-vector study reads ../shared/data (or '
                        '$EMBEDJAX_DATA_DIR): LIMIT-small and SciFact')
    for cell, seed, force in selected:
      run_cell(cell, seed, data_dir=data_dir, runs_root=Path(fv['runs-dir'].value),
               overrides=config_overrides(sys.argv[1:]), results=results, force=force)
      write_summary(results)
  print(markdown(write_summary(results)))
  return 0


if __name__ == '__main__':
  sys.exit(cells.run_study(main, f'{CONFIG}:multi_vector', _flags))
