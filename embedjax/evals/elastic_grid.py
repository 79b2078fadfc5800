"""Elastic embeddings: a task's score at every (layer, dimension) cell, and its grid plot.

A model trained with 2DMSE (``losses.elastic.matryoshka_2d``) embeds from any hidden state (the
model's head applied to it, as ``models.layerwise.embed_layers``) at any Matryoshka width
(truncate, then renormalise). :func:`elastic_grid` scores a task at each cell: every text set the
task asks for is embedded once, in one forward that keeps every requested layer, and each cell then
only truncates those embeddings. Scoring is the task runner's own (``evals.tasks.run_task``: nDCG@10
for retrieval, Spearman for STS, ...), so a cell's number is the one a model cut to that depth
would get from ``run_task`` at that width.

Layer numbers are hidden-state indices: 0 is the embedding output, ``num_hidden_layers`` the last
layer (the ordinary model).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm  # plain bars: tqdm.auto warns at import in kernels without ipywidgets

from embedjax.encoding import row_length_ladder
from embedjax.evals.tasks import TASKS, run_task
from embedjax.models.layerwise import _layer_indices, embed_layers
from embedjax.models.pretrained import Pretrained
from embedjax.models.spec import EmbedderSpec
from embedjax.ops import l2_normalize


@functools.lru_cache(maxsize=8)
def _compiled_layers(spec: EmbedderSpec, layers: tuple[int, ...]):
  # One executable per (rows, length) shape, reused across calls (as encoding._compiled_embed).
  return jax.jit(functools.partial(embed_layers, spec=spec, layers=layers))


def encode_layers(model: Pretrained, texts: Sequence[str], layers: Sequence[int], *, params=None,
                  batch_size: int = 32, progress: bool = False) -> np.ndarray:
  """Embeds texts at several depths in one forward per batch: N texts -> (len(layers), N, D).

  Texts are sorted by length and padded to the shortest row length of ``encoding``'s ladder
  that holds the batch's longest (few shapes to compile); each batch is padded to ``batch_size``
  rows. Entry [i] equals what a model cut after hidden state ``layers[i]`` embeds.
  """
  if isinstance(texts, str):
    raise TypeError('encode_layers takes a sequence of texts, not a single string')
  if not texts:
    raise ValueError('encode_layers got no texts')
  spec = model.spec
  layers = tuple(_layer_indices(spec, layers))
  params = model.params if params is None else params
  fn = _compiled_layers(spec, layers)
  ladder = row_length_ladder(spec.max_seq_length, min(64, spec.max_seq_length))
  ids = model.tokenizer.encode(list(texts))
  order = np.argsort([len(x) for x in ids], kind='stable')
  out = np.empty((len(layers), len(texts), spec.embedding_dim), np.float32)
  for start in tqdm(range(0, len(order), batch_size), desc='encode layers', disable=not progress):
    rows = order[start:start + batch_size]
    chunk = [ids[i] for i in rows]
    length = next(n for n in ladder if n >= max(len(x) for x in chunk))
    # Padding rows repeat the first text (a row with no token would pool an empty set).
    batch = model.tokenizer.pad(chunk + [chunk[0]] * (batch_size - len(chunk)), length)
    emb = fn(params, input_ids=batch['input_ids'], attention_mask=batch['attention_mask'])
    out[:, rows] = np.asarray(emb)[:, :len(chunk)]
  return out


def elastic_grid(model: Pretrained, params, task: str, layers: Sequence[int], dims: Sequence[int],
                 data_dir: str | os.PathLike | None, *, metric: str | None = None,
                 batch_size: int = 32, progress: bool = False) -> dict[tuple[int, int], float]:
  """A task's metric at every (layer, dim) cell.

  Args:
    model: the model (spec, tokenizer; its params unless ``params`` is given).
    params: params to embed with (e.g. a trained state's encoder), or None for ``model.params``.
    task: a name of ``evals.tasks.TASKS``.
    layers: hidden-state indices (0 = embedding output, -1 or num_hidden_layers = last layer).
    dims: Matryoshka widths, each in 1..D (embeddings truncated, then L2-renormalised).
    data_dir: the shared data folder (None for the synthetic tasks).
    metric: which of the task's metrics (default: its main metric, e.g. ndcg@10, spearman).
  Returns:
    {(layer, dim): value} with ``layer`` as given, for every pair.
  """
  if task not in TASKS:
    raise ValueError(f'unknown task {task!r}; choose from {", ".join(TASKS)}')
  width = model.spec.embedding_dim
  bad = [d for d in dims if not 0 < int(d) <= width]
  if bad:
    raise ValueError(f'dims {bad}: outside 1..{width} (the model width)')
  layers = list(layers)
  _layer_indices(model.spec, layers)  # range check before any encoding
  data_dir = None if data_dir is None else Path(data_dir)
  cache: dict[tuple[str, ...], np.ndarray] = {}

  def all_layers(texts) -> np.ndarray:
    key = tuple(texts)
    if key not in cache:  # each text set the task embeds, once, for every layer at once
      cache[key] = encode_layers(model, list(texts), layers, params=params,
                                 batch_size=batch_size, progress=progress)
    return cache[key]

  grid = {}
  for i, layer in enumerate(layers):
    for dim in dims:
      encode_fn = lambda texts, i=i, dim=int(dim): l2_normalize(all_layers(texts)[i][:, :dim])
      result = run_task(task, encode_fn, data_dir)
      grid[(layer, int(dim))] = float(result[metric or result['main_metric']])
  return grid


def grid_array(grid: dict[tuple[int, int], float]) -> tuple[list[int], list[int], np.ndarray]:
  """(layers, dims, values (L, D)) of a grid, both axes sorted; NaN where a cell is missing."""
  layers = sorted({layer for layer, _ in grid})
  dims = sorted({dim for _, dim in grid})
  values = np.full((len(layers), len(dims)), np.nan)
  for (layer, dim), v in grid.items():
    values[layers.index(layer), dims.index(dim)] = v
  return layers, dims, values


def plot_grid(grid: dict[tuple[int, int], float], path: str | os.PathLike | None = None, *,
              metric: str = '', title: str = '', fmt: str = '.3f'):
  """A heatmap of the grid (``plots.layer_dim_grid``: layers up, dims across, each cell's value
  printed); written as PNG to ``path`` when given. Returns the matplotlib Figure."""
  from embedjax import plots
  layers, dims, values = grid_array(grid)
  fig = plots.layer_dim_grid(values, layers, dims, metric=metric, title=title, fmt=fmt)
  if path is not None:
    plots.save_png(fig, path)
  return fig
