"""Readers: happy paths on tiny fixtures, every bad-input case, and counts on the shared data."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from embedjax.data import readers
from embedjax.errors import DataFormatError
from embedjax.paths import shared_data_dir


def _write(path: Path, text: str | bytes) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  data = text.encode('utf-8') if isinstance(text, str) else text
  if path.suffix == '.gz':
    data = gzip.compress(data)
  path.write_bytes(data)
  return path


def _jsonl(*rows) -> str:
  return ''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows)


def _assert_bad(excinfo: pytest.ExceptionInfo, name: str, line: int | None, field: str | None = None) -> None:
  """The error names the file, the 1-based line and (when given) the field."""
  err = excinfo.value
  assert isinstance(err, DataFormatError)
  assert Path(err.path).name == name
  assert err.line == line
  message = str(err)
  assert name in message
  if line is not None:
    assert f'{name}:{line}:' in message
  if field is not None:
    assert err.field == field
    assert f"'{field}'" in message


# ----------------------------------------------------------------------------------------------
# BEIR


DOCS = [
    {'_id': 'd1', 'title': 'Cats', 'text': 'Cats purr.'},
    {'_id': 'd2', 'title': '', 'text': 'Dogs bark.'},
    {'_id': 'd3', 'text': 'Birds sing.'},  # no title at all
    {'_id': 'd4', 'title': 'Only a title', 'text': ''},
]
QUERIES = [
    {'_id': 'q1', 'text': 'what purrs'},
    {'_id': 'q2', 'text': 'what barks', 'metadata': {}},
    {'_id': 'q3', 'text': 'unjudged query'},
]
QRELS = 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td4\t0\n'


def _beir(folder: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, corpus_name='corpus.jsonl') -> Path:
  _write(folder / corpus_name, _jsonl(*docs))
  _write(folder / 'queries.jsonl', _jsonl(*queries))
  _write(folder / 'qrels' / 'test.tsv', qrels)
  return folder


@pytest.mark.parametrize('corpus_name', ['corpus.jsonl', 'corpus.jsonl.gz'])
def test_read_beir(tmp_path, corpus_name):
  data = readers.read_beir(_beir(tmp_path, corpus_name=corpus_name))
  assert data.corpus_ids == ['d1', 'd2', 'd3', 'd4']
  assert data.corpus_texts == ['Cats Cats purr.', 'Dogs bark.', 'Birds sing.', 'Only a title']
  assert data.query_ids == ['q1', 'q2']  # q3 has no judgement in this split
  assert data.query_texts == ['what purrs', 'what barks']
  assert data.qrels == {'q1': {'d1': 1}, 'q2': {'d2': 2, 'd4': 0}}
  assert data.counts == {'docs': 4, 'queries': 2, 'qrels': 3}
  assert data.summary() == 'docs=4 queries=2 qrels=3'


def test_read_jsonl_gzip_and_blank_lines(tmp_path):
  path = _write(tmp_path / 'x.jsonl.gz', '{"a": 1}\n\n{"a": 2}\n')
  assert list(readers.read_jsonl(path)) == [(1, {'a': 1}), (3, {'a': 2})]


def test_read_qrels_tsv_rows(tmp_path):
  path = _write(tmp_path / 'qrels.tsv', 'query-id\tcorpus-id\tscore\r\nq\td\t1\r\nq\te\t1.0\r\n')
  assert readers.read_qrels_tsv(path) == [readers.QrelRow(2, 'q', 'd', 1), readers.QrelRow(3, 'q', 'e', 1)]


BAD_BEIR = {
    # name: (file to corrupt, content, bad file name, line, field)
    'truncated_json': ('corpus.jsonl', _jsonl(DOCS[0], DOCS[1], '{"_id": "d3", "text": "Bir', DOCS[3]),
                       'corpus.jsonl', 3, None),
    'not_an_object': ('queries.jsonl', _jsonl(QUERIES[0], '["q2"]'), 'queries.jsonl', 2, None),
    'missing_id': ('corpus.jsonl', _jsonl(DOCS[0], {'title': 't', 'text': 'x'}), 'corpus.jsonl', 2, '_id'),
    'missing_text': ('corpus.jsonl', _jsonl(DOCS[0], DOCS[1], {'_id': 'd3', 'title': 't'}), 'corpus.jsonl', 3, 'text'),
    'non_string_text': ('queries.jsonl', _jsonl(QUERIES[0], {'_id': 'q2', 'text': 5}), 'queries.jsonl', 2, 'text'),
    'empty_doc': ('corpus.jsonl', _jsonl(DOCS[0], {'_id': 'd2', 'title': '', 'text': ' '}), 'corpus.jsonl', 2, 'text'),
    'empty_query': ('queries.jsonl', _jsonl(QUERIES[0], {'_id': 'q2', 'text': ''}), 'queries.jsonl', 2, 'text'),
    'duplicate_doc': ('corpus.jsonl', _jsonl(DOCS[0], DOCS[1], DOCS[0]), 'corpus.jsonl', 3, '_id'),
    'duplicate_query': ('queries.jsonl', _jsonl(QUERIES[0], QUERIES[1], QUERIES[1]), 'queries.jsonl', 3, '_id'),
    'unknown_doc': ('qrels/test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tnope\t1\n', 'test.tsv', 3,
                    'corpus-id'),
    'unknown_query': ('qrels/test.tsv', 'query-id\tcorpus-id\tscore\nq9\td1\t1\n', 'test.tsv', 2, 'query-id'),
    'wrong_columns': ('qrels/test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n', 'test.tsv', 3, None),
    'bad_score': ('qrels/test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\tyes\n', 'test.tsv', 2, 'score'),
    'fractional_score': ('qrels/test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\t0.5\n', 'test.tsv', 2, 'score'),
    'duplicate_qrel': ('qrels/test.tsv', 'query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\n', 'test.tsv', 3,
                       'corpus-id'),
    'no_header': ('qrels/test.tsv', 'q1\td1\t1\n', 'test.tsv', 1, None),
    'non_utf8': ('queries.jsonl', _jsonl(QUERIES[0]).encode() + b'{"_id": "q2", "text": "caf\xe9"}\n',
                 'queries.jsonl', 2, None),
    'non_utf8_qrels': ('qrels/test.tsv', b'query-id\tcorpus-id\tscore\nq1\td1\t1\nq\xff\td1\t1\n', 'test.tsv', 3, None),
}


@pytest.mark.parametrize('case', sorted(BAD_BEIR))
def test_read_beir_bad_input(tmp_path, case):
  relpath, content, name, line, field = BAD_BEIR[case]
  folder = _beir(tmp_path)
  _write(folder / relpath, content)
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_beir(folder)
  _assert_bad(excinfo, name, line, field)


def test_read_beir_non_utf8_in_gzip(tmp_path):
  folder = _beir(tmp_path, corpus_name='corpus.jsonl.gz')
  _write(folder / 'corpus.jsonl.gz', _jsonl(DOCS[0]).encode() + b'{"_id": "d2", "text": "\x80"}\n')
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_beir(folder)
  _assert_bad(excinfo, 'corpus.jsonl.gz', 2)


def test_read_beir_unknown_split(tmp_path):
  folder = _beir(tmp_path)
  with pytest.raises(ValueError, match=r"'dev'.*\['test'\]"):
    readers.read_beir(folder, 'dev')


@pytest.mark.parametrize('missing', ['corpus.jsonl', 'queries.jsonl', 'qrels/test.tsv'])
def test_read_beir_missing_file(tmp_path, missing):
  folder = _beir(tmp_path)
  (folder / missing).unlink()
  if missing.startswith('qrels'):
    (folder / 'qrels').rmdir()
  with pytest.raises(FileNotFoundError, match=Path(missing).name):
    readers.read_beir(folder)


# ----------------------------------------------------------------------------------------------
# LIMIT


def _limit(folder: Path, qrels: str | None = None) -> Path:
  _write(folder / 'corpus.jsonl', _jsonl({'_id': 'Ann Lee', 'title': '', 'text': 'Ann Lee likes Cats and Tea.'},
                                         {'_id': 'Bo Ray', 'title': '', 'text': 'Bo Ray likes Cats.'}))
  _write(folder / 'queries.jsonl', _jsonl({'_id': 'query_0', 'text': 'Who likes Cats?'},
                                          {'_id': 'query_1', 'text': 'Who likes Tea?'}))
  if qrels is None:
    qrels = _jsonl({'query-id': 'query_0', 'corpus-id': 'Ann Lee', 'score': 1},
                   {'query-id': 'query_0', 'corpus-id': 'Bo Ray', 'score': 1},
                   {'query-id': 'query_1', 'corpus-id': 'Ann Lee', 'score': 1})
  _write(folder / 'qrels.jsonl', qrels)
  return folder


def test_read_limit(tmp_path):
  data = readers.read_limit(_limit(tmp_path))
  assert data.corpus_ids == ['Ann Lee', 'Bo Ray']
  assert data.qrels == {'query_0': {'Ann Lee': 1, 'Bo Ray': 1}, 'query_1': {'Ann Lee': 1}}
  assert data.counts == {'docs': 2, 'queries': 2, 'qrels': 3}


@pytest.mark.parametrize('qrels, line, field', [
    (_jsonl({'query-id': 'query_0', 'corpus-id': 'Ann Lee', 'score': 1},
            {'query-id': 'query_0', 'corpus-id': 'Nobody', 'score': 1}), 2, 'corpus-id'),
    (_jsonl({'query-id': 'query_7', 'corpus-id': 'Ann Lee', 'score': 1}), 1, 'query-id'),
    (_jsonl({'query-id': 'query_0', 'corpus-id': 'Ann Lee'}), 1, 'score'),
    (_jsonl({'query-id': 'query_0', 'corpus-id': 'Ann Lee', 'score': 'x'}), 1, 'score'),
    (_jsonl({'query-id': 'query_0', 'corpus-id': 'Ann Lee', 'score': 1}, '{"query-id": "query_1", "corp'), 2, None),
    (_jsonl({'corpus-id': 'Ann Lee', 'score': 1}), 1, 'query-id'),
])
def test_read_limit_bad_qrels(tmp_path, qrels, line, field):
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_limit(_limit(tmp_path, qrels))
  _assert_bad(excinfo, 'qrels.jsonl', line, field)


def test_read_limit_missing_corpus(tmp_path):
  folder = _limit(tmp_path)
  (folder / 'corpus.jsonl').unlink()
  with pytest.raises(FileNotFoundError, match='corpus.jsonl'):
    readers.read_limit(folder)


# ----------------------------------------------------------------------------------------------
# STS-B

STSB = ('main-captions\tMSRvid\t2012test\t0001\t5.000\tA man plays.\tA man is playing.\n'
        'main-news\theadlines\t2013\t0002\t0.250\tSaid "no".\tIt rained.\tsrc\tlicense\n')


def test_read_stsb(tmp_path):
  _write(tmp_path / 'sts-dev.csv', STSB)
  data = readers.read_stsb(tmp_path, 'dev')
  assert data.sentences1 == ['A man plays.', 'Said "no".']
  assert data.sentences2 == ['A man is playing.', 'It rained.']
  assert data.scores.dtype == np.float64
  np.testing.assert_array_equal(data.scores, [5.0, 0.25])
  assert data.labels is None
  assert data.counts == {'pairs': 2}


@pytest.mark.parametrize('bad_line, field', [
    ('main\tMSRvid\t2012\t3\t2.0\tonly one sentence\n', None),  # 6 columns
    ('main\tMSRvid\t2012\t3\t2.0\ta\tb\tc\n', None),  # 8 columns
    ('main\tMSRvid\t2012\t3\tabc\ta\tb\n', 'score'),
    ('main\tMSRvid\t2012\t3\t5.5\ta\tb\n', 'score'),
    ('main\tMSRvid\t2012\t3\tnan\ta\tb\n', 'score'),
    ('main\tMSRvid\t2012\t3\t1.0\t \tb\n', 'sentence1'),
    ('main\tMSRvid\t2012\t3\t1.0\ta\t\n', 'sentence2'),
])
def test_read_stsb_bad_input(tmp_path, bad_line, field):
  _write(tmp_path / 'sts-test.csv', STSB + bad_line)
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_stsb(tmp_path)
  _assert_bad(excinfo, 'sts-test.csv', 3, field)


def test_read_stsb_non_utf8(tmp_path):
  _write(tmp_path / 'sts-test.csv', STSB.encode() + b'main\tMSRvid\t2012\t3\t1.0\tna\xefve\tb\n')
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_stsb(tmp_path)
  _assert_bad(excinfo, 'sts-test.csv', 3)
  assert '0xef' in str(excinfo.value)


def test_read_stsb_split_and_missing(tmp_path):
  with pytest.raises(ValueError, match=r"'validation'.*'dev'"):
    readers.read_stsb(tmp_path, 'validation')
  with pytest.raises(FileNotFoundError, match='sts-train.csv'):
    readers.read_stsb(tmp_path, 'train')


# ----------------------------------------------------------------------------------------------
# SICK

SICK_HEADER = '\t'.join(readers._SICK_COLUMNS) + '\n'


def _sick_row(pair_id, a, b, label, score, semeval_set):
  return '\t'.join([str(pair_id), a, b, label, str(score), 'x', 'y', a, b, 'FLICKR', 'FLICKR', semeval_set]) + '\n'


SICK = (SICK_HEADER + _sick_row(1, 'A dog runs', 'A dog is running', 'ENTAILMENT', 4.5, 'TRAIN')
        + _sick_row(2, 'A cat sleeps', 'No cat sleeps', 'CONTRADICTION', 3.2, 'TEST')
        + _sick_row(3, 'A man sings', 'A woman cooks', 'NEUTRAL', 1.1, 'TRAIN\r')
        + _sick_row(4, 'Kids play', 'Children play', 'ENTAILMENT', 4.9, 'TRIAL'))


@pytest.mark.parametrize('name', ['SICK.txt', 'SICK.txt.gz'])
def test_read_sick(tmp_path, name):
  _write(tmp_path / name, SICK)
  train = readers.read_sick(tmp_path, 'train')
  assert train.sentences1 == ['A dog runs', 'A man sings']
  assert train.labels == ['ENTAILMENT', 'NEUTRAL']
  np.testing.assert_array_equal(train.scores, [4.5, 1.1])
  assert readers.read_sick(tmp_path, 'test').sentences2 == ['No cat sleeps']
  assert readers.read_sick(tmp_path, 'trial').counts == {'pairs': 1, 'label=ENTAILMENT': 1}


@pytest.mark.parametrize('bad_line, field', [
    (_sick_row(5, 'a', 'b', 'MAYBE', 3.0, 'TEST'), 'entailment_label'),
    (_sick_row(5, 'a', 'b', 'NEUTRAL', 'high', 'TEST'), 'relatedness_score'),
    (_sick_row(5, 'a', 'b', 'NEUTRAL', 0.5, 'TEST'), 'relatedness_score'),
    (_sick_row(5, 'a', 'b', 'NEUTRAL', 3.0, 'DEV'), 'SemEval_set'),
    (_sick_row(5, '', 'b', 'NEUTRAL', 3.0, 'TEST'), 'sentence_A'),
    ('5\ta\tb\tNEUTRAL\t3.0\n', None),
])
def test_read_sick_bad_input(tmp_path, bad_line, field):
  _write(tmp_path / 'SICK.txt', SICK + bad_line)
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_sick(tmp_path, 'train')  # rows of other splits are validated too
  _assert_bad(excinfo, 'SICK.txt', 6, field)


def test_read_sick_bad_header_split_missing(tmp_path):
  _write(tmp_path / 'SICK.txt', SICK.replace('pair_ID', 'id', 1))
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_sick(tmp_path)
  _assert_bad(excinfo, 'SICK.txt', 1)
  with pytest.raises(ValueError, match=r"'dev'.*'trial'"):
    readers.read_sick(tmp_path, 'dev')
  with pytest.raises(FileNotFoundError, match='SICK.txt'):
    readers.read_sick(tmp_path / 'nowhere')


# ----------------------------------------------------------------------------------------------
# MRPC

MRPC = '\ufeff1\t101\t102\tHe said yes.\tHe agreed.\n0\t103\t104\tIt is red.\tIt is "blue".\n'


def test_read_mrpc(tmp_path):
  _write(tmp_path / 'msr_paraphrase_train.txt', MRPC)
  data = readers.read_mrpc(tmp_path, 'train')
  assert data.sentences1 == ['He said yes.', 'It is red.']
  assert data.sentences2 == ['He agreed.', 'It is "blue".']
  np.testing.assert_array_equal(data.scores, [1.0, 0.0])


def test_read_mrpc_official_header(tmp_path):
  _write(tmp_path / 'msr_paraphrase_test.txt', 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n' + MRPC[1:])
  assert len(readers.read_mrpc(tmp_path)) == 2


@pytest.mark.parametrize('bad_line, field', [
    ('2\t1\t2\ta\tb\n', 'Quality'),
    ('x\t1\t2\ta\tb\n', 'Quality'),
    ('1\t1\t2\ta\n', None),
    ('1\t1\t2\ta\tb\tc\n', None),
    ('1\t1\t2\ta\t \n', '#2_String'),
])
def test_read_mrpc_bad_input(tmp_path, bad_line, field):
  _write(tmp_path / 'msr_paraphrase_test.txt', MRPC + bad_line)
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_mrpc(tmp_path)
  _assert_bad(excinfo, 'msr_paraphrase_test.txt', 3, field)


def test_read_mrpc_non_utf8_and_split(tmp_path):
  _write(tmp_path / 'msr_paraphrase_test.txt', MRPC.encode() + b'1\t1\t2\t\xc3(\tb\n')
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_mrpc(tmp_path)
  _assert_bad(excinfo, 'msr_paraphrase_test.txt', 3)
  with pytest.raises(ValueError, match=r"'dev'.*'train', 'test'"):
    readers.read_mrpc(tmp_path, 'dev')


# ----------------------------------------------------------------------------------------------
# BANKING77

BANKING = 'text,category\nHow do I locate my card?,card_arrival\n"Hi, my card is lost",lost_or_stolen_card\n'


def _banking(folder: Path, csv_text: str = BANKING) -> Path:
  _write(folder / 'categories.json', json.dumps(['lost_or_stolen_card', 'card_arrival']))
  _write(folder / 'test.csv', csv_text)
  return folder


def test_read_banking77(tmp_path):
  data = readers.read_banking77(_banking(tmp_path))
  assert data.texts == ['How do I locate my card?', 'Hi, my card is lost']
  assert data.labels.dtype == np.int64
  np.testing.assert_array_equal(data.labels, [1, 0])
  assert data.label_names == ['lost_or_stolen_card', 'card_arrival']
  assert data.counts == {'texts': 2, 'classes': 2}


@pytest.mark.parametrize('bad_line, field', [
    ('Where is it?,card_gone\n', 'category'),
    ('Where is it?\n', None),
    ('Where,is,it\n', None),
    ('"",card_arrival\n', 'text'),
])
def test_read_banking77_bad_input(tmp_path, bad_line, field):
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_banking77(_banking(tmp_path, BANKING + bad_line))
  _assert_bad(excinfo, 'test.csv', 4, field)


def test_read_banking77_non_utf8_header_split(tmp_path):
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_banking77(_banking(tmp_path, BANKING.encode() + b'caf\xe9?,card_arrival\n'))
  _assert_bad(excinfo, 'test.csv', 4)
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_banking77(_banking(tmp_path, BANKING.replace('text,category', 'query,label')))
  _assert_bad(excinfo, 'test.csv', 1)
  with pytest.raises(ValueError, match=r"'dev'"):
    readers.read_banking77(tmp_path, 'dev')
  with pytest.raises(FileNotFoundError, match='train.csv'):
    readers.read_banking77(tmp_path, 'train')


# ----------------------------------------------------------------------------------------------
# AG News

AG = ('"3","Fears for pension","Unions say they\\are ""disappointed"" at \\$1 billion."\n'
      '"4","Multi\nline title","Second\\\\line."\n'
      '"1","World","Peace talks."\n')


def _ag(folder: Path, csv_text: str = AG) -> Path:
  _write(folder / 'classes.txt', 'World\nSports\nBusiness\nSci/Tech\n')
  _write(folder / 'test.csv', csv_text)
  return folder


def test_read_ag_news(tmp_path):
  data = readers.read_ag_news(_ag(tmp_path))
  assert data.texts == ['Fears for pension Unions say they are "disappointed" at $1 billion.',
                        'Multi line title Second line.', 'World Peace talks.']
  np.testing.assert_array_equal(data.labels, [2, 3, 0])
  assert data.label_names == ['World', 'Sports', 'Business', 'Sci/Tech']


@pytest.mark.parametrize('bad_line, field', [
    ('"5","t","d"\n', 'class_index'),
    ('"0","t","d"\n', 'class_index'),
    ('"x","t","d"\n', 'class_index'),
    ('"1","t"\n', None),
    ('"1","t","d","e"\n', None),
    ('"1","",""\n', 'title'),
])
def test_read_ag_news_bad_input(tmp_path, bad_line, field):
  # The second record spans lines 2-3, so the appended row starts on line 5.
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_ag_news(_ag(tmp_path, AG + bad_line))
  _assert_bad(excinfo, 'test.csv', 5, field)


def test_read_ag_news_non_utf8(tmp_path):
  with pytest.raises(DataFormatError) as excinfo:
    readers.read_ag_news(_ag(tmp_path, AG.encode() + b'"1","t","\xff"\n'))
  _assert_bad(excinfo, 'test.csv', 5)


# ----------------------------------------------------------------------------------------------
# The shared data: counts from each SOURCE.md


@pytest.fixture(scope='module')
def shared() -> Path:
  root = shared_data_dir()
  if root is None:
    pytest.skip('shared data folder not found')
  return root


@pytest.mark.parametrize('split, counts', [
    ('test', {'docs': 5183, 'queries': 300, 'qrels': 339}),
    ('train', {'docs': 5183, 'queries': 809, 'qrels': 919}),
])
def test_scifact_counts(shared, split, counts):
  start = time.perf_counter()
  data = readers.read_beir(shared / 'scifact', split)
  elapsed = time.perf_counter() - start
  assert data.counts == counts
  assert elapsed < 2.0  # about 0.2 s; loose because the machine is shared
  assert all(data.corpus_texts)


def test_limit_small_counts(shared):
  data = readers.read_limit(shared / 'limit' / 'limit-small')
  assert data.counts == {'docs': 46, 'queries': 1000, 'qrels': 2000}
  assert all(len(judged) == 2 for judged in data.qrels.values())


def test_limit_full_corpus_is_missing(shared):
  with pytest.raises(FileNotFoundError, match='corpus.jsonl'):
    readers.read_limit(shared / 'limit' / 'limit')


@pytest.mark.parametrize('split, n', [('test', 1379), ('train', 5749), ('dev', 1500)])
def test_stsb_counts(shared, split, n):
  data = readers.read_stsb(shared / 'stsb', split)
  assert len(data) == n
  assert data.scores.min() == 0.0 and data.scores.max() == 5.0


@pytest.mark.parametrize('split, n', [('test', 4906), ('train', 4439), ('trial', 495)])
def test_sick_counts(shared, split, n):
  data = readers.read_sick(shared / 'sick', split)
  assert len(data) == n
  assert set(data.labels) == set(readers.SICK_LABELS)


@pytest.mark.parametrize('split, n, positive', [('test', 1725, 1147), ('train', 4076, 2753)])
def test_mrpc_counts(shared, split, n, positive):
  data = readers.read_mrpc(shared / 'mrpc', split)
  assert len(data) == n
  assert int(data.scores.sum()) == positive


@pytest.mark.parametrize('split, n', [('test', 3080), ('train', 10003)])
def test_banking77_counts(shared, split, n):
  data = readers.read_banking77(shared / 'banking77', split)
  assert len(data) == n
  assert len(data.label_names) == 77
  assert len(np.unique(data.labels)) == 77


def test_ag_news_counts(shared):
  data = readers.read_ag_news(shared / 'ag_news', 'test')
  assert len(data) == 7600
  np.testing.assert_array_equal(np.bincount(data.labels), [1900] * 4)
  assert not any('\\' in t for t in data.texts)
