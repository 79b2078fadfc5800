"""AdaEmbed (Lai et al., OSDI 2023): a fixed pool of R rows, given during training to the ids that
matter most, re-allocated as training goes.

Every id keeps an importance score: the norm of the loss gradient at its vector, summed over its
accesses (frequent ids whose vectors the loss wants to move score high; the gradient is taken at
the vector read, so an id without a row -- whose vector reads as 0 -- is scored too). Every
``period`` steps the R ids of highest importance hold the rows: ids that stay keep their row and
its optimizer state, evicted ids give theirs up (their vector reads 0 from then on), and newly
admitted ids get a freed row, freshly initialised with its optimizer moments reset. Importance is
then multiplied by ``decay`` so that recent steps weigh more. With ``warmup`` (the default) the
pool is also re-allocated at steps 1, 2, 4, 8, ... below ``period``, so that ids hold rows from the
first step on (the paper admits ids into free rows as they arrive); without it no id holds a row,
and every vector reads 0, until step ``period`` (600 of 1,977 steps of an epoch of the
Criteo-shaped data).

Training state beyond the table's parameters: ``slot`` (N,) float32 holding each id's row or -1
(a parameter leaf, held by ``stop_gradient``, so the optimizer leaves it alone: float32 is exact
for ids below 2**24) and the importance (N,) float32 in ``TrainState.opt_state['importance']``.
:func:`make_train_step` and :func:`init_state` replace ``train``'s for this table.

Served (:meth:`finalize`): the rows of allocated ids and their sorted global ids; a lookup finds
an id by binary search, absent ids read 0. Bytes: ``R * (4 D + 4)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedjax.tables import base
from embedjax.train.state import TrainState


def adaembed(vocab_sizes: Sequence[int], dim: int, *, rows: int, period: int = 100,
             decay: float = 0.5, init_std: float = 0.01, warmup: bool = True) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)
  if not 1 <= rows <= n:
    raise ValueError(f'rows must be in [1, {n}], got {rows}')
  if n >= 2 ** 24:
    raise ValueError(f'{n} ids: slots are float32, exact below 2**24 ids')
  if period < 1:
    raise ValueError(f'period must be >= 1, got {period}')

  def init(key):
    return {'rows': base.normal_init(key, (rows, dim), init_std),
            'slot': jnp.full((n,), -1.0, jnp.float32)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    g = base.global_ids(ids, vocab_sizes)
    if 'ids' in params:  # served: binary search of each id among the allocated ones
      pos = jnp.clip(jnp.searchsorted(params['ids'], g), 0, params['ids'].shape[0] - 1)
      hit = params['ids'][pos] == g
      return jnp.where(hit[..., None], params['rows'][pos], 0.0)
    slot = jax.lax.stop_gradient(params['slot'])[g].astype(jnp.int32)
    return jnp.where((slot >= 0)[..., None], params['rows'][jnp.maximum(slot, 0)], 0.0)

  def finalize(params):
    slot = np.asarray(params['slot']).astype(np.int64)
    held = np.flatnonzero(slot >= 0)
    return {'ids': jnp.asarray(held, jnp.int32),
            'rows': jnp.asarray(np.asarray(params['rows'])[slot[held]])}

  return base.Table('adaembed', vocab_sizes, dim, init, lookup, finalize=finalize,
                    config={'rows': rows, 'period': period, 'decay': decay, 'init_std': init_std,
                            'warmup': bool(warmup)})


def reallocate(slot: jax.Array, importance: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
  """(N,) slots (row or -1) and importance -> (new slots (N,) int32, fresh (R,) bool: rows given
  to a newly admitted id). The ``rows`` most important ids (ties to the lower id) hold the rows;
  ids that stay keep theirs; new ids take the free rows in ascending order, by ascending id."""
  n = slot.shape[0]
  old = slot.astype(jnp.int32)
  _, top = jax.lax.top_k(importance, rows)  # ties: lower index first
  chosen = jnp.zeros((n,), bool).at[top].set(True)
  stay = chosen & (old >= 0)
  taken = jnp.zeros((rows,), bool).at[jnp.where(stay, old, rows)].set(True, mode='drop')
  free = jnp.argsort(taken, stable=True)  # free rows first, ascending
  new = chosen & (old < 0)
  rank = jnp.cumsum(new) - 1
  slots = jnp.where(stay, old, jnp.where(new, free[jnp.clip(rank, 0, rows - 1)], -1))
  fresh = jnp.zeros((rows,), bool).at[jnp.where(new, slots, rows)].set(True, mode='drop')
  return slots.astype(jnp.int32), fresh


def init_state(table: base.Table, model, optimizer: optax.GradientTransformation,
               key: jax.Array) -> TrainState:
  kt, km = jax.random.split(key)
  params = {'table': table.init(kt), 'model': model.init(km)}
  n = table.total_vocab
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state={'optax': optimizer.init(params),
                               'importance': jnp.zeros((n,), jnp.float32)})


def _reset_rows(tree, fresh):
  """Zeroes the fresh rows of every optimizer leaf shaped like the table's rows."""
  def one(path, leaf):
    names = [getattr(p, 'key', None) for p in path]
    if 'table' in names and names[-1] == 'rows':
      return jnp.where(fresh[:, None], 0.0, leaf)
    return leaf
  return jax.tree_util.tree_map_with_path(one, tree)


