"""Training decoders and LoRA adapters through the train step and the loop's config: gradient
caching equals plain gradients for a decoder; a LoRA step trains only the adapter (the frozen base
stays bitwise equal) and starts from the base model's loss; the loop builds both from a config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedjax.config import load_config
from embedjax.models.decoder import DecoderConfig
from embedjax.models.lora import LoraConfig, init_lora
from embedjax.models.pretrained import init_model_params
from embedjax.models.spec import EmbedderSpec
from embedjax.paths import repo_root
from embedjax.train.state import create_state
from embedjax.train.step import StepConfig, loss_and_grads, make_train_step
from tests.train.test_step import _batch

DECODER = DecoderConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                        attention='bidirectional')  # remat is tested in tests/models/test_remat.py
SPEC = EmbedderSpec(decoder=DECODER, pooling='mean', max_seq_length=32)
LORA = LoraConfig(rank=2, alpha=4.0, target=r'.*(q_proj|v_proj)')


@pytest.fixture(scope='module')
def base():
  return init_model_params(SPEC, jax.random.key(0))


def test_decoder_grad_cache_equals_plain(base):
  params = {'encoder': base}
  batch = _batch(np.random.default_rng(0))
  rng = jax.random.key(1)
  plain = StepConfig(spec=SPEC, chunk_size=2, dropout=False)
  cached = StepConfig(spec=SPEC, chunk_size=2, grad_cache=True, dropout=False)
  (l1, _), g1 = jax.jit(lambda p: loss_and_grads(plain, p, batch, rng))(params)
  (l2, _), g2 = jax.jit(lambda p: loss_and_grads(cached, p, batch, rng))(params)
  assert float(l1) == pytest.approx(float(l2), abs=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4),
                         g1, g2)
  assert optax.tree_utils.tree_norm(g1) > 0



@pytest.mark.parametrize('grad_cache', [False, True])
def test_a_backbone_regulariser_is_added_to_the_loss_and_its_gradient(base, monkeypatch,
                                                                      grad_cache):
  """The hook a decoder setting with its own training loss (SeqPE) goes through: the step adds
  the regulariser's value and its gradient, on both paths; without one nothing changes."""
  import embedjax.models.decoder as decoder
  params = {'encoder': base}
  batch = _batch(np.random.default_rng(0))
  rng = jax.random.key(1)
  cfg = StepConfig(spec=SPEC, chunk_size=2, grad_cache=grad_cache, dropout=False)
  (l0, m0), g0 = jax.jit(lambda p: loss_and_grads(cfg, p, batch, rng))(params)
  assert 'auxiliary_loss' not in m0

  def regulariser(p, cfg_, key):
    return 0.5 * jnp.sum(p['norm']['weight'] ** 2) * jax.random.uniform(key, (), minval=1, maxval=2)

  monkeypatch.setattr(decoder, 'auxiliary_loss', regulariser)
  (l1, m1), g1 = jax.jit(lambda p: loss_and_grads(cfg, p, batch, rng))(params)
  from embedjax.train.step import AUX_KEY_FOLD
  factor = float(jax.random.uniform(jax.random.fold_in(rng, AUX_KEY_FOLD), (), minval=1, maxval=2))
  weight = np.asarray(base['norm']['weight'], np.float64)
  assert float(m1['auxiliary_loss']) == pytest.approx(0.5 * factor * np.sum(weight ** 2), rel=1e-5)
  assert float(l1) == pytest.approx(float(l0) + float(m1['auxiliary_loss']), rel=1e-6)
  np.testing.assert_allclose(g1['encoder']['norm']['weight'],
                             g0['encoder']['norm']['weight'] + factor * weight, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(g1['encoder']['embed_tokens'], g0['encoder']['embed_tokens'])

def test_lora_step_trains_only_the_adapter(base):
  batch = _batch(np.random.default_rng(1))
  rng = jax.random.key(2)
  adapter = init_lora(jax.random.key(3), base, LORA)
  params = {'encoder': base, 'lora': adapter}
  cfg = StepConfig(spec=SPEC, chunk_size=4, grad_cache=True, dropout=False, lora=LORA)
  # B = 0 at init: the first loss is the base model's
  (l_lora, _), grads = jax.jit(lambda p: loss_and_grads(cfg, p, batch, rng))(params)
  (l_base, _), _ = jax.jit(lambda p: loss_and_grads(
      StepConfig(spec=SPEC, chunk_size=4, dropout=False), p, batch, rng))({'encoder': base})
  assert float(l_lora) == pytest.approx(float(l_base), abs=1e-6)
  # no gradient reaches the base; the adapter's B gets one
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads['encoder']))
  assert float(optax.tree_utils.tree_norm(grads['lora'])) > 0
  tx = optax.adam(1e-2)
  state = create_state(params, tx)
  step = jax.jit(make_train_step(cfg, tx))
  losses = []
  for _ in range(2):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics['loss']))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), state.params['encoder'],
                         base)
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), state.params['lora'],
                                 adapter)
  assert max(jax.tree_util.tree_leaves(moved)) > 0
  assert losses[-1] < losses[0]


def test_loop_builds_lora_and_decoder_from_a_config():
  from embedjax.cli import training_sources
  from embedjax.train.loop import dry_build, optimizer, train_params
  cfg = load_config(str(repo_root() / 'configs' / 'decoder_tiny.py'),
                    ['--config.model.lora.rank=4', '--config.model.attention=causal'])
  out = dry_build(cfg, training_sources())
  assert out['spec'].decoder.attention == 'causal' and out['spec'].decoder.remat == 'full'
  assert set(out['state'].params) == {'encoder', 'lora'}
  # the base encoder is frozen: the optimizer keeps no moments for it
  params = jax.eval_shape(lambda: train_params(cfg, init_model_params(out['spec'],
                                                                      jax.random.key(0))))
  opt_state = jax.eval_shape(optimizer(cfg, params).init, params)
  moment_bytes = sum(x.size for x in jax.tree_util.tree_leaves(opt_state))
  lora_size = sum(x.size for x in jax.tree_util.tree_leaves(params['lora']))
  assert moment_bytes < 3 * lora_size + 100


def test_a_seqpe_decoder_trains_its_encoder_with_the_regularisers():
  """SeqPE through the real hook: the step's loss carries its regularisers (as the decoder's
  auxiliary_loss computes them with the step's key) and every encoder tensor gets a gradient."""
  import dataclasses
  from embedjax.models.decoder import auxiliary_loss as decoder_aux
  from embedjax.train.step import AUX_KEY_FOLD
  cfg_dec = dataclasses.replace(DECODER, position_encoding='seqpe',
                                seqpe=(('heads', 2), ('layers', 1), ('max_digits', 3),
                                       ('width', 8)))
  spec = EmbedderSpec(decoder=cfg_dec, pooling='mean', max_seq_length=32)
  params = {'encoder': init_model_params(spec, jax.random.key(0))}
  batch = _batch(np.random.default_rng(0))
  rng = jax.random.key(1)
  cfg = StepConfig(spec=spec, chunk_size=4, dropout=False)
  (loss, metrics), grads = jax.jit(lambda p: loss_and_grads(cfg, p, batch, rng))(params)
  want = decoder_aux(params['encoder'], cfg_dec, jax.random.fold_in(rng, AUX_KEY_FOLD))
  assert float(metrics['auxiliary_loss']) == pytest.approx(float(want), rel=1e-5)
  for path, g in jax.tree_util.tree_flatten_with_path(grads['encoder']['seqpe'])[0]:
    assert float(jnp.abs(g).sum()) > 0, path
