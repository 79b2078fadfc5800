"""Pure readers for the local benchmark files: plain dataclasses of numpy arrays and lists of str.

Every reader is strict. A malformed row raises :class:`embedjax.errors.DataFormatError` naming the
file, the 1-based line and the field (bad JSON, missing ``_id``/``text``, empty text, a byte that is
not UTF-8, a wrong column count, a non-numeric or out-of-range score, a duplicate id, a qrels row
naming an unknown query or document). Nothing is dropped silently: the only lines skipped are
completely blank lines (not rows) and the documented header lines. An unknown split name raises
``ValueError`` listing the choices; a missing file raises ``FileNotFoundError`` naming the path
(``IsADirectoryError`` when the path is a folder).

Formats (see each ``SOURCE.md`` under the shared data folder):

* BEIR: ``corpus.jsonl[.gz]`` (``_id``, ``title``, ``text``), ``queries.jsonl[.gz]`` (``_id``,
  ``text``), ``qrels/<split>.tsv`` with header ``query-id corpus-id score``.
* LIMIT: ``corpus.jsonl``, ``queries.jsonl``, ``qrels.jsonl`` (``query-id``, ``corpus-id``, ``score``).
* STS-B: ``sts-{train,dev,test}.csv``, tab separated, no quoting, 7 or 9 fields.
* SICK: ``SICK.txt[.gz]``, tab separated with a 12-column header; split from ``SemEval_set``.
* MRPC: ``msr_paraphrase_{train,test}.txt``, tab separated, 5 fields, optional UTF-8 BOM/header.
* BANKING77: ``{train,test}.csv`` with header ``text,category``; names from ``categories.json``.
* AG News: ``{train,test}.csv`` without header (``class_index,title,description``); names from
  ``classes.txt``.
* A user's texts (``embedjax encode``): one text a line, or JSON lines with a text field; see
  :func:`read_texts`.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import gzip
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from embedjax.errors import DataFormatError

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------
# Result types


@dataclasses.dataclass(frozen=True)
class RetrievalData:
  """A retrieval split.

  Attributes:
    corpus_ids: (D,) document ids, in file order.
    corpus_texts: (D,) document texts, ``(title + " " + text).strip()`` (BEIR / MTEB convention).
    query_ids: (Q,) ids of the queries that appear in this split's qrels, in queries-file order.
    query_texts: (Q,) their texts.
    qrels: query_id -> {doc_id: relevance}; relevance 0 rows are kept (evaluators ignore them).
  """

  corpus_ids: list[str]
  corpus_texts: list[str]
  query_ids: list[str]
  query_texts: list[str]
  qrels: dict[str, dict[str, int]]

  @property
  def counts(self) -> dict[str, int]:
    """``{'docs': D, 'queries': Q, 'qrels': number of (query, doc) judgements}``."""
    return {
        'docs': len(self.corpus_ids),
        'queries': len(self.query_ids),
        'qrels': sum(len(v) for v in self.qrels.values()),
    }

  def summary(self) -> str:
    return ' '.join(f'{k}={v}' for k, v in self.counts.items())


@dataclasses.dataclass(frozen=True)
class PairData:
  """Sentence pairs with a gold score.

  Attributes:
    sentences1, sentences2: (N,) texts.
    scores: float64 (N,): STS gold similarity, or 0/1 labels for pair classification.
    labels: optional (N,) string labels (e.g. SICK entailment labels).
  """

  sentences1: list[str]
  sentences2: list[str]
  scores: np.ndarray
  labels: list[str] | None = None

  def __len__(self) -> int:
    return len(self.sentences1)

  @property
  def counts(self) -> dict[str, int]:
    """``{'pairs': N}`` plus ``'label=<name>': n`` for each label when labels are present."""
    out = {'pairs': len(self.sentences1)}
    if self.labels is not None:
      for name in sorted(set(self.labels)):
        out[f'label={name}'] = self.labels.count(name)
    return out

  def summary(self) -> str:
    return ' '.join(f'{k}={v}' for k, v in self.counts.items())


@dataclasses.dataclass(frozen=True)
class ClassificationData:
  """Texts with integer class labels.

  Attributes:
    texts: (N,) texts.
    labels: int64 (N,) indices into ``label_names``.
    label_names: (K,) class names.
  """

  texts: list[str]
  labels: np.ndarray
  label_names: list[str]

  def __len__(self) -> int:
    return len(self.texts)

  @property
  def counts(self) -> dict[str, int]:
    """``{'texts': N, 'classes': K}``."""
    return {'texts': len(self.texts), 'classes': len(self.label_names)}

  def summary(self) -> str:
    return ' '.join(f'{k}={v}' for k, v in self.counts.items())


# ----------------------------------------------------------------------------------------------
# Low-level helpers


def _missing(path: Path) -> FileNotFoundError:
  return FileNotFoundError(errno.ENOENT, 'missing data file', str(path))


def _require(path: Path) -> Path:
  if path.is_dir():  # it exists: "missing" would send the reader looking in the wrong place
    raise IsADirectoryError(errno.EISDIR, 'is a directory, not a file', str(path))
  if not path.is_file():
    raise _missing(path)
  return path


def _find(folder: Path, name: str) -> Path:
  """``folder/name``, else ``folder/name.gz``; FileNotFoundError names the plain path."""
  for candidate in (folder / name, folder / f'{name}.gz'):
    if candidate.is_file():
      return candidate
  raise _missing(folder / name)


def _check_split(split: str, choices: Iterable[str], what: str) -> None:
  choices = list(choices)
  if split not in choices:
    raise ValueError(f'unknown {what} split {split!r}; choose one of {choices}')


def _iter_lines(path: PathLike, keep_newline: bool = False) -> Iterator[tuple[int, str]]:
  """Yields ``(line_number, text)`` for each line of a UTF-8 file (gzip when the name ends .gz).

  Lines are decoded one at a time so that a bad byte is reported at its own line (reading the
  whole file with ``open(encoding=...)`` only gives a byte offset). A leading UTF-8 BOM is
  removed. Without ``keep_newline`` the trailing ``\\n`` / ``\\r\\n`` (and a stray ``\\r``) go.
  """
  path = _require(Path(path))
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'rb') as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode('utf-8')
      except UnicodeDecodeError as e:
        raise DataFormatError(path, number, None,
                              f'not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}') from None
      if number == 1 and line.startswith('\ufeff'):
        line = line[1:]
      yield number, line if keep_newline else line.rstrip('\r\n')


def read_jsonl(path: PathLike) -> Iterator[tuple[int, dict]]:
  """Yields ``(line_number, object)`` for each non-blank line of a JSON-lines file.

  Gzip is used when the name ends ``.gz``. Raises DataFormatError for a line that is not a JSON
  object (a truncated line, trailing garbage, a bare list) or not UTF-8.
  """
  for number, line in _iter_lines(path):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataFormatError(path, number, None, f'invalid JSON: {e.msg} (column {e.colno})') from None
    if not isinstance(obj, dict):
      raise DataFormatError(path, number, None, f'expected a JSON object, got {type(obj).__name__}')
    yield number, obj


class QrelRow(NamedTuple):
  """One relevance judgement and the line it came from."""

  line: int
  query_id: str
  doc_id: str
  score: int


def _parse_int_score(value, path: Path, line: int, field: str) -> int:
  """An integer relevance; integral floats (``1.0``) are accepted, anything else is an error."""
  if isinstance(value, bool):
    raise DataFormatError(path, line, field, f'expected an integer relevance, got {value!r}')
  if isinstance(value, int):
    return value
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise DataFormatError(path, line, field, f'expected an integer relevance, got {value!r}') from None
  if not number.is_integer():
    raise DataFormatError(path, line, field, f'expected an integer relevance, got {value!r}')
  return int(number)


def _parse_float(value: str, path: Path, line: int, field: str, lo: float, hi: float) -> float:
  try:
    number = float(value)
  except ValueError:
    raise DataFormatError(path, line, field, f'expected a number, got {value!r}') from None
  if not math.isfinite(number) or not lo <= number <= hi:
    raise DataFormatError(path, line, field, f'{number!r} is outside [{lo:g}, {hi:g}]')
  return number


def _id_field(obj: dict, key: str, path: Path, line: int) -> str:
  if key not in obj:
    raise DataFormatError(path, line, key, 'missing')
  value = obj[key]
  # Some BEIR exports write numeric ids; the qrels TSV always carries them as strings.
  if isinstance(value, int) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str) or not value:
    raise DataFormatError(path, line, key, f'expected a non-empty string id, got {value!r}')
  return value


def _text_field(obj: dict, key: str, path: Path, line: int, required: bool = True) -> str:
  if key not in obj:
    if required:
      raise DataFormatError(path, line, key, 'missing')
    return ''
  value = obj[key]
  if value is None and not required:
    return ''
  if not isinstance(value, str):
    raise DataFormatError(path, line, key, f'expected a string, got {type(value).__name__}')
  return value


def _split_tsv(line: str, counts: tuple[int, ...], path: Path, number: int) -> list[str]:
  fields = line.split('\t')
  if len(fields) not in counts:
    expected = ' or '.join(str(c) for c in counts)
    raise DataFormatError(path, number, None, f'expected {expected} tab-separated columns, got {len(fields)}')
  return fields


def _nonempty(value: str, path: Path, line: int, field: str) -> str:
  if not value.strip():
    raise DataFormatError(path, line, field, 'empty text')
  return value


def read_qrels_tsv(path: PathLike) -> list[QrelRow]:
  """Reads a BEIR qrels file: header ``query-id<TAB>corpus-id<TAB>score``, then one row per pair.

  Returns the rows in file order; duplicate (query, doc) pairs are an error. Ids are not checked
  against a corpus here (see :func:`read_beir`).
  """
  path = Path(path)
  rows: list[QrelRow] = []
  seen: dict[tuple[str, str], int] = {}
  header_seen = False
  for number, line in _iter_lines(path):
    if not line.strip():
      continue
    fields = _split_tsv(line, (3,), path, number)
    if not header_seen:
      header_seen = True
      if [f.strip().lower() for f in fields] != ['query-id', 'corpus-id', 'score']:
        raise DataFormatError(path, number, None,
                              f'expected header query-id<TAB>corpus-id<TAB>score, got {line!r}')
      continue
    query_id, doc_id = fields[0], fields[1]  # exact: ids may legitimately contain spaces
    if not query_id:
      raise DataFormatError(path, number, 'query-id', 'empty id')
    if not doc_id:
      raise DataFormatError(path, number, 'corpus-id', 'empty id')
    rows.append(QrelRow(number, query_id, doc_id, _parse_int_score(fields[2].strip(), path, number, 'score')))
    _no_duplicate(seen, (query_id, doc_id), path, number, 'corpus-id')
  return rows


def _read_qrels_jsonl(path: Path) -> list[QrelRow]:
  rows: list[QrelRow] = []
  seen: dict[tuple[str, str], int] = {}
  for number, obj in read_jsonl(path):
    query_id = _id_field(obj, 'query-id', path, number)
    doc_id = _id_field(obj, 'corpus-id', path, number)
    if 'score' not in obj:
      raise DataFormatError(path, number, 'score', 'missing')
    rows.append(QrelRow(number, query_id, doc_id, _parse_int_score(obj['score'], path, number, 'score')))
    _no_duplicate(seen, (query_id, doc_id), path, number, 'corpus-id')
  return rows


def _no_duplicate(seen: dict, key, path: Path, line: int, field: str) -> None:
  if key in seen:
    raise DataFormatError(path, line, field, f'duplicate {key!r} (first at line {seen[key]})')
  seen[key] = line


def _read_corpus(path: Path) -> tuple[list[str], list[str]]:
  ids: list[str] = []
  texts: list[str] = []
  seen: dict[str, int] = {}
  for number, obj in read_jsonl(path):
    doc_id = _id_field(obj, '_id', path, number)
    title = _text_field(obj, 'title', path, number, required=False)
    text = _text_field(obj, 'text', path, number)
    full = f'{title} {text}'.strip()
    if not full:
      raise DataFormatError(path, number, 'text', 'empty document (title and text both empty)')
    _no_duplicate(seen, doc_id, path, number, '_id')
    ids.append(doc_id)
    texts.append(full)
  return ids, texts


def _read_queries(path: Path) -> tuple[list[str], list[str]]:
  ids: list[str] = []
  texts: list[str] = []
  seen: dict[str, int] = {}
  for number, obj in read_jsonl(path):
    query_id = _id_field(obj, '_id', path, number)
    text = _nonempty(_text_field(obj, 'text', path, number), path, number, 'text')
    _no_duplicate(seen, query_id, path, number, '_id')
    ids.append(query_id)
    texts.append(text)
  return ids, texts


def _assemble(corpus: tuple[list[str], list[str]], queries: tuple[list[str], list[str]],
              rows: list[QrelRow], qrels_path: Path) -> RetrievalData:
  """Checks qrels ids against the corpus and queries and keeps only the judged queries."""
  doc_ids = set(corpus[0])
  all_query_ids = set(queries[0])
  qrels: dict[str, dict[str, int]] = {}
  for row in rows:
    if row.query_id not in all_query_ids:
      raise DataFormatError(qrels_path, row.line, 'query-id', f'unknown query id {row.query_id!r}')
    if row.doc_id not in doc_ids:
      raise DataFormatError(qrels_path, row.line, 'corpus-id', f'unknown document id {row.doc_id!r}')
    qrels.setdefault(row.query_id, {})[row.doc_id] = row.score
  kept = [(qid, text) for qid, text in zip(*queries) if qid in qrels]
  return RetrievalData(
      corpus_ids=corpus[0],
      corpus_texts=corpus[1],
      query_ids=[qid for qid, _ in kept],
      query_texts=[text for _, text in kept],
      qrels=qrels,
  )


# ----------------------------------------------------------------------------------------------
# Retrieval


def beir_splits(folder: PathLike) -> list[str]:
  """The split names with a ``qrels/<split>.tsv`` file in a BEIR folder, sorted."""
  qrels_dir = Path(folder) / 'qrels'
  if not qrels_dir.is_dir():
    return []
  return sorted(p.name[:-len('.tsv')] for p in qrels_dir.iterdir() if p.name.endswith('.tsv'))


def read_beir(folder: PathLike, split: str = 'test') -> RetrievalData:
  """Reads a BEIR-layout folder; only queries judged in ``qrels/<split>.tsv`` are returned."""
  folder = Path(folder)
  qrels_path = folder / 'qrels' / f'{split}.tsv'
  if not qrels_path.is_file():
    choices = beir_splits(folder)
    if not choices:
      raise _missing(qrels_path)
    _check_split(split, choices, f'BEIR ({folder})')
  rows = read_qrels_tsv(qrels_path)
  corpus = _read_corpus(_find(folder, 'corpus.jsonl'))
  queries = _read_queries(_find(folder, 'queries.jsonl'))
  return _assemble(corpus, queries, rows, qrels_path)


def read_limit(folder: PathLike) -> RetrievalData:
  """Reads a LIMIT folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels.jsonl``)."""
  folder = Path(folder)
  qrels_path = _find(folder, 'qrels.jsonl')
  rows = _read_qrels_jsonl(qrels_path)
  corpus = _read_corpus(_find(folder, 'corpus.jsonl'))
  queries = _read_queries(_find(folder, 'queries.jsonl'))
  return _assemble(corpus, queries, rows, qrels_path)


# ----------------------------------------------------------------------------------------------
# Sentence pairs

STSB_SPLITS = ('train', 'dev', 'test')
SICK_SPLITS = {'train': 'TRAIN', 'trial': 'TRIAL', 'test': 'TEST'}
SICK_LABELS = ('NEUTRAL', 'ENTAILMENT', 'CONTRADICTION')
MRPC_SPLITS = ('train', 'test')


def read_stsb(folder: PathLike, split: str = 'test') -> PairData:
  """Reads ``sts-<split>.csv``: ``genre filename year id score sentence1 sentence2 [2 extra]``.

  Tab separated and unquoted (sentences contain bare ``"``), so lines are split on tabs rather than
  parsed as CSV. Scores must lie in [0, 5].
  """
  _check_split(split, STSB_SPLITS, 'STS-B')
  path = _require(Path(folder) / f'sts-{split}.csv')
  s1: list[str] = []
  s2: list[str] = []
  scores: list[float] = []
  for number, line in _iter_lines(path):
    if not line.strip():
      continue
    fields = _split_tsv(line, (7, 9), path, number)
    scores.append(_parse_float(fields[4], path, number, 'score', 0.0, 5.0))
    s1.append(_nonempty(fields[5], path, number, 'sentence1'))
    s2.append(_nonempty(fields[6], path, number, 'sentence2'))
  return PairData(s1, s2, np.asarray(scores, dtype=np.float64))


_SICK_COLUMNS = ('pair_ID', 'sentence_A', 'sentence_B', 'entailment_label', 'relatedness_score',
                 'entailment_AB', 'entailment_BA', 'sentence_A_original', 'sentence_B_original',
                 'sentence_A_dataset', 'sentence_B_dataset', 'SemEval_set')


def read_sick(folder: PathLike, split: str = 'test') -> PairData:
  """Reads SICK (``SICK.txt`` or ``SICK.txt.gz``); split by ``SemEval_set`` TRAIN / TRIAL / TEST.

  scores = relatedness in [1, 5]; labels = entailment label (NEUTRAL / ENTAILMENT / CONTRADICTION).
  Every row is validated, including rows of the other splits.
  """
  _check_split(split, SICK_SPLITS, 'SICK')
  path = _find(Path(folder), 'SICK.txt')
  wanted = SICK_SPLITS[split]
  set_names = set(SICK_SPLITS.values())
  col = {name: i for i, name in enumerate(_SICK_COLUMNS)}
  s1: list[str] = []
  s2: list[str] = []
  scores: list[float] = []
  labels: list[str] = []
  header_seen = False
  for number, line in _iter_lines(path):
    if not line.strip():
      continue
    fields = _split_tsv(line, (len(_SICK_COLUMNS),), path, number)
    if not header_seen:
      header_seen = True
      if tuple(f.strip() for f in fields) != _SICK_COLUMNS:
        raise DataFormatError(path, number, None, 'expected the SICK header ' + ' '.join(_SICK_COLUMNS))
      continue
    # One upstream TRAIN value carries a trailing '\r'.
    semeval_set = fields[col['SemEval_set']].strip()
    if semeval_set not in set_names:
      raise DataFormatError(path, number, 'SemEval_set', f'expected one of {sorted(set_names)}, got {semeval_set!r}')
    label = fields[col['entailment_label']].strip()
    if label not in SICK_LABELS:
      raise DataFormatError(path, number, 'entailment_label', f'expected one of {list(SICK_LABELS)}, got {label!r}')
    score = _parse_float(fields[col['relatedness_score']], path, number, 'relatedness_score', 1.0, 5.0)
    a = _nonempty(fields[col['sentence_A']], path, number, 'sentence_A')
    b = _nonempty(fields[col['sentence_B']], path, number, 'sentence_B')
    if semeval_set == wanted:
      s1.append(a)
      s2.append(b)
      scores.append(score)
      labels.append(label)
  return PairData(s1, s2, np.asarray(scores, dtype=np.float64), labels)


def read_mrpc(folder: PathLike, split: str = 'test') -> PairData:
  """Reads ``msr_paraphrase_<split>.txt``: ``Quality #1_ID #2_ID #1_String #2_String``.

  The shared copy has a UTF-8 BOM and no header; the official release has a ``Quality ...`` header
  line, which is skipped when present. scores = quality as 0.0 / 1.0.
  """
  _check_split(split, MRPC_SPLITS, 'MRPC')
  path = _require(Path(folder) / f'msr_paraphrase_{split}.txt')
  s1: list[str] = []
  s2: list[str] = []
  scores: list[float] = []
  for number, line in _iter_lines(path):
    if not line.strip():
      continue
    fields = _split_tsv(line, (5,), path, number)
    if number == 1 and fields[0].strip() == 'Quality':
      continue
    quality = fields[0].strip()
    if quality not in ('0', '1'):
      raise DataFormatError(path, number, 'Quality', f'expected 0 or 1, got {quality!r}')
    scores.append(float(quality))
    s1.append(_nonempty(fields[3], path, number, '#1_String'))
    s2.append(_nonempty(fields[4], path, number, '#2_String'))
  return PairData(s1, s2, np.asarray(scores, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# Classification


def _iter_csv(path: Path) -> Iterator[tuple[int, list[str]]]:
  """Yields ``(first_line_of_record, fields)``; quoted fields may span lines."""
  numbers: list[int] = []

  def lines() -> Iterator[str]:
    for number, line in _iter_lines(path, keep_newline=True):
      numbers.append(number)
      yield line

  reader = csv.reader(lines(), strict=True)
  consumed = 0
  while True:
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise DataFormatError(path, len(numbers), None, f'bad CSV: {e}') from None
    start = consumed + 1
    consumed = len(numbers)
    if not fields or (len(fields) == 1 and not fields[0].strip()):
      continue  # blank line
    yield start, fields


def _check_columns(fields: list[str], count: int, path: Path, number: int) -> None:
  if len(fields) != count:
    raise DataFormatError(path, number, None, f'expected {count} CSV columns, got {len(fields)}')


BANKING77_SPLITS = ('train', 'test')
AG_NEWS_SPLITS = ('train', 'test')


def read_banking77(folder: PathLike, split: str = 'test') -> ClassificationData:
  """Reads BANKING77 ``<split>.csv`` (header ``text,category``); names in ``categories.json`` order."""
  _check_split(split, BANKING77_SPLITS, 'BANKING77')
  folder = Path(folder)
  names_path = _require(folder / 'categories.json')
  try:
    names = json.loads(names_path.read_text(encoding='utf-8'))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataFormatError(names_path, None, None, f'not a JSON list of names: {e}') from None
  if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
    raise DataFormatError(names_path, None, None, 'expected a JSON list of distinct non-empty names')
  index = {name: i for i, name in enumerate(names)}
  path = _require(folder / f'{split}.csv')
  texts: list[str] = []
  labels: list[int] = []
  header_seen = False
  for number, fields in _iter_csv(path):
    _check_columns(fields, 2, path, number)
    if not header_seen:
      header_seen = True
      if [f.strip() for f in fields] != ['text', 'category']:
        raise DataFormatError(path, number, None, f'expected header text,category, got {fields}')
      continue
    texts.append(_nonempty(fields[0], path, number, 'text'))
    category = fields[1].strip()
    if category not in index:
      raise DataFormatError(path, number, 'category', f'{category!r} is not in categories.json')
    labels.append(index[category])
  return ClassificationData(texts, np.asarray(labels, dtype=np.int64), list(names))


_BACKSLASH_OR_SPACE = re.compile(r'[\\\s]+')


def ag_news_text(title: str, description: str) -> str:
  """``title + " " + description`` with every backslash turned into a space, whitespace collapsed.

  The Zhang et al. release replaced line breaks by a lone backslash (``social\\network``) and left
  escapes such as ``\\$``; turning each backslash into a space fixes both without guessing.
  """
  return _BACKSLASH_OR_SPACE.sub(' ', f'{title} {description}').strip()


def read_ag_news(folder: PathLike, split: str = 'test') -> ClassificationData:
  """Reads AG News ``<split>.csv``: no header, ``"class_index","title","description"``.

  text = :func:`ag_news_text` (title, description); label = class_index - 1; names = ``classes.txt``.
  """
  _check_split(split, AG_NEWS_SPLITS, 'AG News')
  folder = Path(folder)
  names_path = _require(folder / 'classes.txt')
  names = []
  for number, line in _iter_lines(names_path):
    if line.strip():
      names.append(line.strip())
  if not names:
    raise DataFormatError(names_path, None, None, 'no class names')
  path = _require(folder / f'{split}.csv')
  texts: list[str] = []
  labels: list[int] = []
  for number, fields in _iter_csv(path):
    _check_columns(fields, 3, path, number)
    raw = fields[0].strip()
    if not raw.isdigit() or not 1 <= int(raw) <= len(names):
      raise DataFormatError(path, number, 'class_index', f'expected an integer in 1..{len(names)}, got {raw!r}')
    text = ag_news_text(fields[1], fields[2])
    if not text:
      raise DataFormatError(path, number, 'title', 'empty text (title and description both empty)')
    texts.append(text)
    labels.append(int(raw) - 1)
  return ClassificationData(texts, np.asarray(labels, dtype=np.int64), names)


# ----------------------------------------------------------------------------------------------
# A user's texts (embedjax encode)

TEXT_FORMATS = ('auto', 'txt', 'jsonl')
# Checked in order, so '.jsonl.gz' is matched before a bare '.gz' could be.
_FORMAT_BY_SUFFIX = (('.txt', 'txt'), ('.txt.gz', 'txt'), ('.jsonl', 'jsonl'),
                     ('.jsonl.gz', 'jsonl'), ('.json', 'jsonl'))


@dataclasses.dataclass(frozen=True)
class TextFile:
  """The texts of a user's file.

  Attributes:
    texts: (N,) non-empty texts, in file order.
    format: 'txt' or 'jsonl', the format the file was read as.
    trailing_blank_lines: blank lines after the last text of a 'txt' file (ignored, counted).
  """

  texts: list[str]
  format: str
  trailing_blank_lines: int = 0


def _format_by_suffix(path: Path) -> str | None:
  name = path.name.lower()
  return next((kind for suffix, kind in _FORMAT_BY_SUFFIX if name.endswith(suffix)), None)


def _first_content_line(path: Path) -> tuple[int, str] | None:
  lines = _iter_lines(path)
  try:
    return next(((n, line) for n, line in lines if line.strip()), None)
  finally:
    lines.close()


def text_format(path: PathLike, fmt: str = 'auto') -> str:
  """The format ``path`` is read as: ``fmt`` itself unless it is 'auto'.

  'auto' goes by the name (``.txt[.gz]`` -> 'txt'; ``.jsonl``, ``.jsonl.gz``, ``.json`` ->
  'jsonl'), else by the content: 'jsonl' when the first non-blank line starts with ``{``, else 'txt'.
  """
  if fmt not in TEXT_FORMATS:
    raise ValueError(f'unknown text format {fmt!r}; choose one of {list(TEXT_FORMATS)}')
  path = _require(Path(path))
  if fmt != 'auto':
    return fmt
  by_suffix = _format_by_suffix(path)
  if by_suffix is not None:
    return by_suffix
  first = _first_content_line(path)
  return 'jsonl' if first is not None and first[1].lstrip().startswith('{') else 'txt'


def _read_text_lines(path: Path) -> tuple[list[str], int]:
  texts: list[str] = []
  # Blank lines not yet followed by a text. One that is followed by a text is an error: row i of
  # the output would no longer be line i of the file.
  blanks: list[int] = []
  for number, line in _iter_lines(path):
    if not line.strip():
      blanks.append(number)
      continue
    if blanks:
      raise DataFormatError(path, blanks[0], None, 'blank line before a text (one text a line; '
                            'only blank lines after the last text are ignored)')
    texts.append(line)
  return texts, len(blanks)


def _read_json_texts(path: Path, field: str, title_field: str | None) -> list[str]:
  texts: list[str] = []
  for number, obj in read_jsonl(path):
    text = _text_field(obj, field, path, number)
    title = _text_field(obj, title_field, path, number, required=False) if title_field else ''
    full = f'{title} {text}'.strip()
    if not full:
      raise DataFormatError(path, number, field, 'empty text')
    texts.append(full)
  return texts


def read_texts(path: PathLike, fmt: str = 'auto', *, field: str = 'text',
               title_field: str | None = 'title') -> TextFile:
  """Reads the texts of a user's file, strictly (see :func:`text_format` for ``fmt``).

  'txt': one text a line, kept as written (only the line break goes), so that output row i is
  line i. A blank (or whitespace-only) line before a text is an error naming its line; blank lines
  after the last text are ignored and counted.
  'jsonl': one JSON object a line; the text is ``obj[field]``. With ``title_field`` set (default
  'title', as BEIR corpora expect) and present in a row, the text is ``(title + ' ' + text)
  .strip()``; '' or None ignores titles. Blank lines are skipped.
  A file with no text is an error.
  """
  path = Path(path)
  kind = text_format(path, fmt)
  guessed = fmt == 'auto' and _format_by_suffix(path) is None
  if kind == 'txt':
    texts, trailing = _read_text_lines(path)
  else:
    trailing = 0
    try:
      texts = _read_json_texts(path, field, title_field)
    except DataFormatError as e:
      first = _first_content_line(path)
      if not guessed or e.field is not None or first is None or e.line != first[0]:
        raise
      # The guess came from this very line: say so, since it may be plain text starting with '{'.
      raise DataFormatError(path, e.line, None, f"{e.message} (read as JSON lines because the "
                            "first line starts with '{'; choose the format 'txt' for plain "
                            'text)') from None
  if not texts:
    raise DataFormatError(path, None, None, 'no texts')
  return TextFile(texts, kind, trailing)
