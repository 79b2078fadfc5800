"""Shared test fixtures: the shared data folder (skip when absent) and the packaged model."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# One persistent compilation cache for the whole session, set before anything imports jax so that
# subprocesses (whole training runs, benchmark smoke runs, notebooks) inherit it: a program compiled
# once (the same train step in another run, test or process) is loaded instead of compiled again,
# which is most of this suite's time on two cores. It starts empty, so nothing outlives the session;
# a cache the caller chose (JAX_COMPILATION_CACHE_DIR already set) is kept.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='embedjax_test_jax_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# Compiling is most of this suite's time on two cores, and half of a compile is LLVM optimising
# the machine code: tests compile at XLA's backend optimisation level 0 (the same HLO programs,
# fusions and buffers; less optimised machine code, so numbers agree within float reordering),
# which cut the decoder test files from 286 s to 205 s here. Unless the caller set the level.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()

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
