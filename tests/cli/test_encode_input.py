"""``read_texts``, the reader behind ``embedjax encode``: formats, titles, blank lines, errors.

Expected texts are written out by hand for each file.
"""

from __future__ import annotations

import gzip

import pytest

from embedjax.data.readers import read_texts, text_format
from embedjax.errors import DataFormatError


def write(tmp_path, name, data: bytes):
  path = tmp_path / name
  path.write_bytes(gzip.compress(data) if name.endswith('.gz') else data)
  return path


def test_text_lines_kept_as_written_and_trailing_blanks_counted(tmp_path):
  path = write(tmp_path, 'a.txt', '\ufeffone  \r\n two\n\u00e9t\u00e9\n\n \t\n\n'.encode())
  got = read_texts(path)
  assert got.texts == ['one  ', ' two', '\u00e9t\u00e9']
  assert (got.format, got.trailing_blank_lines) == ('txt', 3)
  assert read_texts(write(tmp_path, 'b.txt', b'x\ny')).trailing_blank_lines == 0


@pytest.mark.parametrize('data, line', [(b'a\n\nb\n', 2), (b'\na\n', 1), (b'a\n  \n\nb\n\n', 2)])
def test_blank_line_before_a_text_names_its_line(tmp_path, data, line):
  path = write(tmp_path, 'gap.txt', data)
  with pytest.raises(DataFormatError, match=rf'gap.txt:{line}: blank line before a text'):
    read_texts(path)


@pytest.mark.parametrize('name, data, fmt, expected', [
    ('a.txt', b'{"text": "x"}\n', 'txt', 'txt'),         # the suffix wins over the content
    ('a.txt.gz', b'plain\n', 'txt', 'txt'),
    ('a.jsonl', b'{"text": "x"}\n', 'jsonl', 'jsonl'),
    ('a.jsonl.gz', b'{"text": "x"}\n', 'jsonl', 'jsonl'),
    ('a.json', b'{"text": "x"}\n', 'jsonl', 'jsonl'),
    ('notes', b'\n  {"text": "x"}\n', 'jsonl', 'jsonl'),  # no known suffix: the first line decides
    ('notes.md', b'plain text\n{"text": "x"}\n', 'txt', 'txt'),
])
def test_auto_format_by_suffix_then_content(tmp_path, name, data, fmt, expected):
  path = write(tmp_path, name, data)
  assert text_format(path) == expected
  assert read_texts(path).format == fmt


def test_explicit_format_overrides_the_suffix(tmp_path):
  path = write(tmp_path, 'rows.txt', b'{"text": "x", "title": "T"}\n')
  assert read_texts(path, 'jsonl').texts == ['T x']
  assert read_texts(path, 'txt').texts == ['{"text": "x", "title": "T"}']
  with pytest.raises(ValueError, match='unknown text format'):
    read_texts(path, 'csv')


def test_title_field_joins_like_beir_or_is_ignored(tmp_path):
  path = write(tmp_path, 'c.jsonl', b'{"title": "T", "body": "b1"}\n\n{"body": " b2 "}\n'
                                    b'{"title": null, "body": "b3", "name": "N"}\n')
  assert read_texts(path, field='body').texts == ['T b1', 'b2', 'b3']
  assert read_texts(path, field='body', title_field='').texts == ['b1', 'b2', 'b3']
  assert read_texts(path, field='body', title_field=None).texts == ['b1', 'b2', 'b3']
  bad = write(tmp_path, 'd.jsonl', b'{"title": 3, "text": "x"}\n')
  with pytest.raises(DataFormatError, match=r"d.jsonl:1: field 'title': expected a string"):
    read_texts(bad)
  assert read_texts(bad, title_field='').texts == ['x']


@pytest.mark.parametrize('name, data, match', [
    ('e.jsonl', b'{"text": "a"}\n{"text": 5}\n', r"e.jsonl:2: field 'text': expected a string"),
    ('f.jsonl', b'{"text": "  "}\n', r"f.jsonl:1: field 'text': empty text"),
    ('g.jsonl', b'["a"]\n', r'g.jsonl:1: expected a JSON object'),
    ('h.txt', b'', r'h.txt: no texts'),
    ('i.txt', b'\n\n', r'i.txt: no texts'),
    ('j.jsonl', b'\n', r'j.jsonl: no texts'),
    ('k.txt', b'ok\nbad \xc3\x28\n', r'k.txt:2: not UTF-8: byte 0xc3 at column 5'),
])
def test_bad_files_name_file_line_and_field(tmp_path, name, data, match):
  with pytest.raises(DataFormatError, match=match):
    read_texts(write(tmp_path, name, data))


def test_a_guessed_format_says_why_when_it_fails(tmp_path):
  path = write(tmp_path, 'notes', b'{braces} open this text\nsecond\n')
  with pytest.raises(DataFormatError, match=r"notes:1: invalid JSON.*first line starts with '\{'.*"
                                            r"format 'txt'"):
    read_texts(path)
  assert read_texts(path, 'txt').texts == ['{braces} open this text', 'second']


def test_folder_and_missing_path(tmp_path):
  with pytest.raises(IsADirectoryError, match='is a directory'):
    read_texts(tmp_path)
  with pytest.raises(FileNotFoundError, match='missing data file'):
    read_texts(tmp_path / 'absent.txt')
