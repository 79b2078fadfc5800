"""SPLADE weights from BERT's MLM head against transformers' BertForMaskedLM in float64, and the
FLOPS regulariser by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedjax.models.bert import BertConfig
from embedjax.models.pretrained import params_from_hf
from embedjax.models.spec import EmbedderSpec
from embedjax.models.splade import flops, init_mlm_head, mlm_head_from_hf, splade_weights

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def test_splade_weights_equal_a_float64_reference_of_bert_for_masked_lm():
  config = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32,
                                   max_position_embeddings=20)
  torch.manual_seed(0)
  hf = transformers.BertForMaskedLM(config).eval()
  with torch.no_grad():  # a non-trivial head (its init has zero biases and a unit LayerNorm)
    for p in hf.cls.predictions.transform.parameters():
      p.add_(0.1 * torch.randn_like(p))
    hf.cls.predictions.bias.add_(0.5 * torch.randn_like(hf.cls.predictions.bias))
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  cfg = BertConfig.from_hf(config.to_dict())
  params, _ = params_from_hf(state, cfg)
  head = mlm_head_from_hf(state, cfg)
  ids = np.array([[2, 7, 9, 11, 3, 0, 0], [2, 5, 3, 0, 0, 0, 0]], np.int64)
  mask = (ids != 0).astype(np.int64)
  with torch.no_grad():
    logits = hf.double()(input_ids=torch.from_numpy(ids),
                         attention_mask=torch.from_numpy(mask)).logits.numpy()
  want = np.where(mask[..., None] != 0, np.log1p(np.maximum(logits, 0)), 0).max(axis=1)
  spec = EmbedderSpec(bert=cfg, pooling='mean', normalize=False, max_seq_length=20)
  got = np.asarray(splade_weights(params, head, spec, jnp.asarray(ids, jnp.int32),
                                  jnp.asarray(mask, jnp.int32)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert (got > 0).any() and (got == 0).any()


def test_a_checkpoint_without_a_head_and_a_fresh_head():
  cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=16)
  assert mlm_head_from_hf({'embeddings.word_embeddings.weight': np.zeros((30, 8))}, cfg) is None
  head = init_mlm_head(jax.random.key(0), cfg)
  assert head['dense']['kernel'].shape == (8, 8) and head['bias'].shape == (30,)


def test_a_fresh_head_given_the_embeddings_starts_at_its_firing_rate():
  """Bias -z ||E_j|| with z the normal's upper 1e-3 quantile (3.090). LayerNorm puts each token's
  vector on the sphere of radius sqrt(H), so a term's logit / ||E_j|| is sqrt(H) times a uniform
  unit vector's coordinate, whose tail at z is a Beta tail: 0.741e-3 at H = 64 (the normal's
  1e-3 is its large-H limit). Counted over 4,000 random tokens x 2,000 terms."""
  from scipy.stats import beta
  from embedjax.models.splade import mlm_logits
  cfg = BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=16)
  rng = np.random.default_rng(0)
  e = rng.standard_normal((2000, 64)) * rng.uniform(0.02, 0.2, size=(2000, 1))
  head = init_mlm_head(jax.random.key(0), cfg, e, firing_rate=1e-3)
  np.testing.assert_allclose(np.asarray(head['bias']), -3.0902323 * np.linalg.norm(e, axis=1),
                             rtol=1e-5)
  hidden = jnp.asarray(rng.standard_normal((1, 4000, 64)), jnp.float32)
  logits = np.asarray(mlm_logits({'word_embeddings': {'embedding': jnp.asarray(e, jnp.float32)}},
                                 head, cfg, hidden))
  expected = 8e6 * 0.5 * beta.sf(3.0902323 ** 2 / 64, 0.5, 63 / 2)   # 5,928
  assert abs((logits > 0).sum() - expected) < 4 * np.sqrt(expected), ((logits > 0).sum(), expected)
  # BERT's zero bias without the embeddings: half of the logits are positive
  zero = np.asarray(mlm_logits({'word_embeddings': {'embedding': jnp.asarray(e, jnp.float32)}},
                               init_mlm_head(jax.random.key(0), cfg), cfg, hidden))
  assert 0.45 < (zero > 0).mean() < 0.55
  with pytest.raises(ValueError, match='firing_rate'):
    init_mlm_head(jax.random.key(0), cfg, e, firing_rate=0.7)


def test_flops_by_hand():
  w = jnp.array([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
  # column means 2, 0, 1 -> 4 + 0 + 1
  assert float(flops(w)) == 5.0
