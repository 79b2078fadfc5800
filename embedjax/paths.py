"""Where the shared benchmark data lives.

Resolution order: the ``EMBEDJAX_DATA_DIR`` environment variable, then ``../shared/data`` beside the
current directory, then ``../shared/data`` beside the repository that holds this package.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
  """Returns the shared data folder, or None when no candidate exists."""
  env = os.environ.get('EMBEDJAX_DATA_DIR')
  if env:
    return Path(env)
  for candidate in (Path.cwd() / '..' / 'shared' / 'data', _REPO_ROOT / '..' / 'shared' / 'data'):
    if candidate.is_dir():
      return candidate.resolve()
  return None


def repo_root() -> Path:
  return _REPO_ROOT
