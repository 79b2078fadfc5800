"""CTR metrics vs sklearn, CTR models vs brute force, and the local train step."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedjax.tables import base, ctr_models, metrics, train

sk_metrics = pytest.importorskip('sklearn.metrics')


def test_auc_matches_sklearn_with_heavy_ties():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 5000)
  s = rng.integers(0, 7, 5000).astype(np.float32)  # seven distinct scores: ties everywhere
  assert metrics.auc(y, s) == pytest.approx(sk_metrics.roc_auc_score(y, s), abs=1e-12)
  s = rng.normal(size=5000) + y
  assert metrics.auc(y, s) == pytest.approx(sk_metrics.roc_auc_score(y, s), abs=1e-12)
  assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
  assert metrics.auc([0, 1], [0.5, 0.5]) == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=60))
def test_auc_property_equals_sklearn(rows):
  y = np.asarray([r[0] for r in rows])
  s = np.asarray([r[1] for r in rows], np.float64) / 2
  if y.min() == y.max():
    with pytest.raises(ValueError):
      metrics.auc(y, s)
    return
  assert metrics.auc(y, s) == pytest.approx(sk_metrics.roc_auc_score(y, s), abs=1e-12)


def test_log_loss_matches_sklearn():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 1000)
  z = rng.normal(size=1000) * 3
  p = 1.0 / (1.0 + np.exp(-z))
  assert metrics.log_loss(y, z) == pytest.approx(sk_metrics.log_loss(y, p), rel=1e-9)


def test_metrics_reject_bad_input():
  with pytest.raises(ValueError):
    metrics.auc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError):
    metrics.auc([0, 1], [0.1, np.nan])
  with pytest.raises(ValueError):
    metrics.log_loss([0, 1, 1], [0.1, 0.2])


def test_fm_and_dot_interactions_equal_brute_force():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(5, 4, 3)).astype(np.float32)
  brute = np.zeros(5)
  dots = []
  for f, g in itertools.combinations(range(4), 2):
    d = (emb[:, f] * emb[:, g]).sum(-1)
    brute += d
    dots.append(d)
  np.testing.assert_allclose(np.asarray(ctr_models.fm_interaction(jnp.asarray(emb))), brute, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ctr_models.dot_interaction(jnp.asarray(emb))),
                             np.stack(dots, 1), rtol=1e-5)


@pytest.mark.parametrize('name', sorted(ctr_models.MODELS))
def test_models_shapes_and_lr_is_linear(name):
  model = ctr_models.MODELS[name](4, 6)
  params = jax.jit(model.init)(jax.random.key(0))
  emb = jax.random.normal(jax.random.key(1), (7, 4, 6))
  out = jax.jit(model.apply)(params, emb)
  assert out.shape == (7,) and bool(jnp.isfinite(out).all())
  if name == 'lr':
    manual = np.einsum('bfd,fd->b', np.asarray(emb), np.asarray(params['w'])) + float(params['bias'])
    np.testing.assert_allclose(np.asarray(out), manual, rtol=1e-5)
  with pytest.raises(AssertionError):
    model.apply(params, emb[:, :3])


def _toy(n=2048, seed=0):
  rng = np.random.default_rng(seed)
  vocab = (20, 5, 30)
  ids = np.stack([rng.integers(0, v, n) for v in vocab], 1).astype(np.int32)
  w = [rng.normal(size=v) * 1.5 for v in vocab]
  logit = sum(w[f][ids[:, f]] for f in range(3))
  labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
  return vocab, ids, labels


def test_train_step_learns_and_is_reproducible():
  vocab, ids, labels = _toy()
  table = base.full(vocab, 4)
  model = ctr_models.fm(3, 4)
  step = train.make_train_step(table, model, optax.adam(0.05))
  predict = train.make_predict(table, model)
  kw = dict(epochs=3, batch_size=128, lr=0.05, seed=3, step_fn=step, predict=predict)
  (p1, log1) = train.fit(table, model, (ids[:1536], labels[:1536]), (ids[1536:], labels[1536:]), **kw)
  (p2, log2) = train.fit(table, model, (ids[:1536], labels[:1536]), (ids[1536:], labels[1536:]), **kw)
  assert log1['history'][-1]['valid_auc'] > 0.7
  assert [h['valid_auc'] for h in log1['history']] == [h['valid_auc'] for h in log2['history']]
  jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)
  assert log1['best_epoch'] == max(log1['history'], key=lambda h: h['valid_auc'])['epoch']


def test_train_step_applies_post_update_and_regularizer():
  vocab, ids, labels = _toy(256)
  from embedjax.tables import low_precision, optembed
  table = low_precision.lpt(vocab, 4, bits=4)
  model = ctr_models.lr(3, 4)
  opt = optax.adam(0.01)
  state = train.init_state(table, model, opt, jax.random.key(0))
  step = train.make_train_step(table, model, opt)
  state, aux = step(state, jnp.asarray(ids[:64]), jnp.asarray(labels[:64], jnp.float32), jax.random.key(1))
  emb = state.params['table']['embedding']
  served = table.finalize(state.params['table'])
  np.testing.assert_allclose(np.asarray(low_precision.dequantize(served['codes'], served['scale'])),
                             np.asarray(emb), rtol=1e-6, atol=1e-8)
  sup = optembed.supernet(vocab, 4, alpha=0.5)
  state = train.init_state(sup, model, opt, jax.random.key(0))
  step = train.make_train_step(sup, model, opt)
  state, aux = step(state, jnp.asarray(ids[:64]), jnp.asarray(labels[:64], jnp.float32), jax.random.key(1))
  assert float(aux['reg']) == pytest.approx(0.5 * 3, rel=1e-5)  # thresholds start at 0
  assert np.all(np.asarray(state.params['table']['threshold']) > 0)  # pushed up by the penalty
