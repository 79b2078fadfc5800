"""A BERT-family encoder as a Flax (linen) module, used through pure ``init`` / ``apply``.

Parameter names mirror the Hugging Face ``BertModel`` layout (``embeddings/word_embeddings``,
``encoder/layer_0/attention/self/query`` ...) so that import and export are a rename plus a transpose
of dense kernels, with nothing guessed.

Shapes: ``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``, ``segment_ids``
are ``(B, L)`` integer arrays; the encoder returns hidden states ``(B, L, H)``.

Packed rows: several texts may share one row (``segment_ids`` 1..S for each text, 0 for padding;
``position_ids`` restarting at 0 for each text). Attention is then restricted to tokens of the same
segment, which makes a packed row compute exactly what separate padded rows would, without the
padding work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

_ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # HF "gelu" is the exact erf form
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture of a BERT-family encoder (field names follow HF ``config.json``)."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pad_token_id: int = 0
  # Compute dtype for matmuls ('float32' or 'bfloat16'); params always stay float32.
  dtype: str = 'float32'

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by '
                       f'num_attention_heads {self.num_attention_heads}')
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f'hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> 'BertConfig':
    """Builds a config from a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
    if hf.get('model_type', 'bert') not in ('bert', 'roberta', 'xlm-roberta', 'distilbert_as_bert'):
      raise ValueError(f"model_type {hf.get('model_type')!r} is not a BERT-family encoder")
    if hf.get('position_embedding_type', 'absolute') != 'absolute':
      raise ValueError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in hf.items() if k in names}
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for this architecture."""
    hf = dataclasses.asdict(self)
    hf.pop('dtype')
    hf.update(model_type='bert', architectures=['BertModel'], position_embedding_type='absolute',
              initializer_range=0.02, use_cache=True)
    return hf

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.dtype == 'bfloat16' else jnp.float32


def _dense(features: int, cfg: BertConfig, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.02), name=name)


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
  # LayerNorm statistics in float32 even under bf16 compute: they are the first thing to lose
  # precision, and the cost is negligible.
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                      name=name)


class SelfAttention(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    """x: (B, L, H); bias: (B, 1, L, L) additive mask (0 or a large negative)."""
    cfg = self.cfg
    b, l, h = x.shape
    heads = cfg.num_attention_heads
    head_dim = h // heads
    split = lambda t: t.reshape(b, l, heads, head_dim)
    q = split(_dense(h, cfg, 'query')(x))
    k = split(_dense(h, cfg, 'key')(x))
    v = split(_dense(h, cfg, 'value')(x))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(head_dim)) + bias
    probs = jax.nn.softmax(logits, axis=-1)
    probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v.dtype), v)
    return out.reshape(b, l, h)


class Attention(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.cfg
    attended = SelfAttention(cfg, name='self')(x, bias, deterministic)
    out = _dense(cfg.hidden_size, cfg, 'output_dense')(attended)
    out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
    return _layer_norm(cfg, 'output_LayerNorm')(out + x)


class Layer(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    cfg = self.cfg
    x = Attention(cfg, name='attention')(x, bias, deterministic)
    inner = _ACTIVATIONS[cfg.hidden_act](_dense(cfg.intermediate_size, cfg, 'intermediate_dense')(x))
    out = _dense(cfg.hidden_size, cfg, 'output_dense')(inner)
    out = nn.Dropout(cfg.hidden_dropout_prob)(out, deterministic=deterministic)
    return _layer_norm(cfg, 'output_LayerNorm')(out + x).astype(cfg.compute_dtype)


def attention_bias(attention_mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """Additive attention bias (B, 1, L, L): 0 where a query may attend to a key, else -1e9.

  attention_mask: (B, L) 1 for tokens, 0 for padding. segment_ids: optional (B, L) packed-row
  segment numbers; when given, a token attends only within its own segment.
  """
  valid = attention_mask.astype(bool)
  allowed = valid[:, None, :, None] & valid[:, None, None, :]
  if segment_ids is not None:
    allowed &= segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  # Padding queries would otherwise see an all-masked row; let them attend to themselves so the
  # softmax is never over an empty set (their outputs are ignored by pooling anyway).
  eye = jnp.eye(attention_mask.shape[1], dtype=bool)[None, None]
  allowed |= eye & ~valid[:, None, :, None]
  return jnp.where(allowed, 0.0, -1e9).astype(jnp.float32)


class BertEncoder(nn.Module):
  """BERT-family encoder: embeddings -> N post-LN transformer layers -> hidden states (B, L, H)."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids=None, position_ids=None,
               segment_ids=None, *, deterministic: bool = True, output_hidden_states: bool = False):
    """Encodes token ids.

    Args:
      input_ids: (B, L) int token ids. attention_mask: (B, L) 1 for tokens, 0 for padding.
      token_type_ids, position_ids, segment_ids: optional (B, L) ints (see the module docstring).
      deterministic: False enables dropout (needs a 'dropout' PRNG key in ``apply``).
      output_hidden_states: also return the embedding output and every layer's output.
    Returns:
      (B, L, H) last hidden states, or (last, tuple of num_hidden_layers + 1 states).
    """
    cfg = self.cfg
    chex.assert_rank([input_ids, attention_mask], 2)
    chex.assert_equal_shape([input_ids, attention_mask])
    _, l = input_ids.shape
    if l > cfg.max_position_embeddings:
      raise ValueError(f'sequence length {l} exceeds max_position_embeddings '
                       f'{cfg.max_position_embeddings}')
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(l, dtype=input_ids.dtype), input_ids.shape)

    init = nn.initializers.normal(0.02)
    emb = nn.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, name='word_embeddings')
    pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init,
                   name='position_embeddings')
    typ = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, embedding_init=init,
                   name='token_type_embeddings')
    x = emb(input_ids) + pos(position_ids) + typ(token_type_ids)
    x = _layer_norm(cfg, 'embeddings_LayerNorm')(x)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic).astype(cfg.compute_dtype)

    bias = attention_bias(attention_mask, segment_ids)
    states = [x]
    for i in range(cfg.num_hidden_layers):
      x = Layer(cfg, name=f'layer_{i}')(x, bias, deterministic)
      states.append(x)
    if output_hidden_states:
      return x, tuple(states)
    return x
