"""Loading ml_collections config files with command-line overrides.

``load_config('configs/x.py:arg', ['--config.optim.lr=1e-5'])`` runs ``get_config(arg)`` from the
file and applies each override with ml_collections' type checking (an int field rejects 'abc').
Values are parsed as Python literals where possible (``1e-5``, ``(384, 64)``, ``True``), else kept
as strings.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Sequence

import ml_collections


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(':')
  file = Path(path)
  if not file.exists():
    raise FileNotFoundError(f'config file {file} does not exist')
  module_spec = importlib.util.spec_from_file_location(f'_embedjax_config_{file.stem}', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{file}: no get_config(arg=None) function')
  cfg = module.get_config(arg or None)
  for item in overrides:
    apply_override(cfg, item, source=str(file))
  return cfg


def _parse(value: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def apply_override(cfg: ml_collections.ConfigDict, item: str, source: str = 'config') -> None:
  if not item.startswith('--config.') or '=' not in item:
    raise ValueError(f'override {item!r} must look like --config.field.sub=value')
  dotted, value = item[len('--config.'):].split('=', 1)
  *parents, leaf = dotted.split('.')
  node = cfg
  for name in parents:
    if name not in node:
      raise KeyError(f'{source}: no config field {dotted!r} ({name!r} is missing)')
    node = node[name]
  if leaf not in node:
    raise KeyError(f'{source}: no config field {dotted!r}')
  parsed = _parse(value)
  old = node[leaf]
  if isinstance(old, (list, tuple)) and isinstance(parsed, (int, float, str)):
    parsed = (parsed,)
  try:
    node[leaf] = type(old)(parsed) if isinstance(old, tuple) and isinstance(parsed, list) else parsed
  except TypeError as e:
    raise TypeError(f'{source}: --config.{dotted}={value!r}: {e}') from e
