"""Learned sparse representations (SPLADE): vocabulary-sized weights from an MLM head.

  head = init_mlm_head(key, cfg, word_embeddings)  # new, starting sparse (all-MiniLM-L6-v2 has none)
  head = mlm_head_from_hf(state, cfg, source)     # BERT's 'cls.predictions.*' where a folder has it
  w = splade_weights(params, head, spec, ids, mask)   # (B, V) float32, >= 0
  r = flops(w)                                    # FLOPS regulariser (Paria et al. 2020)

SPLADE (Formal et al. 2021; SPLADE v2's max pooling): the MLM logits of every token go through
``log(1 + relu(.))`` and are max-pooled over the text's counted tokens, one weight per vocabulary
entry. The head is BERT's: transform (Dense H -> H, the encoder's activation, LayerNorm), then a
decoder tied to the word embeddings plus a bias. The FLOPS regulariser, the sum over the
vocabulary of the squared mean weight over the batch, pushes weights towards sparsity in a way
that penalises frequent terms most (it estimates the cost of an inverted-index search).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from embedjax.models.bert import _ACTIVATIONS, BertConfig
from embedjax.models.embedder import hidden_states, split_params
from embedjax.models.spec import EmbedderSpec

# (head path, HF tensor name, transposed) of BERT's MLM head; the decoder weight is tied to the
# word embeddings (BertForMaskedLM ties them; an untied checkpoint is refused, below).
_HF_HEAD = (('dense', 'kernel', 'cls.predictions.transform.dense.weight', True),
            ('dense', 'bias', 'cls.predictions.transform.dense.bias', False),
            ('LayerNorm', 'scale', 'cls.predictions.transform.LayerNorm.weight', False),
            ('LayerNorm', 'bias', 'cls.predictions.transform.LayerNorm.bias', False),
            (None, 'bias', 'cls.predictions.bias', False))


def init_mlm_head(key: jax.Array, cfg: BertConfig, word_embeddings=None,
                  firing_rate: float = 1e-4) -> dict:
  """A fresh head: BERT's init (normal(0.02) kernel, unit LayerNorm, zero dense bias).

  The vocabulary bias is zero without ``word_embeddings`` (BERT's init). Given the (V, H) word
  embeddings it starts the head sparse, as a pre-trained MLM head is: term j's bias is
  ``-z ||E_j||`` with ``z`` the standard normal's upper ``firing_rate`` quantile, so that a term
  fires (positive logit) on about that fraction of tokens when the LayerNorm output is isotropic:
  its logit is then nearly N(0, ||E_j||^2). (LayerNorm puts the vector on a sphere of radius
  sqrt(H), whose tail is lighter: 0.96 of the rate at H = 384, 0.74 at H = 64.) Why: with zero biases about half of
  the vocabulary is positive on every token, max pooling makes every text's weights dense (30,000
  terms for all-MiniLM-L6-v2), dot products reach 10^4 and InfoNCE saturates; at 1e-4 a 14-token
  text starts with about 40 terms.
  """
  h = cfg.hidden_size
  bias = jnp.zeros((cfg.vocab_size,), jnp.float32)
  if word_embeddings is not None:
    e = jnp.asarray(word_embeddings, jnp.float32)
    chex.assert_shape(e, (cfg.vocab_size, h))
    if not 0 < firing_rate < 0.5:
      raise ValueError(f'firing_rate must be in (0, 0.5), got {firing_rate}')
    z = -jax.scipy.special.ndtri(jnp.float32(firing_rate))
    bias = -z * jnp.linalg.norm(e, axis=1)
  return {'dense': {'kernel': 0.02 * jax.random.normal(key, (h, h), jnp.float32),
                    'bias': jnp.zeros((h,), jnp.float32)},
          'LayerNorm': {'scale': jnp.ones((h,), jnp.float32), 'bias': jnp.zeros((h,), jnp.float32)},
          'bias': bias}


def mlm_head_from_hf(state: dict, cfg: BertConfig, source: str = '<state>') -> dict | None:
  """BERT's MLM head from a HF state dict, or None when the checkpoint has none."""
  if _HF_HEAD[0][2] not in state:
    return None
  decoder = state.get('cls.predictions.decoder.weight')
  embeddings = next((v for k, v in state.items() if k.endswith('embeddings.word_embeddings.weight')),
                    None)
  if decoder is not None and embeddings is not None and not np.array_equal(decoder, embeddings):
    raise ValueError(f'{source}: the MLM decoder is not tied to the word embeddings '
                     '(only tied heads are supported)')
  head: dict = {}
  for group, name, hf_name, transpose in _HF_HEAD:
    if hf_name not in state:
      raise KeyError(f'{source}: missing tensor {hf_name!r} of the MLM head')
    value = np.asarray(state[hf_name], np.float32)
    value = value.T if transpose else value
    (head.setdefault(group, {}) if group else head)[name] = jnp.asarray(value)
  if head['bias'].shape != (cfg.vocab_size,):
    raise ValueError(f'{source}: MLM bias has shape {head["bias"].shape}, the vocabulary '
                     f'{cfg.vocab_size}')
  return head


def mlm_logits(params, head: dict, cfg: BertConfig, hidden: jax.Array) -> jax.Array:
  """(B, L, H) token states -> (B, L, V) float32 MLM logits (decoder tied to the embeddings)."""
  hi = jax.lax.Precision.HIGHEST
  x = jnp.dot(hidden.astype(jnp.float32), head['dense']['kernel'], precision=hi)
  x = _ACTIVATIONS[cfg.hidden_act](x + head['dense']['bias'])
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  x = (x - mean) * jax.lax.rsqrt(var + cfg.layer_norm_eps)
  x = x * head['LayerNorm']['scale'] + head['LayerNorm']['bias']
  return jnp.dot(x, params['word_embeddings']['embedding'].T, precision=hi) + head['bias']


def splade_weights(params, head: dict, spec: EmbedderSpec, input_ids: jax.Array,
                   attention_mask: jax.Array, *, deterministic: bool = True,
                   dropout_key: jax.Array | None = None) -> jax.Array:
  """(B, L) right-padded ids and mask -> (B, V) weights max over counted tokens of
  log(1 + relu(MLM logits)); 0 for a text without counted tokens."""
  if spec.bert is None:
    raise ValueError('SPLADE needs a BERT-family encoder (its MLM head)')
  chex.assert_rank([input_ids, attention_mask], 2)
  positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
  hidden = hidden_states(params, spec, input_ids, attention_mask.astype(jnp.int32), positions, 1,
                         deterministic=deterministic, dropout_key=dropout_key)
  encoder, _ = split_params(params, spec)
  act = jnp.log1p(jax.nn.relu(mlm_logits(encoder, head, spec.bert, hidden)))
  return jnp.max(jnp.where(attention_mask[..., None] != 0, act, 0.0), axis=1)


def flops(weights: jax.Array) -> jax.Array:
  """FLOPS regulariser of a batch of (B, V) weights: sum_j (mean_i w_ij)^2."""
  chex.assert_rank(weights, 2)
  return jnp.sum(jnp.square(jnp.mean(weights, axis=0)))
