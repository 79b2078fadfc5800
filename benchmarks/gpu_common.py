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
