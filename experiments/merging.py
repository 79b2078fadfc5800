r"""The merging study: one record per (cell, seed); the summary is computed from the records.

python -m experiments.merging --cells specialist_scifact,uniform_soup --seeds 0,1
python -m experiments.merging --summarize

Cells (configs/merging.py): the pretrained model; a specialist per task (fine-tuned from the same
start; SciFact and STS-B are the recipes study's runs, shared workdirs, so a finished run is
resumed, not repeated); the recipes study's multi-task model; and the merges of the four
specialists of the same seed: uniform and greedy soups, task arithmetic, TIES, DARE (linear and
TIES), Self Positioning, and SLERP for each pair. Greedy soup, the scaling of task arithmetic /
TIES / DARE, and Self Positioning's coefficients are chosen on a validation set carved from the
train splits (never the test splits). Every model is evaluated on the four test tasks through the
eval runner. Records: ``results/merging/runs/CELL/seedN.json``; ``summary.json`` (each task's
score per cell, means over seeds, and the goal check), ``merging.md`` and ``merging.png`` are
recomputed from them, also in CI.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from embedjax import merging, paths
from embedjax.config import ConfigError, config_overrides, load_config
from embedjax.io import atomic_write_json, atomic_write_text
from embedjax.provenance import Run
from experiments import cells

CONFIG = 'configs/merging.py'
# task of the study -> (eval-runner task, its main metric)
TEST_TASKS = {'scifact': ('scifact', 'ndcg@10'), 'stsb': ('stsb', 'spearman'),
              'mrpc': ('mrpc', 'ap'), 'sick': ('sickr', 'spearman')}


def results_dir() -> Path:
  return paths.repo_root() / 'results' / 'merging'


def _configs():
  return cells.configs_module(CONFIG)


def record_path(cell: str, seed: int, root: Path | None = None) -> Path:
  return cells.record_path(root or results_dir(), cell, seed)


def cell_config(cell: str, seed: int = 0, overrides=()):
  return cells.cell_config(CONFIG, cell, seed, overrides)


def config_is_current(cell: str, seed: int, root: Path | None = None) -> bool:
  return cells.is_current(record_path(cell, seed, root), cell_config(cell, seed)[1])


def expected_runs(seeds=None) -> list[tuple[str, int]]:
  configs = _configs()
  seeds = configs.SEEDS if seeds is None else seeds
  return [(c, s) for c in configs.CELLS for s in ((0,) if c == 'pretrained' else seeds)]


def dry_run(cfg) -> dict:
  configs = _configs()
  for config, _ in (*configs.SPECIALISTS.values(), configs.MULTI_TASK):
    load_config(str(paths.repo_root() / config), [f'--config.seed={cfg.seed}'])
  if not all(0 < s for s in cfg.scalings) or not 0 < cfg.dare_density <= 1:
    raise ConfigError('scalings must be > 0 and dare_density in (0, 1]')
  return {'cell': cfg.cell}


# --- models -----------------------------------------------------------------------------------


def trained(config: str, workdir_prefix: str, seed: int, progress: bool):
  """A fine-tuned model: its run trained in ``workdir_prefix/seedN`` (or resumed there, which
  returns at once when it finished), loaded from its export."""
  from embedjax.models.pretrained import load_pretrained
  from embedjax.train.loop import dry_build, train
  tcfg = load_config(str(paths.repo_root() / config), [f'--config.seed={seed}'])
  dry_build(tcfg)
  summary = train(tcfg, paths.repo_root() / workdir_prefix / f'seed{seed}', progress=progress)
  return load_pretrained(summary['export']), summary['inputs']


# --- validation (carved from train) -----------------------------------------------------------


def validation_data(v, data_dir: Path) -> dict:
  """Subsampled train data of each task: SciFact claims with their positives among candidate
  abstracts; STS-B / SICK scored pairs; MRPC labelled pairs."""
  from embedjax.data import readers
  rng = np.random.default_rng(v.seed)
  train = readers.read_beir(data_dir / 'scifact', 'train')
  judged = [q for q in train.query_ids if any(r > 0 for r in train.qrels.get(q, {}).values())]
  queries = [judged[int(i)] for i in sorted(rng.permutation(len(judged))[:v.scifact_queries])]
  positives = sorted({d for q in queries for d, r in train.qrels[q].items() if r > 0})
  others = [d for d in train.corpus_ids if d not in set(positives)]
  extra = [others[int(i)] for i in sorted(rng.permutation(len(others))[:max(
      v.scifact_candidates - len(positives), 0)])]
  text = dict(zip(train.corpus_ids, train.corpus_texts))
  qtext = dict(zip(train.query_ids, train.query_texts))
  corpus = positives + extra
  scifact = readers.RetrievalData(
      corpus_ids=corpus, corpus_texts=[text[d] for d in corpus], query_ids=queries,
      query_texts=[qtext[q] for q in queries],
      qrels={q: {d: r for d, r in train.qrels[q].items() if r > 0} for q in queries})

  def pairs(data):
    idx = sorted(rng.permutation(len(data.sentences1))[:v.pairs])
    return readers.PairData(sentences1=[data.sentences1[i] for i in idx],
                            sentences2=[data.sentences2[i] for i in idx],
                            scores=np.asarray(data.scores)[idx])
  return {'scifact': scifact, 'stsb': pairs(readers.read_stsb(data_dir / 'stsb', 'train')),
          'mrpc': pairs(readers.read_mrpc(data_dir / 'mrpc', 'train')),
          'sick': pairs(readers.read_sick(data_dir / 'sick', 'train'))}


def validation_score(model, params, val: dict) -> dict:
  """Each task's validation metric of ``model`` with ``params``, and their mean ('mean')."""
  from embedjax.encoding import encode
  from embedjax.evals import pair_classification, sts
  from embedjax.evals.tasks import encode_unique
  from experiments.recipes import _retrieval_scores
  enc = lambda texts: encode(model, list(texts), params=params, progress=False)
  out = {}
  s = val['scifact']
  out['scifact'] = _retrieval_scores(enc(s.query_texts), enc(s.corpus_texts), s)['ndcg@10']
  for task in ('stsb', 'sick', 'mrpc'):
    p = val[task]
    emb = encode_unique(enc, list(p.sentences1) + list(p.sentences2))
    n = len(p.sentences1)
    if task == 'mrpc':
      out[task] = pair_classification.pair_classification_scores(
          emb[:n], emb[n:], p.scores.astype(int))['ap']
    else:
      out[task] = sts.sts_scores(emb[:n], emb[n:], p.scores)['spearman']
  out['mean'] = float(np.mean([out[t] for t in TEST_TASKS]))
  return {k: float(v) for k, v in out.items()}


