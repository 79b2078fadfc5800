"""Rotary scaling (linear, dynamic NTK, YaRN, Llama 3) against transformers: the rotary tables of
its ROPE_INIT_FUNCTIONS, and the hidden states of a tiny random-init Llama (created and saved by
transformers) on inputs longer than its trained length; static NTK-aware scaling by hand."""

from __future__ import annotations

import numpy as np
import pytest

from embedjax.models import rope
from embedjax.models.hf_decoder import load_decoder_params, read_decoder_config

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

THETA, MAX_POS = 10000.0, 48
SCALINGS = {
    'linear': {'rope_type': 'linear', 'factor': 3.0},
    'dynamic': {'rope_type': 'dynamic', 'factor': 2.0},
    'yarn': {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 12},
    'yarn_mscale': {'rope_type': 'yarn', 'factor': 8.0, 'original_max_position_embeddings': 12,
                    'mscale': 0.707, 'mscale_all_dim': 1.0, 'beta_fast': 16, 'beta_slow': 2},
    'llama3': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
               'high_freq_factor': 4.0, 'original_max_position_embeddings': 12},
}


def hf_config(scaling):
  return transformers.LlamaConfig(
      vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POS,
      rope_parameters={**scaling, 'rope_theta': THETA}, pad_token_id=0)


@pytest.mark.parametrize('name', sorted(SCALINGS))
def test_rotary_tables_equal_transformers(name):
  scaling = SCALINGS[name]
  cfg = hf_config(scaling)
  items = tuple(sorted(scaling.items()))
  if name == 'dynamic':
    for n in (MAX_POS // 2, MAX_POS, 3 * MAX_POS):
      want, _ = ROPE_INIT_FUNCTIONS['dynamic'](cfg, 'cpu', seq_len=n)
      got = rope.dynamic_frequencies(THETA, 16, 2.0, MAX_POS, np.int32(n))
      np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
    return
  want, want_scale = ROPE_INIT_FUNCTIONS[scaling['rope_type']](cfg, 'cpu')
  got, got_scale = rope.rope_frequencies(THETA, 16, items, MAX_POS)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)
  assert got_scale == pytest.approx(want_scale, rel=1e-7)


def test_static_ntk_aware_theta_by_hand():
  # bloc97's base for a 4x context with head_dim 16: theta * 4^(16 / 14)
  assert rope.ntk_aware_theta(1e4, 4.0, 16) == pytest.approx(1e4 * 4 ** (16 / 14))
  # dynamic NTK at n tokens is static NTK-aware scaling by factor * n / L - (factor - 1)
  n = 3 * MAX_POS
  dyn = rope.dynamic_frequencies(THETA, 16, 2.0, MAX_POS, np.int32(n))
  static, _ = rope.rope_frequencies(rope.ntk_aware_theta(THETA, 2.0 * 3 - 1.0, 16), 16)
  np.testing.assert_allclose(dyn, static, rtol=1e-5)


def test_unknown_rope_type_is_refused():
  with pytest.raises(ValueError, match="rope_scaling type 'longrope' is not supported"):
    rope.rope_frequencies(THETA, 16, {'rope_type': 'longrope'})


@pytest.mark.parametrize('name', ['linear', 'dynamic', 'yarn_mscale', 'llama3'])
def test_states_beyond_the_trained_length_equal_transformers(name, tmp_path):
  from embedjax.models.decoder import Decoder
  import jax.numpy as jnp
  torch.manual_seed(0)
  model = transformers.AutoModel.from_config(hf_config(SCALINGS[name]), attn_implementation='eager')
  model.eval()
  model.save_pretrained(tmp_path)
  cfg = read_decoder_config(tmp_path)
  assert dict(cfg.rope_scaling)['rope_type'] == SCALINGS[name]['rope_type']
  params = load_decoder_params(tmp_path, cfg)
  n = 2 * MAX_POS if name == 'dynamic' else MAX_POS  # dynamic: past max_position_embeddings
  ids = np.random.default_rng(0).integers(3, 96, (2, n))
  mask = np.ones_like(ids)
  mask[1, n // 2:] = 0  # the longest row unpadded, so both sides see n tokens
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  got = Decoder(cfg).apply({'params': params}, jnp.asarray(ids, jnp.int32),
                           jnp.asarray(mask, jnp.int32))
  keep = mask.astype(bool)
  assert float(np.abs(np.asarray(got)[keep] - want.numpy()[keep]).max()) <= 1e-4
