"""Training on a researcher's own file: ``data.train='file:PATH'`` with JSONL, CSV and TSV pairs.

A tiny random-init BERT (configs/tiny_synthetic.py, shrunk further) trains two steps from each
file; a malformed file fails before anything is trained. The file reading itself (formats,
columns, every malformed case, the ArrayRecord conversion) is tested in tests/data/test_files.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from embedjax import cli
from embedjax.config import ConfigError, load_config
from embedjax.errors import DataFormatError
from embedjax.train import batches as train_batches
from embedjax.train import data as train_data
from embedjax.models.pretrained import load_spec
from embedjax.train.base_config import use_loss
from embedjax.train.loop import dry_build, train

REPO = Path(__file__).resolve().parents[2]
N = 12  # rows per file; batches of 4
OVERRIDES = ('--config.model.bert.num_hidden_layers=1', '--config.data.batch_size=4',
             '--config.data.query_len=8', '--config.data.doc_len=12', '--config.steps=2',
             '--config.ckpt_every=2', '--config.log_every=1', '--config.optim.decay=constant')


def _texts(i):
  return f'question number {i} about topic {i % 5}', f'the answer to {i} is {i * 7}'


@pytest.fixture(scope='module')
def own_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp('own')
  paths = {}
  with open(folder / 'pairs.jsonl', 'w') as f:  # two negatives each, as a list
    for i in range(N):
      q, a = _texts(i)
      f.write(json.dumps({'anchor': q, 'positive': a,
                          'negatives': [_texts(i + 1)[1], _texts(i + 2)[1]]}) + '\n')
  paths['jsonl'] = folder / 'pairs.jsonl'
  with open(folder / 'pairs.csv', 'w', newline='') as f:  # renamed columns, no negatives
    w = csv.writer(f)
    w.writerow(['id', 'question', 'answer'])
    for i in range(N):
      w.writerow([i, *_texts(i)])
  paths['csv'] = folder / 'pairs.csv'
  with open(folder / 'pairs.tsv', 'w') as f:  # default column names
    f.write('anchor\tpositive\n')
    for i in range(N):
      f.write('\t'.join(_texts(i)) + '\n')
  paths['tsv'] = folder / 'pairs.tsv'
  return paths


def _config(path, *extra):
  return load_config(str(REPO / 'configs' / 'tiny_synthetic.py'),
                     (*OVERRIDES, f'--config.data.train=file:{path}', *extra))


CASES = {'jsonl': (), 'csv': ('--config.data.file.columns=anchor=question,positive=answer',),
         'tsv': ()}
# The CSV and TSV runs have the same shapes: the second reuses the first's compiled step from the
# module's persistent compilation cache (hard-negative counts are covered by the JSONL run here and
# by tests/data/test_files.py).
NEGATIVES = {'jsonl': 2, 'csv': 0, 'tsv': 0}


@pytest.mark.parametrize('fmt', sorted(CASES))
def test_trains_a_few_steps_from_a_file(fmt, own_files, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  cfg = _config(own_files[fmt], *CASES[fmt])
  batch = dry_build(cfg)['batch']
  if NEGATIVES[fmt]:
    assert batch['neg_ids'].shape == (4, NEGATIVES[fmt], 12)
  else:
    assert 'neg_ids' not in batch
  summary = train(cfg, tmp_path / 'run', progress=False)
  assert summary['steps_done'] == 2
  losses = [json.loads(line)['train/loss']
            for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  # The loader's batches are the file's rows, tokenized (negatives stacked per row).
  sources = train_data.with_files(cfg.data.train, cfg.data.file, None)
  rows = train_data.load_rows(cfg.data.train, None, None, sources)
  assert len(rows) == N
  assert rows[3]['query'] == _texts(3)[0] and rows[3]['positive'] == _texts(3)[1]


def test_trains_cosent_on_a_scored_file(own_files, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  scored = tmp_path / 'scored.tsv'
  lines = ['text1\ttext2\tscore'] + ['\t'.join([*_texts(i), str(i % 6)]) for i in range(N)]
  scored.write_text('\n'.join(lines) + '\n')
  cfg = _config(scored, '--config.data.file.kind=scored', '--config.loss.name=cosent')
  batch = dry_build(cfg)['batch']
  assert batch['score'].shape == (4,) and 'neg_ids' not in batch
  train(cfg, tmp_path / 'run', progress=False)
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert len(records) == 2
  assert all(np.isfinite(r['train/loss']) and 'train/pair_accuracy' in r for r in records)
  # A loss on scored pairs with unscored data, and the other way round, fail in one line.
  with pytest.raises(ConfigError, match="'cosent' trains on scored pairs"):
    dry_build(_config(own_files['tsv'], '--config.loss.name=cosent'))
  with pytest.raises(ConfigError, match='gives scored pairs'):
    dry_build(_config(scored, '--config.data.file.kind=scored'))


def test_bad_row_fails_before_training(own_files, tmp_path, monkeypatch):
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  bad = tmp_path / 'bad.tsv'
  lines = own_files['tsv'].read_text().splitlines()
  lines[5] = '\t'.join([lines[5].split('\t')[0], '   '])  # file line 6: empty positive
  bad.write_text('\n'.join(lines) + '\n')
  with pytest.raises(DataFormatError, match=rf"{bad}:6: field 'positive'"):
    train(_config(bad), tmp_path / 'run', progress=False)
  assert not (tmp_path / 'run' / 'checkpoints').exists() or not any(
      (tmp_path / 'run' / 'checkpoints').iterdir())
  assert not any((tmp_path / 'cache').rglob('*.array_record*'))
  # Through the command line: one line naming the file, line and field; exit status 2.
  status = cli.main(['train', '--config', str(REPO / 'configs' / 'tiny_synthetic.py'),
                     '--workdir', str(tmp_path / 'run2'), f'--config.data.train=file:{bad}'])
  assert status == 2


def test_unknown_source_that_looks_like_a_file_says_how_to_name_it():
  with pytest.raises(ConfigError, match="write 'file:pairs.jsonl'"):
    train_data.check_sources('pairs.jsonl', train_data.SOURCES)


def test_file_options_are_checked():
  with pytest.raises(ConfigError, match='data.file.columns'):
    train_data.file_spec('file:x.jsonl', {'columns': 'anchor'})
  with pytest.raises(ConfigError, match='data.file'):
    train_data.file_spec('file:x.txt', {})


def test_labelled_file_gives_texts_as_both_columns_and_labels_as_doc_keys(tmp_path, monkeypatch):
  # (text, label) rows: each text is its own positive (two dropout views) and rows of one label
  # share a doc key, which multi_positive_info_nce takes as extra positives
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  path = tmp_path / 'intents.csv'
  path.write_text('text,label\n' + ''.join(f'utterance {i} of intent {i % 3},{i % 3}\n'
                                           for i in range(12)))
  cfg = _config(path, '--config.data.file.kind=labelled')
  with cfg.unlocked():
    use_loss(cfg, 'multi_positive_info_nce')
  out = dry_build(cfg)
  assert out['batch']['doc_ids'].shape == out['batch']['query_ids'].shape[:1] + (12,)
  sources = train_data.with_files(cfg.data.train, cfg.data.file, tmp_path / 'cache')
  assert sources[cfg.data.train].labelled
  rows = train_data.load_rows(cfg.data.train, None, tmp_path / 'cache', sources)
  tok = load_spec('all-MiniLM-L6-v2')[1]
  batch = train_batches.tokenize_batch(
      {k: np.array([rows[i][k] for i in range(6)]) for k in ('text', 'label')},
      query_tok=tok.with_max_length(12), doc_tok=tok.with_max_length(12), padding='bucket',
      pack_segments=16)
  assert batch['doc_key'].tolist() == [rows[i]['label'] for i in range(6)]
  np.testing.assert_array_equal(batch['query_ids'], batch['doc_ids'])
  with pytest.raises(ConfigError, match='cannot mix labelled texts'):
    train_data.check_sources(f'{cfg.data.train},synthetic', sources)


def test_fit_trains_in_memory_rows_and_returns_the_model(tmp_path, monkeypatch):
  # The same shapes as the CSV / TSV runs above: a cache hit for the compiled step.
  from embedjax.train.fitting import fit
  monkeypatch.setenv('EMBEDJAX_CACHE', str(tmp_path / 'cache'))
  rows = [dict(zip(('anchor', 'positive'), _texts(i))) for i in range(N)]
  config = _config('unused.jsonl')  # this module's tiny model; fit replaces its data.train
  model, summary = fit('random:all-MiniLM-L6-v2', rows, workdir=tmp_path / 'fit', steps=2,
                       batch_size=4, query_len=8, doc_len=12, lr=1e-3, config=config,
                       overrides={'optim.decay': 'constant'}, progress=False)
  assert summary['steps_done'] == 2
  emb = model.encode(['a question', 'an answer'])
  assert emb.shape == (2, 32) and np.all(np.isfinite(emb))
  # Bad rows are named by index and field before anything runs.
  from embedjax.train.fitting import rows_source
  with pytest.raises(DataFormatError, match="train_data:1: field 'positive'"):
    rows_source([{'anchor': 'a', 'positive': 'b'}, {'anchor': 'c', 'positive': ' '}])
  with pytest.raises(DataFormatError, match="train_data:1: field 'negatives'"):
    rows_source([{'anchor': 'a', 'positive': 'b', 'negatives': ['x']},
                 {'anchor': 'c', 'positive': 'd', 'negatives': ['y', 'z']}])
  with pytest.raises(DataFormatError, match="train_data:0: field 'score'"):
    rows_source([{'text1': 'a', 'text2': 'b', 'score': float('nan')}])
