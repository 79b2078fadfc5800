"""Shared by the study tests: an experiment script loaded as a module by its path."""

from __future__ import annotations

import importlib.util
import sys

from embedjax.paths import repo_root


def load_experiment(name: str, alias: str):
  """experiments/<name>.py as a fresh module registered under ``alias``."""
  spec = importlib.util.spec_from_file_location(alias, repo_root() / 'experiments' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module
