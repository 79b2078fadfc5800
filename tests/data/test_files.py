"""A researcher's own JSONL / CSV / TSV training files: validation, ArrayRecord conversion, reading back."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
import re
import tracemalloc
import zlib
from pathlib import Path

import grain
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from embedjax.config import ConfigError
from embedjax.data import files
from embedjax.errors import DataFormatError

tfds.disable_progress_bar()

# Texts with the characters that formats get wrong: quotes, commas, non-ASCII, edge spaces.
_PAIRS = [
    ('what is a "bank"?', 'a river bank, or a money bank', ['naïve café – 東京', ' spaces kept ']),
    ('emoji 🙂 query', 'doc one', ['neg a', 'neg b']),
    ('q3', 'p3, with comma', ['"quoted" negative', 'n3']),
]
_SCORED = [('a "quoted" one', 'b, with comma', 4.4), ('c', 'd', 0.0), ('é', 'ü', -1.25), ('e', 'f', 5)]
_LABELLED_STR = [('good match', 'sports'), ('tech news', 'tech'), ('more sports', 'sports'), ('x', 'arts')]
_LABELLED_INT = [('a', 2), ('b', 0), ('c', 2), ('d', -1)]


def _key(text: str) -> int:
  # embedjax.train.data._key, written out: the doc_key the training loop masks duplicates with.
  return zlib.crc32(text.encode('utf-8')) & 0x7FFFFFFF


def _write(path: Path, header: list[str] | None, rows: list) -> Path:
  """rows: dicts for .jsonl, lists of values for .csv (csv module, CRLF) / .tsv (tab-joined)."""
  if path.suffix == '.jsonl':
    path.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows), encoding='utf-8')
  elif path.suffix == '.csv':
    with open(path, 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      if header:
        writer.writerow(header)
      writer.writerows(rows)
  else:
    lines = ([header] if header else []) + rows
    path.write_text(''.join('\t'.join(str(v) for v in r) + '\n' for r in lines), encoding='utf-8')
  return path


def _file_and_expected(folder: Path, fmt: str, kind: str) -> tuple[Path, list[dict]]:
  path = folder / f'{kind}.{fmt}'
  if kind == 'pairs':
    if fmt == 'jsonl':  # negatives as one list field
      _write(path, None, [{'anchor': a, 'positive': p, 'negatives': n} for a, p, n in _PAIRS])
    else:  # negatives as negative_1, negative_2 columns
      _write(path, ['anchor', 'positive', 'negative_1', 'negative_2'], [[a, p, *n] for a, p, n in _PAIRS])
    return path, [{'query': a, 'positive': p, 'negatives': n, 'doc_key': _key(p)} for a, p, n in _PAIRS]
  if kind == 'scored':
    if fmt == 'jsonl':
      _write(path, None, [{'text1': a, 'text2': b, 'score': s} for a, b, s in _SCORED])
    else:
      _write(path, ['text1', 'text2', 'score'], [[a, b, repr(s)] for a, b, s in _SCORED])
    return path, [{'text1': a, 'text2': b, 'score': float(s)} for a, b, s in _SCORED]
  if fmt == 'csv':  # integer labels
    _write(path, ['text', 'label'], [[t, str(y)] for t, y in _LABELLED_INT])
    return path, [{'text': t, 'label': y} for t, y in _LABELLED_INT]
  names = sorted({y for _, y in _LABELLED_STR})
  if fmt == 'jsonl':
    _write(path, None, [{'text': t, 'label': y} for t, y in _LABELLED_STR])
  else:
    _write(path, ['text', 'label'], [[t, y] for t, y in _LABELLED_STR])
  return path, [{'text': t, 'label': names.index(y), 'label_name': y} for t, y in _LABELLED_STR]


def _rows(source) -> list[dict]:
  return [source[i] for i in range(len(source))]


def _check_types(row: dict) -> None:
  for key, value in row.items():
    if key in ('doc_key', 'label'):
      assert type(value) is np.int64, key
    elif key == 'score':
      assert type(value) is np.float64
    elif key == 'negatives':
      assert type(value) is list and all(type(v) is str for v in value)
    else:
      assert type(value) is str, key


@pytest.fixture(scope='module')
def cache(tmp_path_factory) -> Path:
  return tmp_path_factory.mktemp('cache')


@pytest.mark.parametrize('kind', files.KINDS)
@pytest.mark.parametrize('fmt', files.FORMATS)
def test_round_trip(tmp_path, cache, fmt, kind):
  path, expected = _file_and_expected(tmp_path, fmt, kind)
  spec = files.FileSpec(str(path), kind=kind)
  stats = files.validate(spec)
  source = files.prepare(spec, cache)
  rows = _rows(source)
  assert len(source) == stats.rows == len(expected)
  assert rows == expected  # float64 scores exactly (4.4 stays 4.4), texts as written
  for row in rows:
    _check_types(row)
  assert source.stats == stats and stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
  if kind == 'pairs':
    assert stats.negatives == 2
    # grain batches the list as a pytree: one (B,) array per negative slot.
    batch = grain.MapDataset.source(source).batch(3)[0]
    assert [b.tolist() for b in batch['negatives']] == [list(c) for c in zip(*(n for _, _, n in _PAIRS))]
    negatives = ('negatives',) if fmt == 'jsonl' else ('negative_1', 'negative_2')
    assert dict(stats.columns) == {'anchor': 'anchor', 'positive': 'positive', 'negatives': negatives}
  elif kind == 'scored':
    assert (stats.score_min, stats.score_max) == (-1.25, 5.0)
  elif fmt == 'csv':
    assert stats.label_type == 'int' and stats.label_names is None
    assert stats.labels == (-1, 0, 2) and stats.label_counts == (1, 1, 2)
  else:
    assert stats.label_names == ('arts', 'sports', 'tech') and stats.label_counts == (1, 2, 1)


def _tree(folder: Path) -> dict[str, int]:
  return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob('*') if p.is_file()}


def test_cache_reused_and_redone_after_edit(tmp_path, capsys):
  path, expected = _file_and_expected(tmp_path, 'jsonl', 'pairs')
  cache = tmp_path / 'cache'
  first = files.prepare(f'file:{path}', cache)
  out = capsys.readouterr().out
  assert out.count('preparing') == 1 and f'preparing {path} (3 rows) -> {cache}' in out
  tree = _tree(cache)
  assert _rows(files.prepare(f'file:{path}', cache)) == _rows(first) == expected
  copy = tmp_path / 'renamed.jsonl'  # the key is the content, not the name
  copy.write_bytes(path.read_bytes())
  assert _rows(files.prepare(str(copy), cache)) == expected
  assert capsys.readouterr().out == '' and _tree(cache) == tree  # nothing prepared again
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps({'anchor': 'new', 'positive': 'row', 'negatives': ['x', 'y']}) + '\n')
  edited = files.prepare(str(path), cache)
  assert capsys.readouterr().out.count('preparing') == 1
  assert _rows(edited) == expected + [{'query': 'new', 'positive': 'row', 'negatives': ['x', 'y'],
                                      'doc_key': _key('row')}]
  assert len(list((cache / files.FileBuilder.name).iterdir())) == 2  # a new config, the old one kept
  # The same content read with another spec is another conversion.
  files.prepare(files.FileSpec(str(path), columns={'anchor': 'positive', 'positive': 'anchor'}), cache)
  assert capsys.readouterr().out.count('preparing') == 1


def test_column_mappings(tmp_path, cache):
  # JSONL: renamed fields, negatives as a list field, an unused field.
  path = _write(tmp_path / 'a.jsonl', None,
                [{'id': i, 'q': a, 'd': p, 'hard': n} for i, (a, p, n) in enumerate(_PAIRS)])
  spec = files.FileSpec(str(path), columns={'anchor': 'q', 'positive': 'd', 'negatives': 'hard'})
  assert _rows(files.prepare(spec, cache)) == [{'query': a, 'positive': p, 'negatives': n, 'doc_key': _key(p)}
                                               for a, p, n in _PAIRS]
  # JSONL: one negative as a string field named 'negative' (the default name).
  path = _write(tmp_path / 'b.jsonl', None, [{'anchor': a, 'positive': p, 'negative': n[0]} for a, p, n in _PAIRS])
  assert [r['negatives'] for r in _rows(files.prepare(str(path), cache))] == [[n[0]] for _, _, n in _PAIRS]
  # CSV: renamed header columns in another order, two named negative columns, a column left out.
  path = _write(tmp_path / 'c.csv', ['wrong2', 'answer', 'id', 'question', 'wrong1'],
                [[n[1], p, str(i), a, n[0]] for i, (a, p, n) in enumerate(_PAIRS)])
  spec = files.FileSpec(str(path), columns=ml_collections.ConfigDict(
      {'anchor': 'question', 'positive': 'answer', 'negatives': ['wrong1', 'wrong2']}))
  rows = _rows(files.prepare(spec, cache))
  assert [(r['query'], r['positive'], r['negatives']) for r in rows] == _PAIRS_AS_TUPLES
  # TSV without a header (MS MARCO triples): columns by position.
  path = _write(tmp_path / 'd.tsv', None, [[a, p, n[0]] for a, p, n in _PAIRS])
  source = files.prepare(files.FileSpec(str(path), header=False), cache)
  assert [(r['query'], r['positive'], r['negatives']) for r in _rows(source)] == [(a, p, [n[0]]) for a, p, n in _PAIRS]
  assert dict(source.stats.columns) == {'anchor': '0', 'positive': '1', 'negatives': ('2',)}
  # ... or by position given as ints, swapped, and no negatives.
  spec = files.FileSpec(str(path), header=False, columns={'anchor': 1, 'positive': 0, 'negatives': []})
  assert [(r['query'], r['positive'], r['negatives']) for r in _rows(files.prepare(spec, cache))] == \
      [(p, a, []) for a, p, _ in _PAIRS]
  # CSV whose header names no role: taken by position (scored: exactly text1, text2, score).
  path = _write(tmp_path / 'e.csv', ['sentence1', 'sentence2', 'similarity'], [[a, b, repr(s)] for a, b, s in _SCORED])
  source = files.prepare(files.FileSpec(str(path), kind='scored'), cache)
  assert [(r['text1'], r['text2'], r['score']) for r in _rows(source)] == [(a, b, float(s)) for a, b, s in _SCORED]
  assert dict(source.stats.columns) == {'text1': 'sentence1', 'text2': 'sentence2', 'score': 'similarity'}
  # Labelled JSONL with integer labels under other names.
  path = _write(tmp_path / 'f.jsonl', None, [{'sentence': t, 'y': y} for t, y in _LABELLED_INT])
  spec = files.FileSpec(str(path), kind='labelled', columns={'text': 'sentence', 'label': 'y'})
  assert _rows(files.prepare(spec, cache)) == [{'text': t, 'label': y} for t, y in _LABELLED_INT]


_PAIRS_AS_TUPLES = [(a, p, n) for a, p, n in _PAIRS]


def test_encoding_bom_crlf_and_trailing_blank_lines(tmp_path, cache):
  path = tmp_path / 'latin.tsv'
  path.write_bytes('text1\ttext2\tscore\r\ncafé\tnaïve\t1.5\r\n\r\n\n'.encode('latin-1'))
  stats = files.validate(files.FileSpec(str(path), kind='scored', encoding='latin-1'))
  assert (stats.rows, stats.lines, stats.trailing_blank_lines) == (1, 4, 2)
  rows = _rows(files.prepare(files.FileSpec(str(path), kind='scored', encoding='latin-1'), cache))
  assert rows == [{'text1': 'café', 'text2': 'naïve', 'score': 1.5}]
  path = tmp_path / 'bom.csv'
  path.write_bytes('\ufeffanchor,positive\r\n"two\r\nlines",b\r\n'.encode('utf-8'))
  stats = files.validate(str(path))
  assert stats.header == ('anchor', 'positive') and stats.rows == 1 and stats.negatives == 0
  assert _rows(files.prepare(str(path), cache)) == [
      {'query': 'two\r\nlines', 'positive': 'b', 'negatives': [], 'doc_key': _key('b')}]


def test_chunks_keep_file_order(tmp_path, cache):
  """Small chunks: many TFDS splits, read back as one source in file order (CSV rows spanning lines)."""
  rows = [[f'anchor {i}' + ('\nsecond line' if i % 7 == 0 else ''), f'positive {i}'] for i in range(40)]
  path = _write(tmp_path / 'many.csv', ['anchor', 'positive'], rows)
  source = files.prepare(str(path), cache, chunk_bytes=100)
  assert [(r['query'], r['positive']) for r in _rows(source)] == [tuple(r) for r in rows]
  config_dir = cache / files.FileBuilder.name / f'pairs_{files.fingerprint(files.FileSpec(str(path)))[:16]}'
  shards = list(config_dir.rglob('*.array_record*'))
  assert len({s.name.split('.')[0] for s in shards}) > 5  # several parts
  ds = grain.MapDataset.source(source).shuffle(seed=0).batch(4)
  assert ds[0]['query'].shape == (4,) and ds[0]['negatives'] == []  # a list is a pytree node to grain
  assert sorted(q for i in range(len(ds)) for q in ds[i]['query'].tolist()) == sorted(r[0] for r in rows)
  again = pickle.loads(pickle.dumps(source))  # grain worker processes get a pickled source
  assert again[13] == source[13] and again.stats == source.stats


def test_file_changed_during_conversion(tmp_path, monkeypatch, capsys):
  path, _ = _file_and_expected(tmp_path, 'tsv', 'pairs')
  cache = tmp_path / 'cache'
  scan = files._scan

  def scan_then_edit(spec, chunk_bytes):
    plan = scan(spec, chunk_bytes)
    path.write_bytes(path.read_bytes().replace(b'doc one', b'doc 1!!'))  # same size, other bytes
    return plan

  monkeypatch.setattr(files, '_scan', scan_then_edit)
  with pytest.raises(DataFormatError, match='changed while it was being converted'):
    files.prepare(str(path), cache)
  assert not [p for p in cache.rglob('*') if p.is_file()]  # no conversion kept, not even a partial one
  monkeypatch.setattr(files, '_scan', scan)
  assert _rows(files.prepare(str(path), cache))[1]['positive'] == 'doc 1!!'


# (file name, content, spec options, line, field, message)
_BAD = {
    'missing JSON field': ('p.jsonl', b'{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n', {}, 2, 'positive',
                           'missing'),
    'missing header column': ('p.csv', b'anchor,pos\na,b\n', {}, 1, 'positive', 'not in the header'),
    'missing mapped column': ('p.tsv', b'q\td\na\tb\n', {'columns': {'anchor': 'q', 'positive': 'doc'}}, 1, 'doc',
                              r'not in the header \(q, d\)'),
    'empty text': ('p.csv', b'anchor,positive\na,b\n"  ",c\n', {}, 3, 'anchor', 'empty text'),
    'empty negative in a list': ('p.jsonl', b'{"anchor": "a", "positive": "b", "negatives": ["x", ""]}\n', {}, 1,
                                 'negatives[1]', 'empty text'),
    'number as text': ('p.jsonl', b'{"anchor": 3, "positive": "b"}\n', {}, 1, 'anchor', 'expected a string, got int'),
    'non-numeric score': ('s.tsv', b'text1\ttext2\tscore\na\tb\t4.5\nc\td\thigh\n', {'kind': 'scored'}, 3, 'score',
                          "expected a number, got 'high'"),
    'NaN score': ('s.jsonl', b'{"text1": "a", "text2": "b", "score": NaN}\n', {'kind': 'scored'}, 1, 'score',
                  'finite'),
    'nan score in CSV': ('s.csv', b'text1,text2,score\na,b,nan\n', {'kind': 'scored'}, 2, 'score', 'finite'),
    'bad UTF-8 in a JSON string': ('p.jsonl',
                                   b'{"anchor": "a", "positive": "b"}\n{"anchor": "a", "positive": "caf\xe9"}\n',
                                   {}, 2, 'positive', r'not valid UTF-8: byte 0xe9 at column 33'),
    'bad UTF-8 in a TSV field': ('p.tsv', b'anchor\tpositive\nok\tfine\nbad \xff\tx\n', {}, 3, 'anchor',
                                 'byte 0xff at column 5'),
    'bad UTF-8 in an unused column': ('p.csv', b'anchor,positive,note\na,b,\xff\n', {}, 2, None, 'byte 0xff'),
    'malformed JSON': ('p.jsonl', b'{"anchor": "a", "positive": "b"}\n{"anchor": "a",\n', {}, 2, None, 'invalid JSON'),
    'JSON list, not object': ('p.jsonl', b'["a", "b"]\n', {}, 1, None, 'expected a JSON object, got list'),
    'too many CSV fields': ('p.csv', b'anchor,positive\na,b\nc,d,e\n', {}, 3, None, 'expected 2 fields, got 3'),
    'too few TSV fields': ('p.tsv', b'anchor\tpositive\tnegative\na\tb\tc\nd\te\n', {}, 3, 'negative',
                           'missing: the row has 2 fields, the header 3'),
    'bad CSV quoting': ('p.csv', b'anchor,positive\n"a"b,c\n', {}, 2, None, 'bad CSV'),
    'negatives count': ('p.jsonl', b'{"anchor": "a", "positive": "b", "negatives": ["x", "y"]}\n'
                        b'{"anchor": "c", "positive": "d", "negatives": ["z"]}\n', {}, 2, 'negatives',
                        '1 negatives, but line 1 has 2'),
    'extra negative field': ('p.jsonl', b'{"anchor": "a", "positive": "b", "negative_1": "x"}\n'
                             b'{"anchor": "c", "positive": "d", "negative_1": "y", "negative_2": "z"}\n', {}, 2,
                             'negative_2', 'same number of negatives'),
    'name where ints were': ('l.csv', b'text,label\na,1\nb,sports\n', {'kind': 'labelled'}, 3, 'label',
                             "expected an integer label, got 'sports'"),
    'int where names are configured': ('l.jsonl', b'{"text": "a", "label": 3}\n',
                                       {'kind': 'labelled', 'label_type': 'str'}, 1, 'label', 'expected a label name'),
    'fractional label': ('l.jsonl', b'{"text": "a", "label": 1.5}\n', {'kind': 'labelled', 'label_type': 'int'}, 1,
                         'label', 'expected an integer label'),
    'blank line between rows': ('p.tsv', b'anchor\tpositive\na\tb\n\nc\td\n', {}, 3, None, 'blank line between rows'),
    'empty file': ('p.jsonl', b'', {}, None, None, 'empty file'),
    'only blank lines': ('p.csv', b'\n \n', {}, None, None, 'empty file'),
    'header only': ('p.csv', b'anchor,positive\n', {}, None, None, 'no rows after the header'),
}


@pytest.mark.parametrize('case', list(_BAD))
def test_malformed(tmp_path, case):
  name, content, options, line, field, message = _BAD[case]
  path = tmp_path / name
  path.write_bytes(content)
  spec = files.FileSpec(str(path), **options)
  with pytest.raises(DataFormatError) as info:
    files.validate(spec)
  error = info.value
  assert (error.path, error.line, error.field) == (str(path), line, field)
  where = f'{path}:{line}' if line is not None else str(path)
  assert str(error).startswith(f"{where}: " + (f"field '{field}': " if field else ''))
  assert re.search(message, str(error)), str(error)
  cache = tmp_path / 'cache'
  with pytest.raises(DataFormatError):
    files.prepare(spec, cache)
  assert not cache.exists() or not any(cache.iterdir())  # nothing converted, nothing created


def test_validate_streams_in_bounded_memory(tmp_path):
  path = tmp_path / 'big.tsv'
  with open(path, 'w', encoding='utf-8') as f:
    f.write('anchor\tpositive\tnegative\n')
    # Long rows keep the row count (and tracemalloc's per-allocation cost) low for 12 MB.
    filler = 'words of a longer passage ' * 20
    f.writelines(f'query number {i}\tthe positive document {i}: {filler}\tnegative {i}\n' for i in range(20_000))
  size = path.stat().st_size
  tracemalloc.start()
  try:
    stats = files.validate(str(path))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert stats.rows == 20_000 and stats.num_bytes == size > 10_000_000
  assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
  assert peak < 2 << 20, peak  # a few counters, never the file (11 MB)


def test_spec_from_strings_and_configs():
  spec = files.FileSpec.from_string('file:/data/pairs.jsonl')
  assert (spec.path, spec.resolved_format, spec.kind, spec.columns) == ('/data/pairs.jsonl', 'jsonl', 'pairs', None)
  assert files.is_file_source('file:/data/x.csv') and not files.is_file_source('scifact')
  cfg = ml_collections.ConfigDict({'path': 'file:/data/s.txt', 'format': 'tsv', 'kind': 'scored',
                                   'columns': {'text1': 'a', 'text2': 'b', 'score': 'y'}})
  spec = files.FileSpec.from_config(cfg)
  assert spec.resolved_format == 'tsv' and dict(spec.columns) == {'text1': 'a', 'text2': 'b', 'score': 'y'}
  again = files.FileSpec.from_config(spec.to_config())
  assert again == spec and hash(again) == hash(spec)
  assert files.FileSpec.from_string('file:x.csv', columns={}).columns is None  # {} means the defaults
  spec = files.FileSpec('x.jsonl', columns={'negatives': ['n1', 'n2']})
  assert spec.columns['negatives'] == ('n1', 'n2') and pickle.loads(pickle.dumps(spec)) == spec
  for bad, match in [(dict(path='x.txt'), 'cannot tell the format'), (dict(path='x.csv', kind='triplets'), 'kind'),
                     (dict(path='x.csv', columns={'query': 'q'}), "'query' is not a role of kind 'pairs'"),
                     (dict(path='x.csv', format='parquet'), 'format'), (dict(path='x.csv', encoding='utf-16'), 'ASCII'),
                     (dict(path='x.jsonl', header=False), 'header'),
                     (dict(path='x.csv', label_type='int'), 'label_type'),
                     (dict(path='x.csv', colums={}), 'unknown file option')]:
    with pytest.raises(ConfigError, match=match):
      files.FileSpec.from_config(bad)
  with pytest.raises(FileNotFoundError):
    files.validate('file:/nonexistent/pairs.jsonl')
