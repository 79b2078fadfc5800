"""CTR data: MovieLens-100k as click-through data, strict Criteo / Avazu sample readers, and a
synthetic Zipf generator with a planted logistic ground truth.

Every model-ready set is a :class:`CTRData`: ``ids (N, F)`` int32 local ids per field (field f's
ids lie in ``[0, vocab_sizes[f])``) and ``labels (N,)`` 0/1. Readers are strict like
:mod:`embedjax.data.readers`: a malformed row raises :class:`~embedjax.errors.DataFormatError`
with file, 1-based line and field; nothing is dropped silently.

* :func:`read_movielens_ctr`: MovieLens-100k with the distribution's own splits (``u1``..``u5``:
  80/20 five-fold, ``ua``/``ub``: 10 test ratings per user). Label = rating >= 4. Seven fields:
  user, item, age, gender, occupation, zip, genres. ``genres`` is one categorical field whose
  value is the movie's genre *set* (the 19 flags as one key, 216 distinct sets), which keeps one
  id per field; ages and zips are used as given (61 ages, 795 zip strings). Vocabularies come
  from ``u.user`` / ``u.item`` (all users and movies), so both sides of every split share them.
  ``u.item`` is Latin-1.
* :func:`read_criteo_tsv` / :func:`read_criteo_csv`: the raw Kaggle ``train.txt`` format (rows
  whose trailing empty categoricals were stripped are padded back to 40 fields) and DeepCTR's
  CSV sample. :func:`criteo_ctr` turns rows into 39 categorical fields (dense counts bucketed by
  the Criteo-winning ``floor(log(x)^2)`` rule).
* :func:`read_avazu_csv` and :func:`avazu_ctr`: Avazu's train format; ``hour`` becomes hour of day
  and weekday.
* :func:`synthetic_ctr`: Zipf-distributed ids over any vocabulary sizes (millions of values are
  fine: nothing of size vocab is materialised) and labels from a planted logistic model with
  first-order weights and pairwise latent interactions, all deterministic from ``seed``.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import gzip
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from embedjax.errors import DataFormatError

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class CTRData:
  """Model-ready CTR rows.

  Attributes:
    ids: (N, F) int32 local ids; column f in [0, vocab_sizes[f]).
    labels: (N,) int8, 1 = click / positive.
    field_names: (F,) names.
    vocab_sizes: (F,) rows per field.
  """

  ids: np.ndarray
  labels: np.ndarray
  field_names: tuple[str, ...]
  vocab_sizes: tuple[int, ...]

  def __post_init__(self):
    if self.ids.ndim != 2 or not self.ids.shape[1] == len(self.field_names) == len(self.vocab_sizes):
      raise ValueError(f'ids {self.ids.shape} do not match {len(self.field_names)} fields')
    if self.labels.shape != (self.ids.shape[0],):
      raise ValueError(f'labels {self.labels.shape} do not match {self.ids.shape[0]} rows')

  def __len__(self) -> int:
    return int(self.ids.shape[0])

  def take(self, rows: np.ndarray) -> CTRData:
    return CTRData(self.ids[rows], self.labels[rows], self.field_names, self.vocab_sizes)

  def holdout(self, fraction: float, seed: int) -> tuple[CTRData, CTRData]:
    """(rest, held out): a seeded random ``fraction`` of rows held out (e.g. for validation)."""
    perm = np.random.default_rng(seed).permutation(len(self))
    k = int(round(fraction * len(self)))
    return self.take(np.sort(perm[k:])), self.take(np.sort(perm[:k]))

  @property
  def counts(self) -> dict[str, int]:
    return {'rows': len(self), 'positives': int(self.labels.sum()), 'fields': len(self.field_names),
            'vocab': int(sum(self.vocab_sizes))}

  def summary(self) -> str:
    return ' '.join(f'{k}={v}' for k, v in self.counts.items())


@dataclasses.dataclass(frozen=True)
class CTRRows:
  """Raw CTR rows before vocabularies: labels, numeric features and categorical strings.

  Attributes:
    labels: (N,) int8.
    dense: (N, Dn) float64, NaN where missing (Dn = 0 when the format has none).
    categorical: (N, C) object array of str, '' where missing.
    dense_names, categorical_names: column names.
  """

  labels: np.ndarray
  dense: np.ndarray
  categorical: np.ndarray
  dense_names: tuple[str, ...]
  categorical_names: tuple[str, ...]

  def __len__(self) -> int:
    return int(self.labels.shape[0])


# ----------------------------------------------------------------------------------------------
# Line reading


def _missing(path: Path) -> FileNotFoundError:
  return FileNotFoundError(errno.ENOENT, 'missing data file', str(path))


def _lines(path: PathLike, encoding: str = 'utf-8') -> Iterator[tuple[int, str]]:
  """(1-based line number, text without line end) for each line; gzip when the name ends .gz."""
  path = Path(path)
  if not path.is_file():
    raise _missing(path)
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'rb') as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode(encoding)
      except UnicodeDecodeError as e:
        raise DataFormatError(path, number, None,
                              f'not {encoding}: byte 0x{raw[e.start]:02x} at column {e.start + 1}') from None
      if number == 1 and line.startswith('\ufeff'):
        line = line[1:]
      yield number, line.rstrip('\r\n')


def _int(value: str, path: Path, line: int, field: str, lo: int | None = None, hi: int | None = None) -> int:
  try:
    number = int(value)
  except ValueError:
    raise DataFormatError(path, line, field, f'expected an integer, got {value!r}') from None
  if (lo is not None and number < lo) or (hi is not None and number > hi):
    raise DataFormatError(path, line, field, f'{number} is outside [{lo}, {hi}]')
  return number


def _label(value: str, path: Path, line: int, field: str) -> int:
  if value not in ('0', '1'):
    raise DataFormatError(path, line, field, f'expected 0 or 1, got {value!r}')
  return int(value)


# ----------------------------------------------------------------------------------------------
# MovieLens-100k

MOVIELENS_SPLITS = ('u1', 'u2', 'u3', 'u4', 'u5', 'ua', 'ub')
MOVIELENS_FIELDS = ('user', 'item', 'age', 'gender', 'occupation', 'zip', 'genres')
_NUM_GENRES = 19


def _movielens_file(folder: Path, name: str) -> Path:
  for candidate in (folder / name, folder / 'splits' / name, folder / 'splits' / f'{name}.gz',
                    folder / f'{name}.gz'):
    if candidate.is_file():
      return candidate
  raise _missing(folder / name)


def _read_users(path: Path, occupations: set[str]) -> dict[int, tuple[int, str, str, str]]:
  users = {}
  for number, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split('|')
    if len(fields) != 5:
      raise DataFormatError(path, number, None, f'expected 5 |-separated fields, got {len(fields)}')
    uid = _int(fields[0], path, number, 'user id', 1)
    if uid in users:
      raise DataFormatError(path, number, 'user id', f'duplicate user {uid}')
    age = _int(fields[1], path, number, 'age', 1, 120)
    if fields[2] not in ('M', 'F'):
      raise DataFormatError(path, number, 'gender', f'expected M or F, got {fields[2]!r}')
    if fields[3] not in occupations:
      raise DataFormatError(path, number, 'occupation', f'{fields[3]!r} is not in u.occupation')
    if not fields[4].strip():
      raise DataFormatError(path, number, 'zip code', 'empty')
    users[uid] = (age, fields[2], fields[3], fields[4].strip())
  return users


def _read_items(path: Path) -> dict[int, str]:
  """movie id -> genre-set key (the 19 flags as a string)."""
  items = {}
  for number, line in _lines(path, encoding='latin-1'):
    if not line.strip():
      continue
    fields = line.split('|')
    if len(fields) != 5 + _NUM_GENRES:
      raise DataFormatError(path, number, None, f'expected {5 + _NUM_GENRES} |-separated fields, got {len(fields)}')
    mid = _int(fields[0], path, number, 'movie id', 1)
    if mid in items:
      raise DataFormatError(path, number, 'movie id', f'duplicate movie {mid}')
    flags = fields[5:]
    for j, flag in enumerate(flags):
      if flag not in ('0', '1'):
        raise DataFormatError(path, number, f'genre {j}', f'expected 0 or 1, got {flag!r}')
    items[mid] = ''.join(flags)
  return items


def _read_ratings(path: Path, users: dict, items: dict) -> np.ndarray:
  """(N, 3) int64 rows of (user, item, rating)."""
  rows = []
  for number, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split('\t')
    if len(fields) != 4:
      raise DataFormatError(path, number, None, f'expected 4 tab-separated fields, got {len(fields)}')
    uid = _int(fields[0], path, number, 'user id')
    if uid not in users:
      raise DataFormatError(path, number, 'user id', f'unknown user {uid}')
    mid = _int(fields[1], path, number, 'item id')
    if mid not in items:
      raise DataFormatError(path, number, 'item id', f'unknown movie {mid}')
    rating = _int(fields[2], path, number, 'rating', 1, 5)
    _int(fields[3], path, number, 'timestamp', 0)
    rows.append((uid, mid, rating))
  return np.asarray(rows, np.int64).reshape(-1, 3)


def read_movielens_ctr(folder: PathLike, split: str = 'u1', threshold: int = 4) -> tuple[CTRData, CTRData]:
  """(train, test) CTR data of one official split; label = rating >= ``threshold``."""
  if split not in MOVIELENS_SPLITS:
    raise ValueError(f'unknown MovieLens split {split!r}; choose one of {list(MOVIELENS_SPLITS)}')
  folder = Path(folder)
  occ_path = _movielens_file(folder, 'u.occupation')
  occupations = [line.strip() for _, line in _lines(occ_path) if line.strip()]
  users = _read_users(_movielens_file(folder, 'u.user'), set(occupations))
  items = _read_items(_movielens_file(folder, 'u.item'))
  user_ids = sorted(users)
  item_ids = sorted(items)
  vocabs = [
      {u: i for i, u in enumerate(user_ids)},
      {m: i for i, m in enumerate(item_ids)},
      {a: i for i, a in enumerate(sorted({u[0] for u in users.values()}))},
      {'F': 0, 'M': 1},
      {o: i for i, o in enumerate(occupations)},
      {z: i for i, z in enumerate(sorted({u[3] for u in users.values()}))},
      {g: i for i, g in enumerate(sorted(set(items.values())))},
  ]
  user_feats = {u: (vocabs[0][u], vocabs[2][a], vocabs[3][g], vocabs[4][o], vocabs[5][z])
                for u, (a, g, o, z) in users.items()}
  item_feats = {m: (vocabs[1][m], vocabs[6][g]) for m, g in items.items()}
  out = []
  for part in ('base', 'test'):
    ratings = _read_ratings(_movielens_file(folder, f'{split}.{part}'), users, items)
    ids = np.empty((len(ratings), len(MOVIELENS_FIELDS)), np.int32)
    for r, (u, m, _) in enumerate(ratings):
      uf, mf = user_feats[int(u)], item_feats[int(m)]
      ids[r] = (uf[0], mf[0], uf[1], uf[2], uf[3], uf[4], mf[1])
    labels = (ratings[:, 2] >= threshold).astype(np.int8)
    out.append(CTRData(ids, labels, MOVIELENS_FIELDS, tuple(len(v) for v in vocabs)))
  return out[0], out[1]


# ----------------------------------------------------------------------------------------------
# Criteo

CRITEO_DENSE = tuple(f'I{i}' for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f'C{i}' for i in range(1, 27))
CRITEO_COLUMNS = ('label',) + CRITEO_DENSE + CRITEO_CATEGORICAL  # 40
_HEX8 = re.compile(r'[0-9a-f]{8}')


def _criteo_row(fields: list[str], path: Path, number: int, float_dense: bool):
  label = _label(fields[0], path, number, 'label')
  dense = []
  for name, value in zip(CRITEO_DENSE, fields[1:14]):
    if value == '':
      dense.append(math.nan)
    elif float_dense:
      try:
        x = float(value)
      except ValueError:
        raise DataFormatError(path, number, name, f'expected a number, got {value!r}') from None
      if not math.isfinite(x) or not x.is_integer():
        raise DataFormatError(path, number, name, f'expected an integral count, got {value!r}')
      dense.append(x)
    else:
      dense.append(float(_int(value, path, number, name)))
  cats = fields[14:]
  for name, value in zip(CRITEO_CATEGORICAL, cats):
    if value and not _HEX8.fullmatch(value):
      raise DataFormatError(path, number, name, f'expected 8 lower-case hex digits or empty, got {value!r}')
  return label, dense, cats


def _criteo_rows(rows, path: Path) -> CTRRows:
  if not rows:
    raise DataFormatError(path, None, None, 'no rows')
  labels, dense, cats = zip(*rows)
  categorical = np.empty((len(cats), len(CRITEO_CATEGORICAL)), object)
  categorical[:] = [list(c) for c in cats]
  return CTRRows(np.asarray(labels, np.int8), np.asarray(dense, np.float64), categorical,
                 CRITEO_DENSE, CRITEO_CATEGORICAL)


def read_criteo_tsv(path: PathLike) -> CTRRows:
  """Kaggle Criteo ``train.txt`` rows: ``label, I1..I13, C1..C26`` tab separated, no header.

  Rows with 14..39 fields (trailing empty categoricals stripped) are padded to 40 with empty
  values; fewer than 14 or more than 40 fields is an error.
  """
  path = Path(path)
  rows = []
  for number, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split('\t')
    if not 14 <= len(fields) <= 40:
      raise DataFormatError(path, number, None, f'expected 14 to 40 tab-separated fields, got {len(fields)}')
    fields += [''] * (40 - len(fields))
    rows.append(_criteo_row(fields, path, number, float_dense=False))
  return _criteo_rows(rows, path)


def read_criteo_csv(path: PathLike) -> CTRRows:
  """DeepCTR's Criteo sample: header ``label,I1..I13,C1..C26``; dense counts may be written as
  integral floats (``260.0``)."""
  path = Path(path)
  rows = []
  header_seen = False
  for number, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split(',')
    if len(fields) != 40:
      raise DataFormatError(path, number, None, f'expected 40 comma-separated fields, got {len(fields)}')
    if not header_seen:
      header_seen = True
      if tuple(fields) != CRITEO_COLUMNS:
        raise DataFormatError(path, number, None, 'expected the header label,I1..I13,C1..C26')
      continue
    rows.append(_criteo_row(fields, path, number, float_dense=True))
  return _criteo_rows(rows, path)


def criteo_bucket(x: float) -> str:
  """A dense Criteo count as a categorical token: '' if missing, the value itself up to 2, else
  ``floor(log(x)^2)`` (the Kaggle winners' rule, also used by pytorch-fm and DeepCTR examples)."""
  if math.isnan(x):
    return ''
  if x <= 2:
    return str(int(x))
  return f'L{int(math.floor(math.log(x) ** 2))}'


# ----------------------------------------------------------------------------------------------
# Avazu

AVAZU_COLUMNS = ('id', 'click', 'hour', 'C1', 'banner_pos', 'site_id', 'site_domain', 'site_category',
                 'app_id', 'app_domain', 'app_category', 'device_id', 'device_ip', 'device_model',
                 'device_type', 'device_conn_type', 'C14', 'C15', 'C16', 'C17', 'C18', 'C19', 'C20', 'C21')
AVAZU_FIELDS = ('hour_of_day', 'weekday') + AVAZU_COLUMNS[3:]


def read_avazu_csv(path: PathLike) -> CTRRows:
  """Avazu train rows (header as :data:`AVAZU_COLUMNS`); ``hour`` is YYMMDDHH and becomes the two
  categoricals ``hour_of_day`` and ``weekday``; every other column must be non-empty."""
  path = Path(path)
  labels, cats = [], []
  header_seen = False
  for number, line in _lines(path):
    if not line.strip():
      continue
    fields = line.split(',')
    if len(fields) != len(AVAZU_COLUMNS):
      raise DataFormatError(path, number, None,
                            f'expected {len(AVAZU_COLUMNS)} comma-separated fields, got {len(fields)}')
    if not header_seen:
      header_seen = True
      if tuple(fields) != AVAZU_COLUMNS:
        raise DataFormatError(path, number, None, 'expected the Avazu header id,click,hour,...')
      continue
    for name, value in zip(AVAZU_COLUMNS, fields):
      if not value:
        raise DataFormatError(path, number, name, 'empty')
    labels.append(_label(fields[1], path, number, 'click'))
    hour = fields[2]
    try:
      when = datetime.datetime.strptime(hour, '%y%m%d%H') if len(hour) == 8 and hour.isdigit() else None
    except ValueError:
      when = None
    if when is None:
      raise DataFormatError(path, number, 'hour', f'expected YYMMDDHH, got {hour!r}')
    cats.append([str(when.hour), str(when.weekday())] + fields[3:])
  if not labels:
    raise DataFormatError(path, None, None, 'no rows')
  categorical = np.empty((len(cats), len(AVAZU_FIELDS)), object)
  categorical[:] = cats
  return CTRRows(np.asarray(labels, np.int8), np.zeros((len(labels), 0)), categorical, (), AVAZU_FIELDS)


# ----------------------------------------------------------------------------------------------
# Vocabularies


def build_vocabs(columns: np.ndarray, min_count: int = 1) -> list[dict[str, int]]:
  """Per column: token -> id, ids from 1 in order of decreasing count (ties by token); id 0 is
  kept for missing ('') and rare (count < ``min_count``) or unseen tokens."""
  vocabs = []
  for c in range(columns.shape[1]):
    counts = Counter(columns[:, c])
    counts.pop('', None)
    kept = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    vocabs.append({t: i + 1 for i, t in enumerate(kept)})
  return vocabs


def encode(columns: np.ndarray, vocabs: list[dict[str, int]]) -> np.ndarray:
  """(N, C) tokens -> (N, C) int32 ids (0 for missing/unknown)."""
  out = np.zeros(columns.shape, np.int32)
  for c, vocab in enumerate(vocabs):
    out[:, c] = [vocab.get(t, 0) for t in columns[:, c]]
  return out


def _to_ctr(labels, columns, names, min_count, vocabs) -> tuple[CTRData, list[dict[str, int]]]:
  vocabs = vocabs if vocabs is not None else build_vocabs(columns, min_count)
  return CTRData(encode(columns, vocabs), labels, tuple(names), tuple(len(v) + 1 for v in vocabs)), vocabs


def criteo_ctr(rows: CTRRows, min_count: int = 1, vocabs=None) -> tuple[CTRData, list[dict[str, int]]]:
  """39 categorical fields (13 bucketed counts + 26 hashed categoricals) and their vocabularies;
  pass the train split's ``vocabs`` to encode another split."""
  dense = np.empty(rows.dense.shape, object)
  for idx, x in np.ndenumerate(rows.dense):
    dense[idx] = criteo_bucket(x)
  columns = np.concatenate([dense, rows.categorical], axis=1)
  return _to_ctr(rows.labels, columns, rows.dense_names + rows.categorical_names, min_count, vocabs)


def avazu_ctr(rows: CTRRows, min_count: int = 1, vocabs=None) -> tuple[CTRData, list[dict[str, int]]]:
  return _to_ctr(rows.labels, rows.categorical, rows.categorical_names, min_count, vocabs)


# ----------------------------------------------------------------------------------------------
# Synthetic Zipf CTR data


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _hash_normal(ids: np.ndarray, stream: int) -> np.ndarray:
  """A standard normal per id, a pure function of (id, stream): nothing of size vocab is stored."""
  with np.errstate(over='ignore'):
    base = ids.astype(np.uint64) * np.uint64(2) + np.uint64(stream) * np.uint64(0x9E3779B97F4A7C15)
    a = _mix64(base)
    b = _mix64(base + np.uint64(1))
  u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53
  u2 = (b >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
  return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def zipf_ranks(rng: np.random.Generator, n: int, size: int, a: float) -> np.ndarray:
  """``size`` draws of ranks in [0, n) with P(rank k) ~ (k + 1)^-a (continuous inverse-CDF
  approximation of the truncated Zipf law; exact enough for long tails, O(size) memory)."""
  u = rng.random(size)
  if abs(a - 1.0) < 1e-9:
    x = np.exp(u * np.log(n + 1.0))
  else:
    x = (1.0 + u * ((n + 1.0) ** (1.0 - a) - 1.0)) ** (1.0 / (1.0 - a))
  return np.minimum(np.floor(x).astype(np.int64) - 1, n - 1)


def _coprime_multiplier(n: int, rng: np.random.Generator) -> int:
  while True:
    c = int(rng.integers(1, max(2, n)))
    if math.gcd(c, n) == 1:
      return c


def synthetic_ctr(num_rows: int, vocab_sizes: Sequence[int], *, zipf_a: float = 1.1, seed: int = 0,
                  latent_dim: int = 4, first_order_std: float = 0.6, interaction_std: float = 0.6,
                  bias: float = -1.0) -> tuple[CTRData, np.ndarray]:
  """(data, true logits (N,) float64) with Zipf ids and a planted logistic ground truth.

  Field f's ids are ``perm_f(rank)`` with rank ~ Zipf(``zipf_a``) over ``vocab_sizes[f]`` values
  and ``perm_f`` an affine bijection mod n (so popular ids are scattered, not 0, 1, 2, ...). The
  true logit is ``bias + sum_f w_f(id_f) + sum_{f<g} <v_f(id_f), v_g(id_g)>`` with per-id Gaussian
  ``w`` (std ``first_order_std``) and ``v`` (``latent_dim`` dims, scaled so each pair's dot has
  std ``interaction_std / sqrt(F - 1)``) drawn by hashing (field, id); labels ~ Bernoulli(sigmoid).
  The true logits give the oracle AUC that no model can beat in expectation.
  """
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  rng = np.random.default_rng(seed)
  nf = len(vocab_sizes)
  ids = np.empty((num_rows, nf), np.int32)
  for f, n in enumerate(vocab_sizes):
    ranks = zipf_ranks(rng, n, num_rows, zipf_a)
    c, o = _coprime_multiplier(n, rng), int(rng.integers(0, n))
    ids[:, f] = ((ranks * c + o) % n).astype(np.int32)
  logits = np.full(num_rows, bias, np.float64)
  pair_scale = interaction_std / max(1.0, math.sqrt(nf - 1)) / math.sqrt(latent_dim)
  # v entries with std sqrt(pair_scale) make <v_f, v_g> have std pair_scale * sqrt(latent_dim).
  latent = []
  for f in range(nf):
    key = ids[:, f].astype(np.int64)
    logits += first_order_std * _hash_normal(key, stream=seed * 1000 + 2 * f)
    latent.append(np.stack([_hash_normal(key * latent_dim + j, stream=seed * 1000 + 2 * f + 1)
                            for j in range(latent_dim)], axis=1) * math.sqrt(pair_scale))
  total = np.sum(latent, axis=0)
  logits += 0.5 * (np.sum(total * total, axis=1) - sum(np.sum(v * v, axis=1) for v in latent))
  labels = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int8)
  names = tuple(f'f{f}' for f in range(nf))
  return CTRData(ids, labels, names, vocab_sizes), logits
