"""``make results``: a result is current only for its recorded commit, clean code paths, unchanged
code since, and the same config hash."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from embedjax.config import load_config
from embedjax.paths import repo_root
from embedjax.provenance import config_hash

REPO = repo_root()


@pytest.fixture(scope='module')
def regen():
  spec = importlib.util.spec_from_file_location('_regenerate', REPO / 'experiments' / 'regenerate.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _head(*path) -> str:
  args = ['git', 'log', '-1', '--format=%H', *(['--', *path] if path else [])]
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _target(regen, tmp_path, **kw):
  base = dict(name='x', result=str(tmp_path / 'r.json'), command=('true',),
              code=('embedjax/ops.py',))
  return regen.Target(**{**base, **kw})


def _write(tmp_path, git, **prov):
  (tmp_path / 'r.json').write_text(json.dumps({'provenance': {'git': git, **prov}}))


def test_status_follows_commit_dirt_code_and_config(regen, tmp_path):
  t = _target(regen, tmp_path)
  assert regen.status(t)[0] == 'missing'
  (tmp_path / 'r.json').write_text(json.dumps({'command': 'x', 'git_commit': 'abc'}))
  assert regen.status(t) == ('stale', 'no recorded git state (written before provenance records)')
  _write(tmp_path, {'commit': _head(), 'dirty': False, 'dirty_paths': []})
  assert regen.status(t)[0] == 'current'
  _write(tmp_path, {'commit': _head(), 'dirty': True, 'dirty_paths': ['embedjax/ops.py']})
  assert regen.status(t)[0] == 'stale'
  _write(tmp_path, {'commit': _head(), 'dirty': True, 'dirty_paths': ['docs/x.md']})
  assert regen.status(t)[0] == 'current'  # dirt outside the target's code does not matter
  before_ops = _head('embedjax/ops.py') + '~1'
  full = subprocess.run(['git', 'rev-parse', before_ops], cwd=REPO, capture_output=True,
                        text=True, check=True).stdout.strip()
  _write(tmp_path, {'commit': full, 'dirty': False, 'dirty_paths': []})
  assert regen.status(t) == ('stale', f'its code changed since {full[:10]}')
  _write(tmp_path, {'commit': '0' * 40, 'dirty': False, 'dirty_paths': []})
  assert 'not in this repository' in regen.status(t)[1]


def test_status_compares_the_config_hash(regen, tmp_path):
  t = _target(regen, tmp_path, config='configs/tiny_synthetic.py', overrides=('--config.steps=3',))
  want = config_hash(load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), ['--config.steps=3']))
  git = {'commit': _head(), 'dirty': False, 'dirty_paths': []}
  _write(tmp_path, git, config_hash=want)
  assert regen.status(t)[0] == 'current'
  _write(tmp_path, git, config_hash=config_hash(load_config(str(REPO / 'configs' / 'tiny_synthetic.py'))))
  assert regen.status(t) == ('stale', 'its config changed (or was not recorded)')


def test_targets_are_unique_and_name_existing_code(regen):
  names = [t.name for t in regen.TARGETS]
  assert len(names) == len(set(names))
  for t in regen.TARGETS:
    assert t.device in ('cpu', 'gpu')
    missing = [c for c in t.code if not (REPO / c).exists()]
    assert not missing, (t.name, missing)
    if t.config:
      load_config(str(REPO / t.config), t.overrides)


def test_a_merged_file_is_current_only_when_every_entry_is(regen, tmp_path):
  t = _target(regen, tmp_path)
  git = {'commit': _head(), 'dirty': False, 'dirty_paths': []}
  fresh = {'git': git}
  old = {'git_commit': 'abc', 'inherited_from_file': True}
  record = {'summary': {'a': {'x': {'provenance': fresh}}, 'b': {'x': {'provenance': old}}},
            'earlier_runs': [{'provenance': {'git_commit': 'abc'}}], 'provenance': fresh}
  (tmp_path / 'r.json').write_text(json.dumps(record))
  assert regen.status(t) == ('stale', 'entry summary/b/x: measured before entries carried their '
                                      'own provenance')
  record['summary']['b']['x']['provenance'] = fresh
  (tmp_path / 'r.json').write_text(json.dumps(record))
  assert regen.status(t)[0] == 'current'  # earlier_runs is history, not an entry
  (tmp_path / 'r.json').write_text(json.dumps({**record, 'hand_assembled': 'the summary'}))
  assert regen.status(t)[1].startswith('hand-assembled')


def test_a_target_may_hash_one_block_of_its_config(regen, tmp_path):
  t = _target(regen, tmp_path, config='configs/table_compression.py:memory', config_block='memory')
  cfg = load_config(str(REPO / 'configs' / 'table_compression.py:memory'))
  git = {'commit': _head(), 'dirty': False, 'dirty_paths': []}
  _write(tmp_path, git, config_hash=config_hash(cfg.memory))
  assert regen.status(t)[0] == 'current'
  _write(tmp_path, git, config_hash=config_hash(cfg))
  assert regen.status(t) == ('stale', 'its config changed (or was not recorded)')
