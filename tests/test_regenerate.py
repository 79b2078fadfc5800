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
              code=('embedjax/encoding.py',))
  return regen.Target(**{**base, **kw})


def _write(tmp_path, git, **prov):
  (tmp_path / 'r.json').write_text(json.dumps({'provenance': {'git': git, **prov}}))


def _before_last_change(path: str) -> str:
  """The commit before the last one that modified ``path`` (not the one that added it)."""
  modified = subprocess.run(['git', 'log', '-1', '--diff-filter=M', '--format=%H', '--', path],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
  return subprocess.run(['git', 'rev-parse', modified + '~1'], cwd=REPO, capture_output=True,
                        text=True, check=True).stdout.strip()


def test_status_follows_commit_dirt_code_and_config(regen, tmp_path):
  t = _target(regen, tmp_path)
  assert regen.status(t)[0] == 'missing'
  (tmp_path / 'r.json').write_text(json.dumps({'command': 'x', 'git_commit': 'abc'}))
  assert regen.status(t) == ('stale', 'no recorded git state (written before provenance records)')
  _write(tmp_path, {'commit': _head(), 'dirty': False, 'dirty_paths': []})
  assert regen.status(t)[0] == 'current'
  _write(tmp_path, {'commit': _head(), 'dirty': True, 'dirty_paths': ['embedjax/encoding.py']})
  assert regen.status(t)[0] == 'stale'
  _write(tmp_path, {'commit': _head(), 'dirty': True, 'dirty_paths': ['docs/x.md']})
  assert regen.status(t)[0] == 'current'  # dirt outside the target's code does not matter
  full = _before_last_change('embedjax/encoding.py')
  _write(tmp_path, {'commit': full, 'dirty': False, 'dirty_paths': []})
  assert regen.status(t) == ('stale', f'its code changed since {full[:10]} (embedjax/encoding.py)')
  _write(tmp_path, {'commit': '0' * 40, 'dirty': False, 'dirty_paths': []})
  assert 'not in this repository' in regen.status(t)[1]


def test_recorded_code_files_replace_the_library_paths(regen, tmp_path):
  # embedjax/encoding.py is a CORE path: any change to it stales a record without code_files ...
  t = _target(regen, tmp_path, code=('experiments/regenerate.py', *regen.CORE))
  commit = _before_last_change('embedjax/encoding.py')

  def changed(**prov):
    return regen._changed_since(commit, regen._code_paths(t, prov))

  assert 'embedjax/encoding.py' in changed()
  # ... but not one whose run never imported it; one that imported it is stale
  assert 'embedjax/encoding.py' not in changed(code_files=[])
  assert set(changed(code_files=['embedjax/encoding.py'])) == {
      *changed(code_files=[]), 'embedjax/encoding.py'}
  _write(tmp_path, {'commit': commit, 'dirty': False, 'dirty_paths': []},
         code_files=['embedjax/encoding.py'])
  assert regen.status(t)[0] == 'stale'
  # the target's own non-library paths still count
  assert regen._code_paths(t, {'code_files': []}) == ('experiments/regenerate.py',)
  # an untracked folder holding an imported file is dirt in the code
  _write(tmp_path, {'commit': _head(), 'dirty': True, 'dirty_paths': ['embedjax/new/']},
         code_files=['embedjax/new/mod.py'])
  assert regen.status(t)[0] == 'stale'


def test_a_study_record_is_stale_only_for_library_files_its_run_imported(regen, tmp_path):
  # embedjax/train is a study target's own path; a lazily imported module of it (mining) counts
  # only for the records whose run imported it, while a benchmark keeps the whole folder (child
  # processes import what its record does not list)
  commit = _before_last_change('embedjax/train/mining.py')
  study = _target(regen, tmp_path, code=('experiments/regenerate.py', 'embedjax/train', *regen.CORE),
                  study='recipes')
  bench = _target(regen, tmp_path, code=study.code)

  def changed(t, files):
    return regen._changed_since(commit, regen._code_paths(t, {'code_files': files}))

  assert 'embedjax/train/mining.py' not in changed(study, ['embedjax/train/step.py'])
  assert 'embedjax/train/mining.py' in changed(study, ['embedjax/train/mining.py'])
  assert 'embedjax/train/mining.py' in changed(bench, [])
  assert regen._code_paths(study, {'code_files': []}) == ('experiments/regenerate.py',)
  assert regen._code_paths(study, {}) == study.code  # no record of imports: every path counts


def test_only_runtime_dependencies_of_pyproject_count_with_code_files(regen):
  first = subprocess.run(['git', 'log', '--diff-filter=A', '--format=%H', '--', 'pyproject.toml'],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split()[-1]
  assert regen._dependencies_changed('HEAD') is False
  assert 'jax>=0.6' in regen._runtime_dependencies(first)[1]
  # the first pyproject.toml had neither bm25s nor tensorboardX among its dependencies
  assert regen._dependencies_changed(first) is True
  # the commit that added mteb to the reference extras changed no runtime dependency
  mteb = subprocess.run(['git', 'log', '--format=%H', '-S"mteb>=2.0', '--', 'pyproject.toml'],
                        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()[-1]
  assert regen._runtime_dependencies(mteb) == regen._runtime_dependencies(mteb + '~1')


def test_files_added_since_the_record_do_not_stale_it(regen, tmp_path):
  out = subprocess.run(['git', 'log', '--diff-filter=A', '--format=%H', '--', 'embedjax/plots.py'],
                       cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
  added = out[-1]  # the commit that first added the file
  t = _target(regen, tmp_path, code=('embedjax/plots.py',))
  _write(tmp_path, {'commit': added + '~1', 'dirty': False, 'dirty_paths': []})
  assert regen.status(t)[0] == 'current'  # the file did not exist when the result was made
  _write(tmp_path, {'commit': added, 'dirty': False, 'dirty_paths': []})
  changed = subprocess.run(['git', 'diff', '--quiet', added, 'HEAD', '--', 'embedjax/plots.py'],
                           cwd=REPO).returncode
  assert regen.status(t)[0] == ('stale' if changed else 'current')


def test_status_compares_the_config_hash(regen, tmp_path):
  t = _target(regen, tmp_path, config='configs/tiny_synthetic.py', overrides=('--config.steps=3',))
  want = config_hash(load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), ['--config.steps=3']))
  git = {'commit': _head(), 'dirty': False, 'dirty_paths': []}
  _write(tmp_path, git, config_hash=want)
  assert regen.status(t)[0] == 'current'
  _write(tmp_path, git, config_hash=config_hash(load_config(str(REPO / 'configs' / 'tiny_synthetic.py'))))
  assert regen.status(t) == ('stale', 'its config changed (or was not recorded)')


def test_a_config_file_edit_counts_only_through_the_config_hash(regen, tmp_path):
  path = 'configs/table_compression.py'
  t = _target(regen, tmp_path, config=path, code=(path,))
  cfg = load_config(str(REPO / path))
  git = {'commit': _before_last_change(path), 'dirty': False, 'dirty_paths': []}
  _write(tmp_path, git, config_hash=config_hash(cfg))  # the config it builds is unchanged
  assert regen.status(t)[0] == 'current'
  _write(tmp_path, git, config_hash=config_hash(cfg), code_files=[path])  # (imported, as configs are)
  assert regen.status(t)[0] == 'current'
  cfg.lr = cfg.lr * 2  # a record of another config: the file's change counts, then the hash
  _write(tmp_path, git, config_hash=config_hash(cfg))
  assert regen.status(t) == ('stale', f'its code changed since {git["commit"][:10]} ({path})')


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


def test_a_study_is_current_only_when_every_run_record_is(regen, tmp_path, monkeypatch):
  import types
  runs = [('a', 0), ('a', 1), ('b', 0)]
  config_ok = {('a', 0): True, ('a', 1): True, ('b', 0): True}
  study = types.SimpleNamespace(
      expected_runs=lambda: runs, record_path=lambda c, s: tmp_path / c / f'seed{s}.json',
      config_is_current=lambda c, s: config_ok[(c, s)])
  monkeypatch.setitem(sys.modules, 'experiments._fake_study', study)
  t = _target(regen, tmp_path, study='_fake_study')
  clean = {'commit': _head(), 'dirty': False, 'dirty_paths': []}

  def write(cell, seed, git):
    (tmp_path / cell).mkdir(exist_ok=True)
    (tmp_path / cell / f'seed{seed}.json').write_text(json.dumps({'cell': cell, 'git': git}))

  write('a', 0, clean)
  write('a', 1, clean)
  assert regen.status(t) == ('missing', '1 of 3 runs not made yet (b/seed0)')
  write('b', 0, clean)
  assert regen.status(t) == ('current', 'all 3 runs current')
  config_ok[('a', 1)] = False
  write('b', 0, {**clean, 'dirty': True, 'dirty_paths': ['embedjax/encoding.py']})
  assert regen.study_runs(t)[2] == {
      'a/seed1': 'a/seed1: its config changed',
      'b/seed0': "b/seed0: ran with uncommitted changes in ['embedjax/encoding.py']"}
  assert regen.status(t)[0] == 'stale'
