"""This process's resident memory, read from ``/proc/self/status`` (Linux).

Why not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries that high-water mark across
``execve``, so a process started from a large parent (a pytest worker, a benchmark driver holding
a data set) reports the parent's peak, not its own. ``VmHWM`` belongs to the process image.
"""

from __future__ import annotations

import resource
import sys


def _status_bytes(key: str) -> int | None:
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(key + ':'):
          return int(line.split()[1]) * 1024  # kB
  except OSError:
    pass
  return None


def rss_bytes() -> int:
  """Resident set size now (``VmRSS``); 0 where /proc is not there."""
  return _status_bytes('VmRSS') or 0


def peak_rss_bytes() -> int:
  """Peak resident set size of this process image (``VmHWM``), or since the last
  :func:`reset_peak`. Without /proc (not Linux): ``ru_maxrss``, with the caveat above."""
  peak = _status_bytes('VmHWM')
  if peak is not None:
    return peak
  scale = 1 if sys.platform == 'darwin' else 1024  # macOS reports bytes, Linux KiB
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak() -> bool:
  """Resets ``VmHWM`` to the current RSS (Linux >= 4.0), so that the next phase's peak is its
  own; False where that is not allowed."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False
