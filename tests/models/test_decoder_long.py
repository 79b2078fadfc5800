"""Long inputs for the decoder: blocked attention equals plain attention (every mask form) with
memory linear in the length; CLEX's learned rotary scaling in the decoder equals its closed forms
(plain RoPE within the trained length, NTK-aware scaling at alpha = 2t - 1 untrained), trains
through a step's key, and travels through export and import."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.decoder import Decoder, DecoderConfig, init_decoder_params, token_positions
from embedjax.models.rope import ntk_aware_theta

BASE = DecoderConfig(model_type='qwen3', vocab_size=64, hidden_size=32, intermediate_size=48,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     qk_norm=True, max_position_embeddings=16, rope_theta=10000.0)


def _rows(rng, lengths, width):
  ids = rng.integers(3, BASE.vocab_size, size=(len(lengths), width)).astype(np.int32)
  seg = (np.arange(width)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return ids * seg, seg


def _packed(rng, width):
  seg = np.zeros((2, width), np.int32)
  seg[0, :9], seg[0, 9:20], seg[1, :width - 3] = 1, 2, 1
  ids = rng.integers(3, BASE.vocab_size, size=(2, width)).astype(np.int32) * (seg > 0)
  return ids, seg


@pytest.fixture(scope='module')
def params():
  return init_decoder_params(BASE, jax.random.key(0))


@pytest.mark.parametrize('attention,window,form', [
    ('causal', 0, 'lengths'), ('bidirectional', 0, 'lengths'), ('causal', 6, 'lengths'),
    ('causal', 0, 'packed'), ('bidirectional', 0, 'packed'), ('causal', 0, 'left')])
def test_blocked_attention_equals_plain(params, attention, window, form):
  rng = np.random.default_rng(0)
  cfg = dataclasses.replace(BASE, attention=attention, sliding_window=window)
  if form == 'packed':
    ids, seg = _packed(rng, 23)
  else:
    ids, seg = _rows(rng, [23, 11, 1], 23)
    if form == 'left':
      ids, seg = ids[:, ::-1].copy(), seg[:, ::-1].copy()
  kw = dict(packed=form == 'packed', left_padded=form == 'left')
  want = Decoder(cfg).apply({'params': params}, ids, seg, **kw)
  for block in (4, 8, 23, 64):  # 23 % 4 != 0: a padded last block; 64 > L: one block
    got = Decoder(dataclasses.replace(cfg, attention_block=block)).apply(
        {'params': params}, ids, seg, **kw)
    # real tokens only: padding positions' outputs are never read (the lengths form, which cuDNN
    # takes, gives them other values than the mask form)
    real = seg > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5,
                               atol=1e-5)


def test_blocked_attention_gradients_equal_plain(params):
  ids, seg = _rows(np.random.default_rng(1), [12, 7], 12)
  real = jnp.asarray(seg > 0)[..., None]
  loss = lambda cfg: (lambda p: jnp.sum(jnp.where(real, Decoder(cfg).apply(
      {'params': p}, ids, seg), 0.0) ** 2))
  want = jax.grad(loss(BASE))(params)
  got = jax.grad(loss(dataclasses.replace(BASE, attention_block=5)))(params)
  # float32 reordering: within 1e-5 of the largest gradient (75 here)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(want))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale),
                         got, want)


def test_blocked_attention_memory_grows_linearly():
  """The compiled forward's temporaries at L = 1024 and 2048: plain attention's (L, L) logits
  quadruple, blocked attention's double (8.9 and 17.7 MB against 50 and 201 MB here)."""
  def temp(cfg, length):
    cfg = dataclasses.replace(cfg, max_position_embeddings=length, num_hidden_layers=1)
    p = jax.eval_shape(lambda: init_decoder_params(cfg, jax.random.key(0)))
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    fn = jax.jit(lambda p, i, s: Decoder(cfg).apply({'params': p}, i, s))
    return fn.lower(p, ids, ids).compile().memory_analysis().temp_size_in_bytes
  plain = [temp(BASE, n) for n in (1024, 2048)]
  blocked = [temp(dataclasses.replace(BASE, attention_block=256), n) for n in (1024, 2048)]
  assert plain[1] > 3.5 * plain[0], plain
  assert blocked[1] < 2.2 * blocked[0], blocked
  assert blocked[1] < plain[1] / 4, (blocked, plain)


def test_blocked_attention_refuses_selfextend():
  with pytest.raises(ValueError, match='attention_block'):
    dataclasses.replace(BASE, attention_block=8, self_extend_group=2, self_extend_window=4)


# --- CLEX ------------------------------------------------------------------------------------

CLEX = dataclasses.replace(BASE, rope_scaling=(('max_factor', 4), ('rope_type', 'clex')))


@pytest.fixture(scope='module')
def clex_params():
  return init_decoder_params(CLEX, jax.random.key(0))


