"""Training on a researcher's own files: JSONL, CSV or TSV rows, validated in one streaming pass,
converted once into ArrayRecord through TFDS, and read back with random access (grain).

Usage::

  spec = FileSpec.from_string('file:/data/pairs.jsonl',
                              columns={'anchor': 'question', 'positive': 'answer'})
  stats = validate(spec)               # optional: prepare() validates before converting
  source = prepare(spec, cache_dir)    # FileSource: len(source), source[i] -> dict
  ds = grain.MapDataset.source(source).shuffle(seed=0)

Kinds (``FileSpec.kind``), their roles (the keys of ``FileSpec.columns``) and the keys of one
element of the prepared source:

* ``'pairs'``: roles ``anchor``, ``positive``, ``negatives`` (zero or more, the same number on
  every row: batches have static shapes). Element: ``query``, ``positive`` (str), ``negatives``
  (list of str, possibly empty), ``doc_key`` (int64: crc32 of the positive text, as
  ``embedjax.train.data._key``, for duplicate-positive masking).
* ``'scored'``: roles ``text1``, ``text2``, ``score`` (a finite number). Element: ``text1``,
  ``text2`` (str), ``score`` (float64, exact).
* ``'labelled'``: roles ``text``, ``label``. Element: ``text`` (str), ``label`` (int64); when the
  labels are names, ``label`` indexes the sorted names (``stats.label_names``) and ``label_name``
  (str) is the name itself. ``FileSpec.label_type`` says which labels are expected ('int' or
  'str'); left as None it is taken from the first row and every later row must agree.

Formats (``FileSpec.format``; None takes it from the name: ``.jsonl``/``.ndjson``/``.json``,
``.csv``, ``.tsv``/``.tab``):

* ``'jsonl'``: one JSON object a line; the roles name fields. The negatives role may name one
  field holding a string or a list of strings, or several fields holding a string each.
* ``'csv'``: RFC 4180 (``,``, ``"`` quoting, a quoted field may span lines; a row's line is the
  line it starts on). ``'tsv'``: tab separated, unquoted (texts keep their bare ``"``), one row a
  line. Both have a header row naming the columns unless ``header=False``; without one the
  columns are named by their 0-based position (``'0'``, ``'1'``, ... ; ints are accepted in
  ``columns``).

Columns. Roles missing from ``FileSpec.columns`` take the column named like the role (``anchor``,
``positive``, ``text1``, ...). The negatives default to the columns named ``negative``,
``negatives`` or ``negative_<k>`` (header order, or the first JSON row's key order), none if
there is no such column. When ``columns`` is not given at all and a CSV/TSV header names none of
the roles (or there is no header), the columns are taken by position: pairs ``anchor, positive,
negatives...``; scored exactly ``text1, text2, score``; labelled exactly ``text, label``.
``FileStats.columns`` says which columns were used.

Validation (:func:`validate`) reads the file once, streamed line by line, and raises
:class:`embedjax.errors.DataFormatError` (``path:line: field 'name': what``) on the first bad
row: a missing column, an empty or whitespace-only text, a score that is not a finite number, a
label that is not of the expected type, a byte that the encoding cannot decode (naming the column
that holds it), malformed JSON or CSV quoting, a row with the wrong number of fields, a number of
negatives that differs from the first row's, a blank line between rows, or a file with no rows.
Blank lines after the last row are allowed and counted. Texts are kept exactly as written;
labels given as names are stripped of surrounding whitespace.

Preparation (:func:`prepare`) is keyed by a content fingerprint: SHA-256 of the file's bytes plus
the spec (format, kind, columns, encoding, header, label type), not the path. An unchanged file
is reused without being read again beyond the hash; an edited one is validated and converted into
a new directory. Nothing is converted from an invalid file, and a file that changes while it is
converted fails the conversion (TFDS then removes its incomplete directory).

Memory: validation keeps a few counters (plus the distinct labels of a labelled file).
Conversion is bounded too: TFDS's writer keeps a whole split's serialized examples in memory (up
to 1 GB, after which it would spill through ``tf.io.gfile``, i.e. it needs TensorFlow; checked
with tensorflow-datasets 4.9.10), so the file is cut into splits ``part000000``,
``part000001``, ... of about ``chunk_bytes`` of the file each, written one after the other; the
source reads them back in order as one ``ArrayRecordDataSource`` (``'part000000+part000001'``),
so index ``i`` is row ``i`` of the file.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from embedjax.config import ConfigError
from embedjax.data import readers, tfds_builders
from embedjax.errors import DataFormatError

KINDS = ('pairs', 'scored', 'labelled')
FORMATS = ('jsonl', 'csv', 'tsv')
LABEL_TYPES = ('int', 'str')
ROLES = {
    'pairs': ('anchor', 'positive', 'negatives'),
    'scored': ('text1', 'text2', 'score'),
    'labelled': ('text', 'label'),
}
# Checked in order; matched against the lower-cased file name.
_FORMAT_BY_SUFFIX = (('.jsonl', 'jsonl'), ('.ndjson', 'jsonl'), ('.json', 'jsonl'), ('.csv', 'csv'),
                     ('.tsv', 'tsv'), ('.tab', 'tsv'))
_PREFIX = 'file:'
# Bumped when the stored layout of a prepared file changes, so old conversions are not reused.
_SCHEMA = 1
DEFAULT_CHUNK_BYTES = 64 << 20
# Stays well below TFDS's in-memory limit (1 GB of serialized examples per split, see above).
_MAX_CHUNK_BYTES = 256 << 20
_NEGATIVE_NAME = re.compile(r'negatives?(_\d+)?')


def is_file_source(value: Any) -> bool:
  """True for a ``data.train`` value naming a file (``'file:/path/pairs.jsonl'``)."""
  return isinstance(value, str) and value.startswith(_PREFIX)


class Columns(Mapping):
  """An immutable, hashable, picklable mapping: role -> column name (str), or, for 'negatives',
  a tuple of column names."""

  __slots__ = ('_items',)

  def __init__(self, items: Mapping[str, str | tuple[str, ...]] | None = None):
    self._items = dict(items or {})

  def __getitem__(self, key: str) -> str | tuple[str, ...]:
    return self._items[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._items)

  def __len__(self) -> int:
    return len(self._items)

  def __hash__(self) -> int:
    return hash(tuple(sorted(self._items.items())))

  def __repr__(self) -> str:
    return repr(self._items)

  def __getstate__(self):
    return self._items

  def __setstate__(self, state):
    self._items = state

  def to_json(self) -> dict[str, str | list[str]]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in self._items.items()}


def _format_of(path: str) -> str | None:
  name = path.lower()
  return next((fmt for suffix, fmt in _FORMAT_BY_SUFFIX if name.endswith(suffix)), None)


def _column_name(value: Any, role: str) -> str:
  if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
    return str(value)  # a position, for files without a header
  if isinstance(value, str) and value:
    return value
  raise ConfigError(f'columns.{role}: expected a column name (or a 0-based position), got {value!r}')


def _normalize_columns(kind: str, columns: Any) -> Columns | None:
  if columns is None:
    return None
  if hasattr(columns, 'to_dict'):  # an ml_collections ConfigDict
    columns = columns.to_dict()
  if not isinstance(columns, Mapping):
    raise ConfigError(f'columns: expected a mapping from roles to column names, got {type(columns).__name__}')
  if not columns:
    return None  # an empty mapping (a config's default) means "the defaults"
  out: dict[str, str | tuple[str, ...]] = {}
  for role, value in columns.items():
    if role not in ROLES[kind]:
      raise ConfigError(f'columns: {role!r} is not a role of kind {kind!r}; the roles are {list(ROLES[kind])}')
    if role == 'negatives' and isinstance(value, (list, tuple)):
      out[role] = tuple(_column_name(v, role) for v in value)
    else:
      out[role] = _column_name(value, role)
  return Columns(out)


def _codec(encoding: str) -> str:
  try:
    name = codecs.lookup(encoding).name
  except LookupError:
    raise ConfigError(f'encoding: unknown encoding {encoding!r}') from None
  # Lines are split on b'\n' before decoding, so the encoding must leave ASCII as it is.
  probe = b'\n\t,"{}[]:azAZ09 '
  try:
    ok = probe.decode(name) == probe.decode('ascii')
  except UnicodeDecodeError:
    ok = False
  if not ok:
    raise ConfigError(f'encoding: {encoding!r} is not ASCII-compatible; convert the file to UTF-8')
  return name


@dataclasses.dataclass(frozen=True)
class FileSpec:
  """Where a training file is and how to read it.

  Attributes:
    path: the file (a leading ``file:`` and ``~`` are accepted).
    format: 'jsonl', 'csv' or 'tsv'; None takes it from the file name.
    kind: 'pairs', 'scored' or 'labelled' (see the module docstring for the roles).
    columns: role -> column name (for 'negatives' also a list of names); None or {} for the
      defaults. Plain dicts or ml_collections ConfigDicts are accepted; stored as :class:`Columns`.
    encoding: the text encoding (ASCII-compatible: UTF-8, Latin-1, cp1252, ...).
    header: CSV/TSV only: whether the first row names the columns.
    label_type: 'labelled' only: 'int' or 'str' labels; None takes it from the first row.
  """

  path: str
  format: str | None = None
  kind: str = 'pairs'
  columns: Columns | None = None
  encoding: str = 'utf-8'
  header: bool = True
  label_type: str | None = None

  def __post_init__(self):
    path = os.fspath(self.path)
    if path.startswith('file://'):
      path = path[len('file://'):]
    elif path.startswith(_PREFIX):
      path = path[len(_PREFIX):]
    if not path:
      raise ConfigError('path: empty file name')
    object.__setattr__(self, 'path', os.path.expanduser(path))
    if self.kind not in KINDS:
      raise ConfigError(f'kind: {self.kind!r} is not one of {list(KINDS)}')
    if self.format is not None and self.format not in FORMATS:
      raise ConfigError(f'format: {self.format!r} is not one of {list(FORMATS)}')
    if self.format is None and _format_of(self.path) is None:
      raise ConfigError(f'format: cannot tell the format of {self.path} from its name; '
                        f'set format to one of {list(FORMATS)}')
    if not isinstance(self.header, bool):
      raise ConfigError(f'header: expected True or False, got {self.header!r}')
    if not self.header and self.resolved_format == 'jsonl':
      raise ConfigError('header: only CSV and TSV files have a header row')
    if self.label_type is not None and self.label_type not in LABEL_TYPES:
      raise ConfigError(f'label_type: {self.label_type!r} is not one of {list(LABEL_TYPES)} (or None)')
    if self.label_type is not None and self.kind != 'labelled':
      raise ConfigError(f"label_type: only kind 'labelled' has labels (kind is {self.kind!r})")
    _codec(self.encoding)
    object.__setattr__(self, 'columns', _normalize_columns(self.kind, self.columns))

  @property
  def resolved_format(self) -> str:
    return self.format or _format_of(self.path)

  @classmethod
  def from_string(cls, value: str, **options: Any) -> FileSpec:
    """``'file:/path/pairs.jsonl'`` (the prefix is optional here) plus any other field."""
    if not isinstance(value, str):
      raise ConfigError(f'expected a file name like "file:/path/pairs.jsonl", got {value!r}')
    return cls.from_config({**options, 'path': value})

  @classmethod
  def from_config(cls, value: Any) -> FileSpec:
    """A spec from a config value: a ``'file:...'`` string, or a mapping (dict or ml_collections
    ConfigDict) of this class's fields, ``path`` required."""
    if isinstance(value, FileSpec):
      return value
    if isinstance(value, (str, os.PathLike)):
      value = {'path': os.fspath(value)}
    if hasattr(value, 'to_dict'):
      value = value.to_dict()
    if not isinstance(value, Mapping):
      raise ConfigError(f'expected a file name or a mapping of file options, got {type(value).__name__}')
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(fields))
    if unknown:
      raise ConfigError(f'unknown file option(s) {unknown}; the options are {fields}')
    if 'path' not in value:
      raise ConfigError('path: missing (the file to read)')
    return cls(**value)

  def to_config(self) -> dict[str, Any]:
    """Plain values (for logs and provenance); ``FileSpec.from_config`` reads it back."""
    out = dataclasses.asdict(self)
    out['columns'] = self.columns.to_json() if self.columns is not None else None
    return out


