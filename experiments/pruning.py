r"""The pruning study: each cell a run with its own record; the summary is computed from the records.

python -m experiments.pruning --cells magnitude_50,gaprune_50   # run cells (a current record is skipped)
python -m experiments.pruning --cells gaprune_50_recovered --seeds 0,1
python -m experiments.pruning --list                            # what is done
python -m experiments.pruning --summarize                       # summary only

Cells are the configs of configs/pruning.py. A cell prunes the packaged all-MiniLM-L6-v2, and a
``*_recovered`` cell then fine-tunes it with its zeros kept (in ``runs/pruning/CELL/seedN``: a rerun
continues from the last checkpoint). One-shot cells run once (seed 0: the only randomness, which
GAPrune training pairs are drawn, is fixed by ``gaprune.seed``); recovered cells run at every seed.
The model is evaluated on SciFact test nDCG@10 and STS-B test Spearman, and the record goes to
``results/pruning/runs/CELL/seedN.json``: config and hash, what was pruned (sparsity of the
layers' matrices, parameter count, config of a structured model), the test metrics and the
provenance of the call. Structured cells also time the encoding of ``speed.texts`` SciFact corpus
texts by the pruned and the dense model, alternating, in the same process (median of
``speed.repeats``): the speedup is measured side by side, on whatever machine ran the cell (named in
the record). The summary (``results/pruning/summary.json``, ``pruning.md``, ``pruning.png``) is
recomputed from every record by :func:`summarize`; tests/test_result_summaries.py checks it in CI.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from embedjax import paths, pruning
from embedjax.config import ConfigError, load_config
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run
from experiments import cells

CONFIG = 'configs/pruning.py'


def results_dir() -> Path:
  return paths.repo_root() / 'results' / 'pruning'


def record_path(cell: str, seed: int, root: Path | None = None) -> Path:
  return cells.record_path(root or results_dir(), cell, seed)


def _cells() -> list[str]:
  return list(cells.configs_module(CONFIG).CELLS)


def cell_config(cell: str, seed: int = 0, overrides=()):
  return cells.cell_config(CONFIG, cell, seed, overrides)


def config_is_current(cell: str, seed: int, root: Path | None = None) -> bool:
  """Whether the record of (cell, seed) exists and was made with the config the study runs now."""
  return cells.is_current(record_path(cell, seed, root), cell_config(cell, seed)[1])


def dry_run(cfg) -> dict:
  """Checks a cell's config without loading a model: the method, its ratios, and (recovered
  cells) that the fine-tuning config loads with the overrides the study adds."""
  if cfg.method not in ('none', 'magnitude', 'gaprune', 'structured'):
    raise ConfigError(f'method {cfg.method!r}: one of none, magnitude, gaprune, structured')
  for name in ('sparsity', 'head_ratio', 'neuron_ratio'):
    if not 0.0 <= cfg[name] < 1.0:
      raise ConfigError(f'{name} {cfg[name]} is outside [0, 1)')
  out = {'cell': cfg.cell, 'method': cfg.method}
  if cfg.recovery:
    tcfg = load_config(str(paths.repo_root() / cfg.recovery_config),
                       ['--config.optim.keep_zeros=True', f'--config.seed={cfg.seed}'])
    out['recovery_steps'] = tcfg.steps
  return out


def expected_runs(seeds=None) -> list[tuple[str, int]]:
  """Every (cell, seed) of the study: recovered cells at each seed, the others at seed 0."""
  configs = cells.configs_module(CONFIG)
  seeds = configs.SEEDS if seeds is None else seeds
  return [(cell, seed) for cell, (_, fields) in configs.CELLS.items()
          for seed in (seeds if fields.get('recovery') else (0,))]


# --- GAPrune's gradient statistics ------------------------------------------------------------


def training_pairs(name: str, data_dir: Path) -> list[tuple[str, str]]:
  """(query, positive) training pairs: SciFact train (claim, cited abstract), or STS-B train pairs
  scored >= 4 of 5 (paraphrases). Training splits only: the test splits evaluate."""
  from embedjax.data import readers
  if name == 'scifact':
    train = readers.read_beir(data_dir / 'scifact', 'train')
    doc = dict(zip(train.corpus_ids, train.corpus_texts))
    query = dict(zip(train.query_ids, train.query_texts))
    return [(query[q], doc[d]) for q in train.query_ids
            for d, r in sorted(train.qrels.get(q, {}).items()) if r > 0]
  if name == 'stsb':
    data = readers.read_stsb(data_dir / 'stsb', 'train')
    return [(a, b) for a, b, s in zip(data.sentences1, data.sentences2, data.scores) if s >= 4.0]
  raise ConfigError(f'gaprune data {name!r}: one of scifact, stsb')


def gradient_stats(model, pairs: list[tuple[str, str]], g) -> tuple:
  """(mean gradient, Fisher diagonal) of in-batch InfoNCE over ``g.batches`` batches of
  ``g.batch_size`` pairs drawn without replacement (seed ``g.seed``), padded to fixed lengths so
  that one program serves every batch."""
  from embedjax.losses.contrastive import info_nce
  from embedjax.models.embedder import embed

  need = g.batches * g.batch_size
  if len(pairs) < need:
    raise ConfigError(f'gaprune: {need} pairs needed, the data has {len(pairs)}')
  order = np.random.default_rng(g.seed).permutation(len(pairs))[:need]
  tok, spec = model.tokenizer, model.spec

  def ids(texts, length):
    return tok.pad([x[:length] for x in tok.encode(texts)], length)

  batches = []
  for b in range(g.batches):
    chunk = [pairs[i] for i in order[b * g.batch_size:(b + 1) * g.batch_size]]
    q, d = ids([p[0] for p in chunk], g.query_len), ids([p[1] for p in chunk], g.doc_len)
    batches.append((q['input_ids'], q['attention_mask'], d['input_ids'], d['attention_mask']))

  def loss(params, batch):
    qi, qm, di, dm = batch
    return info_nce(embed(params, spec, qi, qm), embed(params, spec, di, dm), scale=g.scale)[0]
  return pruning.gradient_statistics(loss, model.params, batches)


def gaprune_importance(model, g, data_dir: Path, cache: dict | None = None):
  """GAPrune's DAI of every weight of ``model``; ``cache`` keeps each data side's statistics
  between cells of one process (keyed by the side and the gaprune fields)."""
  cache = {} if cache is None else cache

  def side(name):
    key = json.dumps({**g.to_dict(), 'name': name}, sort_keys=True)
    if key not in cache:
      cache[key] = gradient_stats(model, training_pairs(name, data_dir), g)
    return cache[key]
  dom_grad, dom_fisher = side(g.domain)
  gen_grad, gen_fisher = side(g.general)
  return pruning.gaprune_scores(model.params, dom_fisher, gen_fisher, dom_grad, gen_grad,
                                beta=g.beta)


# --- one cell ---------------------------------------------------------------------------------


def prune(model, cfg, data_dir: Path, cache: dict | None = None):
  """(pruned model, facts about the pruning) for a cell's config; ``model`` is a ``Pretrained``."""
  facts = {}
  if cfg.method == 'none':
    return model, facts
  if cfg.method in ('magnitude', 'gaprune'):
    scores = (jax.tree_util.tree_map(jnp.abs, model.params) if cfg.method == 'magnitude'
              else gaprune_importance(model, cfg.gaprune, data_dir, cache))
    masks = pruning.unstructured_masks(model.params, scores, cfg.sparsity, cfg.scope)
    params = pruning.apply_masks(model.params, masks)
    facts['layer_matrix_sparsity'] = pruning.sparsity_of(params)
    return dataclasses.replace(model, params=params), facts
  if cfg.method == 'structured':
    params, backbone = pruning.structured_prune(model.params, model.spec.backbone,
                                                head_ratio=cfg.head_ratio,
                                                neuron_ratio=cfg.neuron_ratio)
    spec = dataclasses.replace(model.spec, bert=backbone)
    # head_size: the width each head has (attention_head_size is 0 where it is hidden / heads)
    facts['backbone'] = {k: getattr(backbone, k) for k in (
        'num_hidden_layers', 'num_attention_heads', 'attention_head_size', 'head_size',
        'intermediate_size')}
    return dataclasses.replace(model, params=params, spec=spec), facts
  raise ConfigError(f'method {cfg.method!r}: one of none, magnitude, gaprune, structured')


