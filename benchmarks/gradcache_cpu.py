"""One gradient-cached training step on a 4,096-pair MiniLM batch on the CPU: peak memory and time.

    nohup .venv/bin/python benchmarks/gradcache_cpu.py > runs/gradcache_cpu/main.log 2>&1 &
    .venv/bin/python benchmarks/gradcache_cpu.py --batch 64 --length 32 --chunks 16,32 \
        --timed-chunk 32 --plain-batches 16 --plain-estimate-batch 64 --out /tmp/gc.json  # quick

What it runs, each job in its own subprocess (so that each peak RSS is its own and one job's
allocator state cannot help or hurt the next), one after another:
  cached   all-MiniLM-L6-v2 weights, B pairs, queries and docs both L tokens (random valid ids, no
           padding), ``StepConfig(chunk_size=c, grad_cache=True)``, dropout on, AdamW (lr 2e-5),
           jitted with the state donated as ``embedjax.train.loop`` does. Every chunk size with
           per-layer remat 'none' and with ``--remat`` ('full'), compiled for XLA's memory
           analysis; the step itself is run for ``--timed-chunk`` with ``--remat`` (the 4,096-pair
           step with chunk 512 needs about 32 GiB of temporaries without remat: more than this
           machine has).
  plain    the non-cached step (``chunk_size=0``: the whole batch at once) at smaller batches,
           measured the same way, for comparison.
  estimate the plain step at B, compiled but not run (it would not fit): XLA's own buffer
           assignment (``compiled.memory_analysis()``) says how many bytes of temporaries it needs.
Per job: lowering and compile time (``jit(...).lower(...).compile()``, timed apart from the
execution), the execution time of the step, XLA's memory analysis, the child's own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, after compilation and after the step) and the peak RSS the
parent saw polling the child with psutil every 0.2 s. After the step the child checks that the loss
is finite and that the parameters changed and are all finite.

The parent writes ``results/bench_gradcache_cpu.json`` (atomically) after every job, so a long run
that is interrupted keeps what finished; ``--resume`` skips jobs already in that file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import train_common as tc  # this folder: python benchmarks/x.py puts it on sys.path

DEFAULT_OUT = tc.REPO / 'results' / 'bench_gradcache_cpu.json'
DEFAULT_LOGS = tc.REPO / 'runs' / 'gradcache_cpu'


def _maxrss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class _Poller:
  """Samples this process's RSS in a thread: the peak during one phase (ru_maxrss cannot be
  reset, so it alone cannot tell the execution peak from the compilation peak)."""

  def __init__(self, interval: float = 0.1):
    import psutil
    self._proc, self._interval, self.peak = psutil.Process(), interval, 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.is_set():
      self.peak = max(self.peak, self._proc.memory_info().rss)
      self._stop.wait(self._interval)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self._proc.memory_info().rss)


def _memory_analysis(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  keys = ('temp_size_in_bytes', 'argument_size_in_bytes', 'output_size_in_bytes',
          'alias_size_in_bytes', 'generated_code_size_in_bytes')
  return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def run_child(args) -> dict:
  """One job in this process; returns its record (also written to --child-out)."""
  import jax
  import numpy as np
  from embedjax.models.pretrained import load_pretrained

  t_start = time.perf_counter()
  code = tc.library_state()
  model = load_pretrained(args.model)
  batch = tc.random_pairs(np.random.default_rng(0), args.batch, args.length, args.length,
                          vocab=model.spec.bert.vocab_size)
  cached = args.mode == 'cached'
  import dataclasses
  spec = dataclasses.replace(model.spec, bert=dataclasses.replace(model.spec.bert,
                                                                  remat=args.child_remat))
  step, state = tc.embedjax_step(spec, model.params, chunk_size=args.chunk if cached else 0,
                                 grad_cache=cached)
  rng = jax.random.key(0)
  rec: dict = {'mode': args.mode, 'batch': args.batch, 'length': args.length,
               'chunk_size': args.chunk if cached else 0, 'remat': args.child_remat,
               'compile_only': args.compile_only,
               'embedjax_code': code}
  rss_before = _maxrss_bytes()
  with _Poller() as poll_compile:
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, rng)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  rec.update(lower_s=round(t1 - t0, 2), compile_s=round(t2 - t1, 2),
             xla_memory_analysis=_memory_analysis(compiled),
             rss_before_compile_bytes=rss_before, maxrss_after_compile_bytes=_maxrss_bytes(),
             poll_peak_rss_compile_bytes=poll_compile.peak)
  tc.log(f'[{args.mode} B={args.batch} c={rec["chunk_size"]}] lowered in {rec["lower_s"]} s, '
         f'compiled in {rec["compile_s"]} s; XLA temp '
         f'{rec["xla_memory_analysis"].get("temp_size_in_bytes", 0) / 2**30:.2f} GiB')
  need = rec['xla_memory_analysis'].get('temp_size_in_bytes', 0)
  import psutil
  available = psutil.virtual_memory().available
  rec['available_before_step_bytes'] = int(available)
  if not args.compile_only and not args.force and need > available - args.margin_gib * 2**30:
    # The machine is shared: a step that cannot fit would push other people's processes into
    # swap-less OOM kills. XLA's temp size is what the step allocates beyond the resident state.
    rec['skipped'] = (f'not run: XLA needs {need / 2**30:.2f} GiB of temporaries, '
                      f'{available / 2**30:.2f} GiB available (keeping a {args.margin_gib} GiB margin)')
    tc.log(f'[{args.mode} B={args.batch} c={rec["chunk_size"]}] {rec["skipped"]}')
  elif not args.compile_only:
    before = jax.tree_util.tree_map(np.array, state.params)  # host copy: the state is donated
    batch_dev = jax.device_put(batch)
    with _Poller() as poll_step:
      t3 = time.perf_counter()
      new_state, metrics = compiled(state, batch_dev, rng)
      jax.block_until_ready((new_state, metrics))
      t4 = time.perf_counter()
    after = jax.tree_util.tree_map(np.asarray, new_state.params)
    diffs = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(a - b))), before, after))
    finite = all(bool(np.all(np.isfinite(x))) for x in jax.tree_util.tree_leaves(after))
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    rec.update(step_s=round(t4 - t3, 2), loss=m['loss'], grad_norm=m['grad_norm'],
               metrics=m, params_changed=bool(max(diffs) > 0), params_max_abs_change=max(diffs),
               params_changed_fraction_of_leaves=sum(d > 0 for d in diffs) / len(diffs),
               params_finite=finite, loss_finite=bool(np.isfinite(m['loss'])),
               poll_peak_rss_step_bytes=poll_step.peak)
    tc.log(f'[{args.mode} B={args.batch} c={rec["chunk_size"]}] step {rec["step_s"]} s, '
           f'loss {m["loss"]:.4f}, params changed {rec["params_changed"]}, finite {finite}')
  rec.update(maxrss_bytes=_maxrss_bytes(), total_child_s=round(time.perf_counter() - t_start, 2),
             load_average_end=tc.load_average())
  if args.child_out:
    Path(args.child_out).write_text(json.dumps(rec, indent=2))
  return rec


def _jobs(args) -> list[dict]:
  jobs = [{'name': f'cached_c{c}_remat_{r}', 'mode': 'cached', 'batch': args.batch, 'chunk': c,
           'remat': r, 'compile_only': not (c == args.timed_chunk and r == args.remat)}
          for c in args.chunks for r in ('none', args.remat)]
  jobs += [{'name': f'plain_b{b}', 'mode': 'plain', 'batch': b, 'chunk': 0}
           for b in args.plain_batches]
  if args.plain_estimate_batch:
    jobs.append({'name': f'plain_b{args.plain_estimate_batch}_compile_only', 'mode': 'plain',
                 'batch': args.plain_estimate_batch, 'chunk': 0, 'compile_only': True})
  return jobs


def _run_job(args, job: dict, log_dir: Path) -> dict:
  import psutil
  child_out = log_dir / f'{job["name"]}.json'
  child_out.unlink(missing_ok=True)
  cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--mode', job['mode'],
         '--batch', str(job['batch']), '--length', str(args.length), '--chunk', str(job['chunk']),
         '--model', args.model, '--child-out', str(child_out),
         '--child-remat', job.get('remat', 'none')]
  if job.get('compile_only'):
    cmd.append('--compile-only')
  if args.force:
    cmd.append('--force')
  cmd += ['--margin-gib', str(args.margin_gib)]
  log_path = log_dir / f'{job["name"]}.log'
  tc.log(f'job {job["name"]}: {" ".join(cmd)} (log {log_path})')
  t0, peak = time.perf_counter(), 0
  load_start = tc.load_average()
  with open(log_path, 'w') as logf:
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=tc.REPO)
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
      try:
        peak = max(peak, ps.memory_info().rss)
      except psutil.Error:
        pass
      time.sleep(0.2)
  wall = time.perf_counter() - t0
  rec = {'name': job['name'], 'returncode': proc.returncode, 'wall_s': round(wall, 1),
         'parent_poll_peak_rss_bytes': peak, 'load_average_start': load_start,
         'log': str(log_path)}
  if proc.returncode == 0 and child_out.exists():
    rec.update(json.loads(child_out.read_text()))
  else:
    rec['error_tail'] = log_path.read_text()[-3000:]
  # The whole-process peak: ru_maxrss of the child, or the parent's polling if that saw more.
  rec['peak_rss_gib'] = round(max(rec.get('maxrss_bytes', 0), peak) / 2**30, 3)
  tc.log(f'job {job["name"]}: rc={proc.returncode} wall {wall:.0f} s peak RSS {rec["peak_rss_gib"]} GiB')
  return rec


def _estimate_plain(jobs: dict[str, dict], target: int) -> dict:
  """The plain step's peak at ``target`` pairs, two ways (both are estimates, not measurements)."""
  plain = sorted((r for r in jobs.values() if r.get('mode') == 'plain' and not r.get('compile_only')
                  and r.get('returncode') == 0 and 'step_s' in r), key=lambda r: r['batch'])
  out: dict = {'target_batch': target}
  est = jobs.get(f'plain_b{target}_compile_only')
  if plain:
    # Resident memory besides XLA temporaries (weights, optimizer state, batch, runtime, the
    # host copy of the params): the measured peak minus XLA's temp at the largest measured batch.
    big = plain[-1]
    base = big['peak_rss_gib'] - big['xla_memory_analysis'].get('temp_size_in_bytes', 0) / 2**30
    out['resident_besides_temporaries_gib'] = round(base, 3)
    if est and est.get('returncode') == 0:
      temp = est['xla_memory_analysis'].get('temp_size_in_bytes', 0) / 2**30
      out['xla_temp_gib'] = round(temp, 2)
      out['from_xla_memory_analysis_gib'] = round(base + temp, 2)
    if len(plain) >= 2:
      a, b = plain[0], plain[-1]
      slope = (b['peak_rss_gib'] - a['peak_rss_gib']) / (b['batch'] - a['batch'])
      out['from_linear_fit_gib'] = round(b['peak_rss_gib'] + slope * (target - b['batch']), 2)
      out['linear_fit_points'] = [(r['batch'], r['peak_rss_gib']) for r in (a, b)]
  out['method'] = ('not run: compiled only. from_xla_memory_analysis = XLA temp bytes of the '
                   'compiled plain step at the target batch + the resident memory besides '
                   'temporaries measured at the largest plain batch that ran; from_linear_fit = '
                   'measured peak RSS of two smaller plain batches, extrapolated linearly')
  return out