@dataclasses.dataclass(frozen=True)
class FileStats:
  """What one validation pass found.

  Attributes:
    path, format, kind: the file and how it was read.
    rows: number of rows (examples).
    lines: number of lines read, header and blank lines included.
    trailing_blank_lines: blank lines after the last row (allowed, not rows).
    header: the header's column names (CSV/TSV with a header), else None.
    columns: role -> the column(s) used (after defaults).
    negatives: 'pairs': negatives per row, else None.
    score_min, score_max: 'scored': the score range, else None.
    label_type: 'labelled': 'int' or 'str', else None.
    labels: 'labelled': the distinct labels, sorted (ints, or names); else None.
    label_counts: rows per label, aligned with ``labels``.
    sha256: hex SHA-256 of the file's bytes.
    num_bytes: the file's size.
  """

  path: str
  format: str
  kind: str
  rows: int
  lines: int
  trailing_blank_lines: int
  header: tuple[str, ...] | None
  columns: Columns
  negatives: int | None
  score_min: float | None
  score_max: float | None
  label_type: str | None
  labels: tuple | None
  label_counts: tuple[int, ...] | None
  sha256: str
  num_bytes: int

  @property
  def label_names(self) -> tuple[str, ...] | None:
    """The class names that ``label`` indexes, for string labels; None otherwise."""
    return self.labels if self.label_type == 'str' else None

  def summary(self) -> str:
    parts = [f'rows={self.rows}']
    if self.negatives is not None:
      parts.append(f'negatives={self.negatives}')
    if self.score_min is not None:
      parts.append(f'score=[{self.score_min:g}, {self.score_max:g}]')
    if self.labels is not None:
      parts.append(f'labels={len(self.labels)}')
    return ' '.join(parts)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out['columns'] = self.columns.to_json()
    for key in ('header', 'labels', 'label_counts'):
      out[key] = list(out[key]) if out[key] is not None else None
    return out

  @classmethod
  def from_json(cls, obj: Mapping[str, Any]) -> FileStats:
    obj = dict(obj)
    obj['columns'] = Columns({k: tuple(v) if isinstance(v, list) else v for k, v in obj['columns'].items()})
    for key in ('header', 'labels', 'label_counts'):
      obj[key] = tuple(obj[key]) if obj[key] is not None else None
    return cls(**obj)


