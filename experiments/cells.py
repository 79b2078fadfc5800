"""What the studies made of (cell, seed) runs share: where a record lives, reading them back, and
loading a configs/ file's cell table. Each study (experiments/pruning.py, adapters.py) writes one
record per run at ``<results>/runs/CELL/seedN.json`` and computes its summary from all of them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from embedjax import paths


def configs_module(rel: str):
  """The module of a configs/ file (its CELLS table and get_config), loaded by path."""
  spec = importlib.util.spec_from_file_location('_cells_' + Path(rel).stem, paths.repo_root() / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def record_path(root: Path, cell: str, seed: int) -> Path:
  return root / 'runs' / cell / f'seed{seed}.json'


def load_records(root: Path) -> dict[str, dict[int, dict]]:
  """{cell: {seed: record}} of every record under ``root/runs``."""
  out: dict[str, dict[int, dict]] = {}
  for path in sorted((root / 'runs').glob('*/seed*.json')):
    rec = json.loads(path.read_text())
    out.setdefault(rec['cell'], {})[int(rec['seed'])] = rec
  return out


def is_current(path: Path, chash: str) -> bool:
  """The record exists and was made with the config whose hash is ``chash``."""
  return path.is_file() and json.loads(path.read_text()).get('config_hash') == chash
