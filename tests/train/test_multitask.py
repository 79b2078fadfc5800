"""Multi-task training (one task per step, drawn by weight) and two-stage training.

A tiny random-init BERT (configs/tiny_synthetic.py, shrunk further) trains on two in-memory tasks
of different batch shapes: 'pairs' (InfoNCE with one hard negative, with an instruction) and
'sts' (CoSENT on scored pairs). The sampler is checked against its weights (chi-square) and for
determinism; batches against the rows of the step's task; a run interrupted and resumed against
an uninterrupted one (bit-identical params); a first stage's final params against the second
stage's starting params (bit-identical).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from embedjax.config import ConfigError, load_config
from embedjax.train import batches as train_batches
from embedjax.train import data as train_data
from embedjax.train import multitask
from embedjax.train.base_config import check_config, task_block
from embedjax.train.loop import build_model, dry_build, model_spec, train

REPO = Path(__file__).resolve().parents[2]
N = 16  # rows per task; batches of 4
INSTRUCTION = 'Instruct: Given a question, retrieve its answer\nQuery: '
OVERRIDES = ('--config.model.bert.num_hidden_layers=1', '--config.data.batch_size=4',
             '--config.data.query_len=16', '--config.data.doc_len=12', '--config.steps=6',
             '--config.ckpt_every=6', '--config.log_every=2', '--config.optim.decay=constant',
             '--config.export=False',
             '--config.optim.warmup_steps=0', '--config.seed=0',
             # no dropout: half the compile time of each task's step (resuming with dropout is
             # tests/train/test_runs.py's; the step key is the same for every task)
             '--config.train.dropout=False')


def _rows(kind: str) -> list[dict]:
  out = []
  for i in range(N):
    if kind == 'pairs':
      pos = f'the answer to question {i} is {i * 7}'
      out.append({'query': f'question {i} about topic {i % 5}', 'positive': pos,
                  'negative': f'the answer to question {i + 1} is {i * 7 + 7}',
                  'doc_key': train_batches.text_key(pos)})
    else:
      pos = f'a second sentence number {i} about cats'
      out.append({'query': f'a sentence number {i} about dogs', 'positive': pos,
                  'score': float(i % 6), 'doc_key': train_batches.text_key(pos)})
  return out


SOURCES = {
    **train_data.SOURCES,
    'pairs': train_data.Source(lambda d, c: _rows('pairs'), needs_shared_data=False,
                               hard_negatives=True),
    'sts': train_data.Source(lambda d, c: _rows('sts'), needs_shared_data=False,
                             hard_negatives=False, scored=True),
}


def _config(*extra) -> ml_collections.ConfigDict:
  cfg = load_config(str(REPO / 'configs' / 'tiny_synthetic.py'), (*OVERRIDES, *extra))
  cfg.unlock()
  cfg.data.train = ''
  cfg.tasks.pairs = task_block('pairs', 'info_nce', weight=1.0, instruction=INSTRUCTION)
  cfg.tasks.sts = task_block('sts', 'cosent', weight=1.0)
  check_config(cfg)
  return cfg


def _flat(params) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(params))}


def _assert_same(a, b):
  a, b = _flat(a), _flat(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------------------------
# The sampler


def test_sampler_frequencies_match_the_weights_and_are_deterministic():
  weights = np.array([1.0, 2.0, 5.0])
  steps = 12_000
  draws = np.array([multitask.task_for_step(weights, 7, s) for s in range(steps)])
  counts = np.bincount(draws, minlength=3)
  expected = steps * weights / weights.sum()
  chi2 = float(np.sum((counts - expected) ** 2 / expected))
  assert chi2 < 13.82, (counts, expected)  # chi-square, 2 degrees of freedom, p = 0.001
  # A function of (seed, step) alone: any order of calls, any resume point, gives the same task.
  again = [multitask.task_for_step(weights, 7, s) for s in reversed(range(200))][::-1]
  np.testing.assert_array_equal(draws[:200], again)
  other_seed = [multitask.task_for_step(weights, 8, s) for s in range(200)]
  assert list(draws[:200]) != other_seed
  # Weights need not be normalised; a single task is always drawn.
  assert [multitask.task_for_step(10 * weights, 7, s) for s in range(200)] == list(draws[:200])
  assert {multitask.task_for_step([0.3], 1, s) for s in range(50)} == {0}
  with pytest.raises(ValueError):
    multitask.task_for_step([1.0, 0.0], 0, 0)


def test_batches_are_task_homogeneous_and_carry_the_instruction():
  cfg = _config()
  cfg.tasks.pairs.weight = 3.0  # unequal weights: the loader follows the sampler
  _, tok = model_spec(cfg.model)  # the tokenizer, without building the model
  rows = {'pairs': _rows('pairs'), 'sts': _rows('sts')}
  loader = multitask.TaskLoader(cfg, rows, tok, start=0)
  by_key = {n: {r['doc_key']: r for r in rows[n]} for n in rows}
  want_tasks = [multitask.task_names(cfg)[multitask.task_for_step([3.0, 1.0], cfg.seed, s)]
                for s in range(12)]
  got_tasks, batches = [], []
  qtok = tok.with_max_length(cfg.data.query_len)
  for _ in range(12):
    batch = next(loader)
    task = loader.current
    got_tasks.append(task)
    batches.append(batch)
    # Every row of the batch is a row of the step's task, and only that task's fields are there.
    assert set(batch['doc_key'].tolist()) <= set(by_key[task])
    assert ('neg_ids' in batch) == (task == 'pairs') and ('score' in batch) == (task == 'sts')
    prefix = INSTRUCTION if task == 'pairs' else ''
    queries = [prefix + by_key[task][k]['query'] for k in batch['doc_key'].tolist()]
    want = qtok.pad(qtok.encode(queries), cfg.data.query_len)['input_ids']
    np.testing.assert_array_equal(batch['query_ids'], want)
    if task == 'sts':
      np.testing.assert_array_equal(batch['score'],
                                    [by_key[task][k]['score'] for k in batch['doc_key'].tolist()])
  assert got_tasks == want_tasks and set(got_tasks) == {'pairs', 'sts'}
  # Each task's loader is its own: 'sts' batches continue its own order, whatever 'pairs' drew.
  solo = train_batches.make_loader(rows['sts'], tok, batch_size=4, query_len=16, doc_len=12,
                                   seed=multitask.loader_seed(cfg.seed, 'sts'),
                                   padding=cfg.data.padding, pack_segments=cfg.data.pack_segments,
                                   token_cache_texts=cfg.data.token_cache_texts)
  sts_keys = [k for t, b in zip(got_tasks, batches) if t == 'sts' for k in b['doc_key'].tolist()]
  solo_keys = [k for _ in range(got_tasks.count('sts')) for k in next(solo)['doc_key'].tolist()]
  assert sts_keys == solo_keys


# ------------------------------------------------------------------------------------------------
# Training: per-task logs, resume


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  """The 2-task run, uninterrupted: (config, workdir, summary)."""
  workdir = tmp_path_factory.mktemp('multitask') / 'full'
  cfg = _config()
  summary = train(cfg, workdir, sources=SOURCES, progress=False)
  return cfg, workdir, summary


def test_dry_build_builds_every_task():
  out = dry_build(_config(), SOURCES)
  assert sorted(out['tasks']) == ['pairs', 'sts']
  assert out['tasks']['pairs']['batch']['neg_ids'].shape == (4, 1, 12)
  assert out['tasks']['sts']['batch']['score'].shape == (4,)
  assert 'pair_accuracy' in out['tasks']['sts']['metrics'] and 'loss' in out['metrics']


def test_two_task_run_logs_per_task_metrics(full_run):
  cfg, workdir, summary = full_run
  assert summary['steps_done'] == 6
  tasks = [multitask.task_names(cfg)[multitask.task_for_step([1.0, 1.0], cfg.seed, s)]
           for s in range(6)]
  assert set(tasks[:3]) == {'pairs', 'sts'} and set(tasks[3:]) == {'pairs', 'sts'}  # both, both halves
  assert {n: summary['tasks'][n]['steps'] for n in ('pairs', 'sts')} == {
      n: tasks.count(n) for n in ('pairs', 'sts')}
  assert summary['tasks']['pairs']['rows'] == N and summary['tasks']['sts']['loss'] == 'cosent'
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [2, 4, 6]
  for r in records:
    since = tasks[r['step'] - 2:r['step']]  # the steps this record covers (log_every = 2)
    assert r['train/task'] == ['pairs', 'sts'].index(since[-1])
    for n in ('pairs', 'sts'):
      if n in since:
        assert r[f'train/{n}/steps'] == since.count(n)
        assert np.isfinite(r[f'train/{n}/loss'])
      else:
        assert f'train/{n}/loss' not in r
    # Each loss's own metrics under its task; the logged step's own as 'train/METRIC'.
    if 'sts' in since:
      assert 'train/sts/pair_accuracy' in r
    if since.count(since[-1]) == 1:
      assert r['train/loss'] == r[f'train/{since[-1]}/loss']
  saved = json.loads((workdir / 'summary.json').read_text())
  assert saved['tasks'] == summary['tasks']


def test_interrupted_multitask_run_resumes_bit_identical(full_run, tmp_path):
  cfg, full_dir, summary = full_run
  workdir = tmp_path / 'resumed'
  first = train(cfg, workdir, sources=SOURCES, stop_after=3, progress=False)
  assert first['steps_done'] == 3
  second = train(cfg, workdir, sources=SOURCES, progress=False)
  assert second['steps_done'] == 6
  _assert_same(summary['state'].params, second['state'].params)
  # The log was rewritten past the restored step: the same records, except that the first one
  # after the resume (step 4) averages its task's steps since the resume only (step 4, not 3-4).
  def records(path):
    return [{k: v for k, v in json.loads(line).items() if k != 'train/pairs_per_s'}
            for line in (path / 'metrics.jsonl').read_text().splitlines()]
  got, want = records(workdir), records(full_dir)
  assert [r['step'] for r in got] == [r['step'] for r in want] == [2, 4, 6]
  assert got[0] == want[0] and got[2] == want[2]
  assert {k: v for k, v in got[1].items() if not k.startswith('train/sts/')} == {
      k: v for k, v in want[1].items() if not k.startswith('train/sts/')}
  assert want[1]['train/sts/steps'] == 2 and got[1]['train/sts/steps'] == 1
  assert got[1]['train/sts/loss'] == got[1]['train/loss']  # step 4's own
  assert second['tasks'] == summary['tasks']


# ------------------------------------------------------------------------------------------------
# A bad tasks block: one line naming the field


def _bad(change) -> str:
  cfg = _config()
  change(cfg)
  with pytest.raises(ConfigError) as e:
    dry_build(cfg, SOURCES)
  assert '\n' not in str(e.value)
  return str(e.value)


def _set(path, value):
  def change(cfg):
    node = cfg
    *parents, leaf = path.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return change


@pytest.mark.parametrize('change,message', [
    (_set('data.train', 'synthetic'), "data.train 'synthetic': with tasks"),
    (_set('tasks.sts.loss', 'cosnet'), "tasks.sts.loss 'cosnet': not one of"),
    (_set('tasks.sts.weight', 0.0), 'tasks.sts.weight 0.0: expected a positive'),
    (_set('tasks.sts.train', ''), "tasks.sts.train '': expected"),
    (_set('tasks.sts.extra', 1), "tasks.sts must have exactly the fields"),
    (_set('tasks.sts.loss_fields.gamma', 1.0), "tasks.sts.loss_fields.gamma: loss 'cosent' takes no"),
    (_set('tasks.pairs.loss_fields.scale', 5.0), 'tasks.pairs.loss_fields.scale: shared by every'),
    (_set('tasks.pairs.loss_fields.similarity', 'cosin'), "tasks.pairs: loss.similarity 'cosin'"),
    (_set('loss.directions', ('query_to_doc', 'doc_to_query')), 'loss.directions: with tasks'),
    (_set('tasks.sts.loss', 'info_nce'), "tasks.sts: data.train 'sts' gives scored pairs"),
    (_set('tasks.pairs.train', 'nope'), "tasks.pairs: data.train 'nope': unknown training source"),
], ids=lambda x: x if isinstance(x, str) else '')
def test_bad_tasks_block_is_one_line(change, message):
  assert message in _bad(change)


# ------------------------------------------------------------------------------------------------
# Two-stage: the second run starts from the first one's final params


def test_second_stage_starts_from_the_first_stages_final_params(full_run, tmp_path):
  cfg, stage1_dir, stage1 = full_run
  final = stage1['state'].params['encoder']
  # The starting model of a run with model.init_checkpoint, as train() builds it.
  cfg2 = _config('--config.steps=0')
  cfg2.model.init_checkpoint = str(stage1_dir)
  model, origin = multitask.init_from_checkpoint(cfg2.model, build_model(cfg2.model, jax.random.key(9)))
  _assert_same(final, model.params)
  stage1_summary = json.loads((stage1_dir / 'summary.json').read_text())
  assert origin == {'workdir': str(stage1_dir.resolve()), 'step': 6,
                    'config_hash': stage1_summary['config_hash']}
  # Through train(): a run of 0 steps ends on the params it started from.
  still = train(cfg2, tmp_path / 'start', sources=SOURCES, progress=False)
  assert still['steps_done'] == 0
  _assert_same(final, still['state'].params['encoder'])
  assert still['init_from'] == origin
  # With a learning rate, stage 2 trains from there (and records where it started).
  cfg3 = _config('--config.steps=2')
  cfg3.model.init_checkpoint = str(stage1_dir)
  trained = train(cfg3, tmp_path / 'stage2', sources=SOURCES, progress=False)
  assert trained['steps_done'] == 2 and trained['init_from'] == origin
  moved = _flat(trained['state'].params['encoder'])
  assert any(not np.array_equal(moved[k], v) for k, v in _flat(final).items())
  assert json.loads((tmp_path / 'stage2' / 'summary.json').read_text())['init_from'] == origin


def test_second_stage_refuses_another_architecture_or_no_run(full_run, tmp_path):
  _, stage1_dir, _ = full_run
  cfg = _config('--config.model.bert.hidden_size=16')
  cfg.model.init_checkpoint = str(stage1_dir)
  with pytest.raises(ConfigError, match=r'model.bert .*the run in .* trained'):
    multitask.init_from_checkpoint(cfg.model, None)  # refused before the model is needed
  cfg.model.init_checkpoint = str(tmp_path / 'nothing')
  with pytest.raises(ConfigError, match='no training run there'):
    multitask.init_from_checkpoint(cfg.model, None)


def test_two_stage_configs_name_each_other():
  stage1 = load_config(str(REPO / 'configs' / 'two_stage_stage1.py'))
  stage2 = load_config(str(REPO / 'configs' / 'two_stage_stage2.py'))
  assert sorted(stage1.tasks.keys()) == ['agnews_titles', 'scifact_titles']
  assert {stage1.tasks[n].loss for n in stage1.tasks.keys()} == {'info_nce'}
  assert stage2.model.init_checkpoint == 'runs/two_stage/stage1'
  assert stage2.model.init == stage1.model.init  # the architecture stage 2 requires
  assert {n: (t.train, t.loss) for n, t in stage2.tasks.items()} == {
      'scifact': ('scifact', 'info_nce'), 'stsb': ('stsb_scored', 'cosent'),
      'mrpc': ('mrpc', 'info_nce'), 'sick': ('sick', 'info_nce')}
  assert 'agnews_clustering' not in stage2.evals  # stage 1 trained on AG News's test split
  other = load_config(str(REPO / 'configs' / 'two_stage_stage2.py') + ':runs/elsewhere')
  assert other.model.init_checkpoint == 'runs/elsewhere'


def test_packed_multitask_run_gives_the_padded_runs_losses(tmp_path):
  # At 64 tokens several of these texts share a row; each task's step gets its packed batch.
  losses = {}
  for padding in ('max_length', 'pack'):
    cfg = _config(f'--config.data.padding={padding}', '--config.data.query_len=64',
                  '--config.data.doc_len=64', '--config.steps=4', '--config.ckpt_every=4')
    train(cfg, tmp_path / padding, sources=SOURCES, progress=False)
    lines = [json.loads(x) for x in (tmp_path / padding / 'metrics.jsonl').read_text().splitlines()]
    losses[padding] = [x['train/loss'] for x in lines if 'train/loss' in x]
  assert len(losses['pack']) == 2
  np.testing.assert_allclose(losses['pack'], losses['max_length'], rtol=1e-4)
  rows = multitask.make_task_loader(cfg, None, SOURCES, model_spec(cfg.model)[1], 0)
  assert next(rows)['doc_ids'].shape[0] < 4  # (the packing compared happened)
