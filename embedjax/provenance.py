"""What every result file carries: the command that made it, versions, machine and date."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata

_PACKAGES = ('embedjax', 'jax', 'jaxlib', 'flax', 'optax', 'numpy', 'tokenizers', 'safetensors')


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
  out = {'python': platform.python_version()}
  for name in _PACKAGES + tuple(extra):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def machine() -> dict[str, str | int]:
  import jax  # imported here so that reading versions does not initialise a backend
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return {'cpu': cpu, 'cores': os.cpu_count() or 0, 'jax_backend': jax.default_backend(),
          'devices': ', '.join(sorted({d.device_kind for d in jax.devices()}))}


def git_commit() -> str | None:
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(__file__)).stdout.strip() or None
  except (OSError, subprocess.CalledProcessError):
    return None


def command_line() -> str:
  """The command as typed: ``python -m pkg.mod args`` for module runs, else argv."""
  argv = list(sys.argv)
  main = sys.modules.get('__main__')
  spec = getattr(main, '__spec__', None)
  if spec is not None and spec.name and argv and argv[0].endswith('.py'):
    name = spec.name[:-len('.__main__')] if spec.name.endswith('.__main__') else spec.name
    argv = ['python', '-m', name] + argv[1:]
  elif argv and os.path.basename(argv[0]) in ('embedjax',):
    argv[0] = 'embedjax'
  return shlex.join(argv)


def provenance(extra_packages: tuple[str, ...] = ()) -> dict:
  return {
      'command': command_line(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'git_commit': git_commit(),
      'versions': versions(extra_packages),
      'machine': machine(),
  }


def rerender(json_path, md_path, markdown_fn, renderer: str):
  """Rewrites a results table from its JSON (``markdown_fn(record) -> str``) without re-running
  the measurement, and says so in a last line naming the renderer and the commit it ran at."""
  import json
  from pathlib import Path

  from embedjax.io import atomic_write_text
  json_path = Path(json_path)
  md_path = Path(md_path) if md_path else json_path.with_suffix('.md')
  text = markdown_fn(json.loads(json_path.read_text())).rstrip('\n')
  text += (f'\n\nThis table was re-rendered from `{json_path.name}` by `{renderer}` at commit '
           f'{git_commit()}; the numbers are the JSON file\'s.\n')
  atomic_write_text(md_path, text)
  return md_path
