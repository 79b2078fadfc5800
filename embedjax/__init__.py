"""embedjax: learn, compress and evaluate embeddings with pure JAX functions::

  import embedjax
  model = embedjax.load('all-MiniLM-L6-v2')         # an EmbeddingModel
  emb = model.encode(['first text', 'second text'])  # (2, 384) float32
  model.similarity(emb, emb)                         # (2, 2)

Subpackages, each exporting its public names in ``__all__`` and selecting things by name through
plain dicts with ``get(name)`` / ``names()``:

  models   specs, params pytrees, loading and saving (``embedjax.models.load``)
  losses   embedding losses (``losses.get('info_nce')``)
  quant    quantizers and dimension reducers (``quant.get('int8')``)
  search   exact and compressed top-k search (``search.get('flat')``)
  evals    metrics and evaluation tasks (``evals.get_task('stsb')``)
  data     strict readers of benchmark files, synthetic data, TFDS builders
  train    config, train step, loop, checkpoints
  tables   recommender embedding tables and CTR models
  limit    the LIMIT dataset and free-embedding theory
  plots    the studies' figures: Pareto, critical-n, layer x dim grid, training curves (matplotlib)

Everything is imported on first use: ``import embedjax`` itself imports no jax.
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

__version__ = '0.1.0'

_ATTRIBUTES = {'load': 'models.model', 'EmbeddingModel': 'models.model', 'encode': 'encoding'}
_SUBPACKAGES = ('data', 'evals', 'limit', 'losses', 'models', 'plots', 'quant', 'search', 'tables',
                'train')

__all__ = ['load', 'encode', 'EmbeddingModel', *_SUBPACKAGES]
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBPACKAGES)
