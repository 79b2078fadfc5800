"""``fit``: the training loop as one Python call, for notebooks.

    import embedjax
    from embedjax.train import fit
    rows = [{'anchor': 'what is a prion?', 'positive': 'A prion is a misfolded protein ...'}, ...]
    model, summary = fit('all-MiniLM-L6-v2', rows, workdir='runs/nb', steps=200, batch_size=32)
    model.encode(['a query'])

It builds a config from ``embedjax.train.base_config`` (or the one given), sets the fields the
arguments name, and calls ``embedjax.train.loop.train``: the same loop, checkpoints, resumption,
logs and provenance as ``embedjax train``. Its exported sentence-transformers folder is loaded
back as an ``EmbeddingModel``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from embedjax.config import ConfigError, set_fields
from embedjax.errors import DataFormatError
from embedjax.models.model import EmbeddingModel, load
from embedjax.train import batches as train_batches
from embedjax.train import data as train_data
from embedjax.train.base_config import base_config, use_loss
from embedjax.train.loop import train

IN_MEMORY = 'fit_rows'  # the source name fit gives rows passed as a list


def _text(row: dict, index: int, *names: str) -> str:
  for name in names:
    if name in row:
      value = row[name]
      if not isinstance(value, str) or not value.strip():
        raise DataFormatError('train_data', index, name, f'expected a non-empty text, got {value!r}')
      return value
  raise DataFormatError('train_data', index, names[0], 'missing')


def rows_source(rows: Sequence[dict]) -> train_data.Source:
  """A training Source over in-memory rows: each ``{'anchor' (or 'query'), 'positive'
  [, 'negatives': [...] (or one 'negative')]}`` or ``{'text1', 'text2', 'score'}``. Every row is
  checked first; an error names ``train_data:INDEX`` (0-based) and the field."""
  if not len(rows):
    raise DataFormatError('train_data', None, None, 'no rows')
  scored = 'score' in rows[0]
  out, counts = [], set()
  for i, row in enumerate(rows):
    if not isinstance(row, dict):
      raise DataFormatError('train_data', i, None, f'expected a dict, got {type(row).__name__}')
    if scored:
      score = row.get('score')
      if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise DataFormatError('train_data', i, 'score', f'expected a finite number, got {score!r}')
      q, d = _text(row, i, 'text1', 'anchor', 'query'), _text(row, i, 'text2', 'positive')
      out.append({'query': q, 'positive': d, 'score': float(score),
                  'doc_key': train_batches.text_key(d)})
      continue
    q, d = _text(row, i, 'anchor', 'query'), _text(row, i, 'positive')
    negs = row.get('negatives', [row['negative']] if 'negative' in row else [])
    if isinstance(negs, str) or not isinstance(negs, (list, tuple)):
      raise DataFormatError('train_data', i, 'negatives', f'expected a list of texts, got {negs!r}')
    negs = [_text({'negative': n}, i, 'negative') for n in negs]
    counts.add(len(negs))
    if len(counts) > 1:
      raise DataFormatError('train_data', i, 'negatives', f'{len(negs)} negatives; earlier rows '
                            f'have {min(counts - {len(negs)})} (every row needs the same number)')
    r = {'query': q, 'positive': d, 'doc_key': train_batches.text_key(d)}
    if negs:
      r['negatives'] = negs
    out.append(r)
  n_neg = counts.pop() if counts else 0
  return train_data.Source(lambda data_dir, cache: out, needs_shared_data=False,
                           hard_negatives=n_neg > 0, negatives=max(n_neg, 1), scored=scored)


def fit(model: str | os.PathLike = 'all-MiniLM-L6-v2', train_data_: Any = 'synthetic', *,
        workdir: str | os.PathLike, loss: str = 'info_nce', steps: int = 100,
        batch_size: int = 32, query_len: int = 64, doc_len: int = 256, lr: float = 2e-5,
        seed: int = 0, config: ml_collections.ConfigDict | None = None,
        overrides: dict[str, Any] | None = None, progress: bool = True,
        **loss_fields) -> tuple[EmbeddingModel, dict]:
  """Trains ``model`` on ``train_data_`` and returns (the trained model, the run's summary).

  Args:
    model: a packaged name or a folder to start from (``model.init = 'pretrained:...'``), or
      ``'random:NAME'`` for fresh weights of that shape.
    train_data_: a list of row dicts (see :func:`rows_source`), a file (``'file:PATH'`` or a
      path ending in .jsonl / .csv / .tsv; ``overrides`` may set ``data.file.*``), or built-in
      source names ('scifact', 'stsb_scored', ...).
    workdir: checkpoints, logs, summary and the exported model go here; calling again with the
      same arguments resumes (or returns at once when the run is complete).
    loss: a loss of ``embedjax.losses.LOSSES``; ``loss_fields`` set its own fields.
    steps, batch_size, query_len, doc_len, lr, seed: the config fields of the same meaning.
    config: the config to start from (default ``base_config()``).
    overrides: more fields, ``{'data.file.columns': 'anchor=q,positive=a', ...}``.
  """
  c = base_config() if config is None else ml_collections.ConfigDict(config.to_dict())
  model = os.fspath(model)
  c.model.init = model if model.startswith(('random:', 'pretrained:')) else f'pretrained:{model}'
  sources = dict(train_data.SOURCES)
  if isinstance(train_data_, (list, tuple)):
    sources[IN_MEMORY] = rows_source(train_data_)
    c.data.train = IN_MEMORY
  elif isinstance(train_data_, (str, os.PathLike)):
    name = os.fspath(train_data_)
    if name.lower().endswith(('.jsonl', '.json', '.csv', '.tsv')) and not name.startswith('file:'):
      name = f'file:{name}'
    c.data.train = name
  else:
    raise ConfigError(f'train_data: expected a list of rows, a file or source names, got '
                      f'{type(train_data_).__name__}')
  use_loss(c, loss, **loss_fields)
  c.steps, c.seed, c.optim.lr = int(steps), int(seed), float(lr)
  c.data.batch_size, c.data.query_len, c.data.doc_len = int(batch_size), int(query_len), int(doc_len)
  c.export = True
  set_fields(c, overrides or {})
  summary = train(c, Path(workdir), sources=sources, progress=progress)
  return load(summary['export']), summary
