"""A small, local trainer for CTR models on any table: pure jitted step, BCE, Adam/Adagrad, and
row-wise sparse optimizers for row tables (``make_sparse_train_step``, ``sparse_optim``).

``state = init_state(table, model, optimizer, key)`` then ``state, metrics = step(state, ids,
labels, key)`` with ``step = make_train_step(table, model, optimizer)``. The step key is folded
with the step number, so a run resumed from a saved state and the same base key continues the
same random stream. :func:`fit` runs epochs over host arrays (a fresh permutation per epoch from
``seed``; the last partial batch is dropped so every step has the same static shape) and keeps
the parameters of the epoch with the best validation AUC (early stopping on held-out data, never
on the test split).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedjax.tables import metrics as ctr_metrics
from embedjax.tables.base import Table
from embedjax.tables.ctr_models import Model
from embedjax.tables.sparse_optim import ROW_OPTIMIZERS, RowOptimizer, row_gradients
# The encoder trainer's state (step, params, opt_state) serves the tables as it is. It is the one
# import from embedjax.train, a leaf module that depends on flax/jax/optax only, so the tables do
# not pull in the trainer (a departure from DESIGN.md's dependency direction, for one TrainState).
from embedjax.train.state import TrainState, create_state

# Plain Adam / Adagrad at a constant rate, as the table-compression papers train CTR models. The
# encoder trainer's optimizer (``embedjax.train.optim.make_optimizer``) is AdamW with a warmup/decay
# schedule, decay masks and freezing read from a config block, and has no Adagrad: it does not
# serve here.
OPTIMIZERS = {'adam': optax.adam, 'adagrad': optax.adagrad}
# Row-wise sparse optimizers for the table (``sparse_optim``; row tables only), each with the
# dense optimizer of its family for the model's parameters.
SPARSE_OPTIMIZERS = {'sparse_adagrad': ('adagrad', 'adagrad'),
                     'rowwise_adagrad': ('rowwise_adagrad', 'adagrad'),
                     'lazy_adam': ('lazy_adam', 'adam')}


def init_state(table: Table, model: Model, optimizer: optax.GradientTransformation,
               key: jax.Array) -> TrainState:
  """The generic ``TrainState`` with ``params = {'table': ..., 'model': ...}``."""
  kt, km = jax.random.split(key)
  return create_state({'table': table.init(kt), 'model': model.init(km)}, optimizer)


def logits_fn(table: Table, model: Model, params: dict, ids: jax.Array,
              key: jax.Array | None = None) -> jax.Array:
  """(B, F) ids -> (B,) logits; ``params['table']`` may be the training or the served form."""
  return model.apply(params['model'], table.lookup(params['table'], ids, key=key))


def make_train_step(table: Table, model: Model, optimizer: optax.GradientTransformation) -> Callable:
  """Returns ``jit(step)(state, ids (B, F) int32, labels (B,) float32, key) -> (state, metrics)``."""

  def loss_fn(params, ids, labels, key):
    logits = logits_fn(table, model, params, ids, key)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    reg = table.regularizer(params['table'])
    return bce + reg, {'bce': bce, 'reg': reg}

  def step(state: TrainState, ids, labels, key):
    chex.assert_rank(ids, 2)
    chex.assert_equal_shape_prefix((ids, labels), 1)
    key = jax.random.fold_in(key, state.step)
    k_lookup, k_post = jax.random.split(key)
    grads, aux = jax.grad(loss_fn, has_aux=True)(state.params, ids, labels, k_lookup)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = {**params, 'table': table.post_update(params['table'], k_post)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), aux

  return jax.jit(step, donate_argnums=0)


def init_sparse_state(table: Table, model: Model, model_optimizer: optax.GradientTransformation,
                      row_optimizer: RowOptimizer, key: jax.Array) -> TrainState:
  """``init_state`` for :func:`make_sparse_train_step`: ``opt_state = {'model': ..., 'table': ...}``."""
  kt, km = jax.random.split(key)
  params = {'table': table.init(kt), 'model': model.init(km)}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state={'model': model_optimizer.init(params['model']),
                               'table': row_optimizer.init(params['table']['embedding'])})


def make_sparse_train_step(table: Table, model: Model, model_optimizer: optax.GradientTransformation,
                           row_optimizer: RowOptimizer) -> Callable:
  """As :func:`make_train_step`, but the table's rows are updated by ``row_optimizer`` on the rows
  the batch read only (``table.row_reads``): no (N, D) gradient or optimizer pass per step."""
  if table.row_reads is None:
    raise ValueError(f"table {table.name!r} has no row_reads: a row-wise sparse optimizer needs a "
                     "row table ('full' or 'hashing')")

  def loss_fn(model_params, vectors, labels):
    bce = optax.sigmoid_binary_cross_entropy(model.apply(model_params, vectors), labels).mean()
    return bce, {'bce': bce, 'reg': jnp.zeros((), jnp.float32)}

  def step(state: TrainState, ids, labels, key):
    chex.assert_rank(ids, 2)
    chex.assert_equal_shape_prefix((ids, labels), 1)
    del key  # row tables sample nothing
    embedding = state.params['table']['embedding']
    rows = table.row_reads(ids)
    vectors = jnp.take(embedding, rows, axis=0)
    (g_model, g_vectors), aux = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.params['model'], vectors, labels)
    read, g_rows = row_gradients(rows, g_vectors, embedding.shape[0])
    embedding, table_state = row_optimizer.update(state.opt_state['table'], embedding, read,
                                                  g_rows, state.step)
    updates, model_state = model_optimizer.update(g_model, state.opt_state['model'],
                                                  state.params['model'])
    params = {'table': {**state.params['table'], 'embedding': embedding},
              'model': optax.apply_updates(state.params['model'], updates)}
    return TrainState(step=state.step + 1, params=params,
                      opt_state={'model': model_state, 'table': table_state}), aux

  return jax.jit(step, donate_argnums=0)


def make_predict(table: Table, model: Model) -> Callable:
  """``jit(predict)(params, ids) -> logits``; recompiles once per params form (train / served)."""
  return jax.jit(lambda params, ids: logits_fn(table, model, params, ids))


def predict_batched(predict: Callable, params: dict, ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Logits for all rows of ``ids`` (N, F); the last batch is padded so shapes stay static."""
  n = ids.shape[0]
  out = np.empty((n,), np.float64)
  params = jax.device_put(params)  # once: numpy params would be copied again at every batch
  for start in range(0, n, batch_size):
    chunk = ids[start:start + batch_size]
    m = chunk.shape[0]
    if m < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - m, ids.shape[1]), ids.dtype)])
    out[start:start + m] = np.asarray(predict(params, jnp.asarray(chunk)))[:m]
  return out


