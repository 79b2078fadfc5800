"""The test-order helper: seconds per file from a `--durations` report, and the order conftest gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _module():
  spec = importlib.util.spec_from_file_location('_file_seconds', HERE / 'file_seconds.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_seconds_are_summed_per_file_over_setup_call_and_teardown():
  report = '\n'.join([
      '============================= slowest durations =============================',
      '12.50s call     tests/a/test_x.py::test_one[p-1]',
      '3.00s setup    tests/a/test_x.py::test_one[p-1]',
      '0.25s teardown tests/a/test_x.py::test_two',
      '7.00s call     tests/test_y.py::test_z',
      '(3 durations < 0.005s hidden.  Use -vv to show these durations.)',
      '1411 passed in 2165.95s (0:36:05)',
  ])
  assert _module().file_seconds(report) == {'tests/a/test_x.py': 15.75, 'tests/test_y.py': 7.0}


def test_the_committed_order_names_existing_files_longest_first():
  seconds = json.loads((HERE / 'file_seconds.json').read_text())['seconds']
  assert seconds and all((HERE.parent / f).is_file() for f in seconds), [
      f for f in seconds if not (HERE.parent / f).is_file()]
  assert list(seconds.values()) == sorted(seconds.values(), reverse=True)
