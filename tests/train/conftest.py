"""Fixtures shared by the training tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache


@contextlib.contextmanager
def _compile_cache(folder: Path):
  """jax's persistent compilation cache in ``folder`` for every compile, restored afterwards."""
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(folder), 0, 0)):
    jax.config.update(n, v)
  compilation_cache.reset_cache()  # the cache reads its settings once: make it read these
  try:
    yield
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  """A persistent compilation cache for one test module: a run that compiles the same step as an
  earlier run of the module (a rerun, another file of the same shapes) reuses its executable."""
  with _compile_cache(tmp_path_factory.mktemp('jax_cache')):
    yield