def run_parent(args) -> dict:
  from embedjax.io import atomic_write_json
  from embedjax.provenance import Run

  log_dir = Path(args.log_dir)
  log_dir.mkdir(parents=True, exist_ok=True)
  out = Path(args.out)
  done: dict[str, dict] = {}
  if args.resume and out.exists():
    done = {k: v for k, v in json.loads(out.read_text()).get('jobs', {}).items()
            if v.get('returncode') == 0}
  import psutil
  # inputs are random token ids (no data files), drawn with numpy seed 0
  run = Run(config=dict(vars(args)), seeds={'random_pairs': 0}, extra_packages=('psutil',)).start()
  record: dict = {
      'benchmark': 'gradcache_cpu', 'model': args.model, 'batch': args.batch,
      'query_len': args.length, 'doc_len': args.length, 'chunks': args.chunks,
      'settings': {'inputs': 'random valid token ids, every row full length (no padding)',
                   'loss': 'info_nce (MNRL), scale 20', 'optimizer': 'AdamW lr 2e-5, wd 0.01',
                   'dropout': True, 'dtype': 'float32', 'XLA_FLAGS': tc.xla_flags(),
                   'cpu_count': os.cpu_count(),
                   'memory_total_gib': round(psutil.virtual_memory().total / 2**30, 1),
                   'rss_note': 'peak_rss_gib = max(child ru_maxrss, parent psutil polling)'},
      'jobs': done,
  }
  for job in _jobs(args):
    if job['name'] in done:
      tc.log(f'job {job["name"]}: already in {out}, skipped (--resume)')
      continue
    record['jobs'][job['name']] = _run_job(args, job, log_dir)
    record['plain_estimate'] = _estimate_plain(record['jobs'], args.plain_estimate_batch or args.batch)
    record['provenance'] = run.provenance()
    atomic_write_json(out, record)
  record['summary'] = {
      name: {k: r.get(k) for k in ('peak_rss_gib', 'compile_s', 'step_s', 'loss', 'params_changed',
                                  'params_finite', 'skipped', 'remat', 'compile_only')}
      | {'xla_temp_gib': round(r.get('xla_memory_analysis', {}).get('temp_size_in_bytes', 0)
                               / 2**30, 3)}
      for name, r in record['jobs'].items()}
  record['plain_estimate'] = _estimate_plain(record['jobs'], args.plain_estimate_batch or args.batch)
  record['provenance'] = run.finish().provenance()
  atomic_write_json(out, record)
  tc.log(json.dumps(record['summary'], indent=2))
  tc.log(json.dumps(record['plain_estimate'], indent=2))
  tc.log(f'wrote {out}')
  return record


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ints = lambda s: [int(x) for x in s.split(',') if x.strip()]
  p.add_argument('--batch', type=int, default=4096, help='pairs per step')
  p.add_argument('--length', type=int, default=128, help='tokens per query and per doc')
  p.add_argument('--chunks', type=ints, default=[512, 128, 32],
                 help='chunk sizes, run in this order (largest first: a memory failure shows early)')
  p.add_argument('--plain-batches', type=ints, default=[128, 256],
                 help='batches at which the plain step is measured')
  p.add_argument('--plain-estimate-batch', type=int, default=4096,
                 help='batch at which the plain step is compiled (not run) for its memory; 0 = skip')
  p.add_argument('--remat', default='full', help="per-layer remat policy compared with 'none'")
  p.add_argument('--timed-chunk', type=int, default=512,
                 help='the chunk size whose step is run (with --remat); the others are compiled')
  p.add_argument('--model', default='all-MiniLM-L6-v2')
  p.add_argument('--out', default=str(DEFAULT_OUT))
  p.add_argument('--log-dir', default=str(DEFAULT_LOGS))
  p.add_argument('--resume', action='store_true', help='skip jobs that already succeeded in --out')
  p.add_argument('--margin-gib', type=float, default=1.5,
                 help='run a step only if its XLA temporaries fit in available memory minus this')
  p.add_argument('--force', action='store_true', help='run steps even when they look too big')
  # Child-process options.
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--mode', choices=('cached', 'plain'), default='cached', help=argparse.SUPPRESS)
  p.add_argument('--chunk', type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument('--compile-only', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--child-out', default=None, help=argparse.SUPPRESS)
  p.add_argument('--child-remat', default='none', help=argparse.SUPPRESS)
  return p


def main(argv=None):
  args = build_parser().parse_args(argv)
  if args.child:
    return run_child(args)
  return run_parent(args)


if __name__ == '__main__':
  main()
