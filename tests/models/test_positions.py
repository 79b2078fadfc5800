"""Interpolated absolute positions: the original table at the original length, a float64 numpy
linear interpolation of it at 2x, and a longer-than-trained input encoded by the stretched model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from embedjax.models.bert import BertConfig, BertEncoder
from embedjax.models.positions import extend_positions, interpolate_table
from embedjax.models.pretrained import init_params

CFG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=12)


def test_same_length_is_the_table_and_twice_is_numpy_interpolation():
  table = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
  np.testing.assert_array_equal(interpolate_table(table, 12), table)
  got = interpolate_table(table, 24)
  xs = np.arange(24) / 2.0  # row i reads the original at i / 2
  want = np.stack([np.interp(xs, np.arange(12), table[:, c].astype(np.float64)) for c in range(5)], 1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got[::2], table)  # even rows are the original rows


def test_extended_model_encodes_past_its_trained_length():
  params = init_params(CFG, jax.random.key(0))
  ids = np.random.default_rng(1).integers(3, 40, (1, 30))
  with pytest.raises(ValueError, match='exceeds the 12 positions'):
    BertEncoder(CFG).apply({'params': params}, ids, np.ones_like(ids))
  longer, cfg = extend_positions(params, CFG, 36)
  assert cfg.max_positions == 36 and longer['position_embeddings']['embedding'].shape == (36, 16)
  out = BertEncoder(cfg).apply({'params': longer}, ids, np.ones_like(ids))
  assert out.shape == (1, 30, 16) and np.isfinite(np.asarray(out)).all()
  same, _ = extend_positions(params, CFG, 12)  # no stretch: the same model
  np.testing.assert_array_equal(same['position_embeddings']['embedding'],
                                params['position_embeddings']['embedding'])


def test_roberta_padding_rows_are_kept():
  cfg = BertConfig(**{**CFG.__dict__, 'model_type': 'roberta', 'position_offset': 2,
                      'max_position_embeddings': 14, 'pad_token_id': 1})
  params = init_params(cfg, jax.random.key(0))
  longer, new = extend_positions(params, cfg, 24)
  table = np.asarray(params['position_embeddings']['embedding'])
  got = np.asarray(longer['position_embeddings']['embedding'])
  assert new.max_position_embeddings == 26 and new.max_positions == 24
  np.testing.assert_array_equal(got[:2], table[:2])
  np.testing.assert_allclose(got[2:], interpolate_table(table[2:], 24))
  with pytest.raises(ValueError, match='nothing to extend'):
    extend_positions(params, cfg, 8)


def test_blocked_attention_equals_plain_attention():
  import dataclasses
  params = init_params(CFG, jax.random.key(1))
  rng = np.random.default_rng(2)
  ids = rng.integers(3, 40, (2, 11))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  segments = np.array([[1] * 5 + [2] * 6, [1] * 3 + [2] * 4 + [0] * 4])  # packed rows
  blocked = dataclasses.replace(CFG, attention_block=4)
  for seg in (None, segments):
    want = BertEncoder(CFG).apply({'params': params}, ids, mask, segment_ids=seg)
    got = BertEncoder(blocked).apply({'params': params}, ids, mask, segment_ids=seg)
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[keep], np.asarray(want)[keep], rtol=1e-5,
                               atol=1e-5)