# ----------------------------------------------------------------------------------------------
# Records: lines decoded one at a time (so that a bad byte names its line), grouped into rows


class _Record(NamedTuple):
  line: int                    # 1-based number of the record's first line
  start: int                   # byte offset of that line
  stop: int                    # byte offset just after the record's last line
  raw: bytes                   # the record's bytes (for the per-chunk digest)
  value: Any                   # fields (CSV/TSV), an object (JSONL), or None for a blank line
  bad: tuple[int, str] | None  # (line, message) of an undecodable byte, else None


def _codec_label(name: str) -> str:
  return {'utf-8': 'UTF-8', 'ascii': 'ASCII'}.get(name, name)


def _lines(f: BinaryIO, encoding: str, start: int, stop: int | None, first_line: int,
           digest: Any) -> Iterator[tuple[int, int, bytes, str, tuple[int, str] | None]]:
  """Yields ``(line_number, offset, raw_bytes, text, bad)`` for the lines in ``[start, stop)``.

  An undecodable line is decoded with ``surrogateescape`` and flagged, so that the caller can name
  the column that holds the bad byte. A UTF-8 BOM at the very start of the file is dropped.
  """
  f.seek(start)
  offset, number = start, first_line
  for raw in f:
    if stop is not None and offset >= stop:
      return
    if digest is not None:
      digest.update(raw)
    bad = None
    try:
      text = raw.decode(encoding)
    except UnicodeDecodeError as e:
      text = raw.decode(encoding, 'surrogateescape')
      bad = (number, f'not valid {_codec_label(encoding)}: byte 0x{raw[e.start]:02x} at column {e.start + 1}')
    if offset == 0 and text.startswith('\ufeff'):
      text = text[1:]
    yield number, offset, raw, text, bad
    offset += len(raw)
    number += 1