def probe_loss_fn(model, val: dict, sp):
  """Self Positioning's probe: (loss(params, batch), batches). A batch holds ``batch_size`` pairs
  of each task: InfoNCE on SciFact (claim, positive) and MRPC paraphrases, CoSENT on STS-B and
  SICK scores; the loss is their sum."""
  from embedjax.losses.contrastive import info_nce
  from embedjax.losses.multi_positive import cosent_loss
  from embedjax.models.embedder import embed
  tok, spec = model.tokenizer, model.spec
  rng = np.random.default_rng(0)
  s = val['scifact']
  text = dict(zip(s.corpus_ids, s.corpus_texts))
  sci = [(qt, text[next(iter(s.qrels[q]))]) for q, qt in zip(s.query_ids, s.query_texts)]
  mrpc = [(a, b) for a, b, y in zip(val['mrpc'].sentences1, val['mrpc'].sentences2,
                                    val['mrpc'].scores) if y > 0]
  bs = sp.batch_size

  def ids(texts, length):
    return tok.pad([x[:length] for x in tok.encode(list(texts))], length)

  def draw(items, k):
    return [items[int(i)] for i in rng.choice(len(items), k, replace=False)]

  batches = []
  for _ in range(8):
    batch = {}
    for name, pairs, length in (('scifact', sci, 256), ('mrpc', mrpc, 64)):
      chosen = draw(pairs, bs)
      batch[name] = (ids([a for a, _ in chosen], 64), ids([b for _, b in chosen], length))
    for name in ('stsb', 'sick'):
      p = val[name]
      idx = rng.choice(len(p.sentences1), bs, replace=False)
      batch[name] = (ids([p.sentences1[i] for i in idx], 64), ids([p.sentences2[i] for i in idx], 64),
                     jnp.asarray(np.asarray(p.scores)[idx], jnp.float32))
    batches.append(batch)

  def emb(params, t):
    return embed(params, spec, t['input_ids'], t['attention_mask'])

  def loss(params, batch):
    total = 0.0
    for name in ('scifact', 'mrpc'):
      a, b = batch[name]
      total = total + info_nce(emb(params, a), emb(params, b), scale=sp.scale)[0]
    for name in ('stsb', 'sick'):
      a, b, gold = batch[name]
      sim = jnp.sum(emb(params, a) * emb(params, b), -1)
      total = total + cosent_loss(sim, gold)
    return total
  return loss, batches


