"""Per-layer sentence embeddings: the model's head applied to every hidden state of the backbone.

What sentence-transformers' ``AdaptiveLayerLoss`` / ``Matryoshka2dLoss`` train on: one forward of
the backbone keeps all its hidden states (HF's ``output_hidden_states``: the embedding output, then
each layer's output), and the *whole* rest of the model (pooling, every Dense layer, Normalize) is
applied to each state as if it were the last one. Nothing else is added to an intermediate state:
a BERT-family encoder has no final LayerNorm, and a decoder's final RMSNorm stays on the last state
only (transformers returns the intermediate states before it, and sentence-transformers pools them
as they are).
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp

from embedjax.models.bert import BertEncoder
from embedjax.models.embedder import embedding_head, split_params
from embedjax.models.spec import EmbedderSpec


def num_states(spec: EmbedderSpec) -> int:
  """How many hidden states the backbone has: num_hidden_layers + 1 (the embedding output first)."""
  return spec.backbone.num_hidden_layers + 1


def _layer_indices(spec: EmbedderSpec, layers: Sequence[int] | None) -> list[int]:
  n = num_states(spec)
  if layers is None:
    return list(range(n))
  out = []
  for i in layers:
    i = int(i)
    if not -n <= i < n:
      raise ValueError(f'layer {i} is out of range for the {n} hidden states of the model '
                       f'(0 = embedding output, {n - 1} = last layer)')
    out.append(i % n)
  if not out:
    raise ValueError('layers is empty')
  return out


def embed_layers(params, spec: EmbedderSpec, input_ids: jax.Array, attention_mask: jax.Array, *,
                 layers: Sequence[int] | None = None, prompt_length: int = 0,
                 deterministic: bool = True, dropout_key: jax.Array | None = None) -> jax.Array:
  """Embeds a right-padded batch at several depths: (B, L) ids and mask -> (n_layers, B, D) float32.

  Args:
    params, spec: the model (as for ``embedjax.models.embedder.embed``).
    input_ids, attention_mask: (B, L) ints, right-padded, one text per row.
    layers: which hidden states (static ints, negative counts from the end): 0 is the embedding
      output, ``num_states(spec) - 1`` (or -1) the last layer. None: all of them, in order.
    prompt_length, deterministic, dropout_key: as for ``embed``. With dropout on, all states come
      from the one forward (as sentence-transformers caches them), so they share its masks.
  Returns:
    (n_layers, B, D) with D = ``spec.embedding_dim``; the entry of the last state equals
    ``embed(params, spec, input_ids, attention_mask)``.
  """
  chex.assert_rank([input_ids, attention_mask], 2)
  chex.assert_equal_shape([input_ids, attention_mask])
  indices = _layer_indices(spec, layers)
  encoder_params, _ = split_params(params, spec)
  segment_ids = attention_mask.astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
  # The same backbone call as embed_packed with one segment per row.
  if spec.decoder is not None:
    from embedjax.models.decoder import Decoder  # lazily: BERT paths never load the decoder
    _, states = Decoder(spec.decoder).apply({'params': encoder_params}, input_ids, segment_ids,
                                            positions, output_hidden_states=True)
  else:
    rngs = None if deterministic else {'dropout': dropout_key}
    _, states = BertEncoder(spec.bert).apply(
        {'params': encoder_params}, input_ids, segment_ids, position_ids=positions,
        deterministic=deterministic, rngs=rngs, output_hidden_states=True)  # one text per row
  pool_mask = None
  if prompt_length and not spec.include_prompt:
    pool_mask = positions >= prompt_length
  # The same head as embed_packed's, per state (no vmap over a stacked copy of the states), so the
  # last state's embedding is the ordinary one exactly.
  return jnp.stack([embedding_head(params, spec, states[i], segment_ids, 1, pool_mask)[:, 0]
                    for i in indices])