def _bad_bytes(path: Path, bad: tuple[int, str], field: str | None) -> DataFormatError:
  return DataFormatError(path, bad[0], field, bad[1])


def _json_object(text: str, path: Path, number: int, bad: tuple[int, str] | None) -> dict:
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    if bad:
      raise _bad_bytes(path, bad, None) from None
    raise DataFormatError(path, number, None, f'invalid JSON: {e.msg} (column {e.colno})') from None
  if not isinstance(obj, dict):
    raise DataFormatError(path, number, None, f'expected a JSON object, got {type(obj).__name__}')
  return obj


def _csv_records(lines: Iterator, path: Path) -> Iterator[_Record]:
  taken: list[tuple[int, int, bytes, tuple[int, str] | None]] = []

  def texts() -> Iterator[str]:
    for number, offset, raw, text, bad in lines:
      taken.append((number, offset, raw, bad))
      yield text

  # The reader pulls exactly the lines of one record before returning it, so ``taken`` holds
  # that record's lines.
  reader = csv.reader(texts(), strict=True)
  while True:
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      bad = next((t[3] for t in taken if t[3]), None)
      if bad:
        raise _bad_bytes(path, bad, None) from None
      raise DataFormatError(path, taken[-1][0] if taken else None, None, f'bad CSV: {e}') from None
    lines_of_record = list(taken)
    taken.clear()
    number, offset = lines_of_record[0][0], lines_of_record[0][1]
    stop = lines_of_record[-1][1] + len(lines_of_record[-1][2])
    raw = b''.join(t[2] for t in lines_of_record)
    bad = next((t[3] for t in lines_of_record if t[3]), None)
    blank = not fields or (len(fields) == 1 and not fields[0].strip())
    yield _Record(number, offset, stop, raw, None if blank else fields, bad)


def _records(f: BinaryIO, path: Path, fmt: str, encoding: str, start: int = 0, stop: int | None = None,
             first_line: int = 1, digest: Any = None) -> Iterator[_Record]:
  """The records of ``[start, stop)`` of an open file, blank lines included (value None)."""
  lines = _lines(f, encoding, start, stop, first_line, digest)
  if fmt == 'csv':
    yield from _csv_records(lines, path)
    return
  for number, offset, raw, text, bad in lines:
    if not text.strip():
      value = None
    elif fmt == 'jsonl':
      value = _json_object(text, path, number, bad)
    else:
      value = text.rstrip('\r\n').split('\t')
    yield _Record(number, offset, offset + len(raw), raw, value, bad)