def encode_speed(pruned, dense, texts: list[str], repeats: int) -> dict:
  """Seconds to encode ``texts`` with each model, alternating, after one warm-up each (compiles):
  medians over ``repeats`` and the dense / pruned ratio."""
  from embedjax.encoding import encode
  for m in (pruned, dense):
    encode(m, texts, progress=False)
  times = {'pruned': [], 'dense': []}
  for _ in range(repeats):
    for name, m in (('pruned', pruned), ('dense', dense)):
      t0 = time.perf_counter()
      encode(m, texts, progress=False)
      times[name].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  return {'texts': len(texts), 'repeats': repeats, 'seconds': times,
          'median_pruned_s': med['pruned'], 'median_dense_s': med['dense'],
          'speedup': med['dense'] / med['pruned']}


def recover(model, cfg, workdir: Path, progress: bool = True) -> tuple:
  """Fine-tunes a pruned model with ``cfg.recovery_config`` (from the exported pruned model, its
  zeros kept) in ``workdir`` (resuming). Returns (the exported fine-tuned model, run facts)."""
  from embedjax.models.pretrained import export_sentence_transformers, load_pretrained
  from embedjax.train.loop import dry_build, train
  start = workdir / 'pruned'
  if not start.exists():
    export_sentence_transformers(start, model)
  tcfg = load_config(str(paths.repo_root() / cfg.recovery_config),
                     [f'--config.model.init=pretrained:{start}', '--config.optim.keep_zeros=True',
                      f'--config.seed={cfg.seed}'])
  dry_build(tcfg)
  summary = train(tcfg, workdir / 'train', progress=progress)
  tuned = load_pretrained(summary['export'])
  facts = {k: summary[k] for k in ('steps_done', 'steps', 'seconds', 'started_at', 'finished_at')}
  facts['layer_matrix_sparsity_after'] = pruning.sparsity_of(tuned.params)
  return tuned, facts, summary['inputs']


