"""Pure embedding functions: token ids -> encoder -> pooling -> Dense layers -> L2 normalisation.

The model's params pytree is the encoder's tree; a model with Dense layers after pooling (a
sentence-transformers ``Dense`` module) carries them beside it under ``dense_0``, ``dense_1``, ...,
so one pytree holds everything that is trained, checkpointed and exported.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embedjax.models.bert import BertEncoder
from embedjax.models.latent_attention import latent_attention_pool_segments
from embedjax.models.pooling import pool_segments
from embedjax.models.spec import DenseSpec, EmbedderSpec
from embedjax.ops import l2_normalize

_DENSE_ACTIVATIONS = {
    'identity': lambda x: x,
    'tanh': jnp.tanh,
    'relu': jax.nn.relu,
    # torch.nn.GELU's default is the exact erf form.
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'sigmoid': jax.nn.sigmoid,
    'silu': jax.nn.silu,
}


def dense_key(i: int) -> str:
  """Name of the i-th Dense layer's params in the model pytree."""
  return f'dense_{i}'


LATENT_KEY = 'latent_attention'  # the latent-attention pooling's params in the model pytree


def split_params(params, spec: EmbedderSpec):
  """(backbone params, [Dense params...]) of a model pytree (without the pooling's params)."""
  keys = [dense_key(i) for i in range(len(spec.dense))]
  missing = [k for k in keys if k not in params]
  if spec.pooling == 'latent_attention' and LATENT_KEY not in params:
    missing.append(LATENT_KEY)
  if missing:
    raise KeyError(f'params have no {missing} for the {len(keys)} Dense layer(s) / pooling of the '
                   'spec (initialise them with embedjax.models.pretrained.init_model_params)')
  encoder = {k: v for k, v in params.items() if k not in keys and k != LATENT_KEY}
  return encoder, [params[k] for k in keys]


def apply_dense(params, layer: DenseSpec, x: jax.Array) -> jax.Array:
  """One Dense layer: x (B, ..., in_features) -> (B, ..., out_features), float32."""
  y = jnp.dot(x, params['kernel'], precision=jax.lax.Precision.HIGHEST)
  if layer.bias:
    y = y + params['bias']
  return _DENSE_ACTIVATIONS[layer.activation](y)


def init_dense(layer: DenseSpec, key: jax.Array) -> dict:
  """Fresh Dense params: torch.nn.Linear's uniform(-1/sqrt(in), 1/sqrt(in)) init."""
  bound = 1.0 / layer.in_features ** 0.5
  k_kernel, k_bias = jax.random.split(key)
  params = {'kernel': jax.random.uniform(k_kernel, (layer.in_features, layer.out_features),
                                         jnp.float32, -bound, bound)}
  if layer.bias:
    params['bias'] = jax.random.uniform(k_bias, (layer.out_features,), jnp.float32, -bound, bound)
  return params


def embed_packed(params, spec: EmbedderSpec, input_ids: jax.Array, segment_ids: jax.Array,
                 position_ids: jax.Array, num_segments: int, *, prompt_length: int = 0,
                 deterministic: bool = True, dropout_key: jax.Array | None = None) -> jax.Array:
  """Embeds packed rows: (B, L) ids / segment ids (1..S, 0 = pad) / positions -> (B, S, D) float32.

  D is ``spec.embedding_dim``. With one text per row (segment_ids = attention mask, positions =
  arange) this is the ordinary padded computation; see ``embed``. ``prompt_length``: each text
  starts with this many prompt tokens, left out of pooling when ``spec.include_prompt`` is False.
  """
  hidden = hidden_states(params, spec, input_ids, segment_ids, position_ids, num_segments,
                         deterministic=deterministic, dropout_key=dropout_key)
  pool_mask = None
  if prompt_length and not spec.include_prompt:
    pool_mask = position_ids >= prompt_length
  return embedding_head(params, spec, hidden, segment_ids, num_segments, pool_mask)


