"""SelfExtend (Jin et al. 2024, "LLM Maybe LongLM"): training-free context extension of rotary
attention. Tokens closer than ``window`` attend with their ordinary positions (neighbour
attention); farther ones with grouped positions ``p // group``, the query's shifted by
``window - window // group`` so that the two regimes meet at the window's edge. Distances the model
never saw in training are thus folded back into the range it knows.

The paper defines it for causal attention (keys before the query). For bidirectional embedders a
key after the query gets the mirrored shift (``- (window - window // group)``), so that grouped
distances are symmetric too. With every distance inside the window (an input shorter than it) this
is plain rotary attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from embedjax.models.rope import apply_rope


def self_extend_attention(q: jax.Array, k: jax.Array, v: jax.Array, positions: jax.Array,
                          mask: jax.Array, inv_freq, scaling: float, *, group: int,
                          window: int) -> jax.Array:
  """Attention with SelfExtend's merged neighbour / grouped logits.

  Args:
    q: (B, L, N, D) queries, before the rotation. k, v: (B, L, K, D) (K divides N: grouped-query
      attention, as jax.nn.dot_product_attention), k before the rotation.
    positions: (B, L) int positions. mask: (B, 1, L, L) bool, True where a query may attend.
    inv_freq, scaling: the rotary table (embedjax.models.rope).
    group, window: SelfExtend's group size and neighbour window (tokens).
  Returns:
    (B, L, N, D) in q's dtype.
  """
  b, l, n, d = q.shape
  kh = k.shape[2]
  shift = window - window // group
  rot = lambda x, p: apply_rope(x, p, inv_freq, scaling)
  grouped = positions // group
  k_near, k_far = rot(k, positions), rot(k, grouped)
  # (B, K, N/K, L, D) query groups against (B, K, L, D) keys
  split = lambda x: x.reshape(b, l, kh, n // kh, d).transpose(0, 2, 3, 1, 4)
  keys = lambda x: x.transpose(0, 2, 1, 3)
  logits = lambda qq, kk: jnp.einsum('bkgqd,bkld->bkgql', split(qq), keys(kk)).astype(jnp.float32)
  near = logits(rot(q, positions), k_near)
  far_before = logits(rot(q, grouped + shift), k_far)   # key before the query
  far_after = logits(rot(q, grouped - shift), k_far)    # key after it (bidirectional)
  dist = (positions[:, :, None] - positions[:, None, :])[:, None, None]  # (B, 1, 1, L, L)
  merged = jnp.where(jnp.abs(dist) < window, near, jnp.where(dist > 0, far_before, far_after))
  merged = merged / jnp.sqrt(jnp.float32(d))
  merged = jnp.where(mask[:, :, None], merged, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(merged, axis=-1)
  out = jnp.einsum('bkgql,bkld->bkgqd', weights.astype(v.dtype), keys(v))
  return out.transpose(0, 3, 1, 2, 4).reshape(b, l, n, d).astype(q.dtype)
