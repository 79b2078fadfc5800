"""Writes tests/file_seconds.json, the seconds each test file took, from pytest's `--durations=0`
report (setup, call and teardown summed per file), for the order tests/conftest.py gives xdist.

  PYTEST_ADDOPTS=--durations=0 make test 2>&1 | tee /tmp/t.log
  python tests/file_seconds.py /tmp/t.log
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r'^(\d+(?:\.\d+)?)s (setup|call|teardown)\s+(\S+?\.py)(?:::\S*)?')


def file_seconds(report: str) -> dict[str, float]:
  """{test file: seconds} from the lines of a `--durations` report."""
  out: dict[str, float] = defaultdict(float)
  for line in report.splitlines():
    m = LINE.match(line.strip())
    if m:
      out[m.group(3)] += float(m.group(1))
  return dict(out)


def main(argv: list[str]) -> None:
  if len(argv) != 1:
    raise SystemExit('usage: python tests/file_seconds.py PYTEST_LOG')
  seconds = file_seconds(Path(argv[0]).read_text())
  if not seconds:
    raise SystemExit(f'{argv[0]}: no `--durations` lines (run pytest with --durations=0)')
  out = Path(__file__).with_name('file_seconds.json')
  body = {'source': 'a fresh-clone `.ci/run` with PYTEST_ADDOPTS=--durations=0 (2 cores)',
          'seconds': {k: round(v, 1) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}}
  tmp = out.with_suffix('.tmp')
  tmp.write_text(json.dumps(body, indent=1) + '\n')
  tmp.replace(out)
  print(f'{out}: {len(seconds)} files, {sum(seconds.values()):.0f} s in all')


if __name__ == '__main__':
  main(sys.argv[1:])
