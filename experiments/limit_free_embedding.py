"""Critical-n of free embeddings for k = 2 (LIMIT's "free embedding" experiment), d by d.

python -m experiments.limit_free_embedding --config configs/limit_free_embedding.py

For each dimension d the search starts from a prediction (the previous critical-n plus the recent
increments; see ``predicted_start``) and gallops then bisects over n; each probe optimises all
C(n, 2) queries and n documents with the protocol of the config
(``embedjax.limit.free_embedding``). The paper's own cubic fit is plotted
beside ours for comparison.

The report gives, per d, both the largest solved n and the first (smallest) failed n, computed
from the probe records by ``probe_bounds``; ``render(json_path)`` rewrites the .md from the JSON
without re-running the sweep.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# Same seeds, same protocol, two H200 runs: d = 32, n = 295 solved in one and failed in the other.
# The likely cause is XLA:GPU summing floats in a varying order (atomic adds); deterministic ops
# fix the order (set before JAX starts its backend; a no-op on CPU). Not yet checked on a GPU.
if '--xla_gpu_deterministic_ops' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_gpu_deterministic_ops=true').strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from embedjax import paths, plots  # noqa: E402
from embedjax.config import run_main  # noqa: E402
from embedjax.io import atomic_write_json, atomic_write_text  # noqa: E402
from embedjax.limit import free_embedding as fe  # noqa: E402
from embedjax.provenance import Run, inherited, rerender  # noqa: E402

# Weller et al. (2025), fit of their critical-n points (k = 2): -10.5322 + 4.0309 d + 0.0520 d^2
# + 0.0037 d^3.
PAPER_FIT = [-10.5322, 4.0309, 0.0520, 0.0037]


def predicted_start(history: list[int], first: int) -> tuple[int, int]:
  """(first n to try, first gallop step) for the next dimension, from the critical-n so far.

  The critical-n grows smoothly with d, so the next one is predicted as the last plus the mean of
  the last three increments, and the search gallops from there in steps of 1, 2, 4, ...: near a
  good guess it needs two probes (a success and the failure just above it), and failures are the
  expensive probes (they run until the patience runs out).
  """
  if len(history) < 2:
    return (history[-1] if history else first), 4
  increments = np.diff(history[-4:])
  return history[-1] + max(1, int(round(float(np.mean(increments))))), 1


def device_name() -> str:
  """What ran a dimension's search, for its record: 'cpu (N cores)' or the accelerator's kind."""
  dev = jax.devices()[0]
  return f'cpu ({os.cpu_count()} cores)' if dev.platform == 'cpu' else dev.device_kind


def sweep(cfg, done: dict, save, log=print) -> dict:
  """Runs the dimensions of ``cfg.dims`` not in ``done`` ({str(d): record}); calls ``save``."""
  protocol = fe.Protocol(**cfg.protocol)
  key = jax.random.key(cfg.seed)
  history: list[int] = []
  for d in cfg.dims:
    if str(d) in done:
      rec = done[str(d)]
    else:
      start, first_step = predicted_start(history, cfg.start)
      log(f'd={d}: searching from n={start}')
      rec = fe.critical_n(d, jax.random.fold_in(key, d), protocol, start=start,
                          first_step=first_step, log=log, doc_vectors=cfg.doc_vectors)
      rec.update(device=device_name(), jax=jax.__version__)
      done[str(d)] = rec
      log(f'd={d}: critical n = {rec["critical_n"]} (first failure {rec["first_failure"]}), '
          f'{rec["seconds"]:.0f} s')
      save(done)
    history.append(rec['critical_n'])
  return done


def summarise(cfg, done: dict) -> dict:
  dims = [d for d in cfg.dims if str(d) in done]
  ns = [done[str(d)]['critical_n'] for d in dims]
  out = {'protocol': dict(cfg.protocol), 'k': 2, 'doc_vectors': cfg.get('doc_vectors', 1),
         'definition': 'critical_n = largest n for which some restart solved all C(n,2) top-2 '
                       'queries (every query ranks both its documents above all others); '
                       'first_failure = the n just above it that no restart solved',
         'critical_n': {str(d): n for d, n in zip(dims, ns)},
         'first_failure': {str(d): done[str(d)]['first_failure'] for d in dims},
         'seconds_per_dim': {str(d): done[str(d)]['seconds'] for d in dims},
         'device_per_dim': {str(d): done[str(d)].get('device', 'unknown') for d in dims},
         'sweep_seconds': round(sum(done[str(d)]['seconds'] for d in dims), 1),
         'paper_fit': PAPER_FIT}
  if len(dims) >= 4:
    coef = fe.fit_cubic(dims, ns)
    out['fit'] = [float(x) for x in coef]
    pred = fe.eval_cubic(coef, dims)
    ss_res = float(np.sum((np.asarray(ns) - pred) ** 2))
    ss_tot = float(np.sum((np.asarray(ns) - np.mean(ns)) ** 2))
    out['fit_r2'] = round(1 - ss_res / ss_tot, 5) if ss_tot else None
    out['extrapolated'] = {str(d): int(round(float(fe.eval_cubic(coef, d))))
                           for d in cfg.extrapolate}
    out['paper_fit_extrapolated'] = {str(d): int(round(float(fe.eval_cubic(PAPER_FIT, d))))
                                     for d in cfg.extrapolate}
  out['runs'] = done
  return out


def probe_bounds(run: dict) -> dict:
  """One dimension's boundary, computed from its probe records (``run['attempts']``).

  Returns {'largest_solved': largest n some restart solved, 'first_failed': smallest n no
  restart solved, 'unprobed': the n strictly between the two that were never probed,
  'monotone': no failed n below a solved one}. A record without probes (hand-built summaries)
  gives its recorded 'critical_n' / 'first_failure', with nothing known about the n between.
  """
  attempts = run.get('attempts')
  if not attempts:
    return {'largest_solved': run['critical_n'], 'first_failed': run['first_failure'],
            'unprobed': [], 'monotone': True}
  solved = [int(n) for n, a in attempts.items() if a['solved']]
  failed = [int(n) for n, a in attempts.items() if not a['solved']]
  lo = max(solved) if solved else None
  hi = min(failed) if failed else None
  probed = {int(n) for n in attempts}
  between = range(lo + 1, hi) if lo is not None and hi is not None else range(0)
  return {'largest_solved': lo, 'first_failed': hi,
          'unprobed': [n for n in between if n not in probed],
          'monotone': lo is None or hi is None or hi > lo}


def markdown(res: dict) -> str:
  lines = ['| d | largest solved n | first failed n | paper fit at d | seconds | ran on |',
           '|---|---|---|---|---|---|']
  notes = []
  for d, n in res['critical_n'].items():
    b = probe_bounds(res.get('runs', {}).get(d) or
                     {'critical_n': n, 'first_failure': res['first_failure'][d]})
    first = '-' if b['first_failed'] is None else str(b['first_failed'])
    if b['unprobed']:
      first += ' †'
      notes.append(f'† d = {d}: n = {", ".join(map(str, b["unprobed"]))} not probed, so the '
                   f'first failure lies in {b["largest_solved"] + 1} ... {b["first_failed"]}.')
    if not b['monotone']:
      first += ' ‡'
      notes.append(f'‡ d = {d}: a failed n lies below a solved one (success not monotone in n).')
    lines.append(f'| {d} | {b["largest_solved"]} | {first} | '
                 f'{fe.eval_cubic(PAPER_FIT, int(d)):.0f} | '
                 f'{res["seconds_per_dim"][d]:.0f} | {res["device_per_dim"][d]} |')
  lines += ['', 'Both columns are computed from the probe records (`runs`): largest solved n = the '
            'largest n for which some restart solved all C(n, 2) top-2 queries (the fits below use '
            'it); first failed n = the smallest n that no restart solved. The paper fit is its '
            'cubic, not a measured value.']
  m = res.get('doc_vectors', 1)
  if m > 1:
    lines += ['', f'Documents have {m} free vectors each, scored by MaxSim (a query scores a '
              'document by its best-matching vector); queries have one. The paper fit is the '
              'single-vector one, for comparison.']
  for note in notes:
    lines += ['', note]
  if 'fit' in res:
    c = res['fit']
    lines += ['', f'Cubic fit (ours): n(d) = {c[0]:.4f} + {c[1]:.4f} d + {c[2]:.5f} d^2 + '
              f'{c[3]:.6f} d^3 (R^2 {res["fit_r2"]}); paper: -10.5322 + 4.0309 d + 0.0520 d^2 + '
              '0.0037 d^3.', '', '| d | extrapolated critical-n (ours) | (paper fit) |',
              '|---|---|---|']
    for d, n in res['extrapolated'].items():
      lines.append(f'| {d} | {n:,} | {res["paper_fit_extrapolated"][d]:,} |')
  lines += ['', f'Sweep time: {res["sweep_seconds"]:.0f} s (the sum of the per-dimension times, '
            'each on the device named in its row).']
  run_notes = [(d, r['note']) for d, r in res.get('runs', {}).items() if r.get('note')]
  if run_notes:
    lines += ['', 'Notes recorded with a dimension:']
    lines += [f'- d = {d}: {note}' for d, note in run_notes]
  prov = res.get('provenance')
  if prov:
    lines += ['', f'Results file last written by `{prov.get("command", "?")}` at commit '
              f'{prov.get("git_commit", "?")}, {prov.get("date", "?")}.']
  return '\n'.join(lines) + '\n'


def render(json_path: str | Path, md_path: str | Path | None = None) -> Path:
  """Rewrites the table from a results JSON without re-running the sweep (for a report format
  change); writes ``<json stem>.md`` beside it unless ``md_path`` is given."""
  return rerender(json_path, md_path, markdown, 'experiments.limit_free_embedding.render')


def figure(res: dict):
  """The measured critical-n per dimension with our cubic fit (when there is one) and the
  paper's (a Figure)."""
  fits = {'cubic fit (ours)': res['fit']} if 'fit' in res else {}
  fits['cubic fit (paper)'] = PAPER_FIT
  dims = [int(d) for d in res['critical_n']]
  return plots.critical_n_plot(dims, list(res['critical_n'].values()), fits=fits,
                               label='critical-n (embedjax)')


