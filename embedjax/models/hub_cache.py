"""Finding a model in the local Hugging Face hub cache, offline (nothing is ever downloaded).

The cache that ``huggingface_hub`` fills keeps each repository as
``models--ORG--NAME/snapshots/REVISION/`` (files, usually symlinks into ``blobs/``), with
``refs/main`` naming the revision the default branch pointed to when it was last fetched. The cache
root is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``.
"""

from __future__ import annotations

import os
from pathlib import Path


def hub_cache_dir() -> Path:
  """The Hugging Face hub cache folder, from the environment as huggingface_hub resolves it."""
  if os.environ.get('HF_HUB_CACHE'):
    return Path(os.environ['HF_HUB_CACHE']).expanduser()
  if os.environ.get('HF_HOME'):
    return Path(os.environ['HF_HOME']).expanduser() / 'hub'
  return Path('~/.cache/huggingface/hub').expanduser()


def repo_folder(repo_id: str, cache_dir: Path | None = None) -> Path:
  """``models--ORG--NAME`` for 'ORG/NAME' (or ``models--NAME`` for a bare name)."""
  return (cache_dir or hub_cache_dir()) / ('models--' + repo_id.replace('/', '--'))


def cached_snapshot(repo_id: str, cache_dir: Path | None = None) -> Path | None:
  """The cached snapshot folder of a hub repository, or None when it is not cached.

  The revision is the one ``refs/main`` names when that snapshot exists; otherwise the only
  snapshot, or the most recently modified one.
  """
  repo = repo_folder(repo_id, cache_dir)
  snapshots = repo / 'snapshots'
  if not snapshots.is_dir():
    return None
  ref = repo / 'refs' / 'main'
  if ref.is_file():
    pinned = snapshots / ref.read_text(encoding='utf-8').strip()
    if pinned.is_dir():
      return pinned
  candidates = [p for p in snapshots.iterdir() if p.is_dir()]
  if not candidates:
    return None
  return max(candidates, key=lambda p: p.stat().st_mtime)
