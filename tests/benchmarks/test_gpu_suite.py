"""benchmarks/gpu_suite.py's bookkeeping: the manifest of a commit, the check of a carried tree
against it, the git state given to a result file made without git, and every suite's command line
accepted by its script (so a window is not lost to a typo)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
  sys.path.insert(0, str(REPO / 'benchmarks'))
  spec = importlib.util.spec_from_file_location(f'_bench_{name}', REPO / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


suite = _load('gpu_suite')


@pytest.fixture
def repo(tmp_path, monkeypatch):
  """A git repository of two committed files, as the suite's REPO."""
  def git(*a):
    subprocess.run(['git', *a], cwd=tmp_path, check=True, capture_output=True)
  git('init', '-q')
  git('config', 'user.email', 'x@y'); git('config', 'user.name', 'x')
  (tmp_path / 'a.py').write_text('a = 1\n')
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'b.txt').write_text('b\n')
  git('add', '.'); git('commit', '-qm', 'c')
  monkeypatch.setattr(suite, 'REPO', tmp_path)
  return tmp_path


def test_manifest_and_verification(repo, tmp_path):
  manifest = suite.write_manifest(repo / 'carry')
  assert set(manifest['files']) == {'a.py', 'sub/b.txt'} and len(manifest['commit']) == 40
  assert json.loads((repo / 'carry' / 'manifest.json').read_text()) == manifest
  assert suite.verify_tree(manifest, repo) == []
  (repo / 'a.py').write_text('a = 2\n')
  assert suite.verify_tree(manifest, repo) == ['a.py']
  with pytest.raises(SystemExit, match='uncommitted'):
    suite.write_manifest(repo / 'carry2')
  (repo / 'sub' / 'b.txt').unlink()
  assert suite.verify_tree(manifest, repo) == ['a.py', 'sub/b.txt']


def test_a_result_without_git_gets_the_manifest_commit(tmp_path):
  manifest = {'commit': 'c' * 40, 'files': {'x': '0', 'y': '1'}}
  path = tmp_path / 'r.json'
  path.write_text(json.dumps({'provenance': {'git': None, 'git_commit': None}, 'v': 1}))
  assert suite.stamp_git(path, manifest, ['y'])
  rec = json.loads(path.read_text())
  assert rec['v'] == 1 and rec['provenance']['git_commit'] == 'c' * 7
  git = rec['provenance']['git']
  assert git['commit'] == 'c' * 40 and git['dirty'] and git['dirty_paths'] == ['y']
  assert '2 tracked files' in git['verified_by']
  assert not suite.stamp_git(path, manifest, [])  # has git state now: left alone


@pytest.mark.parametrize('name', sorted(suite.SUITES))
@pytest.mark.parametrize('peer_site', ['/peer', None])
@pytest.mark.parametrize('smoke', [False, True])
def test_every_suite_command_line_is_accepted_by_its_script(name, peer_site, smoke):
  for _, script, extra, seconds in suite.SUITES[name]:
    module = _load(Path(script).stem)
    cmd = suite.suite_command(script, extra, Path('/tmp/x.json'), peer_site, smoke)
    args = module.build_parser().parse_args(cmd[2:])
    assert args.out == '/tmp/x.json'
    assert not any('{' in a for a in cmd)  # every placeholder filled
    if '{peer_site}' in extra:  # the peer's carried packages, where they were carried
      flag = extra[extra.index('{peer_site}') - 1]
      assert getattr(args, flag.lstrip('-').replace('-', '_')) == (None if smoke else peer_site)
    assert args.smoke == smoke
    if smoke:  # tiny inputs of the script's own, nothing carried
      assert not any(a.startswith(str(suite.CARRY)) for a in cmd)
    assert 0 < seconds <= suite.SUITE_SECONDS
  assert sum(s for *_, s in suite.SUITES[name]) <= suite.SUITE_SECONDS + 60


def _child_args(name: str):
  """(parent's args, the args its child command parses to) for one GPU benchmark at its
  defaults (torch.compile's mode unset, as on the device)."""
  module = _load(name)
  parser = module.build_parser()
  args = parser.parse_args(['--out', '/tmp/x.json'])
  if name == 'train_gpu':
    cmd = module._child_cmd(args, 'minilm_l6', 'torch_compile', Path('/tmp/c.json'))
  elif name == 'decoder_gpu':
    cmd = module._child_cmd(args, 'full', 'torch_compile', Path('/tmp/c.json'))
  else:
    cmd = module._child_cmd(parser, args, ('fixed', 'minilm_l6', 'torch_compile'),
                            Path('/tmp/c.json'))
  return args, parser.parse_args(cmd[2:])