def merge(cell: str, cfg, base, specialists: dict, score) -> tuple:
  """(merged params, what was chosen) of a merge cell; ``score(params) -> float`` is the mean
  validation metric (higher is better)."""
  names = list(specialists)
  models = [specialists[t] for t in names]
  if cell == 'uniform_soup':
    return merging.uniform_soup(models), {}
  if cell == 'greedy_soup':
    soup, kept = merging.greedy_soup(models, score)
    return soup, {'kept': [names[i] for i in kept]}
  if cell.startswith('slerp_'):
    a, b = cell[len('slerp_'):].split('_')
    return merging.slerp(specialists[a], specialists[b], cfg.slerp_t), {'t': cfg.slerp_t}
  key = jax.random.key(cfg.seed)
  build = {
      'task_arithmetic': lambda s: merging.task_arithmetic(base, models, scaling=s),
      'ties': lambda s: merging.ties(base, models, density=cfg.ties_density, scaling=s),
      'dare_linear': lambda s: merging.dare(base, models, density=cfg.dare_density, key=key,
                                            scaling=s),
      'dare_ties': lambda s: merging.dare(base, models, density=cfg.dare_density, key=key,
                                          merge='ties', scaling=s),
  }
  if cell in build:
    tried = {float(s): score(build[cell](s)) for s in cfg.scalings}
    best = max(tried, key=lambda s: (tried[s], -s))
    return build[cell](best), {'scaling': best, 'validation_by_scaling': tried}
  raise ConfigError(f'unknown merge cell {cell!r}')


def run_cell(cell: str, seed: int, *, data_dir: Path, overrides=(), results: Path | None = None,
             progress: bool = True, force: bool = False) -> dict | None:
  from embedjax.evals.tasks import run_task, task_inputs
  from embedjax.encoding import encode
  from embedjax.models.pretrained import load_pretrained
  configs = _configs()
  cfg, chash = cell_config(cell, seed, overrides)
  out = record_path(cell, seed, results)
  if not force and cells.is_current(out, chash):
    print(f'== {cell} seed {seed}: current ({out})', flush=True)
    return None
  print(f'== {cell} seed {seed}', flush=True)
  run = Run(config=cfg, seeds=seed).start()
  base = load_pretrained('all-MiniLM-L6-v2')
  record = {'cell': cell, 'seed': seed, 'config_hash': chash}
  params = base.params
  if cell.startswith('specialist_') or cell == 'multi_task':
    config, prefix = (configs.MULTI_TASK if cell == 'multi_task'
                      else configs.SPECIALISTS[cell[len('specialist_'):]])
    model, hashed = trained(config, prefix, seed, progress)
    params = model.params
    run.add_inputs(hashed=hashed)
  elif cell != 'pretrained':
    specialists = {}
    for task, (config, prefix) in configs.SPECIALISTS.items():
      model, hashed = trained(config, prefix, seed, progress)
      specialists[task] = model.params
      run.add_inputs(hashed=hashed)
    val = validation_data(cfg.validation, data_dir)
    score = lambda p: validation_score(base, p, val)['mean']
    if cell == 'self_positioning':
      sp = cfg.self_positioning
      loss, batches = probe_loss_fn(base, val, sp)
      params, coefficients, history = merging.self_positioning(
          base.params, [specialists[t] for t in configs.TASKS], loss, batches, steps=sp.steps,
          learning_rate=sp.learning_rate)
      record['selection'] = {'coefficients': dict(zip(configs.TASKS, coefficients.tolist())),
                             'probe_loss_first_last': [history[0], history[-1]]}
    else:
      params, record['selection'] = merge(cell, cfg, base.params, specialists, score)
    record['validation'] = validation_score(base, params, val)
  record['test'] = {}
  for task, (name, metric) in TEST_TASKS.items():
    r = run_task(name, lambda t: encode(base, list(t), params=params, progress=False), data_dir)
    record['test'][task] = float(r[metric])
  run.add_inputs(*task_inputs([n for n, _ in TEST_TASKS.values()], data_dir))
  record.update(run.finish().provenance())
  record['config_hash'] = chash
  atomic_write_json(out, record)
  print('   ' + '  '.join(f'{t} {v:.4f}' for t, v in record['test'].items()) + f' -> {out}',
        flush=True)
  return record


