"""Re-executes the notebooks in place, so that their committed outputs (pictures) come from a run.

  python notebooks/execute.py                      # every notebooks/*.ipynb
  python notebooks/execute.py quickstart.ipynb     # only these (names or paths)

Each notebook runs top to bottom in a fresh 'python3' kernel (ipykernel's own kernel, so this
interpreter and its packages) with the notebooks folder as working directory, as
tests/test_notebooks.py runs them; a failing cell stops it with that cell's error and leaves the
file as it was. Execution timestamps are not recorded, so a rerun changes a file only where its
outputs change.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbclient
import nbformat

from embedjax.io import atomic_write_text

NOTEBOOK_DIR = Path(__file__).resolve().parent


def notebooks() -> list[Path]:
  """Every notebook of the folder, by name."""
  return sorted(NOTEBOOK_DIR.glob('*.ipynb'))


def execute(path: str | Path, *, timeout: int = 600) -> nbformat.NotebookNode:
  """Runs the notebook at ``path`` and returns it with its new outputs (the file is not written).

  Raises nbclient's CellExecutionError, naming the cell, on the first error.
  """
  path = Path(path)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name='python3',
                                   record_timing=False,
                                   resources={'metadata': {'path': str(path.parent)}})
  client.execute()
  for cell in nb.cells:  # outputs of an earlier nbclient that recorded timings
    cell.metadata.pop('execution', None)
  return nb


def main(argv: list[str]) -> int:
  paths = [Path(a) if Path(a).exists() else NOTEBOOK_DIR / a for a in argv] or notebooks()
  for path in paths:
    start = time.perf_counter()
    nb = execute(path)
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    atomic_write_text(path, text if text.endswith('\n') else text + '\n')
    print(f'{path.name}: executed in {time.perf_counter() - start:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
