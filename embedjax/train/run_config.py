"""The config a run started with, kept in its workdir, and the check that a resume keeps it.

A resumed run must be the run that was interrupted: its checkpoint holds params, optimizer state
and data position made under one config, and restoring them under another either fails deep inside
Orbax (a changed model shape) or, worse, silently trains a different run (a changed learning rate).
So the first start writes ``workdir/config.json`` and every resume compares the new config with
it, field by field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from embedjax.config import ConfigError
from embedjax.io import atomic_write_json

CONFIG_FILE = 'config.json'

# Fields a resume may change without --allow-config-change: they extend the run or only observe
# it (what is logged, evaluated, kept or exported, and where caches live), never what the restored
# params, optimizer state or data stream mean. A field listed here also covers its sub-fields.
# 'steps' extends (or shortens) the run; with a decaying schedule, the steps already taken used
# the old length's learning rates, as any extended run does.
RESUMABLE_FIELDS = (
    'steps',
    'log_every', 'eval_every', 'eval_before', 'evals', 'best_metric',
    'ckpt_every', 'ckpt_keep', 'async_checkpointing',
    'export',
    'data.cache_dir',  # prepared data is cached by a content hash: any folder gives the same rows
    'mesh',         # a checkpoint restores onto any mesh (the values do not depend on it)
    'model.remat',  # rematerialisation recomputes the same values
    'model.attention_impl',  # the same attention through another kernel
    # the same texts padded or packed otherwise: the same values without dropout (with it, the
    # masks are drawn for the batch's shapes, as under model.remat)
    'data.padding', 'data.pack_segments',
    'data.token_cache_texts',  # the same ids, tokenized once or every epoch
)


def flat_config(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'optim.lr': 0.001, 'data.train': 'synthetic', ...}: the leaves of a nested config dict, with
  tuples as lists (as JSON stores them) so a stored and a live config compare equal."""
  out = {}
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      out.update(flat_config(value, path + '.'))
    else:
      out[path] = _as_json(value)
  return out


def _as_json(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def is_resumable(path: str) -> bool:
  return any(path == f or path.startswith(f + '.') for f in RESUMABLE_FIELDS)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """[(field, old value, new value), ...] for every leaf that differs, sorted by field; a leaf
  present on one side only (an eval block added or removed) has ``None`` on the other.

  A field the old config lacks that the new one has at the base config's default is no change:
  the old run was started before embedjax had that field, and the default is the behaviour it
  had (every new field's default keeps old configs behaving as before)."""
  from embedjax.train.base_config import base_config  # it imports the losses, heavier
  a, b = flat_config(old), flat_config(new)
  defaults = flat_config(_as_json(base_config().to_dict()))
  return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
          if a.get(k) != b.get(k) and not (k not in a and k in defaults and b[k] == defaults[k])]


def _show(value: Any) -> str:
  if isinstance(value, list):  # tuples in the config; JSON made them lists
    return repr(tuple(value))
  return repr(value)


def describe(changes: list[tuple[str, Any, Any]]) -> str:
  """'optim.lr: 0.001 -> 0.002, steps: 6 -> 8'."""
  return ', '.join(f'{k}: {_show(a)} -> {_show(b)}' for k, a, b in changes)


def stored_config(workdir: Path) -> dict[str, Any] | None:
  """The config the run in ``workdir`` was last started with (``config.json``; a workdir written
  before that file existed has it in ``summary.json``), or None."""
  path = workdir / CONFIG_FILE
  if path.exists():
    return json.loads(path.read_text())
  summary = workdir / 'summary.json'
  if summary.exists():
    return json.loads(summary.read_text()).get('config')
  return None


def store_config(workdir: Path, cfg: ml_collections.ConfigDict) -> None:
  atomic_write_json(workdir / CONFIG_FILE, _as_json(cfg.to_dict()))


def check_resume(stored: dict[str, Any], cfg: ml_collections.ConfigDict, workdir: Path, *,
                 allow_change: bool) -> tuple[list, list]:
  """Compares the config a run is resumed with to the one it started with.

  Returns (changes of resumable fields, other changes allowed by ``allow_change``); raises
  ConfigError naming every non-resumable change (old -> new) when ``allow_change`` is False.
  """
  changes = config_changes(stored, cfg.to_dict())
  free = [c for c in changes if is_resumable(c[0])]
  fixed = [c for c in changes if not is_resumable(c[0])]
  if fixed and not allow_change:
    raise ConfigError(
        f'{workdir} holds a run started with another config: {describe(fixed)}; resuming would '
        f'mix two runs. Use a new --workdir, or pass --allow-config-change to resume anyway '
        f'(only steps, intervals, evals and outputs may change freely)')
  return free, fixed
