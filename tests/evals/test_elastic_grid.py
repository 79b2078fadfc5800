"""The (layer, dim) grid of elastic embeddings (embedjax.evals.elastic_grid): each cell equals
plain ``run_task`` on a model truncated to that many layers (the first l layers' params, a spec with
l layers) encoded by the ordinary packed encoder, then cut to the dim; every text set is encoded
once for all layers; the grid plot holds the values."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from embedjax.encoding import encode
from embedjax.evals import elastic_grid as eg
from embedjax.evals.tasks import run_task
from embedjax.models.pretrained import Pretrained, load_pretrained
from embedjax.ops import l2_normalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'models'))
from tiny_models import save_bert_with_tokenizer  # noqa: E402

pytest.importorskip('transformers')
LAYERS = (0, 1, 2)
DIMS = (8, 32)


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Pretrained:
  """A tiny random BERT (2 layers, width 32) written by transformers, loaded by embedjax."""
  return load_pretrained(save_bert_with_tokenizer(tmp_path_factory.mktemp('tiny') / 'bert'))


def truncated(model: Pretrained, layers: int) -> Pretrained:
  """The model cut after ``layers`` transformer layers: a spec with that depth, and only the
  params of its first layers."""
  spec = dataclasses.replace(model.spec,
                             bert=dataclasses.replace(model.spec.bert, num_hidden_layers=layers))
  keep = lambda k: not (m := re.fullmatch(r'layer_(\d+)', k)) or int(m.group(1)) < layers
  params = {k: v for k, v in model.params.items() if keep(k)}
  assert len(params) == len(model.params) - (model.spec.bert.num_hidden_layers - layers)
  return dataclasses.replace(model, spec=spec, params=params)


@pytest.fixture(scope='module')
def retrieval_grid(model):
  calls = []
  real = eg.encode_layers

  def counted(*args, **kwargs):
    calls.append(len(args[1]))
    return real(*args, **kwargs)

  eg.encode_layers = counted
  try:
    grid = eg.elastic_grid(model, None, 'synthetic_retrieval', LAYERS, DIMS, None)
  finally:
    eg.encode_layers = real
  return grid, calls


def test_retrieval_cells_equal_run_task_on_truncated_models(model, retrieval_grid):
  grid, calls = retrieval_grid
  assert set(grid) == {(layer, dim) for layer in LAYERS for dim in DIMS}
  # Queries and corpus, each encoded once for every layer and dim.
  assert sorted(calls) == [50, 300]
  values = []
  for layer in LAYERS:
    cut = truncated(model, layer)
    cache = {}

    def encode_fn(texts, dim):
      key = tuple(texts)
      if key not in cache:
        cache[key] = encode(cut, list(texts), progress=False)
      return l2_normalize(cache[key][:, :dim])

    for dim in DIMS:
      expected = run_task('synthetic_retrieval', lambda t, dim=dim: encode_fn(t, dim), None)
      assert grid[(layer, dim)] == pytest.approx(expected['ndcg@10'], abs=1e-6), (layer, dim)
      values.append(grid[(layer, dim)])
  # The cells differ: the grid is not one number repeated.
  assert len(set(np.round(values, 6))) > 1


def test_layer_embeddings_equal_the_truncated_model_and_the_full_one(model):
  texts = ['the cat sat on the mat', 'a man is playing a guitar', 'hello world']
  got = eg.encode_layers(model, texts, [1, -1], batch_size=2)
  np.testing.assert_allclose(got[0], encode(truncated(model, 1), texts, progress=False), atol=1e-5)
  np.testing.assert_allclose(got[1], encode(model, texts, progress=False), atol=1e-5)


def test_sts_cell_and_metric_choice(model):
  grid = eg.elastic_grid(model, model.params, 'synthetic_sts', [1], [16], None, metric='pearson')
  cut = truncated(model, 1)
  expected = run_task('synthetic_sts', lambda t: l2_normalize(encode(cut, t, progress=False)[:, :16]),
                      None)
  assert grid[(1, 16)] == pytest.approx(expected['pearson'], abs=1e-6)


def test_bad_arguments(model):
  with pytest.raises(ValueError, match='outside 1..32'):
    eg.elastic_grid(model, None, 'synthetic_sts', [1], [64], None)
  with pytest.raises(ValueError, match='layer 3 is out of range'):
    eg.elastic_grid(model, None, 'synthetic_sts', [3], [8], None)
  with pytest.raises(ValueError, match='unknown task'):
    eg.elastic_grid(model, None, 'nope', [1], [8], None)


def test_plot_grid_holds_the_values(retrieval_grid, tmp_path):
  pytest.importorskip('matplotlib')
  grid, _ = retrieval_grid
  partial = {k: v for k, v in grid.items() if k != (0, 32)}  # a missing cell stays blank
  fig = eg.plot_grid(partial, tmp_path / 'grid.png', metric='nDCG@10')
  assert (tmp_path / 'grid.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  image = fig.axes[0].get_images()[0].get_array()
  layers, dims, values = eg.grid_array(partial)
  assert (layers, dims) == (list(LAYERS), list(DIMS))
  np.testing.assert_array_equal(np.ma.getmaskarray(image), np.isnan(values))
  np.testing.assert_allclose(image.filled(np.nan), values)
  assert len(fig.axes[0].texts) == len(partial)
