"""Every notebook in notebooks/ executes top to bottom (in the test interpreter's environment)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / 'notebooks').glob('*.ipynb'))


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, minilm):
  nb = nbformat.read(path, as_version=4)
  # 'python3' is ipykernel's native kernel: it runs with this interpreter, so the venv's packages.
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': str(path.parent)}})
  client.execute()  # raises CellExecutionError, with the failing cell, on any error
  assert any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')