def evaluate_ctr(predict: Callable, params: dict, ids: np.ndarray, labels: np.ndarray,
                 batch_size: int = 4096) -> dict[str, float]:
  """ROC AUC and log loss of the logits of ``predict`` on (ids (N, F), labels (N,))."""
  logits = predict_batched(predict, params, ids, batch_size)
  return {'auc': ctr_metrics.auc(labels, logits), 'logloss': ctr_metrics.log_loss(labels, logits)}


def served_params(table: Table, params: dict) -> dict:
  return {**params, 'table': table.finalize(params['table'])}


def fit(table: Table, model: Model, train: tuple[np.ndarray, np.ndarray],
        valid: tuple[np.ndarray, np.ndarray] | None, *, epochs: int, batch_size: int,
        optimizer: str = 'adam', lr: float = 1e-3, seed: int = 0,
        step_fn: Callable | None = None, predict: Callable | None = None,
        progress: Callable[[dict], None] | None = None,
        init_fn: Callable | None = None) -> tuple[dict, dict]:
  """Trains for up to ``epochs`` epochs; returns (params of the best validation epoch, log).

  ``train``/``valid`` are ``(ids (N, F) int32, labels (N,) 0/1)``. Without ``valid`` the last
  epoch is kept. ``step_fn``/``predict`` may be passed in to reuse compiled functions across
  seeds; a table with its own training state (``adaembed``) passes its ``step_fn`` and
  ``init_fn(table, model, optimizer, key) -> TrainState``. The log holds per-epoch validation metrics, the best epoch and the training throughput
  (steps/s over all steps after the first, which includes compilation).
  """
  if optimizer not in OPTIMIZERS and optimizer not in SPARSE_OPTIMIZERS:
    raise ValueError(f'optimizer must be one of {sorted(OPTIMIZERS) + sorted(SPARSE_OPTIMIZERS)}, '
                     f'got {optimizer!r}')
  predict = predict or make_predict(table, model)
  key = jax.random.key(seed)
  k_init, k_steps = jax.random.split(key)
  if optimizer in SPARSE_OPTIMIZERS:
    row_name, model_name = SPARSE_OPTIMIZERS[optimizer]
    opt, rows_opt = OPTIMIZERS[model_name](lr), ROW_OPTIMIZERS[row_name](lr)
    step_fn = step_fn or make_sparse_train_step(table, model, opt, rows_opt)
    state = init_sparse_state(table, model, opt, rows_opt, k_init)
  else:
    opt = OPTIMIZERS[optimizer](lr)
    step_fn = step_fn or make_train_step(table, model, opt)
    state = (init_fn or init_state)(table, model, opt, k_init)
  ids, labels = train
  n = ids.shape[0]
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{n} training rows < batch size {batch_size}')
  rng = np.random.default_rng(seed)
  best, best_auc, history = None, -np.inf, []
  timed_steps, timed_seconds = 0, 0.0
  for epoch in range(epochs):
    perm = rng.permutation(n)
    t0 = None
    for s in range(steps_per_epoch):
      rows = perm[s * batch_size:(s + 1) * batch_size]
      state, aux = step_fn(state, jnp.asarray(ids[rows]), jnp.asarray(labels[rows], jnp.float32), k_steps)
      if t0 is None:  # start the clock after the first step of each epoch (compile, dispatch warm-up)
        jax.block_until_ready(state.step)
        t0 = time.perf_counter()
    jax.block_until_ready(state.params)
    timed_seconds += time.perf_counter() - t0
    timed_steps += steps_per_epoch - 1
    entry = {'epoch': epoch + 1, 'train_bce': float(aux['bce'])}
    if valid is not None:
      valid_metrics = evaluate_ctr(predict, served_params(table, state.params), *valid)
      entry.update({f'valid_{k}': v for k, v in valid_metrics.items()})
      if entry['valid_auc'] > best_auc:
        # A real copy: the next step donates (and may overwrite) the state's buffers.
        best_auc, best = entry['valid_auc'], jax.tree_util.tree_map(np.array, state.params)
    history.append(entry)
    if progress is not None:
      progress(entry)
  if best is None:
    best = jax.tree_util.tree_map(np.array, state.params)
  best_epoch = max(history, key=lambda e: e.get('valid_auc', -np.inf))['epoch'] if valid is not None else epochs
  log = {'history': history, 'best_epoch': best_epoch,
         'steps_per_s': timed_steps / timed_seconds if timed_seconds > 0 else float('nan'),
         'steps': steps_per_epoch * epochs}
  return best, log
