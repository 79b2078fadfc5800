"""CTR data: MovieLens-100k splits, Criteo/Avazu sample readers (good and bad rows), synthetic Zipf."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedjax.data import ctr
from embedjax.errors import DataFormatError


def _assert_bad(excinfo, name: str, line: int | None, field: str | None = None) -> None:
  err = excinfo.value
  assert isinstance(err, DataFormatError)
  assert Path(err.path).name == name and err.line == line
  if line is not None:
    assert f'{name}:{line}:' in str(err)
  if field is not None:
    assert err.field == field and f"'{field}'" in str(err)


# ----------------------------------------------------------------------------------------------
# MovieLens-100k (shared data)


@pytest.fixture(scope='module')
def movielens(data_dir):
  return data_dir / 'movielens-100k'


@pytest.fixture(scope='module')
def u1(movielens):
  return ctr.read_movielens_ctr(movielens, 'u1')


def test_movielens_u1_counts_and_fields(u1):
  train, test = u1
  assert (len(train), len(test)) == (80_000, 20_000)
  assert train.field_names == ('user', 'item', 'age', 'gender', 'occupation', 'zip', 'genres')
  assert train.vocab_sizes == (943, 1682, 61, 2, 21, 795, 216) == test.vocab_sizes
  for data in (train, test):
    assert data.ids.dtype == np.int32
    assert np.all(data.ids >= 0) and np.all(data.ids < np.asarray(data.vocab_sizes))
  # rating >= 4 is positive: 55,375 of the 100,000 ratings are 4 or 5.
  assert int(train.labels.sum()) + int(test.labels.sum()) == 55_375


def test_movielens_first_rating_is_user1_toy_story(u1):
  train, _ = u1
  # u1.base starts "1 1 5 874965758"; user 1 is 24/M/technician/85711; Toy Story is
  # Animation|Children's|Comedy; occupations are indexed in u.occupation order (technician = 19).
  assert train.ids[0, 0] == 0 and train.ids[0, 1] == 0 and train.labels[0] == 1
  assert train.ids[0, 3] == 1 and train.ids[0, 4] == 19


def test_movielens_ua_has_ten_test_ratings_per_user(movielens):
  _, test = ctr.read_movielens_ctr(movielens, 'ua')
  assert len(test) == 9430
  assert np.all(np.bincount(test.ids[:, 0], minlength=943) == 10)


def test_movielens_unknown_split(movielens):
  with pytest.raises(ValueError, match='u1'):
    ctr.read_movielens_ctr(movielens, 'u9')


def _tiny_movielens(tmp_path: Path, ratings: str) -> Path:
  (tmp_path / 'u.occupation').write_text('engineer\nother\n')
  (tmp_path / 'u.user').write_text('1|30|M|engineer|12345\n2|40|F|other|A1B2C\n')
  flags = '|'.join(['0'] * 18 + ['1'])
  (tmp_path / 'u.item').write_bytes(f'1|Caf\xe9 (1995)|01-Jan-1995||http://x|{flags}\n'.encode('latin-1')
                                    + f'2|B (1996)|01-Jan-1996||http://y|{flags}\n'.encode('latin-1'))
  (tmp_path / 'u1.base').write_text(ratings)
  (tmp_path / 'u1.test').write_text('2\t1\t3\t1\n')
  return tmp_path


def test_movielens_tiny_and_latin1(tmp_path):
  folder = _tiny_movielens(tmp_path, '1\t1\t4\t1\n2\t2\t2\t5\n')
  train, test = ctr.read_movielens_ctr(folder, 'u1')
  assert train.labels.tolist() == [1, 0] and test.labels.tolist() == [0]
  assert train.vocab_sizes == (2, 2, 2, 2, 2, 2, 1)


@pytest.mark.parametrize('ratings, line, field', [
    ('1\t1\t4\t1\n1\t3\t4\t1\n', 2, 'item id'),      # unknown movie
    ('1\t1\t6\t1\n', 1, 'rating'),                  # out of range
    ('9\t1\t4\t1\n', 1, 'user id'),                 # unknown user
    ('1\t1\t4\n', 1, None),                         # missing column
    ('1\t1\tx\t1\n', 1, 'rating'),
])
def test_movielens_bad_ratings(tmp_path, ratings, line, field):
  folder = _tiny_movielens(tmp_path, ratings)
  with pytest.raises(DataFormatError) as e:
    ctr.read_movielens_ctr(folder, 'u1')
  _assert_bad(e, 'u1.base', line, field)


def test_movielens_bad_user_and_item(tmp_path):
  folder = _tiny_movielens(tmp_path, '1\t1\t4\t1\n')
  (folder / 'u.user').write_text('1|30|M|engineer|12345\n2|40|X|other|A1B2C\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_movielens_ctr(folder, 'u1')
  _assert_bad(e, 'u.user', 2, 'gender')
  (folder / 'u.user').write_text('1|30|M|pilot|12345\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_movielens_ctr(folder, 'u1')
  _assert_bad(e, 'u.user', 1, 'occupation')
  (folder / 'u.user').write_text('1|30|M|engineer|12345\n2|40|F|other|A1B2C\n')
  (folder / 'u.item').write_text('1|A|x||y|' + '|'.join(['0'] * 18 + ['2']) + '\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_movielens_ctr(folder, 'u1')
  _assert_bad(e, 'u.item', 1, 'genre 18')


# ----------------------------------------------------------------------------------------------
# Criteo / Avazu samples (shared data) and bad rows (tiny files)


def test_criteo_tsv_sample_pads_to_40(data_dir):
  rows = ctr.read_criteo_tsv(data_dir / 'ctr' / 'criteo' / 'criteo_sample_1000.txt')
  assert len(rows) == 1000 and int(rows.labels.sum()) == 205
  assert rows.dense.shape == (1000, 13) and rows.categorical.shape == (1000, 26)
  # 498 rows had trailing categoricals stripped: they come back as empty strings.
  assert int((rows.categorical[:, -1] == '').sum()) >= 498
  data, vocabs = ctr.criteo_ctr(rows)
  assert data.ids.shape == (1000, 39) and len(data.vocab_sizes) == 39
  assert np.all(data.ids < np.asarray(data.vocab_sizes))


def test_criteo_csv_and_avazu_samples(data_dir):
  rows = ctr.read_criteo_csv(data_dir / 'ctr' / 'criteo' / 'criteo_sample_deepctr.csv')
  assert len(rows) == 200 and int(rows.labels.sum()) == 49
  rows = ctr.read_avazu_csv(data_dir / 'ctr' / 'avazu' / 'avazu_sample_999.csv')
  assert len(rows) == 999 and int(rows.labels.sum()) == 159
  data, vocabs = ctr.avazu_ctr(rows)
  assert data.field_names[:2] == ('hour_of_day', 'weekday') and data.ids.shape == (999, 23)
  # 14102100 is 2014-10-21 00h, a Tuesday.
  assert set(rows.categorical[:, 0]) == {'0'} and set(rows.categorical[:, 1]) == {'1'}


_CRITEO_OK = '\t'.join(['1'] + ['3'] * 13 + ['68fd1e64'] * 26)


@pytest.mark.parametrize('line, field', [
    ('2' + _CRITEO_OK[1:], 'label'),
    (_CRITEO_OK.replace('\t3\t', '\tx\t', 1), 'I1'),
    ('\t'.join(['0'] + ['1'] * 13 + ['68fd1e6g'] + ['68fd1e64'] * 25), 'C1'),
    ('\t'.join(['0'] + ['1'] * 12), None),            # 13 fields: too few
    (_CRITEO_OK + '\textra', None),                     # 41 fields
])
def test_criteo_tsv_bad_rows(tmp_path, line, field):
  path = tmp_path / 'train.txt'
  path.write_text(_CRITEO_OK + '\n' + line + '\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_criteo_tsv(path)
  _assert_bad(e, 'train.txt', 2, field)


def test_criteo_tsv_short_row_padded(tmp_path):
  path = tmp_path / 'train.txt'
  path.write_text('\t'.join(['0'] + [''] * 13 + ['68fd1e64'] * 3))
  rows = ctr.read_criteo_tsv(path)
  assert np.isnan(rows.dense).all() and list(rows.categorical[0, :4]) == ['68fd1e64'] * 3 + ['']


def test_criteo_csv_bad_rows(tmp_path):
  header = ','.join(ctr.CRITEO_COLUMNS)
  good = ','.join(['0'] + ['1.0'] * 13 + ['05db9164'] * 26)
  path = tmp_path / 'c.csv'
  path.write_text(header + '\n' + good + '\n' + good.replace('1.0', '1.5', 1) + '\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_criteo_csv(path)
  _assert_bad(e, 'c.csv', 3, 'I1')
  path.write_text(header.replace('I1', 'X1') + '\n' + good + '\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_criteo_csv(path)
  _assert_bad(e, 'c.csv', 1)


def test_avazu_bad_rows(tmp_path):
  header = ','.join(ctr.AVAZU_COLUMNS)
  good = '1,0,14102100,1005,0,a,b,c,d,e,f,g,h,i,1,2,15706,320,50,1722,0,35,-1,79'
  path = tmp_path / 'a.csv'
  for bad, field in ((good.replace(',14102100,', ',14102199,'), 'hour'),
                     (good.replace('1,0,', '1,3,', 1), 'click'),
                     (good.replace(',a,', ',,'), 'site_id')):
    path.write_text(header + '\n' + good + '\n' + bad + '\n')
    with pytest.raises(DataFormatError) as e:
      ctr.read_avazu_csv(path)
    _assert_bad(e, 'a.csv', 3, field)
  path.write_text(header + '\n' + good + ',x\n')
  with pytest.raises(DataFormatError) as e:
    ctr.read_avazu_csv(path)
  _assert_bad(e, 'a.csv', 2)


def test_vocab_encoding_with_min_count_and_unseen():
  cols = np.asarray([['a', 'x'], ['a', ''], ['b', 'x'], ['c', 'y']], object)
  vocabs = ctr.build_vocabs(cols, min_count=2)
  assert vocabs == [{'a': 1}, {'x': 1}]
  np.testing.assert_array_equal(ctr.encode(cols, vocabs), [[1, 1], [1, 0], [0, 1], [0, 0]])
  assert ctr.criteo_bucket(float('nan')) == '' and ctr.criteo_bucket(2.0) == '2'
  assert ctr.criteo_bucket(100.0) == 'L21'  # floor(log(100)^2) = floor(21.2)


# ----------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_is_deterministic_zipf_and_learnable():
  vocab = (100, 5_000_000)
  a, la = ctr.synthetic_ctr(20_000, vocab, seed=3)
  b, lb = ctr.synthetic_ctr(20_000, vocab, seed=3)
  c, _ = ctr.synthetic_ctr(20_000, vocab, seed=4)
  np.testing.assert_array_equal(a.ids, b.ids)
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(la, lb)
  assert not np.array_equal(a.ids, c.ids)
  assert np.all(a.ids >= 0) and np.all(a.ids < np.asarray(vocab))
  # Zipf: the most frequent id of the large field is far above uniform (20k / 5M per id).
  counts = np.bincount(a.ids[:, 1])
  assert counts.max() > 100 and len(np.unique(a.ids[:, 1])) > 1000
  from embedjax.tables.metrics import auc
  assert auc(a.labels, la) > 0.7  # the planted model is informative


def test_zipf_ranks_follow_power_law():
  rng = np.random.default_rng(0)
  r = ctr.zipf_ranks(rng, 1000, 200_000, 1.2)
  counts = np.bincount(r, minlength=1000)
  assert counts[0] > counts[1] > counts[3] > counts[10] > counts[100]
  # P(rank 0) / P(rank 9) ~ 10^1.2 ~ 15.8 (continuous approximation: within 40%).
  assert 9 < counts[0] / counts[9] < 25