def hidden_states(params, spec: EmbedderSpec, input_ids: jax.Array, segment_ids: jax.Array,
                  position_ids: jax.Array, num_segments: int, *, deterministic: bool = True,
                  dropout_key: jax.Array | None = None) -> jax.Array:
  """The backbone alone: (B, L) ids / segment ids / positions -> (B, L, H) last token states
  (what pooling reads, and what late interaction projects token by token)."""
  encoder_params, _ = split_params(params, spec)
  if spec.decoder is not None:
    from embedjax.models.decoder import Decoder  # lazily: BERT paths never load the decoder
    # Decoder LLMs are trained without dropout; rows are right-padded or packed here. A training
    # step's key reaches the decoder as its 'positions' stream: learned position scaling (CLEX)
    # samples a scale factor per step from it, and is deterministic without one.
    rngs = None if dropout_key is None else {'positions': dropout_key}
    return Decoder(spec.decoder).apply({'params': encoder_params}, input_ids, segment_ids,
                                       position_ids, packed=num_segments > 1, rngs=rngs)
  rngs = None if deterministic else {'dropout': dropout_key}
  # One text per row: its segment ids are the attention mask, and without them the encoder may
  # take the fused attention kernel (embedjax.models.bert.attention_path) for right-padded rows.
  return BertEncoder(spec.bert).apply(
      {'params': encoder_params}, input_ids, (segment_ids > 0).astype(jnp.int32),
      position_ids=position_ids, segment_ids=segment_ids if num_segments > 1 else None,
      deterministic=deterministic, rngs=rngs)


def embedding_head(params, spec: EmbedderSpec, hidden: jax.Array, segment_ids: jax.Array,
                   num_segments: int, pool_mask: jax.Array | None = None) -> jax.Array:
  """The model after its backbone: pooling -> Dense layers -> normalisation.

  Args:
    params: the model pytree (its Dense and latent-attention params are read here).
    hidden: (B, L, H) token states; segment_ids: (B, L) ints, 1..S per text, 0 = padding.
    num_segments: S, the static number of texts per row.
    pool_mask: optional (B, L) bool, False for tokens left out of pooling (an excluded prompt).
  Returns:
    (B, S, D) float32 embeddings, D = ``spec.embedding_dim``.

  One function for ``embed_packed`` and ``layerwise.embed_layers`` (which applies it to every
  hidden state), so a state embedded as "the last one" goes through exactly the ordinary ops.
  """
  _, dense_params = split_params(params, spec)
  if spec.pooling == 'latent_attention':
    out = latent_attention_pool_segments(params[LATENT_KEY], hidden, segment_ids, num_segments,
                                         pool_mask, num_heads=spec.latent_heads)
  else:
    out = pool_segments(hidden, segment_ids, num_segments, spec.pooling, pool_mask)
  for layer, layer_params in zip(spec.dense, dense_params):
    out = apply_dense(layer_params, layer, out)
  return l2_normalize(out) if spec.normalize else out


def embed(params, spec: EmbedderSpec, input_ids: jax.Array, attention_mask: jax.Array, *,
          prompt_length: int = 0, deterministic: bool = True,
          dropout_key: jax.Array | None = None) -> jax.Array:
  """Embeds a right-padded batch: (B, L) ids and mask -> (B, D) float32."""
  positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
  out = embed_packed(params, spec, input_ids, attention_mask.astype(jnp.int32), positions, 1,
                     prompt_length=prompt_length, deterministic=deterministic,
                     dropout_key=dropout_key)
  return out[:, 0]


def auxiliary_loss(encoder_params, spec: EmbedderSpec, key: jax.Array):
  """The backbone's own training regulariser (a scalar), or None when it has none (every BERT
  backbone: the train step then adds nothing). A decoder's comes from
  :func:`embedjax.models.decoder.auxiliary_loss` (e.g. SeqPE's position-encoder losses)."""
  if spec.decoder is None:
    return None
  from embedjax.models.decoder import auxiliary_loss as decoder_auxiliary_loss
  return decoder_auxiliary_loss(encoder_params, spec.decoder, key)
