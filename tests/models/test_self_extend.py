"""SelfExtend against a float64 numpy reference of grouped attention, and equal to plain rotary
attention when every token is within the neighbour window."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.decoder import Decoder, DecoderConfig, init_decoder_params
from embedjax.models.rope import rope_frequencies
from embedjax.models.self_extend import self_extend_attention


def _rope64(x, pos, inv):
  """rotate_half rotary positions in float64: x (L, D), pos (L,)."""
  ang = pos[:, None].astype(np.float64) * inv[None]
  ang = np.concatenate([ang, ang], -1)
  half = x.shape[-1] // 2
  rot = np.concatenate([-x[:, half:], x[:, :half]], -1)
  return x * np.cos(ang) + rot * np.sin(ang)


def _reference(q, k, v, pos, allowed, inv, group, window):
  """Per (query, key) pair: neighbour positions within the window, else grouped positions with
  the query shifted by +-(window - window // group); softmax over allowed keys."""
  l, n, d = q.shape
  kh = k.shape[1]
  shift = window - window // group
  out = np.zeros((l, n, d))
  for h in range(n):
    kk, vv = k[:, h // (n // kh)], v[:, h // (n // kh)]
    logits = np.full((l, l), -np.inf)
    for i in range(l):
      for j in range(l):
        if not allowed[i, j]:
          continue
        dist = pos[i] - pos[j]
        if abs(dist) < window:
          qp, kp = pos[i], pos[j]
        else:
          qp, kp = pos[i] // group + (shift if dist > 0 else -shift), pos[j] // group
        qi = _rope64(q[i:i + 1, h], np.array([qp]), inv)[0]
        kj = _rope64(kk[j:j + 1], np.array([kp]), inv)[0]
        logits[i, j] = qi @ kj / np.sqrt(d)
    w = np.exp(logits - logits.max(1, keepdims=True))
    out[:, h] = (w / w.sum(1, keepdims=True)) @ vv
  return out


@pytest.mark.parametrize('causal', [True, False])
def test_self_extend_equals_a_float64_reference(causal):
  rng = np.random.default_rng(0)
  l, n, kh, d, group, window = 14, 4, 2, 8, 3, 4
  q, k, v = (rng.standard_normal((l, h, d)) for h in (n, kh, kh))
  pos = np.arange(l)
  allowed = np.tril(np.ones((l, l), bool)) if causal else np.ones((l, l), bool)
  inv, _ = rope_frequencies(1e4, d)
  want = _reference(q, k, v, pos, allowed, inv, group, window)
  f32 = lambda x: jnp.asarray(x[None], jnp.float32)
  got = self_extend_attention(f32(q), f32(k), f32(v), jnp.asarray(pos[None], jnp.int32),
                              jnp.asarray(allowed[None, None]), inv, 1.0, group=group,
                              window=window)
  np.testing.assert_allclose(np.asarray(got[0]), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attention', ['causal', 'bidirectional'])
def test_shorter_than_the_window_is_plain_attention(attention):
  base = dict(model_type='qwen3', vocab_size=64, hidden_size=32, intermediate_size=48,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, qk_norm=True,
              max_position_embeddings=64, attention=attention)
  plain = DecoderConfig(**base)
  extended = DecoderConfig(**base, self_extend_group=4, self_extend_window=16)
  params = init_decoder_params(plain, jax.random.key(0))
  ids = np.random.default_rng(1).integers(3, 64, (2, 12))
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  run = lambda cfg: np.asarray(Decoder(cfg).apply({'params': params}, jnp.asarray(ids, jnp.int32),
                                                  jnp.asarray(mask, jnp.int32)))
  keep = mask.astype(bool)
  np.testing.assert_allclose(run(extended)[keep], run(plain)[keep], rtol=1e-5, atol=1e-5)
  # beyond the window it is not plain attention any more
  shorter = DecoderConfig(**base, self_extend_group=2, self_extend_window=4)
  assert np.abs(run(shorter)[keep] - run(plain)[keep]).max() > 1e-3


def test_self_extend_settings_are_checked():
  with pytest.raises(ValueError, match='set both'):
    DecoderConfig(self_extend_group=4)
  with pytest.raises(ValueError, match='window >= group'):
    DecoderConfig(self_extend_group=8, self_extend_window=4)
