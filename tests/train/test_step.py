"""The train step: gradient caching equals plain gradients; freezing; schedules; one real update."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax.models.bert import BertConfig
from embedjax.models.pretrained import init_params
from embedjax.models.spec import EmbedderSpec
from embedjax.train.base_config import base_config
from embedjax.train.optim import make_optimizer, make_schedule
from embedjax.train.state import create_state
from embedjax.train.step import StepConfig, loss_and_grads, make_train_step
from batches import FAST_COMPILE, random_batch

BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
SPEC = EmbedderSpec(bert=BERT, pooling='mean', normalize=True, max_seq_length=32)


def _batch(rng, b=8, lq=6, ld=10, h=0):
  return random_batch(rng, b, lq, ld, h)


@pytest.mark.parametrize('h, mrl, learn', [(0, (), False), (1, (16, 8), True)])
def test_grad_cache_equals_plain_gradients(h, mrl, learn):
  params = {'encoder': init_params(BERT, jax.random.key(0))}
  if learn:
    params['logit_scale'] = jnp.log(jnp.float32(20.0))
  batch = _batch(np.random.default_rng(0), h=h)
  rng = jax.random.key(3)
  plain_cfg = StepConfig(spec=SPEC, chunk_size=2, matryoshka_dims=mrl, learnable_scale=learn)
  cached_cfg = StepConfig(spec=SPEC, chunk_size=2, grad_cache=True, matryoshka_dims=mrl,
                          learnable_scale=learn)
  plain = jax.jit(lambda p: loss_and_grads(plain_cfg, p, batch, rng), compiler_options=FAST_COMPILE)
  (l1, _), g1 = plain(params)
  (l2, _), g2 = jax.jit(lambda p: loss_and_grads(cached_cfg, p, batch, rng),
                        compiler_options=FAST_COMPILE)(params)
  assert float(l1) == pytest.approx(float(l2), abs=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g1, g2)
  # Against finite differences of the plain loss along the gradient (an independent check).
  # The plain step already compiled gives the loss (a loss-only program would be one more compile).
  loss = lambda p: plain(p)[0][0]  # noqa: E731
  direction = jax.tree_util.tree_map(lambda g: g / (optax.tree_utils.tree_norm(g1) + 1e-12), g1)
  eps = 2e-3
  plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, direction)
  minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, direction)
  fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
  analytic = float(optax.tree_utils.tree_vdot(g1, direction))
  assert fd == pytest.approx(analytic, rel=2e-2, abs=1e-3)


def test_chunked_plain_equals_unchunked_without_dropout():
  params = {'encoder': init_params(BERT, jax.random.key(1))}
  batch = _batch(np.random.default_rng(1))
  # jitted: op by op, the chunked loss and its gradient take about a minute on 2 cores
  a, b = (jax.jit(lambda p, cfg=StepConfig(spec=SPEC, chunk_size=chunk, dropout=False):
                  loss_and_grads(cfg, p, batch, jax.random.key(0)),
                  compiler_options=FAST_COMPILE)(params) for chunk in (2, 0))
  assert float(a[0][0]) == pytest.approx(float(b[0][0]), abs=1e-6)
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5),
                         a[1], b[1])


def _optim_cfg(**kw):
  cfg = base_config().optim
  cfg.update(dict(lr=1e-3, warmup_steps=2, decay='linear'), **kw)
  return cfg


def test_schedule_values_by_hand():
  s = make_schedule(_optim_cfg(lr=1.0, warmup_steps=2, decay='linear'), total_steps=6)
  np.testing.assert_allclose([float(s(i)) for i in range(7)], [0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0],
                             atol=1e-7)


def test_freeze_regex_keeps_matching_params_fixed_and_steps_update_the_rest():
  params = {'encoder': init_params(BERT, jax.random.key(0))}
  tx = make_optimizer(_optim_cfg(warmup_steps=0, freeze=r'^encoder/(word|position|token_type)_embeddings'),
                      params, 10)
  step = jax.jit(make_train_step(StepConfig(spec=SPEC), tx), donate_argnums=0,
                 compiler_options=FAST_COMPILE)
  state = create_state(params, tx)
  before = jax.tree_util.tree_map(np.array, state.params)
  state, metrics = step(state, _batch(np.random.default_rng(2)), jax.random.key(0))
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))
  enc0, enc1 = before['encoder'], state.params['encoder']
  np.testing.assert_array_equal(enc0['word_embeddings']['embedding'], enc1['word_embeddings']['embedding'])
  assert not np.allclose(enc0['layer_0']['output_dense']['kernel'], enc1['layer_0']['output_dense']['kernel'])
  with pytest.raises(ValueError, match='freezes every parameter'):
    make_optimizer(_optim_cfg(freeze='.'), params, 10)


def test_step_uses_step_folded_rng():
  """Two steps from the same state but different step counters draw different dropout."""
  params = {'encoder': init_params(BERT, jax.random.key(0))}
  tx = make_optimizer(_optim_cfg(), params, 10)
  step = jax.jit(make_train_step(StepConfig(spec=SPEC), tx), compiler_options=FAST_COMPILE)
  state = create_state(params, tx)
  batch = _batch(np.random.default_rng(3))
  _, m0 = step(state, batch, jax.random.key(0))
  _, m0b = step(state, batch, jax.random.key(0))
  _, m1 = step(state.replace(step=jnp.int32(1)), batch, jax.random.key(0))
  assert float(m0['loss']) == float(m0b['loss'])
  assert float(m0['loss']) != float(m1['loss'])


def test_a_step_through_the_fused_attention_path_equals_the_einsum_step():
  """Hidden dropout on, none on the attention probabilities: the step takes the fused path
  (XLA's implementation of it on a CPU) and equals the einsum path's step."""
  import dataclasses
  params = {'encoder': init_params(BERT, jax.random.key(0))}
  tx = make_optimizer(_optim_cfg(), params, 10)
  batch = _batch(np.random.default_rng(4))  # right-padded rows, as the data pipeline makes them
  out = {}
  for impl in ('xla', 'cudnn'):
    bert = dataclasses.replace(BERT, attention_impl=impl, attention_probs_dropout_prob=0.0)
    fn = make_train_step(StepConfig(spec=dataclasses.replace(SPEC, bert=bert)), tx)
    step = jax.jit(fn, compiler_options=FAST_COMPILE)
    state = create_state(params, tx)
    assert ('sort[' in str(jax.make_jaxpr(fn)(state, batch, jax.random.key(1)))) == (
        impl == 'cudnn')
    state, metrics = step(state, batch, jax.random.key(1))
    out[impl] = float(metrics['loss']), state.params
  assert abs(out['xla'][0] - out['cudnn'][0]) < 1e-5
  for a, b in zip(jax.tree.leaves(out['xla'][1]), jax.tree.leaves(out['cudnn'][1])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
