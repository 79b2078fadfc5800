r"""Peak training memory at 10M ids x 64 dims of the table families that train a full-size table.

python -m experiments.table_memory_pipelines --config configs/table_memory_pipelines.py

Each (method, budget) runs in a child process of its own: the synthetic Zipf data of the memory
check (``embedjax.data.ctr.synthetic_ctr``, seed 0), then the method's whole pipeline as the
table study runs it (``experiments.table_compression``: dedup's pre-training, deduplication and
fine-tuning; PEP's search, cut and retraining; AutoDim's supernet and retraining; OptEmbed's
supernet, search and retraining; MGQE, LPT and the full table in one stage), each stage one
epoch of ``steps`` batches. The child prints one JSON line with its peak RSS (the Python/JAX
runtime and the data included) and what it served; the parent appends it to
``workdir/runs.jsonl`` (a rerun skips what is there; a failed child, e.g. killed for memory, is
recorded with its exit status and tried again on the next run) and writes
``results/table_compression_memory_pipelines.{json,md}`` from the lines. With
``--config.run_missing=False`` it runs nothing and only writes those files from the lines there.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from embedjax.config import run_main
from embedjax.process_memory import peak_rss_bytes

CONFIG = 'configs/table_memory_pipelines.py'


def jobs(cfg) -> list[tuple[str, float]]:
  """(method, budget) of every job: the full table at its own size, the others at each budget."""
  return [(m, 1.0) if m == 'full' else (m, b) for m in cfg.methods
          for b in ((1.0,) if m == 'full' else cfg.budgets)]


def dry_run(cfg) -> dict:
  """Sizes every job's table (no data, no arrays): {(method, budget): table or the Infeasible
  reason}. MGQE is sized without its id counts (they move ids between its tiers, not its size)."""
  from embedjax.tables import base, methods
  unknown = sorted(set(cfg.methods) - set(methods.BUDGETED))
  if unknown:
    raise ValueError(f'methods: unknown {unknown}; choose from {sorted(methods.BUDGETED)}')
  vocab = tuple(cfg.vocab_sizes)
  full = base.full_table_bytes(vocab, cfg.dim)
  out = {}
  for name, budget in jobs(cfg):
    kw = dict(cfg.method_kw[name])
    if name == 'optembed':
      kw['alpha'] = cfg.optembed.alpha
    try:
      out[name, budget] = methods.for_budget(name, vocab, cfg.dim, int(budget * full), **kw)
    except base.Infeasible as e:
      out[name, budget] = str(e)
  return out


def _splits(cfg):
  """(train, valid, test): ``steps`` batches of rows, then ``eval_rows`` twice."""
  import numpy as np

  from embedjax.data import ctr
  data, _ = ctr.synthetic_ctr(cfg.rows, tuple(cfg.vocab_sizes), seed=0)
  n, e = cfg.steps * cfg.batch_size, cfg.eval_rows
  if n + 2 * e > len(data):
    raise SystemExit(f'rows: {cfg.rows} rows cannot hold {cfg.steps} steps of {cfg.batch_size} '
                     f'plus 2 x eval_rows {e}')
  return (data.take(np.arange(n)), data.take(np.arange(n, n + e)),
          data.take(np.arange(n + e, n + 2 * e)))


def child(cfg) -> dict:
  """One job (``cfg.only`` = 'method:budget') in this process: its record."""
  import numpy as np

  from embedjax.tables import base, ctr_models, methods
  study = _study()
  name, budget = cfg.only.split(':')
  vocab, dim = tuple(cfg.vocab_sizes), cfg.dim
  full_bytes = base.full_table_bytes(vocab, dim)
  record = {'method': name, 'budget': float(budget), 'vocab': sum(vocab), 'dim': dim,
            'budget_bytes': int(float(budget) * full_bytes)}
  train, valid, test = _splits(cfg)
  record['rss_after_data_bytes'] = peak_rss_bytes()
  kw = dict(cfg.method_kw[name])
  if name == 'optembed':
    kw['alpha'] = cfg.optembed.alpha
  if name == 'mgqe':  # frequency tiers from the training rows' id counts, as the study sets them
    kw['counts'] = np.bincount((train.ids + base.field_offsets(vocab)).ravel(),
                               minlength=sum(vocab))
  try:
    table = methods.for_budget(name, vocab, dim, record['budget_bytes'], **kw)
  except base.Infeasible as e:
    return {**record, 'feasible': False, 'reason': str(e)}
  model = ctr_models.MODELS['fm'](len(vocab), dim)
  t0 = time.perf_counter()
  try:
    out = study.PIPELINES.get(name, study._run_default)(table, model, cfg, train, valid, test, 0,
                                                       {})
  except base.Infeasible as e:  # found while running (dedup: too few duplicate blocks)
    return {**record, 'feasible': False, 'reason': str(e),
            'peak_rss_bytes': peak_rss_bytes(), 'seconds': time.perf_counter() - t0}
  return {**record, 'feasible': True, 'served_bytes': out['bytes'],
          'peak_rss_bytes': peak_rss_bytes(), 'seconds': round(time.perf_counter() - t0, 1),
          'steps_per_s_last_stage': out['steps_per_s'], 'config': out['config']}


def _study():
  from experiments import table_compression
  return table_compression


def read_runs(path: Path) -> tuple[dict, dict]:
  """({(method, budget): its made line}, {(method, budget): its last failed line}) of a runs file
  (none when it is missing). A failed job is tried again; its last failure is reported until
  then."""
  done, failed = {}, {}
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        r = json.loads(line)
      except json.JSONDecodeError:  # empty, or cut by an interruption: that job runs again
        continue
      (failed if 'error' in r else done)[r['method'], r['budget']] = r
  return done, failed


def job_records(cfg, done: dict, failed: dict) -> list[dict]:
  """The results file's records: each job's made line, else its last failure, in job order."""
  return [done.get(j) or failed[j] for j in jobs(cfg) if j in done or j in failed]


def run(cfg) -> dict:
  from tqdm import tqdm

  from embedjax.io import atomic_write_json, atomic_write_text
  from embedjax.provenance import Run
  run_ = Run(config=cfg, seeds={'synthetic_ctr': 0, 'training': 0},
             extra_packages=('ml_collections',)).start()
  path = Path(cfg.workdir) / 'runs.jsonl'
  done, failed = read_runs(path)
  todo = [j for j in jobs(cfg) if j not in done] if cfg.run_missing else []
  for name, budget in tqdm(todo, desc='memory (pipelines)'):
    cmd = [sys.executable, '-m', 'experiments.table_memory_pipelines', f'--config={CONFIG}',
           f'--config.only={name}:{budget:g}', *_overrides(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      why = (f'exit status {proc.returncode}' if proc.returncode > 0 else
             f'killed by {signal.Signals(-proc.returncode).name}' +
             (' (as the kernel kills a process out of memory)' if proc.returncode == -9 else ''))
      rec = {'method': name, 'budget': budget, 'error': why, 'stderr_tail': proc.stderr[-2000:]}
    else:
      rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec['provenance'] = run_.provenance()
    _study()._append(path, rec)
    (failed if 'error' in rec else done)[name, budget] = rec  # as read_runs sorts a line
  records = job_records(cfg, done, failed)
  result = {'provenance': run_.finish().provenance(), 'config': cfg.to_dict(), 'records': records}
  out = Path(cfg.results)
  atomic_write_json(out.with_suffix('.json'), result)
  atomic_write_text(out.with_suffix('.md'), markdown(cfg, result))
  print(f'wrote {out}.json, .md')
  return result


def _overrides(cfg) -> list[str]:
  """The sizes a child must share with its parent when they were changed on the command line."""
  return [f'--config.vocab_sizes={tuple(cfg.vocab_sizes)}', f'--config.dim={cfg.dim}',
          f'--config.rows={cfg.rows}', f'--config.steps={cfg.steps}',
          f'--config.batch_size={cfg.batch_size}', f'--config.eval_rows={cfg.eval_rows}']


def markdown(cfg, result) -> str:
  gib = 2 ** 30
  prov = result['provenance']
  lines = [
      (f'# Peak training memory of the full-size-table families: {sum(cfg.vocab_sizes):,} ids x '
       f'{cfg.dim} dims'), '',
      f"Command: `{prov['command']}`  ",
      (f"Date: {prov['date']}, commit {prov['git_commit']}, machine: {prov['machine']['cpu']} "
       f"({prov['machine']['cores']} cores)."), '',
      (f'Each row ran its whole pipeline in its own process, every training stage one epoch of '
       f'{cfg.steps} steps of {cfg.batch_size} rows (FM, {cfg.optimizer} {cfg.lr:g}) on synthetic '
       f'Zipf data ({cfg.rows:,} rows generated); peak RSS includes the Python/JAX runtime and '
       f'the data.'), '',
      ('Every row ran at the commit in its last column (its line in '
       f'`{cfg.workdir}/runs.jsonl` has its whole provenance); the file was written by the command '
       'above.'), '',
      '| method | budget | served | peak RSS | RSS after the data | seconds | stages | commit |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for r in result['records']:
    head = f"| {r['method']} | {r['budget']:g}x |"
    commit = r['provenance']['git_commit'][:7]
    if 'error' in r:
      lines.append(f"{head} failed: {r['error']} | | | | | {commit} |")
    elif not r['feasible']:
      lines.append(f"{head} infeasible: {r['reason']} | | | | | {commit} |")
    else:
      stages = 'two' if 'stage_one_reused' in r['config'] else 'one'
      lines.append(f"{head} {r['served_bytes'] / 2**20:,.1f} MiB | "
                   f"{r['peak_rss_bytes'] / gib:.2f} GiB | {r['rss_after_data_bytes'] / gib:.2f} GiB"
                   f" | {r['seconds']:.0f} | {stages} | {commit} |")
  have = {(r['method'], r['budget']) for r in result['records']}
  missing = [f'{m} {b:g}x' for m, b in jobs(cfg) if (m, b) not in have]
  if missing:
    lines += ['', f"Not run yet: {', '.join(missing)}."]
  lines.append('')
  return '\n'.join(lines)


def main(cfg, flags=None) -> None:
  if cfg.only:
    print(json.dumps(child(cfg)), flush=True)
  else:
    run(cfg)


if __name__ == '__main__':
  sys.exit(run_main(main, CONFIG))
