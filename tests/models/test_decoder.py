"""The decoder backbone against transformers on tiny random-init Llama / Mistral / Qwen2 / Qwen3
models (created and saved by transformers itself), float32 on CPU."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.decoder import (Decoder, DecoderConfig, attention_mask, attention_path,
                                     token_positions)
from embedjax.models.hf_decoder import load_decoder_params, read_decoder_config

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

ARCHS = ('llama', 'mistral', 'qwen2', 'qwen3')
COMMON = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              tie_word_embeddings=False)


def hf_config(arch: str):
  if arch == 'llama':
    return transformers.LlamaConfig(**COMMON, rope_theta=500000.0, attention_bias=True)
  if arch == 'mistral':  # a window shorter than the test rows, so that it matters
    return transformers.MistralConfig(**COMMON, sliding_window=5, rope_theta=10000.0)
  if arch == 'qwen2':
    return transformers.Qwen2Config(**COMMON, rope_theta=1000000.0)
  # head_dim apart from hidden / heads, as Qwen3 models have
  return transformers.Qwen3Config(**COMMON, head_dim=24, rope_theta=1000000.0)


def make_hf_model(arch: str, folder):
  torch.manual_seed(0)
  model = transformers.AutoModel.from_config(hf_config(arch), attn_implementation='eager')
  with torch.no_grad():  # move every tensor off its init (norms off 1, biases off 0)
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.eval()
  model.save_pretrained(folder)
  return model


@pytest.fixture(scope='module', params=ARCHS)
def arch_model(request, tmp_path_factory):
  folder = tmp_path_factory.mktemp(request.param)
  model = make_hf_model(request.param, folder)
  cfg = read_decoder_config(folder)
  params = load_decoder_params(folder, cfg)
  return request.param, folder, model, cfg, params


def rows(rng, lengths, length, left=False):
  ids = np.zeros((len(lengths), length), np.int64)
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    tokens = rng.integers(3, COMMON['vocab_size'], n)
    sl = slice(length - n, length) if left else slice(0, n)
    ids[i, sl], mask[i, sl] = tokens, 1
  return ids, mask


def hf_states(model, ids, mask, bidirectional=False):
  with torch.no_grad():
    if bidirectional:
      # A full (padding-only) 4D additive mask: every real token attends to every real token.
      keep = torch.tensor(mask, dtype=torch.bool)
      full = keep[:, None, None, :] & keep[:, None, :, None] | torch.eye(
          ids.shape[1], dtype=torch.bool)[None, None]
      am = torch.zeros(full.shape, dtype=torch.float32).masked_fill(~full, -1e30)
      out = model(input_ids=torch.tensor(ids), attention_mask=am)
    else:
      out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  return out.last_hidden_state.numpy()


def ours(cfg, params, ids, mask, *, jit=False, **kw):
  # Eager by default: for these tiny shapes op-by-op dispatch costs less than a compile per test.
  fn = lambda p, i, m: Decoder(cfg).apply({'params': p}, i, m, **kw)
  fn = jax.jit(fn) if jit else fn
  return np.asarray(fn(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))


def _only(arch, *archs):
  # The masking, packing and dtype code is shared by the families: the invariance tests run on
  # a subset (parity with transformers runs on all four).
  if arch not in archs:
    pytest.skip(f'shared code path, checked on {", ".join(archs)}')


def max_diff(a, b, mask):
  keep = mask.astype(bool)
  return float(np.abs(a[keep] - b[keep]).max())


@pytest.mark.parametrize('left', [False, True], ids=['right_padded', 'left_padded'])
def test_causal_states_equal_transformers(arch_model, left):
  arch, _, model, cfg, params = arch_model
  ids, mask = rows(np.random.default_rng(1), [11, 7, 3], 11, left=left)
  want = hf_states(model, ids, mask)
  got = ours(cfg, params, ids, mask, left_padded=left, jit=True)
  assert max_diff(got, want, mask) <= 1e-4, arch


def test_left_and_right_padding_agree(arch_model):
  arch, _, _, cfg, params = arch_model
  _only(arch, 'mistral', 'qwen3')
  rng = np.random.default_rng(2)
  ids_r, mask_r = rows(rng, [9, 4], 9)
  ids_l, mask_l = np.zeros_like(ids_r), np.zeros_like(mask_r)
  for i, n in enumerate([9, 4]):
    ids_l[i, 9 - n:], mask_l[i, 9 - n:] = ids_r[i, :n], 1
  right = ours(cfg, params, ids_r, mask_r)
  left = ours(cfg, params, ids_l, mask_l, left_padded=True)
  for i, n in enumerate([9, 4]):
    np.testing.assert_allclose(left[i, 9 - n:], right[i, :n], atol=1e-5)


def test_bidirectional_states_equal_transformers_with_a_full_mask(arch_model, tmp_path):
  arch, folder, model, _, params = arch_model
  no_window = {}
  if arch == 'mistral':
    # bidirectional mode refuses a sliding window: the same weights without one, on both sides
    no_window = dict(sliding_window=0)
    model = transformers.AutoModel.from_pretrained(folder, sliding_window=None,
                                                   attn_implementation='eager').eval()
  cfg = read_decoder_config(folder, attention='bidirectional', **no_window)
  ids, mask = rows(np.random.default_rng(3), [10, 6, 2], 10)
  want = hf_states(model, ids, mask, bidirectional=True)
  got = ours(cfg, params, ids, mask)
  assert max_diff(got, want, mask) <= 1e-4, arch
  # and it differs from causal attention (the mask matters)
  causal = ours(read_decoder_config(folder, **no_window), params, ids, mask)
  assert max_diff(got, causal, mask) > 1e-3


def test_packed_rows_equal_padded_rows(arch_model):
  arch, _, _, cfg, params = arch_model
  _only(arch, 'mistral', 'qwen3')
  rng = np.random.default_rng(4)
  ids, mask = rows(rng, [5, 3, 4], 5)
  padded = ours(cfg, params, ids, mask)
  packed_ids = np.concatenate([ids[0, :5], ids[1, :3], ids[2, :4]])[None]
  seg = np.array([[1] * 5 + [2] * 3 + [3] * 4])
  pos = token_positions(jnp.asarray(seg))
  np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]])
  packed = np.asarray(Decoder(cfg).apply({'params': params}, jnp.asarray(packed_ids, jnp.int32),
                                         jnp.asarray(seg, jnp.int32), packed=True))
  np.testing.assert_allclose(packed[0, :5], padded[0, :5], atol=1e-5)
  np.testing.assert_allclose(packed[0, 5:8], padded[1, :3], atol=1e-5)
  np.testing.assert_allclose(packed[0, 8:], padded[2, :4], atol=1e-5)


def test_length_form_and_mask_form_agree(arch_model):
  """Right-padded rows take the per-row-lengths form (what cuDNN receives on a GPU); packed rows
  take an explicit mask. On the same right-padded rows both must agree (here both run on XLA)."""
  arch, _, _, cfg, params = arch_model
  _only(arch, 'mistral', 'qwen3')
  ids, mask = rows(np.random.default_rng(5), [8, 5, 1], 8)
  lengths = ours(cfg, params, ids, mask)
  masked = ours(cfg, params, ids, mask, packed=True)
  assert max_diff(lengths, masked, mask) <= 1e-5


def test_attention_paths_named():
  cfg = DecoderConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      dtype='bfloat16')
  assert attention_path(cfg, packed=True, left_padded=False) == 'xla'
  assert attention_path(cfg, packed=False, left_padded=True) == 'xla'
  want = 'cudnn' if jax.default_backend() == 'gpu' else 'xla'
  assert attention_path(cfg, packed=False, left_padded=False) == want
  forced = DecoderConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         attention_impl='cudnn')
  assert attention_path(forced, packed=False, left_padded=False) == 'cudnn'


def test_attention_mask_by_hand():
  seg = jnp.array([[1, 1, 2, 2, 0]])
  m = np.asarray(attention_mask(seg, causal=True))[0, 0].astype(int)
  np.testing.assert_array_equal(m, [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0],
                                    [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
  w = np.asarray(attention_mask(jnp.ones((1, 4), jnp.int32), causal=True, window=2))[0, 0]
  np.testing.assert_array_equal(w.astype(int), [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0],
                                                [0, 0, 1, 1]])


def test_bfloat16_compute_stays_close(arch_model):
  arch, folder, _, cfg, params = arch_model
  _only(arch, 'qwen3')
  ids, mask = rows(np.random.default_rng(6), [6, 4], 6)
  f32 = ours(cfg, params, ids, mask)
  bf16 = ours(read_decoder_config(folder, dtype='bfloat16'), params, ids, mask).astype(np.float32)
  rel = np.linalg.norm((bf16 - f32)[mask.astype(bool)]) / np.linalg.norm(f32[mask.astype(bool)])
  assert rel < 0.05, arch


def test_config_reads_transformers_fields(arch_model):
  arch, folder, _, cfg, _ = arch_model
  hf = json.loads((folder / 'config.json').read_text())
  assert cfg.model_type == arch and cfg.num_key_value_heads == 2
  assert cfg.qk_norm == (arch == 'qwen3')
  assert cfg.head_size == (24 if arch == 'qwen3' else 16)
  assert cfg.sliding_window == (5 if arch == 'mistral' else 0)
  theta = hf.get('rope_theta') or hf['rope_parameters']['rope_theta']
  assert cfg.rope_theta == theta
