"""embedjax.provenance: git state, config hash, file and folder hashes, run times, merged entries."""

import hashlib
import shutil
import subprocess
import sys

import ml_collections
import pytest

from embedjax import provenance as prov

needs_git = pytest.mark.skipif(shutil.which('git') is None, reason='git not installed')


def _git(repo, *args):
  subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *args], cwd=repo,
                 check=True, capture_output=True)


@needs_git
def test_git_state_clean_then_dirty(tmp_path):
  _git(tmp_path, 'init', '-q')
  (tmp_path / 'a.txt').write_text('one\n')
  _git(tmp_path, 'add', 'a.txt')
  _git(tmp_path, 'commit', '-q', '-m', 'first')
  clean = prov.git_state(tmp_path)
  assert clean['dirty'] is False and clean['dirty_paths'] == []
  assert len(clean['commit']) == 40
  (tmp_path / 'a.txt').write_text('two\n')
  dirty = prov.git_state(tmp_path)
  assert dirty['dirty'] is True and dirty['dirty_paths'] == ['a.txt']
  assert dirty['commit'] == clean['commit']
  (tmp_path / 'new file.txt').write_text('x')   # untracked, not ignored: dirty too
  (tmp_path / '.gitignore').write_text('ignored.txt\n')
  (tmp_path / 'ignored.txt').write_text('x')
  assert prov.git_state(tmp_path)['dirty_paths'] == ['.gitignore', 'a.txt', 'new file.txt']


def test_git_state_without_repository(tmp_path):
  assert prov.git_state(tmp_path / 'nowhere') is None


def test_config_hash_key_order_and_tuples():
  a = {'model': {'dim': 32, 'dims': (8, 16)}, 'seed': 0}
  b = {'seed': 0, 'model': {'dims': [8, 16], 'dim': 32}}
  assert prov.config_hash(a) == prov.config_hash(b)
  assert prov.config_hash(ml_collections.ConfigDict(a)) == prov.config_hash(b)
  assert prov.config_hash(a) != prov.config_hash({**a, 'seed': 1})


def test_file_sha256_matches_hashlib(tmp_path):
  data = bytes(range(256)) * 9000   # > 2 MiB: several chunks
  (tmp_path / 'f.bin').write_bytes(data)
  assert prov.file_sha256(tmp_path / 'f.bin') == hashlib.sha256(data).hexdigest()


def test_tree_sha256_changes_with_one_file(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'a.txt').write_text('a')
  (tmp_path / 'sub' / '.hidden').write_text('b')
  before = prov.tree_sha256(tmp_path)
  assert prov.tree_files(tmp_path) == ['a.txt', 'sub/.hidden']
  assert prov.tree_sha256(tmp_path) == before
  (tmp_path / 'sub' / '.hidden').write_text('c')   # a change in size and mtime
  assert prov.tree_sha256(tmp_path) != before
  with pytest.raises(NotADirectoryError):
    prov.tree_sha256(tmp_path / 'a.txt')


def test_run_records_times_config_seeds_inputs(tmp_path):
  (tmp_path / 'data.txt').write_text('x')
  cfg = ml_collections.ConfigDict({'seed': 3, 'dims': (1, 2)})
  with prov.Run(config=cfg, seeds=cfg.seed, inputs=[tmp_path / 'data.txt']) as run:
    pass
  p = run.provenance()
  assert p['started_at'] <= p['finished_at'] and p['date'] == p['finished_at']
  assert p['seeds'] == 3 and p['config'] == {'seed': 3, 'dims': [1, 2]}
  assert p['config_hash'] == prov.config_hash({'dims': [1, 2], 'seed': 3})
  assert p['inputs'] == {str(tmp_path / 'data.txt'): hashlib.sha256(b'x').hexdigest()}
  assert {'command', 'git_commit', 'git', 'versions', 'machine'} <= set(p)
  assert 'config' not in prov.Run(config=cfg, store_config=False).provenance()


def test_start_before_finish():
  import time
  run = prov.Run().start()
  time.sleep(1.1)
  run.finish()
  assert run.started_at < run.finished_at


def test_legacy_provenance_keys():
  p = prov.provenance()
  assert {'command', 'date', 'git_commit', 'versions', 'machine'} <= set(p)


def test_merged_entries_carry_their_own_provenance():
  first = {'provenance': {'run': 1},
           'summary': {'a': {'flat': {'qps': 1}, 'pq': {'qps': 2}}, 'b': {'flat': {'qps': 3}}}}
  new = prov.stamp_entries({'a': {'pq': {'qps': 20}}}, {'run': 2}, depth=2)
  assert new['a']['pq']['provenance'] == {'run': 2}
  merged = prov.merge_entries(first['summary'], new, depth=2, old_provenance=first['provenance'])
  assert merged['a']['pq'] == {'qps': 20, 'provenance': {'run': 2}}
  # kept entries without their own get the earlier file's, marked as inherited
  assert merged['a']['flat'] == {'qps': 1, 'provenance': {'run': 1, 'inherited_from_file': True}}
  assert merged['b']['flat']['provenance'] == {'run': 1, 'inherited_from_file': True}
  assert 'provenance' not in first['summary']['a']['flat']   # inputs untouched
  # an entry that already carries its own provenance keeps it through a later merge
  again = prov.merge_entries(merged, prov.stamp_entries({'b': {'pq': {'qps': 4}}}, {'run': 3}, 2),
                             depth=2, old_provenance={'run': 2})
  assert again['a']['flat']['provenance'] == {'run': 1, 'inherited_from_file': True}
  assert again['b']['pq']['provenance'] == {'run': 3}


def test_run_inputs_already_hashed_and_unreadable(tmp_path):
  run = prov.Run(inputs=[tmp_path / 'gone']).add_inputs(hashed={'/data/x': 'abc'})
  inputs = run.provenance()['inputs']
  assert inputs['/data/x'] == 'abc'
  assert inputs[str(tmp_path / 'gone')].startswith('unreadable: FileNotFoundError')
  with pytest.raises(FileNotFoundError):
    prov.input_hashes([tmp_path / 'gone'])


def test_code_files_list_the_repository_modules_imported():
  import embedjax.registry  # noqa: F401 - imported so that it must be listed
  files = prov.Run().start().provenance()['code_files']
  assert 'embedjax/provenance.py' in files and 'embedjax/registry.py' in files
  assert all(not f.startswith('.') and 'site-packages' not in f for f in files)
  assert files == sorted(files)
  assert 'embedjax/search/sharded.py' not in files or 'embedjax.search.sharded' in sys.modules
