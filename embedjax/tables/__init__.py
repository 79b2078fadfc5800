"""embedjax.tables: compressed embedding tables for recommenders, and CTR models to train them in.

  TABLES[name](vocab_sizes, dim, **hparams)       a table from explicit hyperparameters
  BUDGETED / for_budget(name, ..., budget_bytes)  a table sized to a byte budget
  MODELS[name](num_fields, dim)                   CTR models: lr, fm, deepfm, dlrm
  fit, make_train_step, evaluate_ctr              training and evaluation (``train.py``)
  auc, log_loss                                   metrics (``metrics.py``)

One module per table family (``hashing``, ``qr``, ``tt``, ``dhe``, ...), exported as modules: their
builders share the module's name. Names are imported on first use.
"""

from __future__ import annotations

from embedjax.lazy import lazy_exports

_ATTRIBUTES = {
    'TABLES': 'methods', 'BUDGETED': 'methods', 'for_budget': 'methods',
    'Table': 'base', 'Infeasible': 'base', 'full': 'base', 'tree_bytes': 'base',
    'MODELS': 'ctr_models', 'Model': 'ctr_models',
    'fit': 'train', 'init_state': 'train', 'make_train_step': 'train', 'make_predict': 'train',
    'evaluate_ctr': 'train',
    'auc': 'metrics', 'log_loss': 'metrics',
}
_SUBMODULES = ('adaembed', 'autodim', 'base', 'ctr_models', 'dedup', 'dhe', 'hashing', 'low_precision', 'methods',
               'metrics', 'mgqe', 'mixed_dim', 'optembed', 'pep', 'qr', 'robe', 'sparse_optim', 'train',
               'tt', 'unified')

__all__ = sorted(_ATTRIBUTES) + list(_SUBMODULES)
__getattr__, __dir__ = lazy_exports(globals(), _ATTRIBUTES, _SUBMODULES)