# ----------------------------------------------------------------------------------------------
# Columns: which fields of a row hold which role


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How to take the roles out of a row (built from the header or the first JSON row)."""

  fmt: str
  kind: str
  columns: Columns                      # role -> column name, or a tuple for 'negatives'
  index: dict[str, tuple[int, ...]] | None  # CSV/TSV: role -> field positions
  names: tuple[str, ...] | None         # CSV/TSV: the column names (header, or '0', '1', ...)
  negative_keys: frozenset[str] | None  # JSONL with default negatives: row 1's negative-like keys
  header: bool = False                  # CSV/TSV: the names come from a header row
  label_type: str | None = None


def _required(kind: str) -> tuple[str, ...]:
  return tuple(r for r in ROLES[kind] if r != 'negatives')


def _default_negatives(names: list[str], used: set[str], path: Path, line: int) -> tuple[str, ...]:
  found = [n for n in names if _NEGATIVE_NAME.fullmatch(n) and n not in used]
  if len(found) > 1 and not all(n.startswith('negative_') for n in found):
    raise DataFormatError(path, line, found[1], f'cannot tell which of {found} hold the negatives; '
                          "name them with columns={'negatives': ...}")
  return tuple(found)


def _resolve_table(spec: FileSpec, path: Path, line: int, names: tuple[str, ...], fmt: str) -> _Layout:
  kind, required = spec.kind, _required(spec.kind)
  if spec.header:
    where = f'not in the header ({", ".join(names)})'
  else:
    where = f'no such column: the rows have {len(names)} fields, named by position 0..{len(names) - 1}'
  columns: dict[str, str | tuple[str, ...]] = {}
  positional = False
  if spec.columns is None:
    present = [r for r in required if r in names]
    if spec.header and len(present) == len(required):
      columns = {r: r for r in required}
    elif not present or not spec.header:
      positional = True
    else:
      missing = next(r for r in required if r not in names)
      raise DataFormatError(path, line, missing, f"{where}; name the file's column with columns={{{missing!r}: ...}}")
  else:
    for role in required:
      name = spec.columns.get(role, role)
      if name not in names:
        raise DataFormatError(path, line, name, where)
      columns[role] = name
  if positional:
    low, high = {'pairs': (2, None), 'scored': (3, 3), 'labelled': (2, 2)}[kind]
    if len(names) < low or (high is not None and len(names) > high):
      what = f'the header is {list(names)}' if spec.header else f'the rows have {len(names)} fields'
      raise DataFormatError(path, line, None, f'cannot tell which columns are {list(ROLES[kind])}: {what}; '
                            'name them with columns={...}')
    columns = dict(zip(required, names))
    if kind == 'pairs':
      columns['negatives'] = tuple(names[2:])
  elif kind == 'pairs':
    given = spec.columns.get('negatives') if spec.columns is not None else None
    if given is None:
      columns['negatives'] = _default_negatives(list(names), set(columns.values()), path, line)
    else:
      negatives = given if isinstance(given, tuple) else (given,)
      for name in negatives:
        if name not in names:
          raise DataFormatError(path, line, name, where)
      columns['negatives'] = negatives
  used = [n for v in columns.values() for n in (v if isinstance(v, tuple) else (v,))]
  for name in used:
    if names.count(name) > 1:
      raise DataFormatError(path, line, name, 'appears more than once in the header')
  index = {role: tuple(names.index(n) for n in (v if isinstance(v, tuple) else (v,))) for role, v in columns.items()}
  return _Layout(fmt, kind, Columns(columns), index, names, None, spec.header, spec.label_type)


def _resolve_jsonl(spec: FileSpec, path: Path, line: int, first: dict) -> _Layout:
  given = spec.columns or Columns()
  columns: dict[str, str | tuple[str, ...]] = {r: given.get(r, r) for r in _required(spec.kind)}
  negative_keys = None
  if spec.kind == 'pairs':
    if 'negatives' in given:
      value = given['negatives']
      columns['negatives'] = value if isinstance(value, tuple) else (value,)
    else:
      columns['negatives'] = _default_negatives(list(first), set(columns.values()), path, line)
      negative_keys = frozenset(k for k in first if _NEGATIVE_NAME.fullmatch(k) and k not in columns.values())
  return _Layout('jsonl', spec.kind, Columns(columns), None, None, negative_keys, False, spec.label_type)


# ----------------------------------------------------------------------------------------------
# Rows: the roles of one record, checked


def _has_surrogate(text: str) -> bool:
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    return True
  return False


class _Row:
  """The values of one record's roles, each checked; a bad one raises DataFormatError."""

  def __init__(self, layout: _Layout, rec: _Record, path: Path):
    self.layout, self.rec, self.path = layout, rec, path
    if layout.index is not None:
      fields, expected = rec.value, len(layout.names)
      if len(fields) < expected:
        raise self.error(layout.names[len(fields)], f'missing: the row has {len(fields)} fields, '
                         f'{"the header" if layout.header else "the first row"} {expected}')
      if len(fields) > expected:
        sep = 'comma' if layout.fmt == 'csv' else 'tab'
        raise self.error(None, f'expected {expected} fields, got {len(fields)} (a {sep} inside a text?)')

  def error(self, field: str | None, message: str) -> DataFormatError:
    if self.rec.bad:  # an undecodable byte explains the row better than what followed from it
      return _bad_bytes(self.path, self.rec.bad, None)
    return DataFormatError(self.path, self.rec.line, field, message)

  def values(self, role: str) -> list[tuple[str, Any]]:
    """``[(column name, value)]`` of a role (one entry, or one per negatives column)."""
    names = self.layout.columns[role]
    names = names if isinstance(names, tuple) else (names,)
    if self.layout.index is not None:
      return [(n, self.rec.value[i]) for n, i in zip(names, self.layout.index[role])]
    out = []
    for name in names:
      if name not in self.rec.value:
        raise self.error(name, 'missing')
      out.append((name, self.rec.value[name]))
    return out

  def text(self, field: str, value: Any) -> str:
    if not isinstance(value, str):
      raise self.error(field, f'expected a string, got {type(value).__name__}')
    if self.rec.bad and _has_surrogate(value):
      raise _bad_bytes(self.path, self.rec.bad, field)
    if not value.strip():
      raise self.error(field, 'empty text')
    return value

  def negatives(self) -> list[str]:
    pairs = self.values('negatives')
    if self.layout.negative_keys is not None:
      keys = frozenset(k for k in self.rec.value if _NEGATIVE_NAME.fullmatch(k)) - set(self.layout.columns.values())
      extra = sorted(keys - self.layout.negative_keys)
      if extra:
        raise self.error(extra[0], 'a negative that the first row does not have (every row needs '
                         'the same number of negatives)')
    out = []
    for name, value in pairs:
      if self.layout.fmt == 'jsonl' and len(pairs) == 1 and isinstance(value, list):
        out.extend(self.text(f'{name}[{j}]', v) for j, v in enumerate(value))
      else:
        out.append(self.text(name, value))
    return out

  def score(self) -> float:
    ((name, value),) = self.values('score')
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
      raise self.error(name, f'expected a number, got {type(value).__name__}')
    if isinstance(value, str):
      if self.rec.bad and _has_surrogate(value):
        raise _bad_bytes(self.path, self.rec.bad, name)
      try:
        number = float(value.strip())
      except ValueError:
        raise self.error(name, f'expected a number, got {value!r}') from None
    else:
      number = float(value)
    if not math.isfinite(number):
      raise self.error(name, f'expected a finite number, got {value!r}')
    return number

  def label(self, label_type: str | None) -> int | str:
    """The label; ``label_type`` None decides from this (the first) row."""
    ((name, value),) = self.values('label')
    if self.rec.bad and isinstance(value, str) and _has_surrogate(value):
      raise _bad_bytes(self.path, self.rec.bad, name)
    is_json = self.layout.fmt == 'jsonl'
    as_int = _int_label(value, is_json)
    if label_type is None:
      label_type = 'int' if as_int is not None else 'str'
    if label_type == 'int':
      if as_int is None:
        raise self.error(name, f'expected an integer label, got {value!r}' + (
            '' if self.layout.label_type else " (labels are integers from the first row on; set "
            "label_type='str' to read them all as names)"))
      return as_int
    if not isinstance(value, str):
      raise self.error(name, f'expected a label name (a string), got {value!r}')
    if not value.strip():
      raise self.error(name, 'empty label')
    return value.strip()