# --- summary ----------------------------------------------------------------------------------


def load_records(root: Path | None = None) -> dict[str, dict[int, dict]]:
  return cells.load_records(root or results_dir())


GOAL_POINTS = 0.01  # "within 1 point": one hundredth of nDCG@10, Spearman or AP


def summarize(records: dict[str, dict[int, dict]]) -> dict:
  """summary.json: {task: {cell: mean test score over seeds}}, their sample spread (``std``, None
  for one seed), the seeds per cell, the goal check of every merged or jointly trained cell
  (``goal``) and what is missing.

  The goal: within GOAL_POINTS of each specialist on its own task and ahead of the pretrained
  model on every task. A cell of seed s is set against the specialists of seed s (its merge
  merges them; the multi-task model shares their seed), and the gaps are averaged over its seeds;
  the pretrained model has one record (nothing random)."""
  out: dict = {t: {} for t in TEST_TASKS}
  out['std'] = {t: {} for t in TEST_TASKS}
  out['n_seeds'] = {}
  for cell, by_seed in records.items():
    recs = [by_seed[s] for s in sorted(by_seed)]
    out['n_seeds'][cell] = len(recs)
    for task in TEST_TASKS:
      values = [r['test'][task] for r in recs]
      out[task][cell] = statistics.fmean(values)
      out['std'][task][cell] = statistics.stdev(values) if len(values) > 1 else None
  out['goal'] = _goal(records)
  out['goal_met_by'] = [c for c, g in out['goal'].items() if g['meets_goal']]
  out['missing'] = [f'{c}/seed{s}' for c, s in expected_runs() if s not in records.get(c, {})]
  return out


def _goal(records: dict[str, dict[int, dict]]) -> dict:
  """Per merged (or multi-task) cell: its score minus each task's specialist of the same seed
  (averaged over the cell's seeds) and minus the pretrained model, and whether it meets the goal.
  A cell enters once the pretrained model and, for each of its seeds, every specialist have
  records."""
  specialists = {t: records.get(f'specialist_{t}', {}) for t in TEST_TASKS}
  if 'pretrained' not in records:
    return {}
  pretrained = records['pretrained'][min(records['pretrained'])]['test']
  out = {}
  for cell in _configs().CELLS:
    if cell == 'pretrained' or cell.startswith('specialist_') or cell not in records:
      continue
    seeds = sorted(records[cell])
    if not all(s in specialists[t] for t in TEST_TASKS for s in seeds):
      continue
    gap = {t: statistics.fmean(records[cell][s]['test'][t] - specialists[t][s]['test'][t]
                               for s in seeds) for t in TEST_TASKS}
    over = {t: statistics.fmean(records[cell][s]['test'][t] for s in seeds) - pretrained[t]
            for t in TEST_TASKS}
    within = all(g >= -GOAL_POINTS for g in gap.values())
    ahead = all(o > 0 for o in over.values())
    out[cell] = {'seeds': seeds, 'minus_specialist': gap, 'minus_pretrained': over,
                 'within_1_point_of_specialists': within, 'ahead_of_pretrained': ahead,
                 'meets_goal': within and ahead}
  return out


