"""Every notebook in notebooks/ executes top to bottom (in the test interpreter's environment),
draws at least one picture, and is committed with its outputs (pictures) kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('matplotlib')

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / 'notebooks'
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob('*.ipynb'))
# tqdm.auto's complaint in a Jupyter kernel without ipywidgets
WIDGET_WARNINGS = ('IProgress not found', 'ipywidgets')


def _executor():
  """notebooks/execute.py: the same execution as the script that writes the committed outputs."""
  spec = importlib.util.spec_from_file_location('notebook_execute', NOTEBOOK_DIR / 'execute.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _outputs(nb):
  return [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]


def _images(nb) -> int:
  return sum('image/png' in o.get('data', {}) for o in _outputs(nb))


def test_there_are_notebooks():
  names = {p.name for p in NOTEBOOKS}
  assert {'quickstart.ipynb', 'quantizer_pareto.ipynb', 'train_tiny.ipynb'} <= names


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_keeps_its_pictures(path):
  nb = nbformat.read(path, as_version=4)
  assert _images(nb) >= 1, f'{path.name}: no image output stored; run python notebooks/execute.py'
  assert not [o for o in _outputs(nb) if o.output_type == 'error'], path.name
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(c.execution_count for c in code), f'{path.name}: a code cell was never executed'


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_and_draws(path, minilm):
  nb = _executor().execute(path)  # raises CellExecutionError, with the failing cell, on any error
  outputs = _outputs(nb)
  assert _images(nb) >= 1, f'{path.name}: no image/png output'
  assert not [o for o in outputs if o.output_type == 'error']
  stderr = ''.join(o.get('text', '') for o in outputs
                   if o.output_type == 'stream' and o.name == 'stderr')
  assert not [w for w in WIDGET_WARNINGS if w in stderr], stderr
