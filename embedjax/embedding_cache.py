"""Embeddings cached on disk, keyed by the model and the exact texts, so that studies rerun fast.

A cache entry is ``<cache_dir>/<label>-<key>.npy`` where ``key`` hashes the model's source folder
name, its spec (pooling, normalisation, token limit) and every text in order. Any change to the
texts or the model gives a new key, so a stale file is never read; the encoder writes the file
under a temporary name and renames it when complete, so an interrupted run leaves nothing behind.
The cache folder is meant to be git-ignored (``runs/cache`` by default).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from embedjax import paths


def default_cache_dir() -> Path:
  return paths.repo_root() / 'runs' / 'cache'


def cache_key(model, texts: Sequence[str]) -> str:
  """16 hex digits of sha256 over the model identity and the texts (NUL-separated)."""
  h = hashlib.sha256()
  spec = model.spec
  h.update(Path(str(model.source)).name.encode())
  h.update(repr(spec).encode())  # every field: pooling, Dense layers, prompts' handling, ...
  for t in texts:
    h.update(b'\0')
    h.update(t.encode('utf-8'))
  return h.hexdigest()[:16]


def cached_encode(model, texts: Sequence[str], label: str, *,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  **encode_kwargs) -> np.ndarray:
  """``embedjax.encoding.encode(model, texts)``, read from / written to the cache.

  Args:
    model: a ``Pretrained``.
    texts: N texts.
    label: a readable file-name prefix (e.g. 'scifact-corpus'); the key makes the name unique.
    cache_dir: folder of the cache (default ``runs/cache`` in the repository).
    progress: show the encoder's progress bar on a cache miss.
    encode_kwargs: passed to ``encode``.

  Returns:
    (N, H) float32 embeddings (a fresh in-memory array).
  """
  from embedjax.encoding import encode  # the model stack is only needed on a miss
  folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = folder / f'{label}-{cache_key(model, texts)}.npy'
  if not path.exists():
    encode(model, list(texts), out=path, progress=progress, **encode_kwargs)
  emb = np.load(path)
  if emb.shape[0] != len(texts):
    raise ValueError(f'{path}: {emb.shape[0]} rows for {len(texts)} texts')
  return emb
