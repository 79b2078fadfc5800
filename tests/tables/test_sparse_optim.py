"""Row-wise sparse optimizers: equal to the dense optimizer on the rows they touch, and a sparse
training step equal to the dense one where the two optimizers agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax.tables import base, ctr_models, dhe, hashing, sparse_optim, train

N, D = 30, 4


def _batches(steps=4, rows=(3, 7, 7, 12, 29)):
  """Gradients (as row reads and per-read gradients) of a few steps; the same rows each step."""
  rng = np.random.default_rng(0)
  reads = np.asarray(rows, np.int32)
  return [(reads, rng.standard_normal((len(reads), D)).astype(np.float32)) for _ in range(steps)]


def _dense(reads, grads):
  g = np.zeros((N, D), np.float32)
  np.add.at(g, reads, grads)
  return g


def test_row_gradients_sum_repeated_reads_and_pad_with_n():
  reads, grads = _batches(1)[0]
  rows, summed = sparse_optim.row_gradients(jnp.asarray(reads), jnp.asarray(grads), N)
  np.testing.assert_array_equal(np.asarray(rows), [3, 7, 12, 29, N])
  np.testing.assert_allclose(np.asarray(summed)[:4], _dense(reads, grads)[[3, 7, 12, 29]],
                             rtol=1e-6)


@pytest.mark.parametrize('name,dense', [('adagrad', optax.adagrad(0.1)),
                                        ('lazy_adam', optax.adam(0.1))])
def test_sparse_update_equals_dense_optax_when_every_step_reads_the_same_rows(name, dense):
  """Rows never read have zero gradient at every step: dense Adagrad and Adam leave them where
  they are, and on the rows read the two updates are the same formula."""
  opt = sparse_optim.ROW_OPTIMIZERS[name](0.1)
  table = jnp.asarray(np.random.default_rng(1).standard_normal((N, D)), jnp.float32)
  sparse_table, sparse_state = table, opt.init(table)
  dense_table, dense_state = table, dense.init(table)
  update = jax.jit(opt.update)
  for step, (reads, grads) in enumerate(_batches()):
    rows, summed = sparse_optim.row_gradients(jnp.asarray(reads), jnp.asarray(grads), N)
    sparse_table, sparse_state = update(sparse_state, sparse_table, rows, summed, jnp.int32(step))
    upd, dense_state = dense.update(jnp.asarray(_dense(reads, grads)), dense_state, dense_table)
    dense_table = optax.apply_updates(dense_table, upd)
  np.testing.assert_allclose(np.asarray(sparse_table), np.asarray(dense_table), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(sparse_table), np.asarray(table))


def test_lazy_adam_leaves_a_row_alone_on_steps_that_skip_it():
  opt = sparse_optim.lazy_adam(0.1)
  table = jnp.ones((N, D), jnp.float32)
  state = opt.init(table)
  g = jnp.ones((1, D), jnp.float32)
  table, state = opt.update(state, table, jnp.asarray([5], jnp.int32), g, jnp.int32(0))
  moved = np.asarray(table[5])
  table, state = opt.update(state, table, jnp.asarray([6], jnp.int32), g, jnp.int32(1))
  np.testing.assert_array_equal(np.asarray(table[5]), moved)  # dense Adam would move it again


def test_rowwise_adagrad_equals_a_float64_reference():
  lr, eps = 0.05, 1e-8
  opt = sparse_optim.rowwise_adagrad(lr, eps=eps)
  start = np.random.default_rng(2).standard_normal((N, D))
  table, state = jnp.asarray(start, jnp.float32), opt.init(jnp.asarray(start, jnp.float32))
  assert state.shape == (N,)  # one accumulator per row
  ref, acc = start.copy(), np.zeros(N)
  for step, (reads, grads) in enumerate(_batches(3, rows=(1, 4, 4, 9))):
    rows, summed = sparse_optim.row_gradients(jnp.asarray(reads), jnp.asarray(grads), N)
    table, state = opt.update(state, table, rows, summed, jnp.int32(step))
    g = _dense(reads, grads).astype(np.float64)
    touched = np.abs(g).sum(1) > 0
    acc[touched] += (g[touched] ** 2).mean(1)
    ref[touched] -= lr * g[touched] / (np.sqrt(acc[touched]) + eps)[:, None]
  np.testing.assert_allclose(np.asarray(table), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state), acc, rtol=1e-5)


def test_sparse_train_step_equals_the_dense_step_with_adagrad():
  """The whole CTR step: a hashed table under FM, sparse Adagrad against optax.adagrad."""
  vocab = (40, 9, 3)
  table = hashing.hashing(vocab, D, rows=(11, 9, 3))
  model = ctr_models.MODELS['fm'](len(vocab), D)
  rng = np.random.default_rng(3)
  ids = jnp.asarray(np.stack([rng.integers(0, v, 16) for v in vocab], 1), jnp.int32)
  labels = jnp.asarray(rng.integers(0, 2, 16), jnp.float32)
  key = jax.random.key(0)
  dense_step = train.make_train_step(table, model, optax.adagrad(0.05))
  dense = train.init_state(table, model, optax.adagrad(0.05), key)
  sparse_step = train.make_sparse_train_step(table, model, optax.adagrad(0.05),
                                             sparse_optim.adagrad(0.05))
  sparse = train.init_sparse_state(table, model, optax.adagrad(0.05), sparse_optim.adagrad(0.05),
                                   key)
  for _ in range(3):
    dense, dense_aux = dense_step(dense, ids, labels, key)
    sparse, sparse_aux = sparse_step(sparse, ids, labels, key)
  np.testing.assert_allclose(float(sparse_aux['bce']), float(dense_aux['bce']), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(sparse.params), jax.tree_util.tree_leaves(dense.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_fit_with_a_sparse_optimizer_and_the_refusals():
  vocab = (40, 9, 3)
  rng = np.random.default_rng(4)
  ids = np.stack([rng.integers(0, v, 256) for v in vocab], 1).astype(np.int32)
  labels = (ids[:, 0] % 2).astype(np.float32)
  model = ctr_models.MODELS['lr'](len(vocab), D)
  _, log = train.fit(base.full(vocab, D), model, (ids, labels), (ids, labels), epochs=2,
                     batch_size=64, optimizer='rowwise_adagrad', lr=0.1)
  assert log['history'][-1]['valid_auc'] > 0.6
  with pytest.raises(ValueError, match='has no row_reads'):
    train.make_sparse_train_step(dhe.dhe(vocab, D, hidden=8, num_hashes=4, layers=1), model,
                                 optax.adam(0.1), sparse_optim.lazy_adam(0.1))
  with pytest.raises(ValueError, match='optimizer must be one of'):
    train.fit(base.full(vocab, D), model, (ids, labels), None, epochs=1, batch_size=64,
              optimizer='sgd')
