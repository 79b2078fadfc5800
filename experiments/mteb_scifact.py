"""SciFact (test) scored three ways that must agree: mteb running embedjax's encoder through
``embedjax.evals.mteb_encoder.MTEBEncoder``, embedjax's own retrieval evaluator on the same
embeddings, and mteb running sentence-transformers on the same weights.

python -m experiments.mteb_scifact --config configs/mteb_scifact.py

The data comes from the shared data folder through ``experiments/mteb_local.py`` (mteb's SciFact
task with a local ``load_data``); nothing is downloaded, and mteb writes no result files (its cache
folder is ``cache_dir``). embedjax embeds each text once: mteb's run and embedjax's evaluator share
the embeddings, so their difference isolates the evaluation protocol; the sentence-transformers
route adds the encoder (JAX vs PyTorch) to the comparison.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

from embedjax import paths
from embedjax.config import run_main
from embedjax.io import atomic_write_json
from embedjax.provenance import Run

# mteb score name -> embedjax's name for the same metric (both as fractions).
METRICS = {**{f'ndcg_at_{k}': f'ndcg@{k}' for k in (1, 3, 5, 10, 100)},
           **{f'recall_at_{k}': f'recall@{k}' for k in (10, 100)},
           'mrr_at_10': 'mrr@10', 'map_at_10': 'map@10'}
ROUTES = ('embedjax_mteb', 'embedjax', 'sentence_transformers_mteb')


def dry_run(cfg) -> dict:
  """Checks the config's values and the model's files (no weights, no data, no mteb import)."""
  from embedjax.models.pretrained import load_spec
  if cfg.num_queries < 0 or cfg.num_other_docs < 0:
    raise ValueError(f'num_queries ({cfg.num_queries}) and num_other_docs ({cfg.num_other_docs}) '
                     'must be >= 0 (0 = all)')
  if cfg.rows_per_batch < 1 or cfg.batch_size < 1:
    raise ValueError(f'rows_per_batch ({cfg.rows_per_batch}) and batch_size ({cfg.batch_size}) '
                     'must be positive')
  if not cfg.tolerance > 0:
    raise ValueError(f'tolerance must be positive, got {cfg.tolerance}')
  out = out_path(cfg)
  if out.is_dir():
    raise IsADirectoryError(f'out {out} is a directory; give a .json file')
  spec = load_spec(cfg.model)[0]
  return {'out': out, 'width': spec.embedding_dim}


def out_path(cfg) -> Path:
  return (Path(cfg.out) if cfg.out else
          paths.repo_root() / 'results' / f'mteb_scifact{cfg.suffix}.json')


def compare(scores: dict[str, dict[str, float]], tolerance: float) -> dict:
  """Pairwise differences of the routes' scores ({route: {metric: value}}, same metrics)."""
  diffs = {}
  for i, a in enumerate(ROUTES):
    for b in ROUTES[i + 1:]:
      diffs[f'{a} - {b}'] = {m: scores[a][m] - scores[b][m] for m in scores[a]}
  worst = max(abs(v) for d in diffs.values() for v in d.values())
  return {'differences': diffs, 'max_abs_difference': worst, 'tolerance': tolerance,
          'agree': bool(worst <= tolerance)}


def main(cfg, flags=None) -> None:
  dry_run(cfg)
  data_dir = paths.shared_data_dir()
  if data_dir is None or not (data_dir / 'scifact').is_dir():
    raise FileNotFoundError('the shared data folder with scifact/ is needed (../shared/data or '
                            'EMBEDJAX_DATA_DIR)')
  cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else paths.repo_root() / 'runs' / 'cache'
  os.environ.setdefault('MTEB_CACHE', str(cache_dir / 'mteb'))  # read when mteb is imported
  local = importlib.import_module('experiments.mteb_local')
  from sentence_transformers import SentenceTransformer

  from embedjax.evals.mteb_encoder import MTEBEncoder
  from embedjax.models.pretrained import load_pretrained

  log = lambda s: print(s, flush=True)
  run = Run(config=cfg, store_config=False, inputs=[data_dir / 'scifact'],
            extra_packages=('mteb', 'sentence-transformers', 'torch')).start()
  task = local.LocalSciFact(data_dir, num_queries=cfg.num_queries,
                            num_other_docs=cfg.num_other_docs)
  data = task.retrieval_data()
  log(f'SciFact test: {data.summary()}')
  pretrained = load_pretrained(cfg.model)
  memo = local.MemoEncoder(pretrained, rows_per_batch=cfg.rows_per_batch)
  encoder = MTEBEncoder(memo, rows_per_batch=cfg.rows_per_batch)
  encoder.mteb_model_meta = local.model_meta(encoder.meta_fields())
  seconds, scores = {}, {}

  t = time.perf_counter()
  via_mteb = local.run_mteb(encoder, [task], batch_size=cfg.batch_size)['SciFact']
  seconds['embedjax_mteb'] = round(time.perf_counter() - t, 1)

  t = time.perf_counter()
  embedded = len(memo.rows)
  own = local.embedjax_scores(task, memo.encode)
  if len(memo.rows) != embedded:  # mteb and embedjax must have read the very same texts
    raise RuntimeError(f'embedjax embedded {len(memo.rows) - embedded} texts mteb did not see')
  seconds['embedjax'] = round(time.perf_counter() - t, 1)
  # embedjax reports cut-offs up to the corpus size only (a tiny subset has no @100).
  metrics = {m: name for m, name in METRICS.items() if name in own}
  scores['embedjax'] = {m: float(own[name]) for m, name in metrics.items()}
  scores['embedjax_mteb'] = {m: float(via_mteb.scores[m]) for m in metrics}
  log(f'  mteb + embedjax: ndcg@10 {scores["embedjax_mteb"]["ndcg_at_10"]:.5f}')
  log(f'  embedjax: ndcg@10 {scores["embedjax"]["ndcg_at_10"]:.5f}')

  t = time.perf_counter()
  st = SentenceTransformer(str(pretrained.source), device='cpu')
  via_st = local.run_mteb(st, [task], batch_size=cfg.batch_size)['SciFact']
  seconds['sentence_transformers_mteb'] = round(time.perf_counter() - t, 1)
  scores['sentence_transformers_mteb'] = {m: float(via_st.scores[m]) for m in metrics}
  log(f'  mteb + sentence-transformers: ndcg@10 '
      f'{scores["sentence_transformers_mteb"]["ndcg_at_10"]:.5f}')

  result = {'task': 'SciFact', 'split': 'test', 'model': cfg.model, 'counts': data.counts,
            # see docs/mteb.md: same queries, qrels and documents as mteb's hub copy, documents
            # 0.19% longer in all (rebuilt from the original abstracts)
            'data': 'shared data folder scifact/ (BEIR layout), read by experiments/mteb_local.py',
            'main_score': via_mteb.main_score, 'main': {r: scores[r]['ndcg_at_10'] for r in ROUTES},
            'scores': scores, **compare(scores, cfg.tolerance), 'seconds': seconds,
            'config': cfg.to_dict(), 'provenance': run.finish().provenance()}
  out = out_path(cfg)
  atomic_write_json(out, result)
  log(f'max |difference| {result["max_abs_difference"]:.2e} '
      f'({"within" if result["agree"] else "OUTSIDE"} {cfg.tolerance:g}); wrote {out}')


if __name__ == '__main__':
  sys.exit(run_main(main, 'configs/mteb_scifact.py'))