def run_cell(cell: str, seed: int = 0, *, data_dir: Path, runs_dir: Path | None = None,
             overrides=(), results: Path | None = None, progress: bool = True,
             force: bool = False, cache: dict | None = None) -> dict | None:
  """Prunes (and recovers), evaluates and records one cell at one seed; None when its record is
  current. ``cache``: GAPrune statistics shared by the cells of one call."""
  from embedjax.models.pretrained import load_pretrained
  from experiments.recipes import evaluate

  cfg, chash = cell_config(cell, seed, overrides)
  out = record_path(cell, seed, results)
  if not force and cells.is_current(out, chash):
    print(f'== {cell} seed {seed}: current ({out})', flush=True)
    return None
  print(f'== {cell} seed {seed}', flush=True)
  run = Run(config=cfg, seeds=seed).start()
  dense = load_pretrained(cfg.model)
  model, facts = prune(dense, cfg, data_dir, cache)
  if cfg.recovery:
    runs_dir = runs_dir or paths.repo_root() / 'runs' / 'pruning'
    model, facts['recovery'], hashed = recover(model, cfg, runs_dir / cell / f'seed{seed}',
                                                progress)
    run.add_inputs(hashed=hashed)
  record = {'cell': cell, 'seed': seed, 'method': cfg.method, 'recovered': bool(cfg.recovery),
            'config_hash': chash, 'pruning': facts,
            'params': sum(int(x.size) for x in jax.tree_util.tree_leaves(model.params)),
            'dense_params': sum(int(x.size) for x in jax.tree_util.tree_leaves(dense.params))}
  t0 = time.perf_counter()
  record['test'] = {'scifact': evaluate(model, 'scifact', data_dir, progress=progress),
                    'stsb': evaluate(model, 'stsb', data_dir, progress=progress)}
  record['test']['seconds'] = round(time.perf_counter() - t0, 1)
  inputs = [data_dir / 'scifact', data_dir / 'stsb']
  if cfg.method == 'structured':
    from embedjax.data import readers
    corpus = readers.read_beir(data_dir / 'scifact', 'test').corpus_texts[:cfg.speed.texts]
    record['encode_speed'] = encode_speed(model, dense, list(corpus), cfg.speed.repeats)
  run.add_inputs(*inputs)
  record.update(run.finish().provenance())
  record['config_hash'] = chash
  atomic_write_json(out, record)
  print(f"   scifact nDCG@10 {record['test']['scifact']['ndcg@10']:.4f}  "
        f"stsb spearman {record['test']['stsb']['spearman']:.4f} -> {out}", flush=True)
  return record


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path | None = None) -> dict[str, dict[int, dict]]:
  return cells.load_records(root or results_dir())


def summarize(records: dict[str, dict[int, dict]]) -> dict:
  """summary.json: per method (``+recovery`` for recovered cells) and sparsity, SciFact nDCG@10 and
  STS-B Spearman (means over a cell's seeds, with their number), and the structured cells' sizes
  and measured encode speedups."""
  out: dict = {'scores': {}, 'structured': {}, 'cells': sorted(records), 'missing': []}
  for cell, by_seed in records.items():
    recs = [by_seed[s] for s in sorted(by_seed)]
    rec = recs[0]
    scores = {'scifact_ndcg@10': statistics.fmean(r['test']['scifact']['ndcg@10'] for r in recs),
              'stsb_spearman': statistics.fmean(r['test']['stsb']['spearman'] for r in recs),
              'n_seeds': len(recs)}
    if rec['method'] == 'structured':
      out['structured'][cell] = {**scores, 'params': rec['params'],
                                 'params_fraction': rec['params'] / rec['dense_params'],
                                 'backbone': rec['pruning']['backbone'],
                                 'encode_speedup': rec['encode_speed']['speedup']}
    else:
      key = '0' if rec['method'] == 'none' else str(int(round(
          rec['config']['sparsity'] * 100)))
      method = rec['method'] + ('+recovery' if rec.get('recovered') else '')
      out['scores'].setdefault(method, {})[key] = scores
  out['missing'] = [f'{c}/seed{s}' for c, s in expected_runs() if s not in records.get(c, {})]
  return out


