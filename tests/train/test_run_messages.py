"""What ``embedjax train`` tells its user: where an interrupted run can resume, that a rerun
resumes, which config changes a resume refuses, when it compiles, and what it evaluated.

One tiny run (configs/tiny_synthetic.py) is trained through the command line in this process:
interrupted (Ctrl-C injected right after the step-2 checkpoint is handed to Orbax), rerun with
more steps, then rerun with refused and allowed config changes. A persistent compilation cache
makes the rerun reuse the first run's compiled step (a constant learning rate keeps the step the
same when ``steps`` grows).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from embedjax import cli
from embedjax.config import ConfigError
from embedjax.data import readers, synthetic, tfds_builders
from embedjax.train import run_config
from embedjax.train.base_config import base_config, eval_block
from embedjax.train.checkpoint import Checkpointer
from embedjax.train.loop import format_evals, format_summary, interrupted_message

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / 'configs' / 'tiny_synthetic.py')
INTERRUPT_AT = 2
STEPS, MORE_STEPS = 4, 6


def _cli(workdir: Path, *args: str) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of ``embedjax train`` on the tiny config in this process."""
  out, err = io.StringIO(), io.StringIO()
  argv = ['train', '--config', CONFIG, '--workdir', str(workdir), '--config.ckpt_every=1',
          '--config.optim.decay=constant', *args]
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = cli.main(argv)
  return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The tiny run interrupted at step INTERRUPT_AT of STEPS, then rerun with MORE_STEPS."""
  tmp = tmp_path_factory.mktemp('run_messages')
  workdir = tmp / 'run'
  original_save = Checkpointer.save
  saved: list[int] = []

  def save_then_interrupt(self, step, *args, **kwargs):
    original_save(self, step, *args, **kwargs)  # an async save, still in flight
    saved.append(step)
    if step == INTERRUPT_AT and len(saved) == INTERRUPT_AT:
      raise KeyboardInterrupt

  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('EMBEDJAX_CACHE', str(tmp / 'cache'))  # a fresh tfds cache: the data is prepared
    mp.setattr(Checkpointer, 'save', save_then_interrupt)
    first = _cli(workdir, f'--config.steps={STEPS}')
    after_first = list(saved)
    ckpt = Checkpointer(workdir / 'checkpoints')
    saved_step = ckpt.saved_step()
    ckpt.close()
    rerun = _cli(workdir, f'--config.steps={MORE_STEPS}', '--quiet')
  return {'workdir': workdir, 'first': first, 'rerun': rerun, 'saved_step': saved_step,
          'saved_first': after_first, 'saved_rerun': saved[len(after_first):]}


def test_interrupt_finishes_the_checkpoint_and_says_how_to_resume(runs):
  status, out, err = runs['first']
  assert status == 130
  assert f'interrupted at step {INTERRUPT_AT}; run the same command to resume' in out
  assert 'Traceback' not in out + err
  # The checkpoint in flight at the interruption was completed, not abandoned.
  assert runs['saved_step'] == INTERRUPT_AT
  assert runs['saved_first'] == list(range(1, INTERRUPT_AT + 1))
  assert interrupted_message(None).startswith('interrupted before any checkpoint was saved')


def test_rerun_says_it_resumes_and_continues_to_the_new_step_count(runs):
  status, out, err = runs['rerun']
  assert status == 0, out + err
  workdir = runs['workdir']
  assert f'resuming from step {INTERRUPT_AT} (workdir {workdir})' in out
  assert f'continuing with steps: {STEPS} -> {MORE_STEPS}' in out
  # It went on from the saved step (saving each later step once) to the new count.
  assert runs['saved_rerun'] == list(range(INTERRUPT_AT + 1, MORE_STEPS + 1))
  assert json.loads((workdir / 'summary.json').read_text())['steps_done'] == MORE_STEPS
  logged = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert logged == list(range(1, MORE_STEPS + 1))
  assert json.loads((workdir / run_config.CONFIG_FILE).read_text())['steps'] == MORE_STEPS
  assert f'trained {MORE_STEPS}/{MORE_STEPS} steps' in out


def test_compile_is_announced_and_left_out_of_the_eta(runs):
  _, out, err = runs['first']
  lines = out.splitlines()
  assert 'compiling the train step ...' in lines
  compiled = [line for line in lines if line.startswith('compiled in ')]
  assert len(compiled) == 1 and lines.index(compiled[0]) > lines.index('compiling the train step ...')
  seconds = float(re.match(r'compiled in ([\d.]+) s', compiled[0]).group(1))
  assert seconds >= 1.0  # a fresh compile of the step (no cache yet); the bar must not count it
  # The bar starts after the first step: its first frame shows step 1 at 0 s elapsed.
  frames = re.findall(r'(\d+)/%d \[(\d\d:\d\d)<' % STEPS, err.replace('\r', '\n'))
  assert frames and frames[0] == ('1', '00:00'), frames[:3]


def test_tfds_preparation_says_it_reads_local_files(runs):
  _, out, err = runs['first']
  assert 'Downloading' not in out + err and 'downloaded and prepared' not in out + err
  assert 'Using custom data configuration' not in out + err
  assert re.search(r'^preparing beir from .*synthetic_beir_seed0 \(local files, nothing '
                   r'downloaded\)$', out, re.M)
  assert 'preparing' not in runs['rerun'][1]  # prepared once, then reused silently


def test_changed_config_is_refused_naming_every_field(runs):
  workdir = runs['workdir']
  before = (workdir / run_config.CONFIG_FILE).read_text()
  status, out, err = _cli(workdir, f'--config.steps={MORE_STEPS}', '--config.optim.lr=0.002',
                          '--config.model.bert.hidden_size=64', '--config.log_every=3')
  assert status == 2
  assert 'Traceback' not in out + err
  (line,) = err.strip().splitlines()
  assert 'model.bert.hidden_size: 32 -> 64' in line and 'optim.lr: 0.001 -> 0.002' in line
  assert 'log_every' not in line  # an interval may change
  assert '--allow-config-change' in line
  assert (workdir / run_config.CONFIG_FILE).read_text() == before


def test_allow_config_change_resumes_and_says_what_it_allowed(runs):
  workdir = runs['workdir']
  status, out, err = _cli(workdir, f'--config.steps={MORE_STEPS}', '--config.optim.lr=0.002',
                          '--allow-config-change', '--quiet')
  assert status == 0, out + err
  assert '--allow-config-change: continuing with optim.lr: 0.001 -> 0.002' in out
  assert json.loads((workdir / run_config.CONFIG_FILE).read_text())['optim']['lr'] == 0.002
  # A shape change it allows still cannot restore: one line naming the array, no Orbax traceback.
  shape_change = (f'--config.steps={MORE_STEPS}', '--config.optim.lr=0.002',
                  '--config.model.bert.intermediate_size=48', '--allow-config-change', '--quiet')
  status, out, err = _cli(workdir, *shape_change)
  assert status == 2 and 'Traceback' not in out + err
  assert err.strip().splitlines()[-1].endswith(
      'params/encoder/layer_0/intermediate_dense/bias has shape (64,) in the checkpoint, (48,) in '
      'this config')
  # From a shell too: Orbax's reads in flight used to print 'Event loop is closed' tracebacks
  # after that line (only a separate process shows them); the shapes are now compared before
  # any read.
  proc = subprocess.run([sys.executable, '-m', 'embedjax.cli', 'train', '--config', CONFIG,
                         '--workdir', str(workdir), '--config.ckpt_every=1',
                         '--config.optim.decay=constant', *shape_change],
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr and 'Event loop' not in proc.stderr, proc.stderr[-3000:]
  assert [line for line in proc.stderr.splitlines() if 'does not fit' in line] == [
      proc.stderr.strip().splitlines()[-1]]


def _cfg(**changes) -> ml_collections.ConfigDict:
  cfg = base_config()
  for path, value in changes.items():
    *parents, leaf = path.split('__')
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def test_resume_check_allows_only_the_listed_fields(tmp_path):
  stored = run_config.flat_config(base_config().to_dict())
  assert stored['loss.matryoshka_dims'] == [] and stored['optim.lr'] == 2e-5
  old = base_config().to_dict()
  new = _cfg(steps=500, log_every=5, ckpt_every=50, eval_every=100)
  new.evals.stsb = eval_block(dims=(384, 64))
  free, fixed = run_config.check_resume(old, new, tmp_path, allow_change=False)
  assert fixed == []
  assert [c[0] for c in free] == ['ckpt_every', 'eval_every', 'evals.stsb.dims',
                                  'evals.stsb.metrics', 'log_every', 'steps']
  assert ('evals.stsb.dims', None, [384, 64]) in free
  changed = _cfg(optim__lr=1e-4, loss__matryoshka_dims=(384, 64), steps=7)
  with pytest.raises(ConfigError) as e:
    run_config.check_resume(old, changed, tmp_path, allow_change=False)
  assert 'loss.matryoshka_dims: () -> (384, 64), optim.lr: 2e-05 -> 0.0001' in str(e.value)
  assert 'steps: 100 -> 7' not in str(e.value)  # steps may change: not reported
  free, fixed = run_config.check_resume(old, changed, tmp_path, allow_change=True)
  assert [c[0] for c in fixed] == ['loss.matryoshka_dims', 'optim.lr']
  assert [c[0] for c in free] == ['steps']
  # A listed field covers its sub-fields, not other fields that share its prefix.
  assert run_config.is_resumable('evals.scifact.dims') and not run_config.is_resumable('evals_x')


def test_fields_added_since_a_run_started_are_no_change_at_their_defaults(tmp_path):
  # a workdir from before embedjax had loss.mix_negatives and model.projection
  old = base_config().to_dict()
  del old['loss']['mix_negatives'], old['model']['projection']
  assert run_config.check_resume(old, base_config(), tmp_path, allow_change=False) == ([], [])
  changed = _cfg(loss__mix_negatives=4)
  with pytest.raises(ConfigError, match=r'loss.mix_negatives: None -> 4'):
    run_config.check_resume(old, changed, tmp_path, allow_change=False)


def test_evaluation_summary_lists_each_metric():
  assert format_evals(None, None).startswith('evaluated: none configured')
  assert format_evals({}, {}).startswith('evaluated: none configured')
  before = {'scifact_ndcg@10@384': 0.64512, 'stsb_spearman@64': 0.8}
  after = {'scifact_ndcg@10@384': 0.66199, 'stsb_spearman@64': 0.81}
  assert format_evals(before, after) == ('before -> after: scifact_ndcg@10@384 0.6451 -> 0.6620, '
                                         'stsb_spearman@64 0.8000 -> 0.8100')
  assert format_evals(None, {'stsb_spearman@64': 0.5}) == 'before -> after: stsb_spearman@64 - -> 0.5000'
  assert format_evals({'stsb_spearman@64': 0.5}, None) == 'before -> after: stsb_spearman@64 0.5000 -> -'
  summary = {'steps_done': 6, 'steps': 6, 'seconds': 2.5, 'pairs_per_s': 40.0, 'before': None,
             'after': None}
  assert format_summary(summary) == ('trained 6/6 steps in 2.5 s (40.0 pairs/s); '
                                     + format_evals(None, None))
  assert '(no steps)' in format_summary({**summary, 'pairs_per_s': None})
  configured = {**summary, 'config': {'evals': {'stsb': {'dims': [], 'metrics': []}}}}
  assert format_summary(configured).endswith('evaluated: nothing yet (evals run before the first '
                                             'step and at the end of the run)')
  assert format_summary({**configured, 'after': after}).endswith(format_evals(None, after))


def test_tfds_build_prints_one_honest_line(tmp_path, capfd, caplog):
  source = tmp_path / 'beir'
  synthetic.write_beir(synthetic.synthetic_retrieval(seed=3, n_docs=20, n_queries=6), source)
  builder = tfds_builders.build('beir', source, tmp_path / 'tfds')
  out, err = capfd.readouterr()
  assert out.splitlines().count(tfds_builders.preparing_message('beir', source)) == 1
  assert 'Downloading' not in out + err and 'downloaded and prepared' not in out + err
  assert 'Using custom data configuration' not in out + err
  # (Orbax's refused restore in test_allow_config_change_... leaves futures whose exceptions
  # asyncio logs whenever they are garbage-collected, which may be during this test: not ours.)
  assert [r.getMessage() for r in caplog.records
          if r.levelno >= logging.WARNING and r.name != 'asyncio'] == []
  rows = tfds_builders.retrieval_pairs(readers.read_beir(source, 'test'))
  assert len(builder.as_data_source(split='test')) == len(rows)
  tfds_builders.build('beir', source, tmp_path / 'tfds')  # already prepared: silent
  out, err = capfd.readouterr()
  assert 'preparing' not in out


def test_checkpoint_shapes_are_compared_by_path():
  import collections

  import jax.numpy as jnp

  from embedjax.train import checkpoint as ck
  stored = {('params', 'w'): (3, 4), ('opt_state', '0', 'mu', 'w'): (3, 4)}
  assert ck._first_mismatch(stored, dict(stored)) is None
  wider = {('params', 'w'): (3, 5), ('opt_state', '0', 'mu', 'w'): (3, 5)}
  assert ck._first_mismatch(stored, wider) == (
      'params/w has shape (3, 4) in the checkpoint, (3, 5) in this config')
  assert ck._first_mismatch(stored, {**stored, ('params', 'b'): (4,)}) == (
      'params/b is not in the checkpoint')
  assert ck._first_mismatch({**stored, ('params', 'b'): (4,)}, stored) == (
      'params/b is in the checkpoint, not in this config')
  assert ck._first_mismatch({('x',): (1,)}, {('y',): (1,)}) is None  # nothing comparable
  # names as Orbax writes a saved tree: attribute names, dict keys, sequence indices
  State = collections.namedtuple('State', 'count mu')
  tree = {'opt_state': (State(count=jnp.zeros((), jnp.int32), mu={'w': jnp.zeros((2,))}),)}
  assert ck._shapes(tree) == {('opt_state', '0', 'count'): (), ('opt_state', '0', 'mu', 'w'): (2,)}
