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


def cell_config(config_rel: str, cell: str, seed: int, overrides=()):
  """(config of ``configs/FILE.py:cell`` at ``seed``, its hash)."""
  from embedjax.config import load_config
  from embedjax.provenance import config_hash
  cfg = load_config(f'{paths.repo_root() / config_rel}:{cell}', [*overrides, f'--config.seed={seed}'])
  return cfg, config_hash(cfg)


def define_flags(fv, *, config_rel: str, results_dir: Path, seeds_help: str,
                 runs_dir: Path | None = None) -> None:
  """The command line every (cell, seed) study shares: --cells, --seeds, --results-dir, --redo,
  --list, --summarize (and --runs-dir where the study trains)."""
  from absl import flags
  flags.DEFINE_list('cells', [], f'cells to run ({config_rel} CELLS); none = every cell',
                    flag_values=fv)
  flags.DEFINE_list('seeds', ['0', '1'], seeds_help, flag_values=fv)
  flags.DEFINE_string('results-dir', str(results_dir), 'records and summary go here',
                      flag_values=fv)
  if runs_dir is not None:
    flags.DEFINE_string('runs-dir', str(runs_dir), 'training workdirs go here', flag_values=fv)
  flags.DEFINE_list('redo', [], 'CELL/seedN runs to make again from scratch although their '
                    'config is current: `make results` names the runs whose code changed',
                    flag_values=fv)
  flags.DEFINE_bool('list', False, 'only say which (cell, seed) records exist', flag_values=fv)
  flags.DEFINE_bool('summarize', False, 'only recompute the summary from the records',
                    flag_values=fv)


def selected_runs(fv, known: list[str], expected_runs) -> list[tuple[str, int, bool]]:
  """(cell, seed, redo) of the runs the command line asks for, in the order of --cells; a
  one-line ConfigError for an unknown cell or --redo run. ``expected_runs(seeds)`` lists a
  study's runs."""
  from embedjax.config import ConfigError
  asked = fv['cells'].value or known
  unknown = [c for c in asked if c not in known]
  if unknown:
    raise ConfigError(f'--cells {unknown[0]!r}: not a cell of the study ({known})')
  runs = expected_runs([int(s) for s in fv['seeds'].value])
  redo = set(fv['redo'].value)
  bad = sorted(redo - {f'{c}/seed{s}' for c, s in runs})
  if bad:
    raise ConfigError(f'--redo {bad[0]!r}: not a run of the study (CELL/seedN)')
  return [(c, s, f'{c}/seed{s}' in redo) for a in asked for c, s in runs if c == a]


def list_runs(runs, path_of) -> None:
  for cell, seed in runs:
    print(f"{cell + '/seed' + str(seed):40s} {'done' if path_of(cell, seed).exists() else '-'}")


def run_study(main, default_config: str, define_flags) -> int:
  """``run_main`` for a study, with a bad --cells / --redo (raised by ``main``) said in one line."""
  import sys
  from embedjax.config import ConfigError, run_main
  try:
    return run_main(main, default_config, define_flags=define_flags)
  except ConfigError as e:
    print(f'{sys.argv[0]}: {e}', file=sys.stderr)
    return 2