def markdown(summary: dict) -> str:
  lines = ['# Pruning all-MiniLM-L6-v2', '',
           'Sparsity: the fraction of the transformer layers\' matrix weights removed (embeddings, '
           'norms and biases kept), by one global ranking; `+recovery`: then fine-tuned on SciFact '
           'train with the zeros kept (mean over seeds). SciFact test nDCG@10 / STS-B test '
           'Spearman. Written by `python -m experiments.pruning` from results/pruning/runs/.', '',
           '| method | sparsity % | SciFact nDCG@10 | STS-B Spearman | seeds |', '|---|---|---|---|---|']
  for method, per in sorted(summary['scores'].items()):
    for key, s in sorted(per.items(), key=lambda kv: int(kv[0])):
      lines.append(f"| {method} | {key} | {s['scifact_ndcg@10']:.4f} | {s['stsb_spearman']:.4f} | "
                   f"{s['n_seeds']} |")
  if summary['structured']:
    lines += ['', '| structured cell | heads x width | FFN | params | SciFact nDCG@10 | '
              'STS-B Spearman | encode speedup |', '|---|---|---|---|---|---|---|']
    for cell, s in sorted(summary['structured'].items()):
      b = s['backbone']
      # '?': a record made before head_size was recorded (its attention_head_size may be 0)
      lines.append(f"| {cell} | {b['num_attention_heads']} x {b.get('head_size', '?')} | "
                   f"{b['intermediate_size']} | {s['params_fraction']:.2f} | "
                   f"{s['scifact_ndcg@10']:.4f} | {s['stsb_spearman']:.4f} | "
                   f"{s['encode_speedup']:.2f}x |")
  if summary['missing']:
    lines += ['', f"Not yet run: {', '.join(summary['missing'])}."]
  return '\n'.join(lines) + '\n'


def plot(summary: dict, path: Path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, metric, title in zip(axes, ('scifact_ndcg@10', 'stsb_spearman'),
                               ('SciFact nDCG@10', 'STS-B Spearman')):
    dense = summary['scores'].get('none', {}).get('0')
    for method, per in sorted(summary['scores'].items()):
      if method == 'none':
        continue
      pts = sorted((int(k), v[metric]) for k, v in per.items())
      if dense:
        pts = [(0, dense[metric])] + pts
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=method)
    ax.set_xlabel('layer matrix weights removed (%)')
    ax.set_title(title)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_summary(root: Path | None = None) -> dict:
  root = root or results_dir()
  summary = summarize(load_records(root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'pruning.md', markdown(summary))
  if summary['scores']:
    plot(summary, root / 'pruning.png')
  return summary


# --- command line -----------------------------------------------------------------------------


def _flags(fv) -> None:
  cells.define_flags(fv, config_rel=CONFIG, results_dir=results_dir(),
                     seeds_help='seeds of each recovered cell',
                     runs_dir=paths.repo_root() / 'runs' / 'pruning')


def main(cfg, fv) -> int:
  del cfg  # each cell loads its own config, with the same overrides
  from embedjax.config import config_overrides
  from experiments.recipes import _restart_workdir
  results = Path(fv['results-dir'].value)
  selected = cells.selected_runs(fv, _cells(), expected_runs)
  if fv['list'].value:
    cells.list_runs(expected_runs(), lambda c, s: record_path(c, s, results))
    return 0
  if not fv['summarize'].value:
    data_dir = paths.shared_data_dir()
    if data_dir is None:
      raise ConfigError('the pruning study reads ../shared/data (or $EMBEDJAX_DATA_DIR)')
    cache: dict = {}
    for cell, seed, force in selected:
      if force:
        _restart_workdir(Path(fv['runs-dir'].value) / cell / f'seed{seed}')
      run_cell(cell, seed, data_dir=data_dir, runs_dir=Path(fv['runs-dir'].value),
               overrides=config_overrides(sys.argv[1:]), results=results, force=force,
               cache=cache)
      write_summary(results)
  print(markdown(write_summary(results)))
  return 0


if __name__ == '__main__':
  sys.exit(cells.run_study(main, f'{CONFIG}:dense', _flags))
