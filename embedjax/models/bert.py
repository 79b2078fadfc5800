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

Attention kernel (``attention_impl``): 'xla' is the einsum path below (any mask, packing, dropout
on the probabilities); 'cudnn' runs unpacked rows with no dropout on the attention probabilities
through ``jax.nn.dot_product_attention`` with the padding as per-row lengths (cuDNN's fused kernel
on a GPU, XLA's implementation of the same form elsewhere, which is what CPU tests compare); 'auto'
(the default) is 'cudnn' on a GPU in bfloat16 and 'xla' otherwise. Lengths describe right-padded
rows, so the fused path first moves each row's real tokens to its front (in their order; a no-op
for right-padded rows) and moves the states back after the last layer: positions are already in
the embeddings and attention is the only place tokens meet, so any padding mask gives the same
states. Padding positions come out as zeros there and differ from the einsum path's (nothing
reads them: pooling and the next layers ignore them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from embedjax.models.remat import apply_layers, check_policy


def _gelu_erf(x):
  # HF's exact form x/2 (1 + erf(x / sqrt 2)). jax.nn.gelu(approximate=False) computes it through
  # erfc(-x / sqrt 2), which XLA CPU evaluates with two polynomial branches and selects; erf is one.
  return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(0.5 ** 0.5, x.dtype)))


_ACTIVATIONS = {
    'gelu': _gelu_erf,  # HF "gelu" is the exact erf form
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
}


# HF model_type values this encoder implements. All share BERT's post-LN layer; they differ in
# tensor names, position numbering (roberta-likes), token types (distilbert has none) and the
# embedding width (electra).
ENCODER_MODEL_TYPES = ('bert', 'roberta', 'xlm-roberta', 'camembert', 'distilbert', 'electra')
_OFFSET_POSITIONS = ('roberta', 'xlm-roberta', 'camembert')
_UNSUPPORTED_ENCODERS = {
    'mpnet': 'MPNet adds a relative position bias to every attention layer, which this encoder '
             'does not implement',
}
# DistilBERT config.json key -> BertConfig field.
_DISTILBERT_KEYS = {
    'vocab_size': 'vocab_size', 'dim': 'hidden_size', 'n_layers': 'num_hidden_layers',
    'n_heads': 'num_attention_heads', 'hidden_dim': 'intermediate_size',
    'max_position_embeddings': 'max_position_embeddings', 'activation': 'hidden_act',
    'dropout': 'hidden_dropout_prob', 'attention_dropout': 'attention_probs_dropout_prob',
}


