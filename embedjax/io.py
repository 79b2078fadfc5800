"""Atomic writes: a file either has its old content or its complete new content, never a part."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  """Writes ``data`` to a temporary file beside ``path``, fsyncs, then renames it into place."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  """``atomic_write_bytes`` of ``text`` as UTF-8 (newlines written as given)."""
  return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
  """``atomic_write_text`` of ``obj`` as indented JSON (NaN is refused: it is not valid JSON)."""
  return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + '\n')