@pytest.mark.parametrize('name', ['train_gpu', 'encode_gpu', 'decoder_gpu'])
def test_a_child_gets_the_parents_settings(name):
  # The first GPU window lost torch.compile to this: an unset mode reached the child as 'None'.
  parent, child = _child_args(name)
  assert child.compile_mode is None and parent.compile_mode is None
  for key in ('batch', 'warmup', 'blocks', 'dtype', 'compile_backend', 'compile_mode',
              'profile_steps', 'profile_calls'):
    if hasattr(parent, key):
      assert getattr(child, key) == getattr(parent, key), key


@pytest.mark.slow  # two small critical-n searches (d = 4) in subprocesses: ~25 s of CPU
def test_suite_c_smoke_searches_twice_and_compares(tmp_path):
  suite.main(['run', 'C', '--smoke', '--out', str(tmp_path)])
  rec = json.loads((tmp_path / 'suite_C.json').read_text())
  assert 'why_not_compared' not in rec, rec
  log = (tmp_path / 'critical_n_first.log').read_text()
  assert [r['rc'] for r in rec['runs'].values()] == [0, 0], log[-2000:]
  assert rec['deterministic'] is True and rec['critical_n'][0] == rec['critical_n'][1] >= 5
  first = json.loads((tmp_path / 'limit' / 'critical_n.json').read_text())
  assert list(first['critical_n']) == ['4'] and (tmp_path / 'limit' / 'critical_n.md').is_file()


def test_suite_c_checks_nothing_when_its_run_does_not_finish(tmp_path, monkeypatch):
  # The first window's two runs both hit their time limit, and the suite then compared the
  # unchanged committed record with itself and called the search deterministic.
  limit = tmp_path / 'repo' / 'results' / 'limit'
  limit.mkdir(parents=True)
  committed = json.dumps({'critical_n': {'32': 295}, 'runs': {'32': {'device': 'X'}}})
  (limit / 'critical_n.json').write_text(committed)
  monkeypatch.setattr(suite, 'REPO', tmp_path / 'repo')
  monkeypatch.setattr(suite, 'CRITICAL_N', ('-c', 'import sys; sys.exit(3)'))
  args = argparse.Namespace(smoke=False)
  rec = suite.run_critical_n(args, tmp_path / 'out', {}, None, None)
  assert rec['runs']['first']['rc'] == 3 and list(rec['runs']) == ['first']
  assert rec['deterministic'] is None and rec['critical_n'] == []
  assert 'did not finish' in rec['why_not_compared']
  assert (limit / 'critical_n.json').read_text() == committed
  assert not (tmp_path / 'out' / 'limit' / 'critical_n.json').exists()


def test_a_search_is_compared_only_with_one_the_program_wrote_on_that_device():
  mine = {'runs': {'32': {'device': 'H200', 'provenance': {}, 'attempts': {}}}}
  why = suite._why_not_comparable
  assert why({}, mine, '32') == 'no earlier search of d = 32'
  by_hand = {'runs': {'32': {'device': 'H200', 'note': 'assembled by hand', 'attempts': {}}}}
  assert 'by hand' in why(by_hand, mine, '32')
  other = {'runs': {'32': {'device': 'H100', 'provenance': {}, 'attempts': {}}}}
  assert 'H100' in why(other, mine, '32')
  assert why(mine, mine, '32') is None


def test_a_failed_profile_is_recorded_not_raised():
  common = _load('gpu_common')
  def boom(n):
    raise RuntimeError('no CUPTI')
  assert common.top_kernels(boom, 2, 'steps') == {'error': 'RuntimeError: no CUPTI', 'steps': 2}
  assert common.top_kernels(boom, 0, 'steps') is None  # not asked for


def test_collect_copies_results_but_not_smoke_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(suite, 'REPO', tmp_path / 'repo')
  (tmp_path / 'repo' / 'results').mkdir(parents=True)
  got = tmp_path / 'files' / 'out'
  got.mkdir(parents=True)
  (got / 'bench_train_gpu.json').write_text('{"smoke": false, "v": 1}')
  (got / 'bench_encode_gpu.json').write_text('{"smoke": true}')
  suite.main(['collect', str(tmp_path / 'files')])
  assert json.loads((tmp_path / 'repo' / 'results' / 'bench_train_gpu.json').read_text())['v'] == 1
  assert not (tmp_path / 'repo' / 'results' / 'bench_encode_gpu.json').exists()
