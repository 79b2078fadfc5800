"""Shared test fixtures: the shared data folder (skip when absent) and the packaged model."""

from __future__ import annotations

import os

# Reference libraries (torch, faiss) and XLA share two cores here; keep each to its share so tests
# do not oversubscribe the machine.
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

import pytest

from embedjax.paths import shared_data_dir


@pytest.fixture(scope='session')
def data_dir():
  d = shared_data_dir()
  if d is None:
    pytest.skip('../shared/data is not present')
  return d


@pytest.fixture(scope='session')
def minilm():
  from embedjax.models.pretrained import load_pretrained
  try:
    return load_pretrained('all-MiniLM-L6-v2')
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope='session')
def st_minilm(minilm):
  """The same packaged weights loaded by sentence-transformers (torch CPU), as the reference."""
  st = pytest.importorskip('sentence_transformers')
  return st.SentenceTransformer(minilm.source, device='cpu')
