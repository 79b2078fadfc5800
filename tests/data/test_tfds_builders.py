"""TFDS ArrayRecord builders read back through as_data_source() and grain, without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from embedjax.data import readers, synthetic, tfds_builders

tfds.disable_progress_bar()


def _write_stsb(folder: Path, seed: int) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for i, split in enumerate(readers.STSB_SPLITS):
    data = synthetic.synthetic_sts(seed + i, 13 + i)
    extra = lambda j: '\tsrc\tlicense' if j % 3 == 0 else ''  # 9-field rows too
    (folder / f'sts-{split}.csv').write_text(''.join(
        f'main\tsyn\t2024\t{j:04d}\t{score:.3f}\t{a}\t{b}{extra(j)}\n'
        for j, (a, b, score) in enumerate(zip(data.sentences1, data.sentences2, data.scores))), encoding='utf-8')


def _write_sick(folder: Path, seed: int) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  data = synthetic.synthetic_sts(seed, 30)
  labels = readers.SICK_LABELS
  sets = ('TRAIN', 'TRIAL', 'TEST')
  rows = ['\t'.join(readers._SICK_COLUMNS)]
  for j, (a, b, score) in enumerate(zip(data.sentences1, data.sentences2, data.scores)):
    rows.append('\t'.join([str(j), a, b, labels[j % 3], f'{1 + 0.8 * score:.4g}', 'x', 'y', a, b, 'S', 'S',
                           sets[j % 3]]))
  (folder / 'SICK.txt').write_text('\n'.join(rows) + '\n', encoding='utf-8')


def _write_mrpc(folder: Path, seed: int) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for i, split in enumerate(readers.MRPC_SPLITS):
    data = synthetic.synthetic_pairs(seed + i, 17)
    (folder / f'msr_paraphrase_{split}.txt').write_text('\ufeff' + ''.join(
        f'{int(score)}\t{j}\t{j + 1000}\t{a}\t{b}\n'
        for j, (a, b, score) in enumerate(zip(data.sentences1, data.sentences2, data.scores))), encoding='utf-8')


def _write_beir(folder: Path, seed: int) -> None:
  """Splits train (20 queries), test (8 of them) and dev (a relevance-0 row and one positive)."""
  data = synthetic.synthetic_retrieval(seed, n_docs=60, n_queries=20)
  synthetic.write_beir(data, folder, split='train')
  (folder / 'qrels' / 'test.tsv').write_text('query-id\tcorpus-id\tscore\n' + ''.join(
      f'{q}\t{d}\t{s}\n' for q in data.query_ids[:8] for d, s in data.qrels[q].items()), encoding='utf-8')
  (folder / 'qrels' / 'dev.tsv').write_text('query-id\tcorpus-id\tscore\nq0\td0\t0\nq1\td1\t1\n', encoding='utf-8')


_WRITERS = {'stsb': _write_stsb, 'sick': _write_sick, 'mrpc': _write_mrpc, 'beir': _write_beir}
_SPLITS = {'stsb': readers.STSB_SPLITS, 'sick': tuple(readers.SICK_SPLITS), 'mrpc': readers.MRPC_SPLITS,
           'beir': ('dev', 'test', 'train')}


@pytest.fixture(scope='module')
def dirs(tmp_path_factory) -> tuple[Path, Path]:
  """(source root with one folder per dataset, TFDS data_dir)."""
  root = tmp_path_factory.mktemp('tfds')
  for name, write in _WRITERS.items():
    write(root / 'src' / name, seed=7)
  return root / 'src', root / 'data_dir'


def _reader_rows(name: str, source: Path, split: str) -> list[dict]:
  if name == 'beir':
    return tfds_builders.retrieval_pairs(readers.read_beir(source, split))
  data = {'stsb': readers.read_stsb, 'sick': readers.read_sick, 'mrpc': readers.read_mrpc}[name](source, split)
  labels = data.labels or [''] * len(data)
  return [{'sentence1': a, 'sentence2': b, 'score': s, 'label': l}
          for a, b, s, l in zip(data.sentences1, data.sentences2, data.scores, labels)]


@pytest.mark.parametrize('name', tfds_builders.DATASETS)
def test_rows_equal_reader_rows(dirs, name):
  src, data_dir = dirs
  builder = tfds_builders.build(name, src / name, data_dir)
  assert sorted(builder.info.splits) == sorted(_SPLITS[name])
  sources = builder.as_data_source()  # the raw TFDS path: text as bytes
  for split in _SPLITS[name]:
    expected = _reader_rows(name, src / name, split)
    assert len(sources[split]) == len(expected) > 0
    raw = sources[split][0]
    assert all(isinstance(raw[k], bytes) for k, v in expected[0].items() if isinstance(v, str))
    source = tfds_builders.load_pairs_source(name, split, src / name, data_dir)
    rows = [source[i] for i in range(len(source))]
    assert [set(r) for r in rows] == [set(e) for e in expected]
    for row, want in zip(rows, expected):
      for key, value in want.items():
        assert row[key] == value, (split, key)  # float64 scores round-trip exactly
        assert type(row[key]) is str if isinstance(value, str) else isinstance(row[key], np.generic)


def test_beir_pairs_skip_zero_relevance(dirs):
  src, data_dir = dirs
  source = tfds_builders.load_pairs_source('beir', 'dev', src / 'beir', data_dir)
  assert len(source) == 1 and source[0]['query_id'] == 'q1' and source[0]['doc_id'] == 'd1'


def test_build_reuses_and_tracks_source_content(dirs, tmp_path):
  src, data_dir = dirs
  first = tfds_builders.build('mrpc', src / 'mrpc', data_dir)
  files = sorted(Path(first.data_dir).iterdir())
  stamps = [f.stat().st_mtime_ns for f in files]
  again = tfds_builders.build('mrpc', src / 'mrpc', data_dir)
  assert again.data_dir == first.data_dir
  assert [f.stat().st_mtime_ns for f in files] == stamps  # not regenerated
  # Different content -> a different config directory, never stale rows.
  _write_mrpc(tmp_path / 'mrpc', seed=99)
  changed = tfds_builders.build('mrpc', tmp_path / 'mrpc', data_dir)
  assert changed.data_dir != first.data_dir
  source = tfds_builders.load_pairs_source('mrpc', 'test', tmp_path / 'mrpc', data_dir)
  assert source[0]['sentence1'] == readers.read_mrpc(tmp_path / 'mrpc').sentences1[0]


def test_unknown_name_split_and_folder(dirs):
  src, data_dir = dirs
  with pytest.raises(ValueError, match=r"'qqp'.*'stsb'"):
    tfds_builders.load_pairs_source('qqp', 'test', src / 'stsb', data_dir)
  with pytest.raises(ValueError, match=r"'validation'.*'dev'"):
    tfds_builders.load_pairs_source('stsb', 'validation', src / 'stsb', data_dir)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    tfds_builders.load_pairs_source('stsb', 'test', src / 'nowhere', data_dir)


def _collect(iterator, n: int | None = None) -> list[dict]:
  out = []
  for batch in iterator:
    out.append(batch)
    if n is not None and len(out) == n:
      break
  return out


def _flat(batches: list[dict], key: str) -> list:
  return [x for b in batches for x in b[key].tolist()]


def test_loader_order(dirs):
  src, data_dir = dirs
  kwargs = dict(name='sick', split='train', source_dir=src / 'sick', data_dir=data_dir, batch_size=3)
  expected = readers.read_sick(src / 'sick', 'train').sentences1
  plain = _collect(tfds_builders.pairs_loader(seed=0, shuffle=False, **kwargs))
  assert _flat(plain, 'sentence1') == expected
  assert plain[0]['sentence1'].shape == (3,) and plain[0]['score'].dtype == np.float64
  a = _flat(_collect(tfds_builders.pairs_loader(seed=5, **kwargs)), 'sentence1')
  b = _flat(_collect(tfds_builders.pairs_loader(seed=5, **kwargs)), 'sentence1')
  c = _flat(_collect(tfds_builders.pairs_loader(seed=6, **kwargs)), 'sentence1')
  assert a == b  # deterministic for a seed
  assert sorted(a) == sorted(expected) and a != expected and c != a


def test_loader_epochs_and_drop_remainder(dirs):
  src, data_dir = dirs
  n = len(readers.read_mrpc(src / 'mrpc', 'train'))  # 17
  batches = _collect(tfds_builders.pairs_loader('mrpc', 'train', src / 'mrpc', data_dir, batch_size=4, seed=1,
                                                num_epochs=2, drop_remainder=True))
  assert len(batches) == (2 * n) // 4 and all(len(b['score']) == 4 for b in batches)
  ids = _flat(batches, 'sentence1')
  first, second = ids[:n], ids[n:]
  assert len(set(first)) == len(first)  # an epoch is a permutation
  assert first != second[:len(first)]  # reshuffled each epoch


def test_loader_checkpoint_resumes(dirs):
  src, data_dir = dirs

  def loader():
    return tfds_builders.pairs_loader('beir', 'train', src / 'beir', data_dir, batch_size=2, seed=3,
                                      num_epochs=None)

  it = loader()
  _collect(it, 5)
  state = it.get_state()
  expected = _collect(it, 6)
  resumed = loader()
  resumed.set_state(state)
  got = _collect(resumed, 6)
  for key in ('query_id', 'doc_id', 'query', 'positive', 'score'):
    assert _flat(got, key) == _flat(expected, key)


def test_no_tensorflow_imported(tmp_path):
  """Build, read and iterate in a fresh interpreter; TensorFlow must never be imported."""
  source = tmp_path / 'stsb'
  _write_stsb(source, seed=1)
  script = textwrap.dedent(f"""
      import sys
      import embedjax.data.tfds_builders as m
      source = m.load_pairs_source('stsb', 'dev', {str(source)!r}, {str(tmp_path / 'dd')!r})
      assert len(source) == 14 and isinstance(source[0]['sentence1'], str)
      it = m.pairs_loader('stsb', 'test', {str(source)!r}, {str(tmp_path / 'dd')!r}, batch_size=4, seed=0)
      next(it)
      bad = sorted(k for k in sys.modules if k == 'tensorflow' or k.startswith('tensorflow.'))
      assert not bad, bad
      print('ok')
  """)
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