def _without_clex(p):
  return {k: v for k, v in p.items() if k != 'rope_clex'}


def test_clex_config_is_checked():
  assert CLEX.max_positions == 64
  for bad in ((('max_factor', 1), ('rope_type', 'clex')), (('rope_type', 'clex'),),
              (('max_factor', 4), ('rope_type', 'clex'), ('speed', 2))):
    with pytest.raises(ValueError, match='clex'):
      dataclasses.replace(BASE, rope_scaling=bad)


def test_clex_within_the_trained_length_is_plain_rope(clex_params):
  ids, seg = _rows(np.random.default_rng(2), [16, 9], 16)  # n <= 16: t = 1
  got = Decoder(CLEX).apply({'params': clex_params}, ids, seg)
  want = Decoder(BASE).apply({'params': _without_clex(clex_params)}, ids, seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('length,t', [(17, 2), (40, 3), (64, 4)])
def test_untrained_clex_beyond_it_is_ntk_scaling_at_2t_minus_1(clex_params, length, t):
  """t = ceil(n / 16): the untrained dynamics give NTK-aware frequencies at alpha = 2t - 1, the
  default table with base theta * alpha^(d / (d - 2))."""
  ids, seg = _rows(np.random.default_rng(3), [length, 5], length)
  got = Decoder(CLEX).apply({'params': clex_params}, ids, seg)
  ntk = dataclasses.replace(BASE, max_position_embeddings=64,
                            rope_theta=ntk_aware_theta(BASE.rope_theta, 2 * t - 1, BASE.head_size))
  want = Decoder(ntk).apply({'params': _without_clex(clex_params)}, ids, seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5)


def test_clex_training_draws_scales_and_positions_from_the_key(clex_params):
  from embedjax.models.decoder import clex_rotary
  pos = token_positions(jnp.asarray(_rows(np.random.default_rng(4), [16, 6], 16)[1]))
  seen = set()
  for i in range(12):
    inv, spread = clex_rotary(CLEX, clex_params['rope_clex'], pos, jax.random.key(i))
    spread = np.asarray(spread)
    t = int(spread[0, 15] // 15)  # position 15 went to 15 t + u with 0 <= u < t <= 4
    seen.add(t)
    assert spread[0, 0] == 0 and np.all(np.diff(spread[0]) > 0)  # distinct and increasing
    u = spread[0, 1:] - np.arange(1, 16) * t
    assert np.all((0 <= u) & (u < t)), (t, u)
  assert seen - {1}, seen  # some draws are beyond the trained length
  a = clex_rotary(CLEX, clex_params['rope_clex'], pos, jax.random.key(0))
  b = clex_rotary(CLEX, clex_params['rope_clex'], pos, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_clex_parameters_get_gradients_through_a_training_key(clex_params):
  ids, seg = _rows(np.random.default_rng(5), [16, 12], 16)

  def loss(p, key):
    return jnp.sum(Decoder(CLEX).apply({'params': p}, ids, seg, rngs={'positions': key}) ** 2)
  # a key drawing t > 1 (the ODE integrates past 1 only then)
  key = next(jax.random.key(i) for i in range(50)
             if int(jax.random.randint(jax.random.split(jax.random.key(i))[0], (), 1, 5)) > 1)
  grads = jax.grad(loss)(clex_params, key)
  assert float(jnp.abs(grads['rope_clex']['down']).sum()) > 0


def test_clex_weights_export_and_import(clex_params, tmp_path):
  from embedjax.models.hf_decoder import decoder_params_to_hf, load_decoder_params
  from safetensors.numpy import save_file
  import json
  state = decoder_params_to_hf(jax.tree_util.tree_map(np.asarray, clex_params), CLEX)
  assert state['clex_layer.proj_func.ode_up_proj'].shape == (4, 8)
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text(json.dumps(CLEX.to_hf()))
  back = load_decoder_params(tmp_path, DecoderConfig.from_hf(CLEX.to_hf()))
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.tree_util.tree_map(
      np.asarray, clex_params))
  # a folder without CLEX tensors (a model first given CLEX) loads with the untrained dynamics
  plain = {k: v for k, v in state.items() if 'clex' not in k}
  save_file({k: np.ascontiguousarray(v) for k, v in plain.items()}, str(tmp_path / 'model.safetensors'))
  fresh = load_decoder_params(tmp_path, CLEX)
  assert not np.any(fresh['rope_clex']['down'])


# --- SeqPE -----------------------------------------------------------------------------------

SEQPE = dataclasses.replace(BASE, position_encoding='seqpe',
                            seqpe=(('heads', 2), ('layers', 1), ('max_digits', 3), ('width', 16)))


@pytest.fixture(scope='module')
def seqpe_params():
  return init_decoder_params(SEQPE, jax.random.key(1))


def test_seqpe_adds_the_encoders_vectors_to_the_embeddings_and_skips_the_rotation(seqpe_params):
  """The decoder with SeqPE equals the rotation-free decoder fed embeddings plus
  ``seqpe.encode_positions`` of each token's digits (numpy digits, position_digits)."""
  from embedjax.models import seqpe
  from embedjax.models.decoder import _seqpe_params
  ids, seg = _rows(np.random.default_rng(6), [9, 4], 9)
  got = Decoder(SEQPE).apply({'params': seqpe_params}, ids, seg)
  pos = np.asarray(token_positions(jnp.asarray(seg)))
  digits, mask = seqpe.position_digits(pos.reshape(-1), 3)
  vec = seqpe.encode_positions(_seqpe_params(seqpe_params['seqpe']), digits, mask, heads=2)
  # a rotation-free decoder: rope with every frequency 0 (inv_freq = 0 rotates nothing)
  cfg = dataclasses.replace(BASE, rope_scaling=(('factor', 1e30), ('rope_type', 'linear')),
                            vocab_size=18)
  p = {k: v for k, v in seqpe_params.items() if k != 'seqpe'}
  embed = np.asarray(p['embed_tokens'])[ids] + np.asarray(vec).reshape(2, 9, -1)
  want = Decoder(cfg).apply({'params': {**p, 'embed_tokens': embed.reshape(18, -1)}},
                            np.arange(18).reshape(2, 9), seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert SEQPE.max_positions == 1000


def test_seqpe_regularisers_are_the_papers_losses_on_drawn_positions(seqpe_params):
  from embedjax.models import seqpe
  from embedjax.models.decoder import _seqpe_params, auxiliary_loss, seqpe_regularisers
  key = jax.random.key(3)
  contrastive, transfer = seqpe_regularisers(SEQPE, seqpe_params['seqpe'], key)
  # the same draws, by hand
  kp, kc, kt, ko = jax.random.split(key, 4)
  top = 16 * 16
  pivots = np.asarray(jax.random.randint(kp, (32,), 0, top))
  cands = np.asarray(jax.random.randint(kc, (32, 16), 0, top))
  in_range = np.asarray(jax.random.randint(kt, (8, 8), 0, 16))
  offset = np.asarray(jax.random.randint(ko, (8, 1), 16, top - 16))
  params = _seqpe_params(seqpe_params['seqpe'])
  enc = lambda pos: np.asarray(seqpe.encode_positions(
      params, *seqpe.position_digits(pos.reshape(-1), 3), heads=2)).reshape(pos.shape + (-1,))
  want_c = seqpe.contrastive_loss(enc(pivots), enc(cands), seqpe.nearest_labels(pivots, cands))
  want_t = seqpe.transfer_loss(enc(in_range), enc(in_range + offset))
  np.testing.assert_allclose(float(contrastive), float(want_c), rtol=1e-5)
  np.testing.assert_allclose(float(transfer), float(want_t), rtol=1e-4, atol=1e-7)
  total = auxiliary_loss(seqpe_params, SEQPE, key)
  np.testing.assert_allclose(float(total), 0.1 * float(want_c) + 0.1 * float(want_t), rtol=1e-4)
  assert auxiliary_loss(seqpe_params, BASE, key) is None


def test_seqpe_config_round_trips_and_checks(seqpe_params, tmp_path):
  from embedjax.models.hf_decoder import decoder_params_to_hf, load_decoder_params
  from safetensors.numpy import save_file
  import json
  assert DecoderConfig.from_hf(SEQPE.to_hf()) == SEQPE
  state = decoder_params_to_hf(jax.tree_util.tree_map(np.asarray, seqpe_params), SEQPE)
  assert 'seqpe.blocks.block_0.qkv.kernel' in state
  save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text(json.dumps(SEQPE.to_hf()))
  back = load_decoder_params(tmp_path, SEQPE)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back,
                         jax.tree_util.tree_map(np.asarray, seqpe_params))
  # a RoPE model's folder read as SeqPE (the study's first step) gets GPT-2's init for the encoder
  plain = {k: v for k, v in state.items() if not k.startswith('seqpe.')}
  save_file({k: np.ascontiguousarray(v) for k, v in plain.items()}, str(tmp_path / 'model.safetensors'))
  fresh = load_decoder_params(tmp_path, SEQPE)
  assert fresh['seqpe']['blocks']['block_0']['qkv']['kernel'].shape == (16, 48)
  np.testing.assert_array_equal(fresh['seqpe']['out']['bias'], 0)
  with pytest.raises(ValueError, match='seqpe'):
    dataclasses.replace(SEQPE, seqpe=(('speed', 1),))
  with pytest.raises(ValueError, match='no rotation'):
    dataclasses.replace(SEQPE, self_extend_group=2, self_extend_window=4)
