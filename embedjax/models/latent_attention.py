"""NV-Embed's latent-attention pooling as pure functions over a params pytree.

NV-Embed (Lee et al. 2024, "NV-Embed: Improved Techniques for Training LLMs as Generalist
Embedding Models", section 3.2) pools the decoder's last hidden states with a small cross-attention
block whose keys and values come from a trainable latent array. This module follows
``LatentAttentionModel`` of the public NV-Embed-v1/v2 ``modeling_nvembed.py``; the computation, for
token states Q = ``hidden`` (B, L, H) and latents X (r, d), is exactly:

  1. Pre-norm cross-attention with a residual (``cross_attend_blocks[0]``):
       q = LN_q(Q) Wq                       (B, L, h * dh)  LN_q: LayerNorm(H), eps 1e-5, affine
       k, v = split(LN_c(X) Wkv, 2, -1)     (r, h * dh)     LN_c: LayerNorm(d); first half keys
       per head j: O_j = softmax(q_j k_j^T / sqrt(dh)) v_j   (softmax over the r latents)
       A = concat_j(O_j) Wout + Q           (B, L, H)       no biases in Wq / Wkv / Wout
     There is no attention mask: every token attends to all r latents (the reference calls the
     attention with ``mask=None``), and tokens never attend to each other, so a token's output
     depends on that token's state alone.
  2. Pre-norm GEGLU feed-forward with a residual (``cross_attend_blocks[1]``):
       a, g = split(LN_f(A) W1 + b1, 2, -1) (B, L, m * H) each (a the first half, g the gates)
       F = (a * gelu(g)) W2 + b2 + A        gelu is the exact erf form (torch's default)
  3. Mean pooling of F over the pooled tokens (mask 1), then optionally L2 normalisation (the
     reference's ``output_normalize``; off by default here because embedjax's embedder normalises).

Because step 1-2 is per token, packed rows need nothing special: only step 3 changes, and
``latent_attention_pool_segments`` reuses ``pool_segments(..., 'mean')`` for it.

Places where the reference was ambiguous, and what is done here:
  * Dimension naming. The reference builds ``PreNorm(latent_dim, Attention(latent_dim, hidden_dim),
    context_dim=hidden_dim)`` and then passes the token states as the query and the latents as the
    context, i.e. its query-side sizes are named ``latent_dim`` and its context-side sizes
    ``hidden_dim``. That only works when the two are equal (4096 in NV-Embed). Here the query side
    is sized by the token width H and the context side by the latent width d, which is the same
    computation when H == d and the only one that type-checks when they differ.
  * Head width. ``dh`` is the reference's ``cross_dim_head`` (per head, inner width h * dh). The
    public NV-Embed-v2 configuration is believed to use 8 heads of dh = 4096 (inner width 32768):
    the reported 7.85B parameters match Mistral-7B without its LM head (7.11B) plus a 0.74B latent
    block only with that width. This could not be checked against the config file offline, so
    ``init_latent_attention`` defaults to the conventional dh = H / h and takes ``head_dim`` for
    NV-Embed's; ``latent_attention_pool`` reads dh from the params, so imported weights of any
    width work.
  * The empty-mask case (a row with no pooled token) divides 0 by 0 in the reference; here it
    returns zeros (``pool_segments``' convention).

Params pytree (names chosen so NV-Embed weights import by renaming and transposing; see
``params_from_nvembed``). Kernels are (in, out), as Flax ``Dense`` stores them. NV-Embed names are
under ``latent_attention_model.``; ``b0`` / ``b1`` stand for ``cross_attend_blocks.0`` / ``.1``:

  latents                              (r, d)       <- latents
  cross_attn/norm/{scale,bias}         (H,)         <- b0.norm.{weight,bias}
  cross_attn/norm_context/{scale,bias} (d,)         <- b0.norm_context.{weight,bias}
  cross_attn/to_q/kernel               (H, h*dh)    <- b0.fn.to_q.weight, transposed
  cross_attn/to_kv/kernel              (d, 2*h*dh)  <- b0.fn.to_kv.weight, transposed
  cross_attn/to_out/kernel             (h*dh, H)    <- b0.fn.to_out.weight, transposed
  feed_forward/norm/{scale,bias}       (H,)         <- b1.norm.{weight,bias}
  feed_forward/net_0/{kernel,bias}     (H, 2*m*H)   <- b1.fn.net.0.{weight (transposed),bias}
  feed_forward/net_2/{kernel,bias}     (m*H, H)     <- b1.fn.net.2.{weight (transposed),bias}
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from embedjax.models.pooling import pool_segments
from embedjax.ops import l2_normalize

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the reference uses.
NVEMBED_PREFIX = 'latent_attention_model.'

# (params path, NV-Embed state-dict name relative to NVEMBED_PREFIX, transpose?)
_NVEMBED_NAMES = (
    (('latents',), 'latents', False),
    (('cross_attn', 'norm', 'scale'), 'cross_attend_blocks.0.norm.weight', False),
    (('cross_attn', 'norm', 'bias'), 'cross_attend_blocks.0.norm.bias', False),
    (('cross_attn', 'norm_context', 'scale'), 'cross_attend_blocks.0.norm_context.weight', False),
    (('cross_attn', 'norm_context', 'bias'), 'cross_attend_blocks.0.norm_context.bias', False),
    (('cross_attn', 'to_q', 'kernel'), 'cross_attend_blocks.0.fn.to_q.weight', True),
    (('cross_attn', 'to_kv', 'kernel'), 'cross_attend_blocks.0.fn.to_kv.weight', True),
    (('cross_attn', 'to_out', 'kernel'), 'cross_attend_blocks.0.fn.to_out.weight', True),
    (('feed_forward', 'norm', 'scale'), 'cross_attend_blocks.1.norm.weight', False),
    (('feed_forward', 'norm', 'bias'), 'cross_attend_blocks.1.norm.bias', False),
    (('feed_forward', 'net_0', 'kernel'), 'cross_attend_blocks.1.fn.net.0.weight', True),
    (('feed_forward', 'net_0', 'bias'), 'cross_attend_blocks.1.fn.net.0.bias', False),
    (('feed_forward', 'net_2', 'kernel'), 'cross_attend_blocks.1.fn.net.2.weight', True),
    (('feed_forward', 'net_2', 'bias'), 'cross_attend_blocks.1.fn.net.2.bias', False),
)


def _linear(key: jax.Array, fan_in: int, fan_out: int, bias: bool, dtype) -> dict:
  # torch.nn.Linear's default init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
  bound = 1.0 / fan_in ** 0.5
  k_kernel, k_bias = jax.random.split(key)
  out = {'kernel': jax.random.uniform(k_kernel, (fan_in, fan_out), dtype, -bound, bound)}
  if bias:
    out['bias'] = jax.random.uniform(k_bias, (fan_out,), dtype, -bound, bound)
  return out


def _norm(width: int, dtype) -> dict:
  return {'scale': jnp.ones((width,), dtype), 'bias': jnp.zeros((width,), dtype)}


def init_latent_attention(key: jax.Array, hidden_size: int, *, num_latents: int = 512,
                          num_heads: int = 8, head_dim: int | None = None, mlp_ratio: int = 4,
                          latent_dim: int | None = None, param_dtype=jnp.float32) -> dict:
  """Fresh latent-attention params (the reference's init: latents ~ N(0, 1), torch Linear init).

  Args:
    key: PRNG key.
    hidden_size: H, the width of the token states (and of the output).
    num_latents: r, the number of latent vectors (NV-Embed: 512).
    num_heads: h, cross-attention heads (NV-Embed: 8).
    head_dim: dh per head; None means H // h. NV-Embed-v2's ``cross_dim_head`` (see the module
      docstring) is passed here.
    mlp_ratio: m, the GEGLU feed-forward's width multiplier (the reference's ``mult=4``).
    latent_dim: d, the latents' width; None means H (as in NV-Embed).
    param_dtype: dtype of every leaf.
  Returns:
    The params pytree described in the module docstring.
  """
  if head_dim is None:
    if hidden_size % num_heads:
      raise ValueError(f'hidden_size {hidden_size} is not divisible by num_heads {num_heads}; '
                       'pass head_dim')
    head_dim = hidden_size // num_heads
  latent_dim = hidden_size if latent_dim is None else latent_dim
  inner = num_heads * head_dim
  k_lat, k_q, k_kv, k_out, k_ff0, k_ff2 = jax.random.split(key, 6)
  return {
      'latents': jax.random.normal(k_lat, (num_latents, latent_dim), param_dtype),
      'cross_attn': {
          'norm': _norm(hidden_size, param_dtype),
          'norm_context': _norm(latent_dim, param_dtype),
          'to_q': _linear(k_q, hidden_size, inner, False, param_dtype),
          'to_kv': _linear(k_kv, latent_dim, 2 * inner, False, param_dtype),
          'to_out': _linear(k_out, inner, hidden_size, False, param_dtype),
      },
      'feed_forward': {
          'norm': _norm(hidden_size, param_dtype),
          'net_0': _linear(k_ff0, hidden_size, 2 * mlp_ratio * hidden_size, True, param_dtype),
          'net_2': _linear(k_ff2, mlp_ratio * hidden_size, hidden_size, True, param_dtype),
      },
  }


def _layer_norm(x: jax.Array, params: dict, dtype) -> jax.Array:
  # Statistics in float32 whatever the compute dtype (bfloat16 variance loses too much).
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
  y = y * params['scale'].astype(jnp.float32) + params['bias'].astype(jnp.float32)
  return y.astype(dtype)


def _dot(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  # HIGHEST keeps float32 matmuls in float32 on accelerators (no TF32), as apply_dense does.
  return jnp.dot(x, kernel.astype(dtype), precision=jax.lax.Precision.HIGHEST)


def latent_attention_features(params: dict, hidden: jax.Array, *, num_heads: int,
                              compute_dtype=jnp.float32) -> jax.Array:
  """Steps 1-2 of the module docstring: per-token outputs before pooling.

  Args:
    params: the pytree of ``init_latent_attention`` / ``params_from_nvembed``.
    hidden: (B, L, H) token states (any float dtype).
    num_heads: h; the head width is read from the params (inner width / h).
    compute_dtype: dtype of the matmuls and activations (float32 or bfloat16); LayerNorm
      statistics and the softmax are always float32.
  Returns:
    (B, L, H) in ``compute_dtype``.
  """
  chex.assert_rank(hidden, 3)
  attn, ff = params['cross_attn'], params['feed_forward']
  hidden_size = hidden.shape[-1]
  chex.assert_shape(attn['to_q']['kernel'], (hidden_size, None))
  inner = attn['to_q']['kernel'].shape[1]
  if inner % num_heads:
    raise ValueError(f'the attention width {inner} is not divisible by num_heads {num_heads}')
  head_dim = inner // num_heads
  x = hidden.astype(compute_dtype)

  # Cross-attention: the latents' keys and values are the same for every row, so compute them once.
  q = _dot(_layer_norm(x, attn['norm'], compute_dtype), attn['to_q']['kernel'], compute_dtype)
  context = _layer_norm(params['latents'], attn['norm_context'], compute_dtype)
  kv = _dot(context, attn['to_kv']['kernel'], compute_dtype)                 # (r, 2 * inner)
  k, v = kv[:, :inner], kv[:, inner:]
  q = q.reshape(*q.shape[:2], num_heads, head_dim)                           # (B, L, h, dh)
  k = k.reshape(k.shape[0], num_heads, head_dim)                             # (r, h, dh)
  v = v.reshape(v.shape[0], num_heads, head_dim)
  scores = jnp.einsum('blhd,rhd->bhlr', q, k, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32) * head_dim ** -0.5
  probs = jax.nn.softmax(scores, axis=-1).astype(compute_dtype)
  out = jnp.einsum('bhlr,rhd->blhd', probs, v, precision=jax.lax.Precision.HIGHEST)
  out = out.reshape(*out.shape[:2], inner)
  x = _dot(out, attn['to_out']['kernel'], compute_dtype) + x

  # GEGLU feed-forward; the first half of net_0's output is the value, the second the gate.
  h = _dot(_layer_norm(x, ff['norm'], compute_dtype), ff['net_0']['kernel'], compute_dtype)
  h = h + ff['net_0']['bias'].astype(compute_dtype)
  a, gates = jnp.split(h, 2, axis=-1)
  h = a * jax.nn.gelu(gates, approximate=False)  # torch.nn.functional.gelu: the exact erf form
  h = _dot(h, ff['net_2']['kernel'], compute_dtype) + ff['net_2']['bias'].astype(compute_dtype)
  return h + x


def latent_attention_pool_segments(params: dict, hidden: jax.Array, segment_ids: jax.Array,
                                   num_segments: int, pool_mask: jax.Array | None = None, *,
                                   num_heads: int, compute_dtype=jnp.float32,
                                   normalize: bool = False) -> jax.Array:
  """Latent-attention pooling of packed rows.

  Args:
    params, num_heads, compute_dtype: as ``latent_attention_features``.
    hidden: (B, L, H) token states.
    segment_ids: (B, L) int, 1..num_segments per text, 0 for padding (``pool_segments``).
    num_segments: S, static.
    pool_mask: optional (B, L), 0 for tokens left out of the mean (an instruction, as NV-Embed
      does; see ``embedjax.models.prompts.instruction_pool_mask_segments``).
    normalize: L2-normalise each pooled vector (the reference's ``output_normalize``).
  Returns:
    (B, S, H) float32; empty slots are zeros.
  """
  chex.assert_rank(segment_ids, 2)
  chex.assert_equal_shape_prefix([hidden, segment_ids], 2)
  features = latent_attention_features(params, hidden, num_heads=num_heads,
                                       compute_dtype=compute_dtype)
  out = pool_segments(features, segment_ids, num_segments, 'mean', pool_mask)
  return l2_normalize(out) if normalize else out


def latent_attention_pool(params: dict, hidden: jax.Array, mask: jax.Array, *, num_heads: int,
                          compute_dtype=jnp.float32, normalize: bool = False) -> jax.Array:
  """Latent-attention pooling of a padded batch: hidden (B, L, H), mask (B, L) -> (B, H) float32.

  ``mask`` is 1 for the tokens to pool (the reference's ``pool_mask``: the attention mask, with an
  instruction's tokens zeroed when they are excluded). Left or right padding, or any 0/1 pattern,
  is fine: only the final mean looks at it.
  """
  chex.assert_rank(mask, 2)
  # One segment whose ids are the mask; 'mean' does not need the segment to be contiguous.
  return latent_attention_pool_segments(params, hidden, mask.astype(jnp.int32), 1,
                                        num_heads=num_heads, compute_dtype=compute_dtype,
                                        normalize=normalize)[:, 0]


def params_from_nvembed(state: Mapping[str, np.ndarray], prefix: str = NVEMBED_PREFIX) -> dict:
  """Latent-attention params from an NV-Embed state dict (name -> array; torch (out, in) weights).

  Only the latent-attention entries (under ``prefix``) are read; a missing one raises a KeyError
  naming it. Returns numpy leaves (put them on devices as the caller shards them).
  """
  params: dict = {}
  for path, name, transpose in _NVEMBED_NAMES:
    full = prefix + name
    if full not in state:
      raise KeyError(f'NV-Embed state has no {full!r} (latent-attention weights)')
    value = np.asarray(state[full])
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value.T if transpose else value
  return params


def params_to_nvembed(params: dict, prefix: str = NVEMBED_PREFIX) -> dict[str, np.ndarray]:
  """The inverse of ``params_from_nvembed``: NV-Embed state-dict names -> numpy arrays."""
  state = {}
  for path, name, transpose in _NVEMBED_NAMES:
    value = params
    for part in path:
      value = value[part]
    value = np.asarray(value)
    state[prefix + name] = np.ascontiguousarray(value.T) if transpose else value
  return state
