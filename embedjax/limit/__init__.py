"""embedjax.limit: the LIMIT dataset (Weller et al. 2025) and its theory: qrel patterns, corpora,
free embeddings.

  patterns         qrel patterns (dense, random, cycle, disjoint) and LIMIT-style corpora
  free_embedding   free-embedding optimisation: critical n for a dimension, minimum dimension
  training_sources LIMIT training sources for ``embedjax train``

Names are imported on first use.
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

_ATTRIBUTES = {
    **dict.fromkeys(('PATTERNS', 'LimitCorpus', 'generate_corpus', 'qrel_pairs', 'qrel_matrix',
                     'max_queries', 'default_pool_size'), 'patterns'),
    **dict.fromkeys(('Protocol', 'optimise', 'critical_n', 'min_dimension', 'make_qrels',
                     'all_pairs_qrels', 'solved', 'fit_cubic', 'eval_cubic'), 'free_embedding'),
}
_SUBMODULES = ('free_embedding', 'patterns', 'training_sources')

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
