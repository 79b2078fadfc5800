"""The Flax BERT encoder and pooling against Hugging Face transformers (torch CPU) and numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.bert import BertConfig, BertEncoder
from embedjax.models.pooling import POOLING_MODES, pool, pool_segments
from embedjax.models.pretrained import init_params, params_from_hf, params_to_hf

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

SMALL = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=40)


def _batch(rng, b=3, l=11, vocab=97):
  ids = rng.integers(1, vocab, size=(b, l)).astype(np.int32)
  mask = np.ones((b, l), np.int32)
  mask[1, 7:] = 0
  mask[2, 3:] = 0
  ids[mask == 0] = 0
  return ids, mask


def _hf_model(cfg, params):
  hf = transformers.BertModel(transformers.BertConfig(**cfg.to_hf()), add_pooling_layer=False)
  state = {k: torch.from_numpy(v.copy()) for k, v in params_to_hf(params, cfg).items()}
  missing, unexpected = hf.load_state_dict(state, strict=False)
  assert not unexpected and all('position_ids' in m for m in missing), (missing, unexpected)
  return hf.eval()


def test_hidden_states_match_transformers():
  cfg = SMALL
  params = init_params(cfg, jax.random.key(0))
  ids, mask = _batch(np.random.default_rng(0))
  ours = BertEncoder(cfg).apply({'params': params}, ids, mask)
  with torch.no_grad():
    ref = _hf_model(cfg, params)(input_ids=torch.from_numpy(ids).long(),
                                 attention_mask=torch.from_numpy(mask).long()).last_hidden_state
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(ours)[valid], ref.numpy()[valid], atol=2e-5)


def test_hf_round_trip_is_exact():
  params = init_params(SMALL, jax.random.key(1))
  back, extra = params_from_hf(params_to_hf(params, SMALL), SMALL)
  assert not extra
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, back)


def test_missing_or_misshaped_tensor_names_it():
  state = params_to_hf(init_params(SMALL, jax.random.key(1)), SMALL)
  broken = dict(state)
  del broken['encoder.layer.1.output.dense.bias']
  with pytest.raises(KeyError, match='encoder.layer.1.output.dense.bias'):
    params_from_hf(broken, SMALL, source='x.safetensors')
  broken = dict(state)
  broken['embeddings.word_embeddings.weight'] = np.zeros((5, 32), np.float32)
  with pytest.raises(ValueError, match='word_embeddings'):
    params_from_hf(broken, SMALL, source='x.safetensors')


def test_jit_equals_eager_and_dropout_uses_key():
  cfg = SMALL
  params = init_params(cfg, jax.random.key(0))
  ids, mask = _batch(np.random.default_rng(1))
  model = BertEncoder(cfg)
  eager = model.apply({'params': params}, ids, mask)
  jitted = jax.jit(lambda p: model.apply({'params': p}, ids, mask))(params)
  np.testing.assert_allclose(eager, jitted, atol=1e-6)
  drop = lambda k: model.apply({'params': params}, ids, mask, deterministic=False, rngs={'dropout': k})
  a, b, c = drop(jax.random.key(0)), drop(jax.random.key(0)), drop(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a, eager)


def test_bfloat16_compute_stays_close_and_params_stay_float32():
  cfg32 = SMALL
  cfg16 = BertConfig(**{**SMALL.__dict__, 'dtype': 'bfloat16'})
  params = init_params(cfg16, jax.random.key(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  ids, mask = _batch(np.random.default_rng(2))
  h32 = BertEncoder(cfg32).apply({'params': params}, ids, mask)
  h16 = BertEncoder(cfg16).apply({'params': params}, ids, mask)
  assert h16.dtype == jnp.bfloat16
  valid = mask.astype(bool)
  err = np.abs(np.asarray(h16, np.float32) - np.asarray(h32))[valid]
  assert err.max() < 0.1 and err.mean() < 0.02


def _numpy_pool(h, mask, mode):
  h = h.astype(np.float64)
  out = []
  for row, m in zip(h, mask):
    n = int(m.sum())
    tok = row[:n]
    if mode == 'cls':
      out.append(tok[0])
    elif mode == 'mean':
      out.append(tok.mean(0))
    elif mode == 'max':
      out.append(tok.max(0))
    elif mode == 'mean_sqrt_len':
      out.append(tok.sum(0) / np.sqrt(n))
    elif mode == 'weighted_mean':
      w = np.arange(1, n + 1, dtype=np.float64)
      out.append((tok * w[:, None]).sum(0) / w.sum())
    else:
      out.append(tok[-1])
  return np.stack(out)


@pytest.mark.parametrize('mode', POOLING_MODES)
def test_pooling_matches_numpy(mode):
  rng = np.random.default_rng(3)
  h = rng.normal(size=(3, 9, 5)).astype(np.float32)
  mask = np.array([[1] * 9, [1] * 4 + [0] * 5, [1] * 1 + [0] * 8], np.int32)
  np.testing.assert_allclose(pool(h, mask, mode), _numpy_pool(h, mask, mode), atol=1e-6)


@pytest.mark.parametrize('mode', POOLING_MODES)
def test_packed_pooling_equals_separate_pooling(mode):
  rng = np.random.default_rng(4)
  h = rng.normal(size=(1, 10, 5)).astype(np.float32)
  seg = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0]], np.int32)
  got = pool_segments(h, seg, 4, mode)[0]
  for s in range(3):
    cols = np.where(seg[0] == s + 1)[0]
    want = _numpy_pool(h[:, cols], np.ones((1, len(cols)), np.int32), mode)[0]
    np.testing.assert_allclose(got[s], want, atol=1e-6)
  np.testing.assert_array_equal(got[3], 0.0)


def test_packed_rows_equal_separate_rows():
  """Two texts packed in one row give the same hidden states as each text alone."""
  cfg = SMALL
  params = init_params(cfg, jax.random.key(5))
  rng = np.random.default_rng(5)
  a, b = rng.integers(1, 97, 4), rng.integers(1, 97, 6)
  model = BertEncoder(cfg)
  packed_ids = np.concatenate([a, b, [0, 0]])[None].astype(np.int32)
  seg = np.array([[1] * 4 + [2] * 6 + [0, 0]], np.int32)
  pos = np.array([list(range(4)) + list(range(6)) + [0, 0]], np.int32)
  packed = model.apply({'params': params}, packed_ids, (seg > 0).astype(np.int32),
                       position_ids=pos, segment_ids=seg)[0]
  for toks, cols in ((a, slice(0, 4)), (b, slice(4, 10))):
    alone = model.apply({'params': params}, toks[None].astype(np.int32), np.ones((1, len(toks)), np.int32))
    np.testing.assert_allclose(packed[cols], alone[0], atol=1e-5)


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match='divisible'):
    BertConfig(hidden_size=30, num_attention_heads=4)
  with pytest.raises(ValueError, match='position_embedding_type'):
    BertConfig.from_hf({'model_type': 'bert', 'position_embedding_type': 'relative_key'})
