"""Whole training runs in subprocesses: 8 devices = 1 device, 2 processes = 1 process, and a run
killed at a random step then resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from embedjax.train.checkpoint import restore_params
from embedjax.train.optim import param_paths

REPO = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, str(REPO / 'tests' / 'train' / 'run_train.py'),
          '--config', str(REPO / 'configs' / 'tiny_synthetic.py')]
STEPS = 6

pytestmark = pytest.mark.slow


def _env(tmp):
  env = dict(os.environ)
  env['EMBEDJAX_CACHE'] = str(tmp / 'cache')
  # run_train adds its device count; keep only the suite's optimisation level (conftest)
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  return env


def _cmd(workdir, out, *extra):
  return RUNNER + ['--workdir', str(workdir), '--out', str(out), f'--config.steps={STEPS}',
                   '--config.ckpt_every=1', f'--config.ckpt_keep={STEPS}'] + list(extra)


def _run(cmd, env, timeout=600):
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _params(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _losses(workdir):
  rows = [json.loads(line) for line in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
  return tmp_path_factory.mktemp('runs')


@pytest.fixture(scope='module')
def baseline(tmp):
  """One device, uninterrupted, all STEPS steps."""
  _run(_cmd(tmp / 'base', tmp / 'base.npz'), _env(tmp))
  return tmp / 'base'


def _params_at_step(workdir, step):
  """The params of ``workdir``'s checkpoint at ``step``, flattened like run_train's --out
  (restore_params reads a folder's latest checkpoint: give it a folder holding only that one)."""
  only = workdir.parent / f'{workdir.name}_step{step}'
  if not only.exists():
    shutil.copytree(workdir / 'checkpoints' / str(step), only / str(step))
  saved_step, params = restore_params(only)
  assert saved_step == step
  names = jax.tree_util.tree_leaves(param_paths(params))
  return dict(zip(names, (np.asarray(x) for x in jax.tree_util.tree_leaves(params))))


def test_eight_devices_equal_one_device(tmp, baseline):
  # The one-device side is the uninterrupted baseline's step-1 checkpoint (every step is kept),
  # which saves a whole one-step run.
  _run(_cmd(tmp / 'dev8', tmp / 'dev8.npz', '--devices', '8', '--stop-after', '1'), _env(tmp))
  one, eight = _params_at_step(baseline, 1), _params(tmp / 'dev8.npz')
  assert one.keys() == eight.keys()
  for k in one:
    np.testing.assert_allclose(eight[k], one[k], atol=1e-6, rtol=0, err_msg=k)


def test_two_processes_reproduce_single_process_losses(tmp, baseline):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  workdir = tmp / 'twoproc'
  procs = [subprocess.Popen(_cmd(workdir, tmp / 'twoproc.npz', '--stop-after', '3',
                                 '--process-id', str(i), '--num-processes', '2', '--port', str(port)),
                            env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), '\n'.join(o[-3000:] for o in outs)
  single, double = _losses(baseline), _losses(workdir)
  assert sorted(double) == [1, 2, 3]
  for step in double:
    assert double[step] == pytest.approx(single[step], abs=1e-5), step


def test_killed_run_resumes_bit_identical(tmp, baseline):
  kill_at = int(np.random.default_rng().integers(1, STEPS - 1))  # a random step, reported on failure
  workdir = tmp / 'killed'
  env = _env(tmp)
  proc = subprocess.Popen(_cmd(workdir, tmp / 'killed.npz'), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  ckpts = workdir / 'checkpoints'
  while time.time() < deadline and proc.poll() is None:
    done = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    if done and max(done) >= kill_at:
      os.kill(proc.pid, signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, f'run ended before step {kill_at} (rc {proc.returncode})'
  _run(_cmd(workdir, tmp / 'resumed.npz'), env)
  want, got = _params(tmp / 'base.npz'), _params(tmp / 'resumed.npz')
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=f'{k} (killed at step {kill_at})')
  # The log was rewritten without duplicates and matches the uninterrupted run's losses exactly.
  assert _losses(workdir) == _losses(baseline)