ATTENTION_IMPLS = ('auto', 'xla', 'cudnn')


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
  # The family member (HF model_type): decides tensor names and the config.json written on export.
  model_type: str = 'bert'
  # Width of the embedding tables when it differs from hidden_size (ELECTRA); 0 = hidden_size.
  # A learned projection (``embeddings_project``) then maps embeddings to hidden_size.
  embedding_size: int = 0
  # Added to every position id: RoBERTa-style models number positions from pad_token_id + 1.
  position_offset: int = 0
  # Per-layer rematerialisation policy (embedjax.models.remat.REMAT_POLICIES); not in HF configs.
  remat: str = 'none'
  # Width of one attention head when it is not hidden_size / num_attention_heads: a model whose
  # heads were pruned (embedjax.pruning) keeps its head width with fewer heads. 0 = the quotient.
  # HF's BertModel derives the width from the quotient, so such a model loads in embedjax only.
  attention_head_size: int = 0
  # Queries attended in blocks of this many tokens when a text is longer (memory linear in the
  # length: no (L, L) array), at inference; 0 = one block. Not in HF configs.
  attention_block: int = 0
  # Attention kernel: 'auto', 'xla' or 'cudnn' (module docstring). Not in HF configs.
  attention_impl: str = 'auto'

  def __post_init__(self):
    if not self.attention_head_size and self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size {self.hidden_size} is not divisible by '
                       f'num_attention_heads {self.num_attention_heads}')
    if self.hidden_act not in _ACTIVATIONS:
      raise ValueError(f'hidden_act {self.hidden_act!r} is not one of {sorted(_ACTIVATIONS)}')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.model_type not in ENCODER_MODEL_TYPES:
      raise ValueError(f'model_type {self.model_type!r} is not one of {ENCODER_MODEL_TYPES}')
    if self.model_type == 'distilbert' and self.type_vocab_size:
      raise ValueError('distilbert has no token type embeddings: type_vocab_size must be 0')
    check_policy(self.remat)
    if self.attention_block < 0:
      raise ValueError(f'attention_block must be >= 0, got {self.attention_block}')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}')

  @classmethod
  def from_hf(cls, hf: dict[str, Any], **overrides) -> 'BertConfig':
    """Builds a config from a Hugging Face ``config.json`` dict (unknown keys are ignored).

    Reads the BERT family: bert, roberta / xlm-roberta / camembert (positions offset by
    pad_token_id + 1), distilbert (its own key names, no token types) and electra (embedding_size).
    """
    model_type = hf.get('model_type', 'bert')
    if model_type in _UNSUPPORTED_ENCODERS:
      raise ValueError(f'model_type {model_type!r} is not supported: {_UNSUPPORTED_ENCODERS[model_type]}')
    if model_type not in ENCODER_MODEL_TYPES:
      raise ValueError(f'model_type {model_type!r} is not a supported encoder '
                       f'(supported: {", ".join(ENCODER_MODEL_TYPES)})')
    if hf.get('position_embedding_type', 'absolute') != 'absolute':
      raise ValueError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported")
    if model_type == 'distilbert':
      hf = {**{bert: hf[key] for key, bert in _DISTILBERT_KEYS.items() if key in hf},
            'type_vocab_size': 0, 'layer_norm_eps': 1e-12,
            'pad_token_id': hf.get('pad_token_id') or 0,
            'attention_head_size': hf.get('attention_head_size', 0)}
    names = {f.name for f in dataclasses.fields(cls)}
    # 'dtype' in a HF config is the storage dtype of its weights, not our compute dtype.
    kwargs = {k: v for k, v in hf.items()
              if k in names and k not in ('model_type', 'position_offset', 'dtype', 'remat',
                                          'attention_block', 'attention_impl')}
    kwargs['model_type'] = model_type
    if model_type in _OFFSET_POSITIONS:
      kwargs['position_offset'] = int(hf.get('pad_token_id', 1)) + 1
    if model_type != 'electra' or kwargs.get('embedding_size') == hf.get('hidden_size'):
      kwargs.pop('embedding_size', None)
    kwargs.update(overrides)
    return cls(**kwargs)

  def to_hf(self) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for this architecture (in its family's own keys)."""
    hf = dataclasses.asdict(self)
    for key in ('dtype', 'position_offset', 'embedding_size', 'model_type', 'remat',
                'attention_block', 'attention_impl'):
      hf.pop(key)
    if not self.attention_head_size:
      hf.pop('attention_head_size')
    architecture = {'bert': 'BertModel', 'roberta': 'RobertaModel', 'xlm-roberta': 'XLMRobertaModel',
                    'camembert': 'CamembertModel', 'electra': 'ElectraModel',
                    'distilbert': 'DistilBertModel'}[self.model_type]
    common = dict(model_type=self.model_type, architectures=[architecture], initializer_range=0.02)
    if self.model_type == 'distilbert':
      extra = {'attention_head_size': self.attention_head_size} if self.attention_head_size else {}
      return {**{key: hf[bert] for key, bert in _DISTILBERT_KEYS.items()}, **common, **extra,
              'pad_token_id': self.pad_token_id, 'sinusoidal_pos_embds': False}
    hf.update(common, position_embedding_type='absolute', use_cache=True)
    if self.model_type == 'electra':
      hf['embedding_size'] = self.embedding_width
    return hf

  @property
  def embedding_width(self) -> int:
    """Width of the embedding tables (hidden_size unless ELECTRA-style factorised)."""
    return self.embedding_size or self.hidden_size

  @property
  def head_size(self) -> int:
    """Width of one attention head."""
    return self.attention_head_size or self.hidden_size // self.num_attention_heads

  @property
  def max_positions(self) -> int:
    """Longest sequence the position table allows (RoBERTa's offset takes pad_token_id + 1 rows)."""
    return self.max_position_embeddings - self.position_offset

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


def _attend(q, k, v, bias, dropout=None):
  """Softmax attention. q, k, v: (B, heads, L, D), q already scaled; bias: (B, L, L) additive.

  The softmax normalisation is applied to the (L, D) output instead of the (L, L) probabilities,
  which spares one pass over the largest array (dropout commutes with it: it is elementwise).
  """
  logits = jnp.einsum('bhqd,bhkd->bhqk', q, k).astype(jnp.float32) + bias[:, None]
  p = jnp.exp(logits - logits.max(-1, keepdims=True))
  total = p.sum(-1, keepdims=True)
  if dropout is not None:
    p = dropout(p)
  out = jnp.einsum('bhqk,bhkd->bhqd', p.astype(v.dtype), v).astype(jnp.float32)
  return (out / total).astype(v.dtype)


def _attend_blocked(q, k, v, segments, block: int):
  """Softmax attention over query blocks of ``block`` tokens: q, k, v (B, heads, L, D), q already
  scaled; segments (B, L) the attention groups (0 = padding, which attends among itself, as
  :func:`attention_bias`). Each block builds its own (B, block, L) bias, so nothing is (L, L)."""
  b, h, l, d = q.shape
  pad = -l % block
  qp = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
  sq = jnp.pad(segments, ((0, 0), (0, pad)), constant_values=-1)
  n = (l + pad) // block
  q_blocks = qp.reshape(b, h, n, block, d).transpose(2, 0, 1, 3, 4)   # (n, B, heads, block, D)
  s_blocks = sq.reshape(b, n, block).transpose(1, 0, 2)                # (n, B, block)

  def one(args):
    qb, sb = args
    bias = jnp.where(sb[:, :, None] == segments[:, None, :], 0.0, -1e30).astype(jnp.float32)
    return _attend(qb, k, v, bias)

  out = jax.lax.map(one, (q_blocks, s_blocks))                         # (n, B, heads, block, D)
  return out.transpose(1, 2, 0, 3, 4).reshape(b, h, l + pad, d)[:, :, :l]


def attention_path(cfg: BertConfig, *, packed: bool, dropout: bool, blocked: bool) -> str:
  """'cudnn' or 'xla': the attention path a forward takes (module docstring). ``packed``: segment
  ids given; ``dropout``: dropout on the attention probabilities is active; ``blocked``: the
  query-blocked long-input path. cuDNN also needs a head width that is a multiple of 8, <= 128."""
  if cfg.attention_impl == 'xla' or packed or dropout or blocked:
    return 'xla'
  if cfg.attention_impl == 'cudnn':
    return 'cudnn'
  fits = cfg.head_size % 8 == 0 and cfg.head_size <= 128
  on_gpu = jax.default_backend() == 'gpu'
  return 'cudnn' if on_gpu and fits and cfg.compute_dtype == jnp.bfloat16 else 'xla'


def real_tokens_first(attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(order (B, L): each row's real tokens first, in their order, then its padding; lengths (B,)
  int32 real tokens per row) for a (B, L) 0/1 mask. ``take_along_axis`` with ``order`` makes the
  rows right-padded; ``argsort(order)`` puts them back."""
  mask = attention_mask.astype(bool)
  order = jnp.argsort(~mask, axis=1, stable=True)
  return order, mask.sum(-1).astype(jnp.int32)


def _attend_fused(q, k, v, lengths):
  """Attention of right-padded rows given as per-row lengths: q, k, v (B, L, heads, D) unscaled,
  lengths (B,). Returns (B, L, heads, D), zeros at padding queries.

  ``jax.nn.dot_product_attention`` gets cuDNN's kernel on a GPU and XLA's elsewhere. An empty row
  still gives its kernel one query and one key (padding tokens; a kernel may answer an empty key
  set with NaN, which pooling's multiply by 0 would spread); its outputs are zeroed like all
  padding queries."""
  impl = 'cudnn' if jax.default_backend() == 'gpu' else 'xla'
  at_least_one = jnp.maximum(lengths, 1)
  out = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=at_least_one,
                                     key_value_seq_lengths=at_least_one, implementation=impl)
  real = jnp.arange(q.shape[1])[None, :] < lengths[:, None]
  return jnp.where(real[:, :, None, None], out, 0).astype(out.dtype)


class SelfAttention(nn.Module):
  cfg: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic: bool):
    """x: (B, L, H); bias: (B, L, L) additive mask (0 or a large negative), shared by the heads,
    or (B, L) attention groups for blocked attention (``attention_block``), or the fused path's
    (lengths (B,),) for right-padded rows."""
    cfg = self.cfg
    b, l, _ = x.shape
    heads = cfg.num_attention_heads
    head_dim = cfg.head_size
    h = heads * head_dim  # the attention width (hidden_size unless heads were pruned)
    if isinstance(bias, tuple):  # the fused path: (B, L, heads, D), the layout it takes
      per_head = lambda t: t.reshape(b, l, heads, head_dim)
      q, k, v = (per_head(_dense(h, cfg, name)(x)) for name in ('query', 'key', 'value'))
      return _attend_fused(q, k, v, *bias).reshape(b, l, h)
    # (B, heads, L, D): heads as a batch dimension, so both attention matmuls are plain batched
    # matmuls. (One fused QKV matmul was measured no faster on XLA CPU, and concatenating the three
    # kernels costs a copy per call; the HF per-projection layout stays.)
    split = lambda t: t.reshape(b, l, heads, head_dim).transpose(0, 2, 1, 3)
    # Scaling q (L x D) is cheaper than scaling the logits (L x L).
    q = split(_dense(h, cfg, 'query')(x)) * jnp.asarray(1.0 / head_dim ** 0.5, cfg.compute_dtype)
    k = split(_dense(h, cfg, 'key')(x))
    v = split(_dense(h, cfg, 'value')(x))
    dropout = None
    if not deterministic and cfg.attention_probs_dropout_prob > 0:
      drop = nn.Dropout(cfg.attention_probs_dropout_prob)
      dropout = lambda p: drop(p, deterministic=False)
    if bias.ndim == 2:  # blocked: (B, L) groups, built into a bias block by block
      out = _attend_blocked(q, k, v, bias, cfg.attention_block)
    else:
      out = _attend(q, k, v, bias, dropout)
    return out.transpose(0, 2, 1, 3).reshape(b, l, h)


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
  """Additive attention bias (B, L, L): 0 where a query may attend to a key, else -1e30.

  attention_mask: (B, L) 1 for tokens, 0 for padding. segment_ids: optional (B, L) packed-row
  segment numbers; when given, a token attends only within its own segment. Padding queries attend
  to the padding keys, so no softmax is over an empty set (their outputs are ignored by pooling).
  Computed once per forward and shared by every layer and head: on CPU, adding it to the logits
  costs less than re-deriving the mask per layer with a select.
  """
  segments = jnp.where(attention_mask.astype(bool), 1 if segment_ids is None else segment_ids, 0)
  return jnp.where(segments[:, :, None] == segments[:, None, :], 0.0, -1e30).astype(jnp.float32)


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
    if l > cfg.max_positions:
      raise ValueError(f'sequence length {l} exceeds the {cfg.max_positions} positions of the model '
                       f'(max_position_embeddings {cfg.max_position_embeddings})')
    if position_ids is None:
      position_ids = jnp.broadcast_to(jnp.arange(l, dtype=input_ids.dtype), input_ids.shape)
    if cfg.position_offset:
      position_ids = position_ids + cfg.position_offset

    init = nn.initializers.normal(0.02)
    width = cfg.embedding_width
    emb = nn.Embed(cfg.vocab_size, width, embedding_init=init, name='word_embeddings')
    pos = nn.Embed(cfg.max_position_embeddings, width, embedding_init=init,
                   name='position_embeddings')
    # mode='clip' clamps the (B, L) ids instead of NaN-filling rows of the (B, L, H) output for
    # out-of-range ids (jnp.take's default), which costs a select over the whole output. Without
    # token_type_ids every token has type 0: add that row instead of gathering it B x L times.
    take = lambda table, ids: jnp.take(table.embedding, ids, axis=0, mode='clip')
    x = take(emb, input_ids) + take(pos, position_ids)
    if cfg.type_vocab_size:
      typ = nn.Embed(cfg.type_vocab_size, width, embedding_init=init, name='token_type_embeddings')
      x = x + (typ.embedding[0] if token_type_ids is None else take(typ, token_type_ids))
    x = _layer_norm(cfg, 'embeddings_LayerNorm')(x)
    x = nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic).astype(cfg.compute_dtype)
    if width != cfg.hidden_size:
      x = _dense(cfg.hidden_size, cfg, 'embeddings_project')(x)

    blocked = bool(cfg.attention_block and l > cfg.attention_block and deterministic)
    path = attention_path(cfg, packed=segment_ids is not None, blocked=blocked,
                          dropout=not deterministic and cfg.attention_probs_dropout_prob > 0)
    if blocked:
      # (B, L) groups instead of the (B, L, L) bias: each query block builds its own
      bias = jnp.where(attention_mask.astype(bool), 1 if segment_ids is None else segment_ids, 0)
    elif path == 'cudnn':  # right-padded rows (real tokens moved first), padding as lengths
      order, lengths = real_tokens_first(attention_mask)
      embedded = x
      x = jnp.take_along_axis(x, order[..., None], axis=1)
      bias = (lengths,)
    else:
      bias = attention_bias(attention_mask, segment_ids)
    out = apply_layers(self, lambda **kw: Layer(cfg, **kw), cfg.num_hidden_layers,
                       lambda i: f'layer_{i}', x, (bias, deterministic), policy=cfg.remat,
                       dropout=not deterministic, keep_states=output_hidden_states)
    if path == 'cudnn':  # every state back to its token's place
      back = jnp.argsort(order, axis=1)[..., None]
      put_back = lambda t: jnp.take_along_axis(t, back, axis=1)
      if output_hidden_states:
        last, states = out
        return put_back(last), (embedded, *(put_back(t) for t in states))
      return put_back(out)
    if output_hidden_states:
      last, states = out
      return last, (x, *states)
    return out
