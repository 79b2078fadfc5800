"""Atomic writes: the file holds its old or its complete new content, and no temporary is left."""

from __future__ import annotations

import json
import os

import pytest

from embedjax import io


def test_writes_round_trip_and_leave_no_temporary(tmp_path):
  target = tmp_path / 'sub' / 'f.txt'
  io.atomic_write_text(target, 'a\nb\r\nc ✓')
  assert target.read_bytes() == 'a\nb\r\nc ✓'.encode('utf-8')  # newlines kept as given
  io.atomic_write_bytes(target, b'\x00\xff')
  assert target.read_bytes() == b'\x00\xff'
  io.atomic_write_json(tmp_path / 'r.json', {'x': [1, 2.5]})
  assert json.loads((tmp_path / 'r.json').read_text()) == {'x': [1, 2.5]}
  assert sorted(p.name for p in tmp_path.rglob('*')) == ['f.txt', 'r.json', 'sub']


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
  target = tmp_path / 'f.bin'
  target.write_bytes(b'old')

  def fail(*args):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'replace', fail)
  with pytest.raises(OSError, match='disk full'):
    io.atomic_write_bytes(target, b'new')
  assert target.read_bytes() == b'old'
  assert [p.name for p in tmp_path.iterdir()] == ['f.bin']
  with pytest.raises(ValueError):  # NaN is not JSON
    io.atomic_write_json(tmp_path / 'n.json', {'x': float('nan')})
