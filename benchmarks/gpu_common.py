"""What the GPU benchmarks share for running each measurement in a child process of its own."""

from __future__ import annotations

import os
import signal
import subprocess


def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
  """Runs ``cmd`` in a process group of its own; past ``timeout`` seconds the whole group is
  killed (the child and what it started, e.g. inductor's compile workers), and TimeoutError
  says so with the end of its stderr. Returns (return code, stderr)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, env=env)
  try:
    _, stderr = proc.communicate(timeout=max(timeout, 1.0))
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    raise TimeoutError(f'killed after {timeout:.0f} s: {stderr[-2000:]}') from None
  return proc.returncode, stderr


# The smoke run checks that everything runs, not how fast: XLA's cheapest CPU code generation
# cuts its compile time (most of the smoke run) by about 4x.
SMOKE_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def set_backends(args, xla_flags: str) -> None:
  """The settings every GPU benchmark applies before JAX and torch start (``args.smoke``,
  ``args.in_process`` and ``args.compile_backend`` already parsed; ``xla_flags`` the current
  XLA_FLAGS): a smoke run gets torch.compile's aot_eager backend (inductor would build C++
  kernels on the CPU for minutes; aot_eager still traces with dynamo and differentiates with
  AOTAutograd) and XLA's cheapest code generation; otherwise inductor. Two frameworks in one
  process: JAX must not take most of the device up front."""
  import sys
  if args.smoke:
    args.compile_backend = args.compile_backend or 'aot_eager'
    if 'jax' not in sys.modules and '--xla_backend_optimization_level' not in xla_flags:
      os.environ['XLA_FLAGS'] = (xla_flags + ' ' + SMOKE_XLA_FLAGS).strip()
  args.compile_backend = args.compile_backend or 'inductor'
  if args.in_process:
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')


def top_kernels(run, count: int, unit: str, n: int = 12) -> dict | None:
  """Profiles ``run(count)`` (already compiled and warm; after the timed blocks, so the trace
  costs them nothing) with ``jax.profiler`` and sums the traced time by op name: on a GPU the
  device's kernels (its ``/device:`` rows), on a CPU the host's ops (the smoke test's path).
  Returns {'rows': which rows were summed, 'total_ms', 'top': [{'name', 'ms', 'share'}] for the n
  largest, unit: count}: what limits a step, in the result file; None when count is 0. A profiler
  that fails (no CUPTI, say) gives {'error': ...}: the timed run is kept either way."""
  if not count:
    return None
  import tempfile
  try:
    with tempfile.TemporaryDirectory() as trace_dir:
      out = _top_kernels(lambda: run(count), trace_dir, n)
  except Exception as e:  # noqa: BLE001 - recorded in the result; the measurement stands
    out = {'error': f'{type(e).__name__}: {e}'[:2000]}
  return {**out, unit: count}


def with_setup_time(raw: dict, started: float) -> dict:
  """``raw`` (a run's result with 'warmup_s' and 'block_s') with where its wall time went
  besides warm-up and timed blocks: 'run_s' since ``started`` (a perf_counter value) and
  'setup_s' (imports, weights, programs built ahead of the warm-up). The parent's run_wall_s -
  run_s is the process's start."""
  import time
  raw['run_s'] = round(time.perf_counter() - started, 3)
  raw['setup_s'] = round(raw['run_s'] - raw['warmup_s'] - sum(raw['block_s']), 3)
  return raw


def _top_kernels(run, trace_dir: str, n: int) -> dict:
  import collections
  import glob
  import gzip
  import json

  import jax
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run()
  found = sorted(glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'),
                           recursive=True))
  if not found:
    return {'error': f'no perfetto trace under {trace_dir}'}
  with gzip.open(found[-1], 'rt') as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  procs = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  device = {pid for pid, name in procs.items() if name.startswith('/device:')}
  keep = device or set(procs)
  by_name: collections.Counter = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in keep:
      by_name[e['name']] += e.get('dur', 0.0) / 1e3  # microseconds -> ms
  total = sum(by_name.values())
  return {'rows': 'device' if device else 'host', 'total_ms': round(total, 3),
          'top': [{'name': name[:160], 'ms': round(ms, 3),
                   'share': round(ms / total, 4) if total else None}
                  for name, ms in by_name.most_common(n)]}
