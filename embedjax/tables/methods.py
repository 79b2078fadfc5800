"""Every table method by name, and :func:`for_budget`, which sizes a method to a byte budget.

``TABLES[name](vocab_sizes, dim, **hparams)`` builds a table from explicit hyperparameters;
``BUDGETED[name](vocab_sizes, dim, budget_bytes, **kw)`` chooses them so that the *served* bytes
are at most the budget (raising :class:`~embedjax.tables.base.Infeasible` when the method cannot
get that small, or, for the full and int8 tables, cannot use a smaller budget).

(These dicts live here rather than in ``base.py`` because every method module imports ``base``.)
"""

from __future__ import annotations

from collections.abc import Sequence

from embedjax.tables import (adaembed, autodim, base, dedup, dhe, hashing, low_precision, mgqe,
                             mixed_dim, optembed, pep, qr, robe, tt, unified)

TABLES = {
    'full': base.full,
    'hashing': hashing.hashing,
    'qr': qr.qr,
    'mixed_dim': mixed_dim.mixed_dim,
    'tt': tt.tt,
    'dhe': dhe.dhe,
    'unified': unified.unified,
    'optembed': optembed.supernet,  # stage 1; optembed.fixed is stage 3
    'int8': low_precision.int8,
    'lpt': low_precision.lpt,
    'robe': robe.robe,
    'pep': pep.pep,  # stage 1; pep.pruned is stage 2
    'adaembed': adaembed.adaembed,  # trains with adaembed.make_train_step / init_state
    'mgqe': mgqe.mgqe,
    'autodim': autodim.supernet,  # stage 1; mixed_dim with the chosen widths is stage 3
}

BUDGETED = {
    'full': base.full_for_budget,
    'hashing': hashing.for_budget,
    'qr': qr.for_budget,
    'mixed_dim': mixed_dim.for_budget,
    'tt': tt.for_budget,
    'dhe': dhe.for_budget,
    'unified': unified.for_budget,
    'optembed': optembed.for_budget,
    'int8': low_precision.int8_for_budget,
    'lpt': low_precision.lpt_for_budget,
    'robe': robe.for_budget,
    'dedup': dedup.for_budget,  # stage 1 (pre-training); dedup.deduplicate meets the budget
    'pep': pep.for_budget,  # stage 1 (threshold search); pep.budget_mask meets the budget
    'adaembed': adaembed.for_budget,
    'mgqe': mgqe.for_budget,  # frequency tiers from counts=... (the training data's id counts)
    'autodim': autodim.for_budget,  # stage 1 (search); autodim.choose_dims meets the budget
}


def for_budget(name: str, vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """The ``name`` method sized to at most ``budget_bytes`` served bytes."""
  if name not in BUDGETED:
    raise ValueError(f'unknown table {name!r}; choose one of {sorted(BUDGETED)}')
  if budget_bytes <= 0:
    raise base.Infeasible(f'budget must be positive, got {budget_bytes}')
  return BUDGETED[name](tuple(int(v) for v in vocab_sizes), int(dim), int(budget_bytes), **kw)
