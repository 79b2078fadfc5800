"""Compressed embedding tables under memory budgets: MovieLens-100k and synthetic Criteo-shaped CTR
benchmarks + 10M-id memory check.

Run (see configs/table_compression.py):
  python -m experiments.table_compression --config configs/table_compression.py
  python -m experiments.table_compression --config configs/table_compression.py:criteo
  python -m experiments.table_compression --config configs/table_compression.py:memory

Benchmark: for every (method, budget) the table is sized by ``embedjax.tables.methods.for_budget``
(infeasible pairs are recorded as such), trained with the configured CTR model for up to
``epochs`` epochs (best validation epoch kept), then *served* (finalized: int8 codes, pruned
rows, ...) and evaluated on the test split. Each (method, budget, seed) result is appended to
``<workdir>/runs.jsonl`` as soon as it exists; a rerun skips what is there, so an interrupted run
resumes. The summary (mean and std over seeds) goes to ``results/table_compression.{json,md,png}``.

Memory: each (method, budget) trains for a few steps on synthetic Zipf data with 10M ids x 64
dims in its own process, which reports its peak RSS; the full table is measured at smaller
vocabularies and extrapolated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from embedjax.config import run_main
from embedjax.process_memory import peak_rss_bytes as _peak_rss_bytes


def _tqdm(*a, **kw):
  from tqdm import tqdm
  return tqdm(*a, **kw)


def _load_done(path: Path) -> dict[tuple, dict]:
  done = {}
  if path.is_file():
    for line in path.read_text().splitlines():
      if line.strip():
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by an interruption: redo that run
        done[(r['method'], r['budget'], r['seed'])] = r
  return done


def _append(path: Path, record: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# One run


def _trainer(table):
  """(make_train_step, init_state) for ``table``: tables with training state of their own bring
  theirs (AdaEmbed's allocation), the rest use ``embedjax.tables.train``'s."""
  from embedjax.tables import adaembed
  from embedjax.tables import train as tr
  if table.name == 'adaembed':
    return adaembed.make_train_step, adaembed.init_state
  return tr.make_train_step, tr.init_state


def _run_default(table, model, cfg, train, valid, test, seed, cache):
  from embedjax.tables import train as tr
  make_step, init_fn = _trainer(table)
  if 'step' not in cache:  # one compile per (method, budget), shared by the seeds
    opt = tr.OPTIMIZERS[cfg.optimizer](cfg.lr)
    cache['step'] = make_step(table, model, opt)
    cache['predict'] = tr.make_predict(table, model)
  params, log = tr.fit(table, model, (train.ids, train.labels), (valid.ids, valid.labels),
                       epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
                       seed=seed, step_fn=cache['step'], predict=cache['predict'], init_fn=init_fn)
  served = tr.served_params(table, params)
  test_metrics = tr.evaluate_ctr(cache['predict'], served, test.ids, test.labels,
                                 cfg.eval_batch_size)
  return {'bytes': table.param_bytes(served['table']), 'test_auc': test_metrics['auc'],
          'test_logloss': test_metrics['logloss'], 'steps_per_s': log['steps_per_s'],
          'best_epoch': log['best_epoch'], 'valid_auc': max(h['valid_auc'] for h in log['history']),
          'config': dict(table.config)}


def _run_optembed(table, model, cfg, train, valid, test, seed, cache):
  """Supernet -> evolutionary width search under the budget -> retrain with fixed masks."""
  import jax
  import jax.numpy as jnp
  from embedjax.tables import metrics as ctr_metrics
  from embedjax.tables import optembed
  from embedjax.tables import train as tr
  budget = table.config['budget_bytes']
  vocab, dim = table.vocab_sizes, table.dim
  if 'masked' not in cache:
    cache['masked'] = jax.jit(lambda p, ids, keep, dmask: model.apply(
        p['model'], optembed.masked_lookup(p['table']['embedding'], ids, vocab, keep, dmask)))
  params, slog = _first_stage(table, model, cfg, train, valid, seed, cache,
                              cfg.optembed.supernet_epochs)
  keep, norms = optembed.learned_keep(params['table'], vocab)
  choices = table.config['dim_choices']

  def candidate(dims):
    return optembed.budget_keep(vocab, keep, norms, dims, budget)

  def score(dims):
    k = candidate(dims)
    if k is None:
      return -1.0
    keep_j, dmask_j = jnp.asarray(k, jnp.float32), jnp.asarray(optembed.dims_mask(dims, dim))
    logits = tr.predict_batched(lambda p, ids: cache['masked'](p, ids, keep_j, dmask_j),
                                params, valid.ids, cfg.eval_batch_size)
    return ctr_metrics.auc(valid.labels, logits)

  dims, search_auc, history = optembed.evolutionary_search(
      score, len(vocab), choices, seed=seed, population=cfg.optembed.population,
      generations=cfg.optembed.generations)
  final_keep = candidate(dims)
  if final_keep is None:
    raise RuntimeError('no feasible OptEmbed candidate')  # for_budget checked the overhead
  fixed = optembed.fixed(vocab, dim, keep=final_keep, dims=dims)
  out = _run_default(fixed, model, cfg, train, valid, test, seed, {})
  out['config'] = {**dict(table.config), 'dims': list(dims), 'learned_kept_rows': int(keep.sum()),
                   'budget_kept_rows': int(final_keep.sum()), 'rows': int(sum(vocab)),
                   'search_valid_auc': search_auc, 'search_candidates': len(history),
                   'supernet_valid_auc': max(h['valid_auc'] for h in slog['history']),
                   'stage_one_reused': slog['stage_one_reused']}
  return out


# Config fields of a two-stage method's table that only its second stage reads: its first stage
# (dedup's pre-training, PEP's and AutoDim's search, OptEmbed's supernet) is the same at every budget.
BUDGET_FIELDS = ('budget_bytes', 'max_blocks')


def _stage_one(table, seed: int, epochs: int, cache: dict, train_fn):
  """``train_fn()`` -> (params, log) of a method's first stage, trained once per (seed, epochs,
  table config but its budget) and then reused by the other budgets (``cache['stage_one']``, shared
  by one method's budgets): training is deterministic, so a reused stage is the one that would be
  trained again. Returns copies (the caller may change them) and the log with ``stage_one_reused``."""
  import jax
  import numpy as np
  from embedjax.provenance import config_hash
  store = cache.setdefault('stage_one', {})
  key = (seed, epochs, config_hash({k: v for k, v in table.config.items()
                                    if k not in BUDGET_FIELDS}))
  reused = key in store
  if not reused:
    store[key] = train_fn()
  params, log = store[key]
  return jax.tree_util.tree_map(np.array, params), {**log, 'stage_one_reused': reused}


def _first_stage(table, model, cfg, train, valid, seed, cache, epochs):
  """The stage-1 table trained for ``epochs`` (dedup's pre-training, PEP's and AutoDim's search,
  OptEmbed's supernet):
  (params of the best validation epoch, log); compiled once per (method, budget) in ``cache``,
  trained once per (method, seed) (:func:`_stage_one`)."""
  from embedjax.tables import train as tr

  def stage():
    if 'step' not in cache:  # compiled only where the stage is trained, not where reused
      cache['step'] = tr.make_train_step(table, model, tr.OPTIMIZERS[cfg.optimizer](cfg.lr))
      cache['predict'] = tr.make_predict(table, model)
    return tr.fit(table, model, (train.ids, train.labels), (valid.ids, valid.labels),
                  epochs=epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
                  seed=seed, step_fn=cache['step'], predict=cache['predict'])
  return _stage_one(table, seed, epochs, cache, stage)


def _run_dedup(table, model, cfg, train, valid, test, seed, cache):
  """Pre-train the full table -> deduplicate its blocks to the budget -> fine-tune the shared
  blocks (``embedjax.tables.dedup``). Infeasible when too few near-duplicate blocks exist."""
  from embedjax.tables import base, dedup
  params, plog = _first_stage(table, model, cfg, train, valid, seed, cache,
                              cfg.dedup.pretrain_epochs)
  rows, most = table.config['rows_per_block'], table.config['max_blocks']
  t0 = time.perf_counter()
  blocks, block_map, tolerance = dedup.deduplicate_to_budget(
      params['table']['embedding'], rows, most, tolerance=cfg.dedup.tolerance,
      attempts=cfg.dedup.attempts, similarity=cfg.dedup.similarity, seed=seed)
  dedup_s = time.perf_counter() - t0
  if len(blocks) > most:
    raise base.Infeasible(f'{len(block_map) - len(blocks)} near-duplicate blocks found at '
                          f'tolerance {tolerance:g}, {len(block_map) - most} needed for the budget')
  shared = dedup.shared(table.vocab_sizes, table.dim, blocks=blocks, block_map=block_map,
                        rows_per_block=rows)
  # The fine-tuning starts from the pre-trained model as well as the deduplicated blocks.
  out = _run_default(shared, _warm(model, params['model']), cfg, train, valid, test, seed, {})
  out['config'] = {**dict(table.config), **dict(shared.config), 'dedup_seconds': round(dedup_s, 2),
                   'tolerance_used': tolerance,
                   'pretrain_valid_auc': max(h['valid_auc'] for h in plog['history']),
                   'stage_one_reused': plog['stage_one_reused']}
  return out


def _run_pep(table, model, cfg, train, valid, test, seed, cache):
  """Threshold search -> the learned mask cut to the budget -> retrain from the same
  initialisation with the mask fixed (``embedjax.tables.pep``)."""
  from embedjax.tables import pep
  params, slog = _first_stage(table, model, cfg, train, valid, seed, cache, cfg.pep.search_epochs)
  values = pep.learned_values(params['table'])
  mask = pep.budget_mask(values, table.config['budget_bytes'])
  retrain = pep.pruned(table.vocab_sizes, table.dim, mask=mask,
                       init_std=table.config['init_std'])
  out = _run_default(retrain, model, cfg, train, valid, test, seed, {})  # same seed: same init
  out['config'] = {**dict(table.config), **dict(retrain.config),
                   'learned_kept_entries': int((values != 0).sum()),
                   'search_valid_auc': max(h['valid_auc'] for h in slog['history']),
                   'stage_one_reused': slog['stage_one_reused']}
  return out


def _run_autodim(table, model, cfg, train, valid, test, seed, cache):
  """Search the supernet -> widths by alpha within the budget -> retrain ``mixed_dim``."""
  import numpy as np
  from embedjax.tables import autodim, mixed_dim
  params, slog = _first_stage(table, model, cfg, train, valid, seed, cache,
                              cfg.autodim.search_epochs)
  alpha = np.asarray(params['table']['alpha'])
  dims = autodim.choose_dims(alpha, table.config['choices'], table.vocab_sizes, table.dim,
                             table.config['budget_bytes'])  # for_budget checked the smallest fits
  retrain = mixed_dim.mixed_dim(table.vocab_sizes, table.dim, dims=dims)
  out = _run_default(retrain, model, cfg, train, valid, test, seed, {})
  out['config'] = {**dict(table.config), 'dims': dims, 'alpha': alpha.round(4).tolist(),
                   'search_valid_auc': max(h['valid_auc'] for h in slog['history']),
                   'stage_one_reused': slog['stage_one_reused']}
  return out


def _warm(model, params):
  """``model`` whose init returns the given (pre-trained) parameters."""
  import dataclasses
  return dataclasses.replace(model, init=lambda key: params)


PIPELINES = {'optembed': _run_optembed, 'dedup': _run_dedup, 'pep': _run_pep,
             'autodim': _run_autodim}


# ----------------------------------------------------------------------------------------------
# Benchmark


def run_benchmark(cfg) -> None:
  import jax
  import numpy as np
  from embedjax.data import ctr
  from embedjax.paths import shared_data_dir
  from embedjax.provenance import Run
  from embedjax.tables import base, ctr_models, methods
  # the results file stores the config; each record appended by this call carries this run's
  # provenance (records resumed from runs.jsonl keep theirs)
  if cfg.dataset == 'movielens':
    data_dir = shared_data_dir()
    if data_dir is None:
      raise SystemExit('the shared data folder (../shared/data) is needed for MovieLens-100k')
    run = Run(config=cfg, seeds={'seeds': list(cfg.seeds), 'valid_seed': cfg.data.valid_seed},
              inputs=[data_dir / 'movielens-100k'], store_config=False,
              extra_packages=('ml_collections',)).start()
    train_all, test = ctr.read_movielens_ctr(data_dir / 'movielens-100k', cfg.data.split)
    train, valid = train_all.holdout(cfg.data.valid_fraction, cfg.data.valid_seed)
  elif cfg.dataset == 'criteo_synthetic':
    run = Run(config=cfg, seeds={'seeds': list(cfg.seeds), 'data_seed': cfg.criteo.seed},
              store_config=False, extra_packages=('ml_collections',)).start()
    train, valid, test = criteo_splits(cfg.criteo)
  else:
    raise SystemExit(f"dataset must be 'movielens' or 'criteo_synthetic', got {cfg.dataset!r}")
  vocab, dim = train.vocab_sizes, cfg.dim
  dry_run(cfg, vocab)
  full_bytes = base.full_table_bytes(vocab, dim)
  work = Path(cfg.workdir)
  runs_path = work / 'runs.jsonl'
  done = _load_done(runs_path)
  plan = [(m, b, s) for m in cfg.methods for b in cfg.budgets for s in cfg.seeds]
  plan += [(f'model:{name}', 1.0, 0) for name in cfg.model_sweep]
  print(f'{_data_name(cfg)}: train {train.summary()} | valid {valid.summary()} | '
        f'test {test.summary()} | full table {full_bytes} bytes', flush=True)
  bar = _tqdm(total=len(plan), initial=sum(k in done for k in plan), desc='runs')
  pairs = {}
  for key in plan:
    pairs.setdefault(key[:2], []).append(key)
  stage_one: dict = {}  # method -> its first stages, shared by its budgets (_stage_one)
  for (method, budget), keys in pairs.items():
    todo = [k for k in keys if k not in done]
    if not todo:
      continue
    model_name = cfg.model
    name = method
    if method.startswith('model:'):
      model_name, name = method.split(':', 1)[1], 'full'
    model = ctr_models.MODELS[model_name](len(vocab), dim)
    kw = dict(cfg.method_kw[name])
    if name == 'optembed':
      kw['alpha'] = cfg.optembed.alpha
    if name == 'mgqe':  # frequency tiers from the training split's id counts
      kw['counts'] = np.bincount((train.ids + base.field_offsets(vocab)).ravel(),
                                 minlength=sum(vocab))
    try:
      table = methods.for_budget(name, vocab, dim, int(budget * full_bytes), **kw)
    except base.Infeasible as e:
      for k in todo:
        rec = {'method': method, 'budget': budget, 'seed': k[2], 'feasible': False, 'reason': str(e),
               'provenance': run.provenance()}
        _append(runs_path, rec)
        done[k] = rec
        bar.update(1)
      continue
    if method not in stage_one:  # a new method: the previous one's first stages are let go
      stage_one.clear()
      stage_one[method] = {}
    cache: dict = {'stage_one': stage_one[method]}
    for k in todo:
      bar.set_postfix_str(f'{method} {budget:g} seed {k[2]}')
      twin = _same_table_run(done, method, name, k[2], table)
      if twin is not None:
        # The table this budget gets was already trained with this seed at a larger budget (a
        # capped size: DHE's width, TT's rank, int8 at >= its bytes): training is deterministic
        # on one machine (identical records in results/table_compression.json; across CPUs runs
        # differ by up to ~1e-3 AUC), so that run is this cell's result. Its provenance stays
        # that of the run that made the numbers.
        rec = {**twin, 'budget': budget, 'budget_bytes': int(budget * full_bytes),
               'same_run_as_budget': twin['budget']}
        _append(runs_path, rec)
        done[k] = rec
        bar.update(1)
        continue
      t0 = time.perf_counter()
      try:
        out = PIPELINES.get(name, _run_default)(table, model, cfg, train, valid, test, k[2], cache)
      except base.Infeasible as e:  # found out while running (dedup: too few duplicate blocks)
        rec = {'method': method, 'budget': budget, 'seed': k[2], 'feasible': False,
               'reason': str(e), 'seconds': time.perf_counter() - t0, 'provenance': run.provenance()}
      except jax.errors.JaxRuntimeError as e:
        if 'RESOURCE_EXHAUSTED' not in str(e):
          raise
        # A cell this machine cannot hold is a result of the method at this size here, not a
        # reason to lose the study's remaining cells.
        rec = {'method': method, 'budget': budget, 'seed': k[2], 'feasible': False,
               'reason': 'out of memory on this machine: ' + str(e).strip().splitlines()[0],
               'seconds': time.perf_counter() - t0, 'provenance': run.provenance()}
      else:
        rec = {'method': method, 'budget': budget, 'seed': k[2], 'feasible': True,
               'model': model_name, 'budget_bytes': int(budget * full_bytes), **out,
               'seconds': time.perf_counter() - t0, 'provenance': run.provenance()}
      _append(runs_path, rec)
      done[k] = rec
      bar.update(1)
  bar.close()
  write_benchmark_results(cfg, [done[k] for k in plan], full_bytes, train, valid, test,
                          run.finish().provenance())


def _same_table_run(done: dict, method: str, name: str, seed: int, table) -> dict | None:
  """The feasible record of ``method`` with this seed whose table had exactly ``table``'s config
  (made at another budget), or None. Only for single-stage methods, whose record's config is the
  table's own; the multi-stage ones (PIPELINES) record more and hold their budget in it."""
  if name in PIPELINES or method.startswith('model:'):
    return None
  config = json.loads(json.dumps(dict(table.config)))  # tuples as lists, as the records hold them
  for (m, _, s), r in done.items():
    if (m == method and s == seed and r.get('feasible') and 'same_run_as_budget' not in r
        and r.get('config') == config):
      return r
  return None


def _summarise(records: list[dict]) -> list[dict]:
  import numpy as np
  rows = {}
  for r in records:
    rows.setdefault((r['method'], r['budget']), []).append(r)
  out = []
  for (method, budget), all_seeds in rows.items():
    rs = [r for r in all_seeds if r['feasible']]  # a seed can be infeasible alone (dedup)
    if not rs:
      out.append({'method': method, 'budget': budget, 'feasible': False,
                  'reason': all_seeds[0]['reason']})
      continue
    def stat(key):
      v = np.asarray([r[key] for r in rs], np.float64)
      return float(v.mean()), float(v.std())
    auc_m, auc_s = stat('test_auc')
    ll_m, ll_s = stat('test_logloss')
    out.append({'method': method, 'budget': budget, 'feasible': True, 'model': rs[0]['model'],
                'seeds': [r['seed'] for r in rs], 'bytes': int(np.mean([r['bytes'] for r in rs])),
                'bytes_per_seed': [r['bytes'] for r in rs], 'test_auc_mean': auc_m, 'test_auc_std': auc_s,
                'test_logloss_mean': ll_m, 'test_logloss_std': ll_s,
                'steps_per_s_mean': stat('steps_per_s')[0], 'best_epochs': [r['best_epoch'] for r in rs],
                'config': rs[0]['config']})
    same = {r.get('same_run_as_budget') for r in rs}
    if len(same) == 1 and None not in same:  # every seed is the run of an identical larger table
      out[-1]['same_run_as_budget'] = same.pop()
  return out


def _short_config(method: str, config: dict) -> str:
  keys = {'hashing': ('rows',), 'qr': ('radices',), 'mixed_dim': ('dims',), 'tt': ('rank',),
          'dhe': ('num_hashes', 'hidden', 'layers'), 'unified': ('rows', 'probes'),
          'optembed': ('dims', 'learned_kept_rows', 'budget_kept_rows'), 'int8': ('bits',), 'lpt': ('bits',),
          'robe': ('size', 'block'), 'dedup': ('rows_per_block', 'distinct_blocks', 'tolerance_used'),
          'pep': ('learned_kept_entries', 'kept_entries'), 'adaembed': ('rows', 'period'),
          'mgqe': ('subspaces', 'tier_codes'), 'autodim': ('dims',)}
  parts = []
  for k in keys.get(method, ()):
    v = config.get(k)
    if isinstance(v, list) and len(v) > 8:
      v = f'sum {sum(v)}'
    parts.append(f'{k}={v}')
  return ', '.join(parts).replace(' ', '') if parts else ''


def write_benchmark_results(cfg, records, full_bytes, train, valid, test, prov) -> None:
  from embedjax.io import atomic_write_json, atomic_write_text
  summary = _summarise(records)
  main = [s for s in summary if not s['method'].startswith('model:')]
  sweep = [s for s in summary if s['method'].startswith('model:')]
  out = Path(cfg.results)
  result = {
      'provenance': prov,
      'config': cfg.to_dict(),
      'data': {'name': 'movielens-100k' if cfg.dataset == 'movielens' else cfg.dataset,
               'split': cfg.data.split if cfg.dataset == 'movielens' else 'random 80/10/10',
               'train': train.counts, 'valid': valid.counts, 'test': test.counts,
               'fields': list(train.field_names), 'vocab_sizes': list(train.vocab_sizes)},
      'full_table_bytes': full_bytes,
      'summary': summary,
      'runs': records,
  }
  atomic_write_json(out.with_suffix('.json'), result)
  atomic_write_text(out.with_suffix('.md'), _benchmark_markdown(cfg, main, sweep, full_bytes, result))
  _pareto_plot(main, full_bytes, out.with_suffix('.png'),
               f'test AUC ({_data_name(cfg)}, {cfg.model.upper()})')
  print(f'wrote {out}.json, .md, .png')


def _benchmark_markdown(cfg, main, sweep, full_bytes, result) -> str:
  prov = result['provenance']
  budgets = list(cfg.budgets)
  criteo = cfg.get('dataset', 'movielens') == 'criteo_synthetic'
  if criteo:
    data_line = (f"Data: synthetic Criteo-shaped clicks (`embedjax.data.criteo_synthetic`, seed "
                 f"{cfg.criteo.seed}: the label model is stated there), 26 fields, "
                 f"{sum(result['data']['vocab_sizes']):,} ids; random split train "
                 f"{result['data']['train']['rows']} / valid {result['data']['valid']['rows']} / "
                 f"test {result['data']['test']['rows']} rows. ")
  else:
    data_line = (f"Data: MovieLens-100k split `{cfg.data.split}` (rating >= 4 positive), fields "
                 f"{', '.join(result['data']['fields'])}; train {result['data']['train']['rows']} / valid "
                 f"{result['data']['valid']['rows']} (held out from u1.base) / test "
                 f"{result['data']['test']['rows']} rows. ")
  lines = [
      '# Compressed embedding tables under memory budgets '
      f"({'synthetic Criteo-shaped' if criteo else 'MovieLens-100k'} CTR)",
      '',
      f"Command: `{prov['command']}`  ",
      f"Date: {prov['date']}, commit {prov['git_commit']}, jax {prov['versions'].get('jax')}, "
      f"machine: {prov['machine']['cpu']} ({prov['machine']['cores']} cores, {prov['machine']['jax_backend']})",
      '',
      data_line +
      f"Model {cfg.model.upper()}, dim {cfg.dim}, {cfg.optimizer} lr {cfg.lr}, batch {cfg.batch_size}, "
      f"up to {cfg.epochs} epochs (best validation epoch kept), seeds {list(cfg.seeds)}. "
      f"Full table: {full_bytes:,} bytes ({sum(result['data']['vocab_sizes'])} rows x {cfg.dim} x 4).",
      '',
      '## Test AUC (mean ± std over seeds) by budget',
      '',
      '| method | ' + ' | '.join(f'{b:g}x' for b in budgets) + ' |',
      '|---|' + '---|' * len(budgets),
  ]
  by = {(s['method'], s['budget']): s for s in main}
  for m in cfg.methods:
    cells = []
    for b in budgets:
      s = by.get((m, b))
      if s is None:
        cells.append('')
      elif not s['feasible']:
        cells.append('—')
      else:
        same = s.get('same_run_as_budget')
        cells.append(f"{s['test_auc_mean']:.4f} ± {s['test_auc_std']:.4f}"
                     + (f' (= {same:g}x)' if same is not None else ''))
    lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  lines += ['', '— = the method cannot be sized to that budget, or its run did not fit in this '
            'machine\'s memory (the JSON gives the reason).'
            + (' (= Bx): the table sized for this budget is the one of budget B (a capped size), so '
               'its runs are those of B, not repeated.'
               if any('same_run_as_budget' in s for s in main) else ''), '',
            '## All feasible runs', '',
            '| method | budget | bytes (served) | % of full | test AUC | test log-loss | train steps/s | best epochs | configuration |',
            '|---|---|---|---|---|---|---|---|---|']
  for s in sorted((s for s in main if s['feasible']), key=lambda s: (-s['budget'], -s['test_auc_mean'])):
    lines.append(f"| {s['method']} | {s['budget']:g} | {s['bytes']:,} | {100 * s['bytes'] / full_bytes:.2f} | "
                 f"{s['test_auc_mean']:.4f} ± {s['test_auc_std']:.4f} | {s['test_logloss_mean']:.4f} ± "
                 f"{s['test_logloss_std']:.4f} | {s['steps_per_s_mean']:.0f} | {s['best_epochs']} | "
                 f"{_short_config(s['method'], s['config'])} |")
  if sweep:
    lines += ['', '## CTR models on the full table (seed 0)', '',
              '| model | test AUC | test log-loss | train steps/s |', '|---|---|---|---|']
    for s in sweep:
      lines.append(f"| {s['method'].split(':', 1)[1]} | {s['test_auc_mean']:.4f} | {s['test_logloss_mean']:.4f} | "
                   f"{s['steps_per_s_mean']:.0f} |")
  lines += ['', 'Bytes are the exact served bytes (`Table.param_bytes` of the finalized table): int8/LPT count '
            'codes (bit-packed below 8 bits) plus a float16 scale per row; OptEmbed counts kept rows at their '
            'field width plus a bitmap, a running count per 64 rows and per-field starts; DHE counts its MLP; '
            'hash seeds are configuration and not counted. Steps/s were measured on a shared 2-core CPU '
            'with other jobs running: compare them within one run only.', '',
            '![Pareto plot](table_compression.png)', '']
  return '\n'.join(lines)


def pareto_figure(main, full_bytes, ylabel='test AUC (MovieLens-100k u1, FM)'):
  """Test AUC (mean ± std over seeds) vs served bytes of every feasible (method, budget), each
  method's budgets joined by a line, with the Pareto front over all of them (a Figure)."""
  from embedjax import plots
  feasible = [s for s in main if s['feasible']]
  points = [{'name': f"{s['method']} {s['budget']:g}x", 'x': s['bytes'], 'y': s['test_auc_mean'],
             'yerr': s['test_auc_std'], 'group': s['method']} for s in feasible]
  return plots.pareto_plot(points, connect=True, annotate='none', log_base=10,
                           reference_x=full_bytes, xlabel='served table bytes (log)',
                           ylabel=ylabel,
                           title='Embedding-table compression: AUC vs bytes', legend_columns=2,
                           figsize=(8, 5.5))


def criteo_splits(c):
  """(train, valid, test) of the synthetic Criteo-shaped data: ``c.test_fraction`` of the rows
  for test, then ``c.valid_fraction`` of the rest for validation (seeded by ``c.seed``)."""
  from embedjax.data import criteo_synthetic
  data, _ = criteo_synthetic.generate(c.rows, seed=c.seed, total_ids=c.total_ids)
  rest, test = data.holdout(c.test_fraction, c.seed)
  train, valid = rest.holdout(c.valid_fraction, c.seed + 1)
  return train, valid, test


def _data_name(cfg) -> str:
  if cfg.dataset == 'movielens':
    return f'MovieLens-100k {cfg.data.split}'
  return f'synthetic Criteo-shaped ({cfg.criteo.rows:,} rows, seed {cfg.criteo.seed})'


def _pareto_plot(main, full_bytes, path: Path, ylabel: str) -> None:
  from embedjax import plots
  plots.save_png(pareto_figure(main, full_bytes, ylabel), path, dpi=130)


# ----------------------------------------------------------------------------------------------
# Memory check


def _memory_child(cfg) -> None:
  """One (method, fraction) or ('full', ids): trains a few steps, prints one JSON line."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from embedjax.data import ctr
  from embedjax.tables import base, ctr_models, methods
  name, value = cfg.memory.only.split(':')
  vocab = tuple(cfg.memory.vocab_sizes)
  dim = cfg.memory.dim
  if name == 'full':
    vocab = probe_vocab(vocab, int(value))
    budget = base.full_table_bytes(vocab, dim)
  else:
    budget = int(float(value) * base.full_table_bytes(vocab, dim))
  rss0 = _peak_rss_bytes()
  data, _ = ctr.synthetic_ctr(cfg.memory.rows, vocab, seed=0)
  try:
    # the full-table probes take no method settings (memory.method_kw lists the compressed ones)
    kw = {} if name == 'full' else dict(cfg.memory.method_kw[name])
    table = methods.for_budget(name, vocab, dim, budget, **kw)
  except base.Infeasible as e:
    print(json.dumps({'method': name, 'value': value, 'infeasible': str(e)}), flush=True)
    return
  model = ctr_models.fm(len(vocab), dim)
  opt = optax.adam(1e-3)
  make_step, init_fn = _trainer(table)
  step = make_step(table, model, opt)
  state = init_fn(table, model, opt, jax.random.key(0))
  rng = np.random.default_rng(0)
  key = jax.random.key(1)
  bs = cfg.memory.batch_size
  losses, t0 = [], None
  for i in range(cfg.memory.steps):
    rows = rng.integers(0, len(data), bs)
    state, aux = step(state, jnp.asarray(data.ids[rows]), jnp.asarray(data.labels[rows], jnp.float32), key)
    losses.append(float(aux['bce']))
    if i == 0:
      t0 = time.perf_counter()
  elapsed = time.perf_counter() - t0
  served = table.finalize(state.params['table'])
  state_bytes = base.tree_bytes(state.params) + base.tree_bytes(state.opt_state)
  print(json.dumps({'method': name, 'value': value, 'vocab': int(sum(vocab)), 'dim': dim,
                    'served_bytes': table.param_bytes(served), 'train_state_bytes': state_bytes,
                    'peak_rss_bytes': _peak_rss_bytes(), 'rss_after_data_bytes': rss0,
                    'steps_per_s': (cfg.memory.steps - 1) / elapsed, 'first_bce': losses[0],
                    'last_bce': float(np.mean(losses[-5:])), 'config': dict(table.config)}), flush=True)


def run_memory(cfg) -> None:
  from embedjax.io import atomic_write_json, atomic_write_text
  from embedjax.provenance import Run
  from embedjax.tables import base
  # synthetic CTR data (seed 0) in child processes: no data files read; the file stores config
  run = Run(config=cfg.memory, seeds={'synthetic_ctr': 0}, store_config=False).start()
  work = Path(cfg.workdir)
  path = work / 'memory.jsonl'
  done = {}
  if path.is_file():
    for line in path.read_text().splitlines():
      if line.strip():
        r = json.loads(line)
        if 'error' not in r:  # a failed child is retried on the next run
          done[(r['method'], r['value'])] = r
  jobs = [(m, f'{b:g}') for m in cfg.memory.methods for b in cfg.memory.budgets]
  jobs += [('full', str(n)) for n in cfg.memory.full_probe_ids]
  for name, value in _tqdm(jobs, desc='memory'):
    if (name, value) in done:
      continue
    cmd = [sys.executable, '-m', 'experiments.table_compression', f'--config={cfg_path()}:memory',
           f'--config.memory.only={name}:{value}']
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      rec = {'method': name, 'value': value, 'error': proc.stderr[-2000:]}
    else:
      rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec['provenance'] = run.provenance()  # this record's run (resumed ones keep theirs)
    _append(path, rec)
    done[(name, value)] = rec
  records = [done[j] for j in jobs]
  vocab = tuple(cfg.memory.vocab_sizes)
  full_bytes = base.full_table_bytes(vocab, cfg.memory.dim)
  probes = [r for r in records if r['method'] == 'full' and 'peak_rss_bytes' in r]
  extrapolated = None
  if len(probes) >= 2:
    import numpy as np
    x = np.asarray([r['vocab'] for r in probes], np.float64)
    y = np.asarray([r['peak_rss_bytes'] for r in probes], np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    extrapolated = {'bytes_per_id': slope, 'intercept_bytes': intercept,
                    'peak_rss_at_full_vocab_bytes': slope * sum(vocab) + intercept}
  n = sum(vocab)
  analytic = {'params_bytes': full_bytes, 'adam_state_bytes': 2 * full_bytes, 'dense_gradient_bytes': full_bytes,
              'total_bytes': 4 * full_bytes}
  result = {'provenance': run.finish().provenance(), 'config': cfg.memory.to_dict(), 'total_ids': n,
            'full_table': {'analytic': analytic, 'measured_extrapolation': extrapolated},
            'records': records}
  out = Path(cfg.results)
  atomic_write_json(out.with_name(out.name + '_memory.json'), result)
  atomic_write_text(out.with_name(out.name + '_memory.md'), _memory_markdown(cfg, result))
  print(f'wrote {out}_memory.json, .md')


def _memory_markdown(cfg, result) -> str:
  gib = 2 ** 30
  a = result['full_table']['analytic']
  ex = result['full_table']['measured_extrapolation']
  prov = result['provenance']
  lines = [
      f"# Memory check: {result['total_ids']:,} ids x {cfg.memory.dim} dims (synthetic Zipf CTR data)", '',
      f"Command: `{prov['command']}`  ",
      f"Date: {prov['date']}, commit {prov['git_commit']}, machine: {prov['machine']['cpu']} "
      f"({prov['machine']['cores']} cores), 24 GiB RAM shared with other jobs.", '',
      f"Each row trained {cfg.memory.steps} Adam steps (batch {cfg.memory.batch_size}, FM) on "
      f"{cfg.memory.rows:,} synthetic rows in its own process; peak RSS includes the Python/JAX runtime "
      f"and the data.", '',
      '| method | budget | served bytes | train state (params + Adam) | peak RSS | steps/s | BCE first -> last 5 |',
      '|---|---|---|---|---|---|---|',
  ]
  for r in result['records']:
    if 'error' in r or 'infeasible' in r:
      what = 'infeasible: ' + r['infeasible'] if 'infeasible' in r else 'error (see the JSON)'
      lines.append(f"| {r['method']} | {float(r['value']):g}x | {what} | | | | |")
      continue
    label = f"{r['value']} ids" if r['method'] == 'full' else f"{float(r['value']):g}x"
    lines.append(f"| {r['method']} | {label} | {r['served_bytes'] / 2**20:,.1f} MiB | "
                 f"{r['train_state_bytes'] / 2**20:,.1f} MiB | {r['peak_rss_bytes'] / gib:.2f} GiB | "
                 f"{r['steps_per_s']:.2f} | {r['first_bce']:.3f} -> {r['last_bce']:.3f} |")
  lines += ['', '## The full table at 10M ids',
            f"Analytic: params {a['params_bytes'] / gib:.2f} GiB (10M x 64 x 4 bytes) + Adam moments "
            f"{a['adam_state_bytes'] / gib:.2f} GiB + a dense gradient of the table {a['dense_gradient_bytes'] / gib:.2f} "
            f"GiB (JAX's gather gradient is a dense scatter-add) = {a['total_bytes'] / gib:.2f} GiB before "
            f"update temporaries."]
  if ex:
    lines.append(f"Measured at smaller vocabularies and extrapolated linearly: {ex['bytes_per_id']:.0f} bytes per id, "
                 f"so {ex['peak_rss_at_full_vocab_bytes'] / gib:.1f} GiB peak RSS at {result['total_ids']:,} ids.")
  lines.append('')
  return '\n'.join(lines)


def cfg_path() -> str:
  return 'configs/table_compression.py'


def probe_vocab(vocab: tuple[int, ...], ids: int) -> tuple[int, ...]:
  """The memory check's field vocabularies scaled down to about ``ids`` ids in all."""
  return tuple(max(1, round(v * ids / sum(vocab))) for v in vocab)


def dry_run(cfg, vocab=None) -> dict:
  """Sizes every (method, budget) table of the run (no data, no arrays: tables are specs until
  initialised). ``vocab``: the field vocabularies (the benchmark's come from its data; the memory
  mode's from the config). Returns {(method, budget): table or the Infeasible reason}."""
  from embedjax.tables import base, ctr_models, methods
  memory = cfg.mode == 'memory'
  names = cfg.memory.methods if memory else cfg.methods
  kw_block = cfg.memory.method_kw if memory else cfg.method_kw
  unknown = sorted(set(names) - set(methods.BUDGETED))
  if unknown:
    raise ValueError(f'methods: unknown {unknown}; choose from {sorted(methods.BUDGETED)}')
  # Entries of families not run are kept (so that `--config.methods=...` can pick a subset); a
  # key that is no family is a typo.
  typos = sorted(set(kw_block.keys()) - set(methods.BUDGETED))
  missing = sorted(set(names) - set(kw_block.keys()))
  if typos or missing:
    raise ValueError(f'method_kw: one entry per method run, each a family; not a family: {typos}, '
                     f'missing: {missing}')
  from embedjax.tables.train import OPTIMIZERS
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f'optimizer {cfg.optimizer!r}: not one of {sorted(OPTIMIZERS)}')
  for model in (cfg.model, *cfg.model_sweep):
    if model not in ctr_models.MODELS:
      raise ValueError(f'model {model!r}: not one of {sorted(ctr_models.MODELS)}')
  vocab = tuple(cfg.memory.vocab_sizes) if memory else tuple(vocab)
  dim = cfg.memory.dim if memory else cfg.dim
  full = base.full_table_bytes(vocab, dim)
  out = {}
  for name in names:
    kw = dict(kw_block[name])
    if name == 'optembed':
      kw['alpha'] = cfg.optembed.alpha
    for budget in (cfg.memory.budgets if memory else cfg.budgets):
      try:
        out[name, budget] = methods.for_budget(name, vocab, dim, int(budget * full), **kw)
      except base.Infeasible as e:
        out[name, budget] = str(e)
  if memory:  # the full-table probes, at their scaled-down vocabularies
    for ids in cfg.memory.full_probe_ids:
      probe = probe_vocab(vocab, ids)
      out['full', ids] = methods.for_budget('full', probe, dim, base.full_table_bytes(probe, dim))
  return out


def main(cfg, flags=None) -> None:
  if cfg.memory.only:
    _memory_child(cfg)
  elif cfg.mode == 'memory':
    run_memory(cfg)
  else:
    run_benchmark(cfg)


if __name__ == '__main__':
  sys.exit(run_main(main, cfg_path()))