_INT = re.compile(r'\s*[+-]?\d+\s*')


def _int_label(value: Any, is_json: bool) -> int | None:
  """The integer a label holds, else None (JSON: integers and integral floats; text: digits)."""
  if isinstance(value, bool):
    return None
  if is_json:
    if isinstance(value, int):
      number = value
    elif isinstance(value, float) and value.is_integer():
      number = int(value)
    else:
      return None
  elif isinstance(value, str) and _INT.fullmatch(value):
    number = int(value)
  else:
    return None
  return number if -(1 << 63) <= number < (1 << 63) else None


def _doc_key(text: str) -> int:
  # The same stable 31-bit id as embedjax.train.data._key (crc32 is stable across processes).
  return zlib.crc32(text.encode('utf-8')) & 0x7FFFFFFF


def _parse(layout: _Layout, rec: _Record, path: Path, label_type: str | None) -> dict[str, Any]:
  """The checked values of one row: pairs {'anchor', 'positive', 'negatives'}; scored {'text1',
  'text2', 'score'}; labelled {'text', 'label'} (int, or the name)."""
  row = _Row(layout, rec, path)
  out: dict[str, Any] = {}
  for role in ROLES[layout.kind]:
    if role == 'negatives':
      out[role] = row.negatives()
    elif role == 'score':
      out[role] = row.score()
    elif role == 'label':
      out[role] = row.label(label_type)
    else:
      ((name, value),) = row.values(role)
      out[role] = row.text(name, value)
  if rec.bad:  # the bad byte is in a column no role reads: still not a valid file
    raise _bad_bytes(path, rec.bad, None)
  return out


def _example(kind: str, values: dict[str, Any], label_index: dict[str, int] | None) -> dict[str, Any]:
  """A row as stored (the features of :class:`FileBuilder`)."""
  if kind == 'pairs':
    return {'query': values['anchor'], 'positive': values['positive'], 'negatives': values['negatives'],
            'doc_key': _doc_key(values['positive'])}
  if kind == 'scored':
    return {'text1': values['text1'], 'text2': values['text2'], 'score': values['score']}
  label = values['label']
  if label_index is not None:
    return {'text': values['text'], 'label': label_index[label], 'label_name': label}
  return {'text': values['text'], 'label': label, 'label_name': ''}


# ----------------------------------------------------------------------------------------------
# Validation