def make_train_step(table: base.Table, model, optimizer: optax.GradientTransformation):
  """``jit(step)(state, ids, labels, key) -> (state, metrics)``: BCE on the table's lookups,
  importance accumulated per id, re-allocation every ``period`` steps (and, with ``warmup``, at
  the powers of two below it)."""
  cfg = table.config
  n, rows, dim = table.total_vocab, cfg['rows'], table.dim

  def loss_fn(model_params, vectors, labels):
    bce = optax.sigmoid_binary_cross_entropy(model.apply(model_params, vectors), labels).mean()
    return bce, {'bce': bce, 'reg': jnp.zeros((), jnp.float32)}

  def step(state: TrainState, ids, labels, key):
    chex.assert_rank(ids, 2)
    params = state.params
    vectors, pull = jax.vjp(lambda t: table.lookup(t, ids), params['table'])
    (g_model, g_vectors), aux = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params['model'], vectors, labels)
    (g_table,) = pull(g_vectors)
    gid = base.global_ids(ids, table.vocab_sizes).reshape(-1)
    importance = state.opt_state['importance'] + jax.ops.segment_sum(
        jnp.linalg.norm(g_vectors, axis=-1).reshape(-1), gid, num_segments=n)
    grads = {'table': g_table, 'model': g_model}
    updates, opt = optimizer.update(grads, state.opt_state['optax'], params)
    params = optax.apply_updates(params, updates)
    step_no = state.step + 1

    def realloc(args):
      params, opt, importance = args
      slots, fresh = reallocate(params['table']['slot'], importance, rows)
      init = base.normal_init(jax.random.fold_in(key, step_no), (rows, dim), cfg['init_std'])
      table_params = {'rows': jnp.where(fresh[:, None], init, params['table']['rows']),
                      'slot': slots.astype(jnp.float32)}
      return {**params, 'table': table_params}, _reset_rows(opt, fresh), importance * cfg['decay']

    due = step_no % cfg['period'] == 0
    if cfg.get('warmup'):
      due |= (step_no < cfg['period']) & ((step_no & (step_no - 1)) == 0)  # 1, 2, 4, ...
    params, opt, importance = jax.lax.cond(due, realloc, lambda a: a, (params, opt, importance))
    return TrainState(step=step_no, params=params,
                      opt_state={'optax': opt, 'importance': importance}), aux

  return jax.jit(step, donate_argnums=0)


def for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """The most rows within the budget (each row: D floats and its int32 id)."""
  n = int(sum(vocab_sizes))
  rows = min(n, int(budget_bytes) // (4 * dim + 4))
  if rows < 1:
    raise base.Infeasible(f'one row needs {4 * dim + 4} bytes > budget {budget_bytes}')
  return adaembed(vocab_sizes, dim, rows=rows, **kw)
