"""Token-level embeddings for late interaction (ColBERT): any embedjax encoder's last token states
through a linear projection, L2-normalised token by token.

  head = init_head(key, hidden_size, dim)                # {'kernel': (H, dim)}, no bias
  vecs = token_embeddings(params, head, spec, ids, mask) # (B, L, dim) float32
  ids, mask = augment_queries(ids, mask, length, mask_token_id)
  mask = drop_tokens(ids, mask, skip_ids)                # e.g. punctuation (ColBERT's skiplist)
  mask = keep_top_tokens(mask, importance, m)            # document token pruning

The projection is ColBERT's ``linear`` (768 -> 128 in the paper, no bias); MaxSim over the
vectors is ``embedjax.search.multivector``. Query augmentation (ColBERT section 3.2): a query is
padded to a fixed length with [MASK] tokens instead of padding, and those positions are encoded
and scored like the others (the model learns to use them for query expansion), so its mask becomes
all ones. Vectors at masked positions are set to 0 (they are never scored: MaxSim reads the mask).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from embedjax.models.embedder import hidden_states
from embedjax.models.spec import EmbedderSpec
from embedjax.ops import l2_normalize


def init_head(key: jax.Array, hidden_size: int, dim: int) -> dict:
  """A fresh projection: torch.nn.Linear's uniform(-1/sqrt(H), 1/sqrt(H)) init, no bias."""
  bound = 1.0 / hidden_size ** 0.5
  return {'kernel': jax.random.uniform(key, (hidden_size, dim), jnp.float32, -bound, bound)}


def token_embeddings(params, head: dict, spec: EmbedderSpec, input_ids: jax.Array,
                     attention_mask: jax.Array, *, deterministic: bool = True,
                     dropout_key: jax.Array | None = None) -> jax.Array:
  """(B, L) right-padded ids and mask -> (B, L, dim) unit token vectors (0 where mask is 0).

  ``params``: the encoder model's pytree (its pooling and Dense layers are not used here).
  """
  chex.assert_rank([input_ids, attention_mask], 2)
  positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
  hidden = hidden_states(params, spec, input_ids, attention_mask.astype(jnp.int32), positions, 1,
                         deterministic=deterministic, dropout_key=dropout_key)
  vecs = jnp.dot(hidden.astype(jnp.float32), head['kernel'], precision=jax.lax.Precision.HIGHEST)
  return jnp.where(attention_mask[..., None] != 0, l2_normalize(vecs), 0.0)


def augment_queries(input_ids: jax.Array, attention_mask: jax.Array, length: int,
                    mask_token_id: int) -> tuple[jax.Array, jax.Array]:
  """ColBERT query augmentation: (B, L) ids / mask -> (B, length) ids with every position after
  the query's tokens set to [MASK], and an all-ones mask. Queries longer than ``length`` are
  refused (cut them at tokenization, where the caller can count them)."""
  chex.assert_rank([input_ids, attention_mask], 2)
  b, cur = input_ids.shape
  if cur > length:
    raise ValueError(f'queries are {cur} tokens long but the augmented length is {length}')
  ids = jnp.pad(input_ids, ((0, 0), (0, length - cur)))
  mask = jnp.pad(attention_mask, ((0, 0), (0, length - cur)))
  ids = jnp.where(mask != 0, ids, mask_token_id).astype(input_ids.dtype)
  return ids, jnp.ones((b, length), attention_mask.dtype)


def drop_tokens(input_ids: jax.Array, mask: jax.Array, skip_ids) -> jax.Array:
  """The mask without the tokens whose ids are in ``skip_ids`` (e.g. punctuation)."""
  skip = jnp.isin(input_ids, jnp.asarray(list(skip_ids), input_ids.dtype))
  return jnp.where(skip, 0, mask).astype(mask.dtype)


def keep_top_tokens(mask: jax.Array, importance: jax.Array, m: int) -> jax.Array:
  """Keeps at most ``m`` counted tokens per row, those of largest ``importance`` (B, L) (ties:
  the earlier position). Rows with fewer counted tokens keep them all."""
  chex.assert_equal_shape([mask, importance])
  score = jnp.where(mask != 0, importance.astype(jnp.float32), -jnp.inf)
  m = min(m, mask.shape[1])
  _, top = jax.lax.top_k(score, m)
  kept = jnp.zeros(mask.shape, bool).at[jnp.arange(mask.shape[0])[:, None], top].set(True)
  return jnp.where(kept & (mask != 0), 1, 0).astype(mask.dtype)
