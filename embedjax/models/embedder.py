"""Pure embedding functions: token ids -> encoder -> pooling -> (optional) L2 normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embedjax.models.bert import BertEncoder
from embedjax.models.pooling import pool_segments
from embedjax.models.spec import EmbedderSpec
from embedjax.ops import l2_normalize


def embed_packed(params, spec: EmbedderSpec, input_ids: jax.Array, segment_ids: jax.Array,
                 position_ids: jax.Array, num_segments: int, *, deterministic: bool = True,
                 dropout_key: jax.Array | None = None) -> jax.Array:
  """Embeds packed rows: (B, L) ids / segment ids (1..S, 0 = pad) / positions -> (B, S, H) float32.

  With one text per row (segment_ids = attention mask, positions = arange) this is the ordinary
  padded computation; see ``embed``.
  """
  encoder = BertEncoder(spec.bert)
  rngs = None if deterministic else {'dropout': dropout_key}
  hidden = encoder.apply({'params': params}, input_ids, (segment_ids > 0).astype(jnp.int32),
                         position_ids=position_ids, segment_ids=segment_ids,
                         deterministic=deterministic, rngs=rngs)
  pooled = pool_segments(hidden, segment_ids, num_segments, spec.pooling)
  return l2_normalize(pooled) if spec.normalize else pooled


def embed(params, spec: EmbedderSpec, input_ids: jax.Array, attention_mask: jax.Array, *,
          deterministic: bool = True, dropout_key: jax.Array | None = None) -> jax.Array:
  """Embeds a right-padded batch: (B, L) ids and mask -> (B, H) float32."""
  positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
  out = embed_packed(params, spec, input_ids, attention_mask.astype(jnp.int32), positions, 1,
                     deterministic=deterministic, dropout_key=dropout_key)
  return out[:, 0]