@dataclasses.dataclass
class _Chunk:
  """A run of rows converted as one TFDS split."""

  index: int
  start: int          # byte offset of its first row
  line: int           # line number of its first row
  first_row: int      # row index of its first row
  stop: int = 0       # byte offset after its last row
  rows: int = 0
  sha256: str = ''

  @property
  def split(self) -> str:
    return f'part{self.index:06d}'


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What the conversion needs: the stats, the column layout and the chunks."""

  stats: FileStats
  layout: _Layout
  chunks: tuple[_Chunk, ...]


def _scan(spec: FileSpec, chunk_bytes: int) -> _Plan:
  """The one streaming validation pass; raises DataFormatError on the first bad row."""
  path = readers._require(Path(spec.path))
  fmt, encoding = spec.resolved_format, _codec(spec.encoding)
  file_digest = hashlib.sha256()
  layout: _Layout | None = None
  header: tuple[str, ...] | None = None
  rows = lines = 0
  blank_from: int | None = None
  blanks = 0
  negatives: tuple[int, int] | None = None  # (count, line of the first row)
  score_range = [math.inf, -math.inf]
  label_type = spec.label_type
  label_counts: dict[Any, int] = {}
  chunks: list[_Chunk] = []
  chunk, chunk_digest = None, None
  with open(path, 'rb') as f:
    for rec in _records(f, path, fmt, encoding, digest=file_digest):
      lines = rec.line + rec.raw.count(b'\n') - (1 if rec.raw.endswith(b'\n') else 0)
      if rec.value is None:
        if rec.bad:
          raise _bad_bytes(path, rec.bad, None)
        if blank_from is None:
          blank_from = rec.line
        blanks += 1
        continue
      if blank_from is not None:
        raise DataFormatError(path, blank_from, None, 'blank line between rows (only blank lines after '
                              'the last row are allowed)')
      if layout is None:
        if fmt == 'jsonl':
          layout = _resolve_jsonl(spec, path, rec.line, rec.value)
        elif spec.header:
          if rec.bad:
            raise _bad_bytes(path, rec.bad, None)
          header = tuple(name.strip() for name in rec.value)
          layout = _resolve_table(spec, path, rec.line, header, fmt)
          continue
        else:
          layout = _resolve_table(spec, path, rec.line, tuple(str(i) for i in range(len(rec.value))), fmt)
      values = _parse(layout, rec, path, label_type)
      if spec.kind == 'pairs':
        count = len(values['negatives'])
        if negatives is None:
          negatives = (count, rec.line)
        elif count != negatives[0]:
          names = layout.columns['negatives']
          raise DataFormatError(path, rec.line, names[0] if len(names) == 1 else None,
                                f'{count} negatives, but line {negatives[1]} has {negatives[0]} (every row '
                                'needs the same number: batches have static shapes)')
      elif spec.kind == 'scored':
        score_range[0] = min(score_range[0], values['score'])
        score_range[1] = max(score_range[1], values['score'])
      else:
        label = values['label']
        if label_type is None:
          label_type = 'int' if isinstance(label, int) else 'str'
        label_counts[label] = label_counts.get(label, 0) + 1
      if chunk is None or rec.start - chunk.start >= chunk_bytes:
        if chunk is not None:
          chunk.sha256 = chunk_digest.hexdigest()
        chunk = _Chunk(len(chunks), rec.start, rec.line, rows)
        chunk_digest = hashlib.sha256()
        chunks.append(chunk)
      chunk.rows += 1
      chunk.stop = rec.stop
      chunk_digest.update(rec.raw)
      rows += 1
  if chunk is not None:
    chunk.sha256 = chunk_digest.hexdigest()
  if rows == 0:
    if header is not None:
      raise DataFormatError(path, None, None, 'no rows after the header')
    raise DataFormatError(path, None, None, 'empty file: no rows')
  labels = tuple(sorted(label_counts)) if spec.kind == 'labelled' else None
  layout = dataclasses.replace(layout, label_type=label_type)
  stats = FileStats(
      path=str(path), format=fmt, kind=spec.kind, rows=rows, lines=lines, trailing_blank_lines=blanks,
      header=header, columns=layout.columns,
      negatives=negatives[0] if negatives is not None else None,
      score_min=score_range[0] if spec.kind == 'scored' else None,
      score_max=score_range[1] if spec.kind == 'scored' else None,
      label_type=label_type if spec.kind == 'labelled' else None,
      labels=labels, label_counts=tuple(label_counts[k] for k in labels) if labels is not None else None,
      sha256=file_digest.hexdigest(), num_bytes=path.stat().st_size)
  return _Plan(stats, layout, tuple(chunks))


def validate(spec: FileSpec | str | Mapping) -> FileStats:
  """Reads the whole file once, streamed, and returns its :class:`FileStats`.

  Raises DataFormatError naming ``path:line`` and the field of the first bad row (see the module
  docstring), FileNotFoundError / IsADirectoryError for a missing file or a folder.
  """
  return _scan(FileSpec.from_config(spec), DEFAULT_CHUNK_BYTES).stats


# ----------------------------------------------------------------------------------------------
# Conversion (TFDS, ArrayRecord) and the random-access source


def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def fingerprint(spec: FileSpec, sha256: str | None = None) -> str:
  """Hex SHA-256 over the file's content hash and everything in the spec that changes the rows
  (not the path: a renamed or copied file reuses its conversion)."""
  sha256 = sha256 or file_sha256(readers._require(Path(spec.path)))
  described = json.dumps({
      'schema': _SCHEMA, 'format': spec.resolved_format, 'kind': spec.kind,
      'columns': spec.columns.to_json() if spec.columns is not None else None,
      'encoding': _codec(spec.encoding), 'header': spec.header, 'label_type': spec.label_type,
  }, sort_keys=True)
  return hashlib.sha256(f'{described}\0{sha256}'.encode()).hexdigest()


def _features(kind: str) -> tfds.features.FeaturesDict:
  if kind == 'pairs':
    return tfds.features.FeaturesDict({
        'query': tfds.features.Text(),
        'positive': tfds.features.Text(),
        # A 1-d string tensor (the count is the same on every row): cheaper to encode than a Sequence.
        'negatives': tfds.features.Tensor(shape=(None,), dtype=np.str_),
        'doc_key': tfds.features.Scalar(np.int64),
    })
  if kind == 'scored':
    return tfds.features.FeaturesDict({
        'text1': tfds.features.Text(),
        'text2': tfds.features.Text(),
        # Raw bytes: tf.train.Example float lists are float32 and would round 4.4 to 4.4000001.
        'score': tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
    })
  return tfds.features.FeaturesDict({
      'text': tfds.features.Text(),
      'label': tfds.features.Scalar(np.int64),
      # Always present (the features must not depend on the content): '' for integer labels.
      'label_name': tfds.features.Text(),
  })


class FileBuilder(tfds_builders._LocalBuilder, skip_registration=True):
  """One user file as ArrayRecord splits ``part000000``, ... (``config.dataset`` is the kind).

  Preparing needs the ``plan`` of a validation pass; reading a prepared one does not.
  """

  name = 'embedjax_file'

  def __init__(self, *, spec: FileSpec, plan: _Plan | None = None, **kwargs: Any):
    self._spec = spec
    self._plan = plan
    super().__init__(source_dir=Path(spec.path).parent, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    metadata = tfds.core.MetadataDict()
    if self._plan is not None:
      metadata['stats'] = self._plan.stats.to_json()
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.builder_config.dataset} rows of a local file, validated and converted once.',
        features=_features(self.builder_config.dataset),
        metadata=metadata,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
    del dl_manager  # Everything is local.
    if self._plan is None:
      raise RuntimeError('FileBuilder prepares only with the plan of a validation pass (use prepare())')
    return {chunk.split: self._generate_examples(chunk) for chunk in self._plan.chunks}

  def _generate_examples(self, chunk: _Chunk) -> Iterator[tuple[int, dict]]:
    plan, path = self._plan, Path(self._spec.path)
    names = plan.stats.label_names
    label_index = {name: i for i, name in enumerate(names)} if names is not None else None
    digest = hashlib.sha256()
    rows = 0
    with open(path, 'rb') as f:
      for rec in _records(f, path, plan.stats.format, _codec(self._spec.encoding), chunk.start, chunk.stop,
                          chunk.line):
        digest.update(rec.raw)
        values = _parse(plan.layout, rec, path, plan.stats.label_type)
        yield chunk.first_row + rows, _example(plan.stats.kind, values, label_index)
        rows += 1
    # Raising before the generator ends makes TFDS drop the incomplete directory: nothing stale.
    if rows != chunk.rows or digest.hexdigest() != chunk.sha256:
      raise DataFormatError(path, None, None, 'changed while it was being converted; run again')


class FileSource(tfds_builders.DecodedSource):
  """The random-access rows of a prepared file (``len``, ``[i]``), for ``grain.MapDataset.source``.

  ``stats`` is the :class:`FileStats` of the validation pass that prepared it. Elements: see the
  module docstring (``negatives`` a list of str; ``label_name`` only for string labels).
  """

  def __init__(self, source: Any, stats: FileStats):
    super().__init__(source)
    self.stats = stats

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = super().__getitem__(index)
    if 'negatives' in row:
      row['negatives'] = [v.decode('utf-8') if isinstance(v, bytes) else str(v) for v in row['negatives']]
    if 'label_name' in row and self.stats.label_names is None:
      del row['label_name']
    return row

  def __repr__(self) -> str:
    return f'FileSource({self.stats.path}, {self.stats.summary()})'


def _builder(spec: FileSpec, name: str, cache_dir: Path, plan: _Plan | None = None) -> FileBuilder:
  config = tfds_builders.SourceConfig(name=name, dataset=spec.kind, description=f'{spec.kind} rows of {spec.path}')
  return FileBuilder(spec=spec, plan=plan, config=config, data_dir=os.fspath(cache_dir), file_format='array_record')


def _read(builder: FileBuilder) -> tuple[Any, FileStats]:
  """The prepared rows as one ArrayRecordDataSource (parts in order), and the stored stats.

  Read through a TFDS read-only builder: a data source keeps its builder, and a read-only one
  pickles as its directory (grain workers), where a FileBuilder would need the spec and plan.
  """
  reader = tfds.builder_from_directory(builder.data_dir)
  parts = sorted(reader.info.splits)
  return reader.as_data_source(split='+'.join(parts)), FileStats.from_json(reader.info.metadata['stats'])


def prepare(spec: FileSpec | str | Mapping, cache_dir: str | os.PathLike, *,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> FileSource:
  """The rows of a file as a random-access source, converted (once) into ``cache_dir``.

  The file is hashed first; a conversion of the same content and spec is reused. Otherwise the
  file is validated (a DataFormatError leaves ``cache_dir`` untouched), ``preparing FILE (N rows)
  -> DIR`` is printed, and the rows are converted in splits of about ``chunk_bytes`` of the file.
  """
  spec = FileSpec.from_config(spec)
  if not 0 < chunk_bytes <= _MAX_CHUNK_BYTES:
    raise ValueError(f'chunk_bytes must lie in (0, {_MAX_CHUNK_BYTES}], got {chunk_bytes}')
  path = readers._require(Path(spec.path))
  cache_dir = Path(cache_dir)
  sha256 = file_sha256(path)
  name = f'{spec.kind}_{fingerprint(spec, sha256)[:16]}'
  # Constructing a builder writes nothing; only download_and_prepare() does.
  builder = _builder(spec, name, cache_dir)
  if builder.data_path.exists():
    source, stats = _read(builder)
    return FileSource(source, dataclasses.replace(stats, path=str(path)))
  plan = _scan(spec, chunk_bytes)
  if plan.stats.sha256 != sha256:
    raise DataFormatError(path, None, None, 'changed while it was being read; run again')
  builder = _builder(spec, name, cache_dir, plan)
  print(f'preparing {path} ({plan.stats.rows} rows) -> {builder.data_dir}', flush=True)
  builder.download_and_prepare()
  return FileSource(_read(builder)[0], plan.stats)
