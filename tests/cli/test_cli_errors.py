"""``embedjax`` / ``python -m embedjax`` as a user meets it: one-line errors, help, exit status.

Every expected problem must end in exactly one stderr line ``embedjax COMMAND: WHERE: WHAT``, a
non-zero status (2; 130 after Ctrl-C), no traceback and no output file. Most cases fail before the
model loads, so each subprocess takes about a second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedjax import cli
from embedjax.paths import repo_root

REPO = repo_root()


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'embedjax', *map(str, args)], cwd=cwd or REPO,
                        capture_output=True, text=True, timeout=300)


def run_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
  """``cli.main`` in this process (no interpreter start, jax already imported), as a result."""
  capsys.readouterr()
  status = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(args, status, out, err)


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, where: str,
                          what: str, status: int = 2) -> str:
  assert proc.returncode == status, proc.stderr
  assert 'Traceback' not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith(f'embedjax {command}: {where}: '), lines[0]
  assert what in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, Path]:
  root = tmp_path_factory.mktemp('cli')
  contents = {
      'good.txt': b'first text\nsecond text\n',
      'bad_utf8.txt': b'ok\n\xff\xfe\n',
      'middle_blank.txt': b'one\n\nthree\n',
      'trunc.jsonl': b'{"text": "a"}\n{"text": "b\n',
      'nofield.jsonl': b'{"text": "a"}\n{"body": "b"}\n',
      'trailing.txt': b'alpha beta\ngamma\ndelta epsilon zeta\n\n  \n',
  }
  out = {}
  for name, data in contents.items():
    out[name] = root / name
    out[name].write_bytes(data)
  out['dir'] = root / 'a_folder'
  out['dir'].mkdir()
  out['root'] = root
  return out


@pytest.mark.parametrize('name, where, what', [
    ('bad_utf8.txt', 'bad_utf8.txt:2', 'not UTF-8: byte 0xff at column 1'),
    ('middle_blank.txt', 'middle_blank.txt:2', 'blank line before a text'),
    ('trunc.jsonl', 'trunc.jsonl:2', 'invalid JSON'),
    ('nofield.jsonl', 'nofield.jsonl:2', "field 'text': missing"),
    ('dir', 'a_folder', 'is a directory'),
    ('missing.txt', 'missing.txt', 'missing data file'),
])
def test_encode_bad_input_is_one_line(files, name, where, what):
  source = files.get(name, files['root'] / name)
  out = files['root'] / f'out_{name}.npy'
  proc = run_cli('encode', '--input', source, '--output', out)
  assert_one_line_error(proc, 'encode', str(files['root'] / where), what)
  assert not out.exists() and not list(files['root'].glob('*.partial*'))


def test_encode_output_that_is_a_folder_or_under_a_file(files):
  proc = run_cli('encode', '--input', files['good.txt'], '--output', files['dir'])
  assert_one_line_error(proc, 'encode', str(files['dir']), 'is a directory')
  assert not list(files['dir'].iterdir())
  proc = run_cli('encode', '--input', files['good.txt'], '--output', files['good.txt'] / 'x.npy')
  assert_one_line_error(proc, 'encode', str(files['good.txt']), 'is not a directory')
  proc = run_cli('encode', '--input', files['good.txt'], '--output', files['good.txt'])
  assert_one_line_error(proc, 'encode', f'--output {files["good.txt"]}', 'is the --input file')
  assert files['good.txt'].read_bytes() == b'first text\nsecond text\n'


@pytest.mark.parametrize('flag, value', [('--chunk-size', '0'), ('--rows-per-batch', '-3'),
                                         ('--chunk-size', 'many')])
def test_encode_bad_numbers_are_usage_errors(files, flag, value):
  out = files['root'] / 'never.npy'
  proc = run_cli('encode', '--input', files['good.txt'], '--output', out, flag, value)
  assert_one_line_error(proc, 'encode', f'argument {flag}', f'expected a positive integer, got')
  assert value in proc.stderr and not out.exists()


def test_unknown_model_is_one_line(files):
  out = files['root'] / 'never.npy'
  proc = run_cli('encode', '--input', files['good.txt'], '--output', out, '--model', 'no-such-model')
  assert_one_line_error(proc, 'encode', '--model', "'no-such-model' is neither a packaged model")
  assert not out.exists()


def test_argparse_errors_are_one_line(files):
  assert_one_line_error(run_cli('encode', '--output', 'x.npy'), 'encode',
                        'the following arguments are required', '--input')
  proc = run_cli('nonsense')
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "embedjax: argument COMMAND: invalid choice: 'nonsense' (choose from 'eval', 'encode', "
      "'train') (see embedjax --help)"]


@pytest.mark.parametrize('position', ['first', 'last'])
def test_debug_anywhere_shows_the_traceback(files, position):
  args = ['encode', '--input', files['bad_utf8.txt'], '--output', files['root'] / 'dbg.npy']
  args = ['--debug', *args] if position == 'first' else [*args, '--debug']
  proc = run_cli(*args)
  assert proc.returncode == 2
  assert 'Traceback (most recent call last)' in proc.stderr and 'DataFormatError' in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'embedjax encode: {files["bad_utf8.txt"]}:2: not UTF-8')


def test_train_config_errors_are_one_line(tmp_path, capsys, monkeypatch):
  # Unknown fields and wrong scalar types are covered by tests/test_configs.py; these are the
  # other ways an override goes wrong.
  proc = run_cli('train', '--config', 'configs/tiny_synthetic.py', '--workdir', tmp_path / 'w',
                 '--config.optim=3')
  assert_one_line_error(proc, 'train', 'configs/tiny_synthetic.py',
                        "--config.optim: expected ConfigDict")
  monkeypatch.chdir(REPO)
  proc = run_in_process(capsys, 'train', '--config', 'configs/tiny_synthetic.py', '--workdir',
                        tmp_path / 'w', '--config.optim.lr')
  assert_one_line_error(proc, 'train', 'configs/tiny_synthetic.py',
                        'Missing value for flag --config.optim.lr')
  proc = run_in_process(capsys, 'train', '--config', 'configs/nope.py')
  assert_one_line_error(proc, 'train', 'config file configs/nope.py', 'no such file')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('spec, override, where, what', [
    ('configs/tiny_synthetic.py', '--config.loss.similarity=foo', "loss.similarity 'foo'",
     "not one of ['cosine', 'dot']"),                 # was a bare KeyError: 'foo'
    ('configs/tiny_synthetic.py', '--config.data.batch_size=0', 'data.batch_size 0',
     'must be positive'),                                # was a ZeroDivisionError
    ('configs/tiny_synthetic.py', '--config.optim.decay=cosin', "optim.decay 'cosin'",
     "not one of ['cosine', 'linear', 'constant']"),
    ('configs/tiny_synthetic.py', '--config.model.dtype=float16', "model.dtype 'float16'",
     "not one of ['float32', 'bfloat16']"),
    ('configs/tiny_synthetic.py', '--config.model.init=scratch', "model.init 'scratch'",
     "must be 'pretrained:NAME' or 'random:NAME'"),
    ('configs/tiny_synthetic.py', '--config.data.train=nope', "data.train 'nope'",
     'unknown training source'),
    ('configs/tiny_synthetic.py', '--config.model.bert.hidden_size=30',
     'model.bert.hidden_size 30', 'not divisible by model.bert.num_attention_heads 4'),
    ('configs/limit_finetune.py:zzz', '--config.steps=1', 'configs/limit_finetune.py:zzz',
     "limit_finetune takes ':train' or ':test', got 'zzz'"),  # get_config's own error
])
def test_train_bad_values_are_one_line(capsys, monkeypatch, spec, override, where, what):
  monkeypatch.chdir(REPO)
  proc = run_in_process(capsys, 'train', '--config', spec, '--dry-run', override)
  assert_one_line_error(proc, 'train', where, what)


def test_help_lists_every_command_and_defaults():
  top = run_cli('--help')
  assert top.returncode == 0
  for name in ('eval', 'encode', 'train'):
    assert any(line.split()[:1] == [name] and len(line.split()) > 1
               for line in top.stdout.splitlines()), top.stdout
  assert '--debug' in top.stdout
  encode = run_cli('encode', '--help').stdout.replace('\n', ' ')
  encode = ' '.join(encode.split())  # argparse wraps lines
  for text in ('(default: 32768)', '(default: auto)', '(default: title)', '(default: text)',
               "TITLE + ' ' + TEXT, as BEIR corpora expect", '(default: all-MiniLM-L6-v2)'):
    assert text in encode
  evals = ' '.join(run_cli('eval', '--help').stdout.split())
  assert '--output FILE' in evals and './results/eval/<model>.json' in evals
  assert '--out ' not in evals  # the old name still works but is not advertised
  train = run_cli('train', '--help')
  assert train.returncode == 0 and '--workdir' in train.stdout


def test_console_script_equals_python_m():
  script = shutil.which('embedjax', path=str(Path(sys.executable).parent))
  if script is None:
    pytest.skip('the embedjax console script is not installed')
  a = subprocess.run([script, '--help'], capture_output=True, text=True, timeout=60)
  assert a.returncode == 0 and a.stdout == run_cli('--help').stdout


def test_list_tasks_names_every_task(capsys):
  from embedjax.evals.tasks import DEFAULT_TASKS, TASKS
  proc = run_in_process(capsys, 'eval', '--list-tasks')
  assert proc.returncode == 0 and proc.stderr == ''
  rows = {line.split()[0]: line.split() for line in proc.stdout.strip().splitlines()}
  assert list(rows) == list(TASKS)
  for name, task in TASKS.items():
    assert rows[name][1:3] == [task.kind, task.main_metric]
    assert ('(default)' in ' '.join(rows[name])) == (name in DEFAULT_TASKS)


def test_a_closed_stdout_ends_quietly():
  # `embedjax eval --list-tasks | head -1`: the reader is gone before the first write.
  proc = subprocess.Popen([sys.executable, '-m', 'embedjax', 'eval', '--list-tasks'], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  proc.stdout.close()
  stderr = proc.stderr.read()
  assert proc.wait(timeout=60) == 141 and stderr == ''


def test_eval_bad_arguments_fail_before_the_model(files, tmp_path, capsys, monkeypatch):
  import embedjax.models.pretrained

  def no_load(*args, **kwargs):
    raise AssertionError('the model was loaded before the arguments were checked')

  monkeypatch.setattr(embedjax.models.pretrained, 'load_pretrained', no_load)
  proc = run_cli('eval', '--tasks', 'synthetic_sts', '--output', files['dir'])
  assert_one_line_error(proc, 'eval', str(files['dir']), 'is a directory')
  assert 'model:' not in proc.stdout
  for args, where, what in [
      (['--tasks', 'synthetic_sts,nope'], '--tasks', 'unknown task(s) nope'),
      (['--data-dir', tmp_path / 'absent', '--tasks', 'stsb'], tmp_path / 'absent',
       'no such data folder'),
      (['--data-dir', tmp_path, '--tasks', 'stsb'], tmp_path / 'stsb', 'no such data folder'),
      (['--tasks', 'synthetic_sts', '--output', files['good.txt'] / 'r.json'], files['good.txt'],
       'is not a directory'),
  ]:
    assert_one_line_error(run_in_process(capsys, 'eval', *args), 'eval', str(where), what)


def test_out_is_a_hidden_alias_of_output():
  parser = cli.build_parser()
  assert parser.parse_args(['eval', '--out', 'a.json']).output == 'a.json'
  assert parser.parse_args(['eval', '--output', 'b.json']).output == 'b.json'


def test_trailing_blank_lines_are_ignored_and_counted(files, minilm):
  from embedjax.encoding import encode
  out = files['root'] / 'sub' / 'trailing.npy'  # a missing output folder is created
  proc = run_cli('encode', '--input', files['trailing.txt'], '--output', out, '--quiet')
  assert proc.returncode == 0, proc.stderr
  assert f'wrote {out}: 3 x 384 float32 (2 trailing blank lines ignored)' in proc.stdout
  expected = encode(minilm, ['alpha beta', 'gamma', 'delta epsilon zeta'], progress=False)
  np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
  assert not list(out.parent.glob('*.partial*'))


@pytest.mark.parametrize('raised, status', [(KeyboardInterrupt, 130), (RuntimeError, None)])
def test_failure_mid_encode_leaves_no_file(files, minilm, monkeypatch, capsys, raised, status):
  # A real encode, stopped inside its write loop: the partial .npy exists, then must be gone.
  import embedjax.encoding
  import embedjax.models.pretrained
  out = files['root'] / f'stopped_{raised.__name__}.npy'
  seen = []

  def stop(*args, **kwargs):
    seen.extend(out.parent.glob(out.name + '.partial*'))
    raise raised('stop')

  monkeypatch.setattr(embedjax.encoding, '_scatter', stop)
  monkeypatch.setattr(embedjax.models.pretrained, 'load_pretrained', lambda *a, **k: minilm)
  argv = ['encode', '--input', str(files['good.txt']), '--output', str(out), '--quiet']
  if status is None:  # not an expected error: the exception and its traceback come through
    with pytest.raises(raised, match='stop'):
      cli.main(argv)
  else:
    assert cli.main(argv) == status
    assert capsys.readouterr().err == 'embedjax encode: interrupted\n'
  assert seen, 'the partial file was never written, so the test proves nothing'
  assert not out.exists() and not list(out.parent.glob(out.name + '.partial*'))


def test_eval_writes_under_the_current_directory(tmp_path, minilm, monkeypatch):
  # Where the result goes, not what it holds (tests/test_tasks_cli.py runs a real task): the
  # task itself is replaced by a fixed result.
  import embedjax.evals.tasks
  import embedjax.models.pretrained
  result = {'spearman': 0.5, 'main_metric': 'spearman', 'counts': {'pairs': 3}, 'seconds': 0.1}
  monkeypatch.setattr(embedjax.evals.tasks, 'run_task', lambda name, *a, **k: dict(result))
  monkeypatch.setattr(embedjax.models.pretrained, 'load_pretrained', lambda *a, **k: minilm)
  monkeypatch.chdir(tmp_path)
  in_repo = REPO / 'results' / 'eval' / 'all-MiniLM-L6-v2.synthetic.json'
  before = in_repo.stat().st_mtime_ns if in_repo.exists() else None
  assert cli.main(['eval', '--tasks', 'synthetic_sts', '--quiet']) == 0
  record = json.loads((tmp_path / 'results' / 'eval' / 'all-MiniLM-L6-v2.synthetic.json').read_text())
  assert record['synthetic_sts'] == result and record['model'] == 'all-MiniLM-L6-v2'
  assert (in_repo.stat().st_mtime_ns if in_repo.exists() else None) == before
