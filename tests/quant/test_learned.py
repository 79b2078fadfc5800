"""Recurrent binarization (shapes, SDC = popcount form, training helps) and straight-through
fake quantization (forward = stored format, backward = identity, usable in a train step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax import quant
from embedjax.quant import learned

N, D = 512, 32


@pytest.fixture(scope='module')
def data():
  # A shared offset plus a few strong directions: plain sign bits waste most of their capacity.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((N, 6)) @ rng.standard_normal((6, D)) + 0.3 * rng.standard_normal((N, D))
  x = x + 2.0
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _neighbour_recall(scores, truth_scores, k=10):
  a = np.argsort(-scores, axis=1)[:, 1:k + 1]
  b = np.argsort(-truth_scores, axis=1)[:, 1:k + 1]
  return float(np.mean([len(set(r) & set(t)) / k for r, t in zip(a, b)]))


def test_untrained_one_bit_model_is_centred_sign_quantization(data):
  q = quant.get('rb1', steps=0, hidden=16)
  p = q.fit(data)
  codes = np.asarray(q.encode(p, data))
  ub = quant.get('binary_centered')
  np.testing.assert_array_equal(codes, np.asarray(ub.encode(ub.fit(data), data)))
  assert q.bytes_per_vector(p) == q.bytes_per_vector(D) == D // 8 == codes.shape[1]


def test_sdc_popcount_equals_decoded_inner_products(data):
  q = quant.get('rb2', steps=0, hidden=16)  # untrained: the identity holds for any weights
  p = q.fit(data)
  codes = q.encode(p, data[:40])
  assert codes.shape == (40, 2 * D // 8) and q.bytes_per_vector(p) == 8
  via_bits = np.asarray(learned.sdc_popcount(p, codes, codes[:9]))
  via_gemm = np.asarray(q.score(p, data[:40], codes[:9]))  # the query is binarised too (SDC)
  np.testing.assert_allclose(via_bits, via_gemm, rtol=1e-5, atol=1e-6)
  levels = np.asarray(learned.rb_levels(p, codes))
  assert set(np.unique(levels)) <= {-1.0, 1.0}


def test_training_improves_neighbour_agreement(data):
  truth = data @ data.T
  before = quant.get('rb1', steps=0, hidden=32)
  after = quant.get('rb1', steps=150, hidden=32, batch_size=256, lr=3e-3)
  recalls = []
  for q in (before, after):
    p = q.fit(data, key=jax.random.key(1))
    codes = q.encode(p, data)
    recalls.append(_neighbour_recall(np.asarray(q.score(p, data, codes)), truth))
  # Untrained 0.494; trained 0.538-0.553 over keys 1-3 with today's jax/flax/optax (the gain is
  # 4.5-6 points; a trainer that does not update stays at +0).
  assert recalls[1] > recalls[0] + 0.03, recalls


def test_fake_quant_forward_and_gradients():
  rng = np.random.default_rng(1)
  cal = rng.standard_normal((64, 8)).astype(np.float32)
  q8 = quant.get('int8')
  p = q8.fit(cal)
  x = jnp.asarray(rng.standard_normal((16, 8)).astype(np.float32) * 1.5)  # some outside the range
  np.testing.assert_allclose(np.asarray(learned.fake_quant('int8', x, ranges=p.ranges)),
                             np.asarray(q8.roundtrip(p, jnp.clip(x, p.ranges[0], p.ranges[1]))),
                             atol=1e-6)
  inside = (x >= p.ranges[0]) & (x <= p.ranges[1])
  g = jax.grad(lambda v: jnp.sum(learned.fake_quant_int8(v, p.ranges)))(x)
  np.testing.assert_array_equal(np.asarray(g), np.asarray(inside, np.float32))

  y = jnp.asarray([[0.5, -0.2, 2.0, -0.1]])
  fb = np.asarray(learned.fake_quant_binary(y))
  np.testing.assert_allclose(fb, [[0.7, -0.7, 0.7, -0.7]], rtol=1e-6)
  g = jax.grad(lambda v: jnp.sum(learned.fake_quant_binary(v) * jnp.arange(4.0)))(y)
  np.testing.assert_array_equal(np.asarray(g), [[0.0, 1.0, 0.0, 3.0]])  # |2.0| > clip

  f8 = learned.fake_quant('float8_e4m3', y)
  np.testing.assert_array_equal(np.asarray(f8), np.asarray(y.astype(jnp.float8_e4m3fn), np.float32))
  np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: jnp.sum(
      learned.fake_quant('float8_e4m3', v)))(y)), np.ones((1, 4)))
  with pytest.raises(ValueError, match='unknown fake-quant'):
    learned.fake_quant('int3', y)


def test_fine_tuning_through_fake_binary_lowers_the_real_binary_loss(data):
  x = jnp.asarray(data[:256])

  def real_binary_loss(w):
    y = x @ w
    return learned.similarity_loss(x, jnp.where(y > 0, 1.0, -1.0))[0]

  opt = optax.adam(1e-2)

  @jax.jit
  def train_step(w, opt_state):
    def loss_fn(w):
      return learned.similarity_loss(x, learned.fake_quant_binary(x @ w, clip=10.0))[0]
    loss, grad = jax.value_and_grad(loss_fn)(w)
    updates, opt_state = opt.update(grad, opt_state, w)
    return optax.apply_updates(w, updates), opt_state, loss

  w = jnp.eye(D)
  opt_state = opt.init(w)
  start = float(real_binary_loss(w))
  for _ in range(60):
    w, opt_state, _ = train_step(w, opt_state)
  assert float(real_binary_loss(w)) < 0.8 * start
