"""embedjax.evals: retrieval / STS / pair / classification / clustering metrics and tasks.

  TASKS             {name: Task} of the task runner (``tasks.py``): kind, loader, main metric
  get_task(name)    TASKS[name], or a one-line error listing the choices and the closest one
  task_names()      the keys of TASKS
  run_task          run one task with any ``encode_fn(texts) -> (N, D)``
  MTEBEncoder       any embedjax model as an mteb encoder (``mteb_encoder.py``; mteb not imported)

The metric functions (``metrics``, ``sts``, ``pair_classification``, ``classification``,
``clustering``, ``bm25``) are exported too. Names are imported on first use.
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

_ATTRIBUTES = {
    # tasks.py
    'TASKS': 'tasks', 'Task': 'tasks', 'DEFAULT_TASKS': 'tasks', 'SYNTHETIC_TASKS': 'tasks',
    'DATA_FOLDERS': 'tasks', 'run_task': 'tasks', 'format_table': 'tasks',
    'encode_unique': 'tasks', 'task_inputs': 'tasks',
    # metrics.py
    'DEFAULT_KS': 'metrics', 'RunRelevance': 'metrics', 'run_relevance': 'metrics',
    'ndcg_at_k': 'metrics', 'recall_at_k': 'metrics', 'precision_at_k': 'metrics',
    'mrr_at_k': 'metrics', 'map_at_k': 'metrics', 'per_query_metrics': 'metrics',
    'retrieval_metrics': 'metrics',
    # sts.py, pair_classification.py
    'pearson': 'sts', 'spearman': 'sts', 'rank_average': 'sts', 'pair_similarities': 'sts',
    'sts_scores': 'sts',
    'average_precision': 'pair_classification', 'best_accuracy': 'pair_classification',
    'best_f1': 'pair_classification', 'binary_scores': 'pair_classification',
    'pair_classification_scores': 'pair_classification',
    # classification.py, clustering.py, bm25.py
    'LogisticParams': 'classification', 'fit_logistic': 'classification',
    'predict_proba': 'classification', 'predict': 'classification',
    'f1_macro': 'classification', 'logistic_probe': 'classification',
    'KMeansResult': 'clustering', 'kmeans': 'clustering', 'v_measure': 'clustering',
    'homogeneity_completeness_v_measure': 'clustering', 'clustering_scores': 'clustering',
    'BM25TopK': 'bm25', 'bm25_topk': 'bm25',
    'MTEBEncoder': 'mteb_encoder',
}
_SUBMODULES = ('bm25', 'classification', 'clustering', 'metrics', 'mteb_encoder',
               'pair_classification', 'sts', 'tasks')


def get_task(name: str):
  """The :class:`~embedjax.evals.tasks.Task` called ``name``, e.g. ``get_task('stsb')``."""
  from embedjax.evals.tasks import TASKS
  from embedjax.registry import lookup
  return lookup(TASKS, name, 'task')


def task_names() -> tuple[str, ...]:
  """Names accepted by :func:`get_task`: tasks on the shared data folder, then synthetic ones."""
  from embedjax.evals.tasks import TASKS
  return tuple(TASKS)


__all__ = sorted(_ATTRIBUTES) + ['get_task', 'task_names'] + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
