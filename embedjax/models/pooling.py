"""Pooling token states into one vector per text, for padded and for packed rows.

Everything is expressed over *segments*: ``segment_ids`` (B, L) numbers the texts in a row 1..S and
marks padding 0. An ordinary padded batch is the special case S = 1 with ``segment_ids`` equal to
the attention mask, so one code path serves both layouts and they agree by construction.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

POOLING_MODES = ('cls', 'mean', 'max', 'weighted_mean', 'last_token', 'mean_sqrt_len')


def pool_segments(hidden: jax.Array, segment_ids: jax.Array, num_segments: int,
                  mode: str = 'mean', pool_mask: jax.Array | None = None) -> jax.Array:
  """Pools each segment of each row.

  Args:
    hidden: (B, L, H) token states.
    segment_ids: (B, L) int, 1..num_segments for tokens of each text, 0 for padding. Tokens of a
      segment must be contiguous and in order (as the packer and tokenizer produce them).
    num_segments: S, the static number of segment slots per row.
    mode: one of POOLING_MODES. 'weighted_mean' weights token i (0-based, within its text) by
      i + 1 (SGPT's position-weighted mean); 'last_token' takes each text's final token;
      'mean_sqrt_len' is the sum over sqrt(token count) (sentence-transformers'
      mean_sqrt_len_tokens).
    pool_mask: optional (B, L), 0 for tokens that are attended to but not pooled (a prompt that
      sentence-transformers' ``include_prompt=False`` leaves out). 'cls' / 'last_token' then take
      the first / last pooled token, and 'weighted_mean' keeps each token's position in its text
      (as sentence-transformers does).
  Returns:
    (B, S, H) float32 pooled vectors; empty slots are zeros.
  """
  chex.assert_rank(hidden, 3)
  chex.assert_rank(segment_ids, 2)
  if mode not in POOLING_MODES:
    raise ValueError(f'pooling mode {mode!r} is not one of {POOLING_MODES}')
  hidden = hidden.astype(jnp.float32)
  # one_hot[b, l, s] = token l of row b belongs to segment s + 1 (padding maps to no slot).
  one_hot = jax.nn.one_hot(segment_ids - 1, num_segments, dtype=jnp.float32)
  # Position of each token within its segment: running count of earlier tokens of that segment.
  position = jnp.cumsum(one_hot, axis=1) - one_hot              # (B, L, S)
  if pool_mask is not None:
    chex.assert_equal_shape([segment_ids, pool_mask])
    one_hot = one_hot * pool_mask.astype(jnp.float32)[..., None]

  if mode == 'max':
    masked = jnp.where(one_hot[..., None] > 0, hidden[:, :, None, :], -jnp.inf)  # (B, L, S, H)
    pooled = masked.max(axis=1)
    return jnp.where(jnp.isfinite(pooled), pooled, 0.0)

  if mode == 'weighted_mean':
    weights = one_hot * (position + 1.0)
  elif mode in ('mean', 'mean_sqrt_len'):
    weights = one_hot
  else:
    # First / last of the pooled tokens (all of a segment's tokens without a pool mask).
    pooled_position = position if pool_mask is None else jnp.cumsum(one_hot, axis=1) - one_hot
    if mode == 'cls':
      weights = one_hot * (pooled_position == 0)
    else:  # last_token
      weights = one_hot * (pooled_position == one_hot.sum(axis=1, keepdims=True) - 1)
  total = weights.sum(axis=1)                                    # (B, S)
  summed = jnp.einsum('bls,blh->bsh', weights, hidden)
  if mode == 'mean_sqrt_len':
    return summed / jnp.sqrt(jnp.maximum(total, 1e-9))[..., None]
  return summed / jnp.maximum(total, 1e-9)[..., None]


def pool(hidden: jax.Array, attention_mask: jax.Array, mode: str = 'mean',
         pool_mask: jax.Array | None = None) -> jax.Array:
  """Pools a padded batch: hidden (B, L, H), attention_mask (B, L) -> (B, H)."""
  chex.assert_rank(attention_mask, 2)
  return pool_segments(hidden, attention_mask.astype(jnp.int32), 1, mode, pool_mask)[:, 0]