def plot(res: dict, path: Path) -> None:
  plots.save_png(figure(res), path, dpi=120)


def dry_run(cfg) -> dict:
  """Checks the protocol and the dimensions, and traces the loss of the first probe abstractly."""
  protocol = fe.Protocol(**cfg.protocol)
  dims = list(cfg.dims)
  if not dims or any(d < 1 for d in dims) or dims != sorted(set(dims)):
    raise ValueError(f'dims {dims}: positive and increasing')
  if cfg.start < 2:
    raise ValueError(f'start {cfg.start}: n starts at 2 or more (k = 2)')
  rel = fe.all_pairs_qrels(cfg.start)
  loss = jax.eval_shape(
      lambda q, d: fe.infonce_loss(q, d, rel, protocol.temperature),
      jax.ShapeDtypeStruct((rel.shape[0], dims[0]), np.float32),
      jax.ShapeDtypeStruct((cfg.start, dims[0]), np.float32))
  return {'protocol': protocol, 'dims': dims, 'first_loss': loss}


def main(cfg, flags=None) -> None:
  dry_run(cfg)
  out_dir = paths.repo_root() / (cfg.out_dir or 'results/limit')  # relative to the repository
  json_path = out_dir / f'{cfg.name}.json'
  run = Run(config=cfg, seeds=cfg.seed).start()  # free embeddings: no data files read
  done = {}
  if json_path.exists():  # resume: keep the dimensions already solved under the same protocol
    import json
    old = json.loads(json_path.read_text())
    if (old.get('protocol') == dict(cfg.protocol) and old.get('seed', cfg.seed) == cfg.seed
        and old.get('doc_vectors', 1) == cfg.doc_vectors):
      done = {d: r for d, r in old.get('runs', {}).items()
              if int(d) in cfg.dims and int(d) not in cfg.redo}
      for r in done.values():  # kept dimensions keep their own provenance
        r.setdefault('provenance', inherited(old.get('provenance')))
      print(f'resuming: {len(done)} dimension(s) already done'
            + (f', searching {list(cfg.redo)} again' if cfg.redo else ''), flush=True)

  def save(done):
    prov = run.provenance()
    for r in done.values():  # each dimension measured by this call records it
      r.setdefault('provenance', prov)
    res = summarise(cfg, done)
    res.update(seed=cfg.seed, provenance=prov)
    atomic_write_json(json_path, res)

  start = time.perf_counter()
  # float32 products in full float32 on every backend (GPUs would otherwise use TF32, whose
  # 10-bit mantissa is coarser than the margins near the critical n).
  with jax.default_matmul_precision('highest'):
    sweep(cfg, done, save, log=lambda s: print(s, flush=True))
  res = summarise(cfg, done)
  res.update(seed=cfg.seed, provenance=run.finish().provenance(),
             wall_seconds=round(time.perf_counter() - start, 1))
  atomic_write_json(json_path, res)
  atomic_write_text(out_dir / f'{cfg.name}.md', markdown(res))
  plot(res, out_dir / f'{cfg.name}.png')
  print(markdown(res))


if __name__ == '__main__':
  sys.exit(run_main(main, 'configs/limit_free_embedding.py'))