def markdown(summary: dict) -> str:
  order = [c for c in _configs().CELLS if c in summary['n_seeds']]
  lines = ['# Merging all-MiniLM-L6-v2 specialists (test scores, mean over seeds)', '',
           'Written by `python -m experiments.merging` from results/merging/runs/. SciFact nDCG@10, '
           'STS-B and SICK-R Spearman, MRPC AP.', '',
           '| cell | SciFact | STS-B | MRPC | SICK-R | seeds |', '|---|---|---|---|---|---|']
  for c in order:
    lines.append(f'| {c} | ' + ' | '.join(f'{summary[t][c]:.4f}' for t in TEST_TASKS) +
                 f" | {summary['n_seeds'][c]} |")
  if summary['goal']:
    lines += ['', 'Against the goal (within 1 point of each specialist on its own task, ahead of '
              'the pretrained model on all): score minus the task\'s specialist of the same '
              'seed, in points (x100), averaged over the cell\'s seeds, and whether the goal '
              'holds.', '',
              '| cell | SciFact | STS-B | MRPC | SICK-R | ahead of pretrained on all | goal |',
              '|---|---|---|---|---|---|---|']
    for c, g in summary['goal'].items():
      lines.append(f'| {c} | ' + ' | '.join(f"{100 * g['minus_specialist'][t]:+.2f}"
                                            for t in TEST_TASKS) +
                   f" | {'yes' if g['ahead_of_pretrained'] else 'no'} | "
                   f"{'met' if g['meets_goal'] else 'not met'} |")
    met = summary['goal_met_by']
    lines += ['', f"Goal met by: {', '.join(met)}." if met else 'Goal met by no cell.']
  if summary['missing']:
    lines += ['', f"Not yet run: {', '.join(summary['missing'])}."]
  return '\n'.join(lines) + '\n'


def plot(summary: dict, path: Path) -> None:
  """Heat map of each cell's test score minus the pretrained model's, per task (in points)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  order = [c for c in _configs().CELLS if c in summary['n_seeds'] and c != 'pretrained']
  delta = np.array([[100 * (summary[t][c] - summary[t]['pretrained']) for t in TEST_TASKS]
                    for c in order])
  fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(order) + 1.5))
  lim = max(float(np.abs(delta).max()), 0.5)
  im = ax.imshow(delta, cmap='RdBu', vmin=-lim, vmax=lim, aspect='auto')
  for (i, j), v in np.ndenumerate(delta):
    ax.text(j, i, f'{v:+.1f}', ha='center', va='center', fontsize=7)
  ax.set_xticks(range(len(TEST_TASKS)), ['SciFact nDCG@10', 'STS-B', 'MRPC AP', 'SICK-R'])
  ax.set_yticks(range(len(order)), order)
  fig.colorbar(im, ax=ax, label='minus pretrained (points)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_summary(root: Path | None = None) -> dict:
  root = root or results_dir()
  summary = summarize(load_records(root))
  atomic_write_json(root / 'summary.json', summary)
  atomic_write_text(root / 'merging.md', markdown(summary))
  if 'pretrained' in summary['n_seeds'] and len(summary['n_seeds']) > 1:
    plot(summary, root / 'merging.png')
  return summary


# --- command line -----------------------------------------------------------------------------


def _flags(fv) -> None:
  cells.define_flags(fv, config_rel=CONFIG, results_dir=results_dir(),
                     seeds_help='seeds (specialists, multi-task, merges)')


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
      raise ConfigError('the merging study reads ../shared/data (or $EMBEDJAX_DATA_DIR)')
    for cell, seed, force in selected:
      run_cell(cell, seed, data_dir=data_dir, overrides=config_overrides(sys.argv[1:]),
               results=results, force=force)
      write_summary(results)
  print(markdown(write_summary(results)))
  return 0


if __name__ == '__main__':
  sys.exit(cells.run_study(main, f'{CONFIG}:uniform_soup', _flags))
