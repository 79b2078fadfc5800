"""Binary quantization: one bit per dimension, packed eight to a byte (or 32 to a word).

``binary`` and ``ubinary`` are exactly sentence-transformers' ``quantize_embeddings``:
bit = x > threshold (threshold 0 unless fitted with ``centered``), packed with ``np.packbits``
semantics (first dimension in the most significant bit, the last byte zero-padded), and stored
as uint8 (``ubinary``) or as int8 = packed - 128 (``binary``). Both hold the same bits; Hamming
distances are identical (the -128 offset flips the top bit of every byte of both operands).

``decode`` gives the +-1 vector (bit 1 -> +1, 0 -> -1). ``score`` is the asymmetric
float-query-vs-binary-doc inner product q . (2b - 1); for a fixed query it ranks documents exactly
like sentence-transformers' rescoring q . b, since q . (2b - 1) = 2 q . b - sum(q).
Symmetric search (query binarised too) is Hamming distance: ``embedjax.search.hamming``.

``binary_centered`` subtracts the per-dimension calibration mean before the sign: embedding
spaces are anisotropic (all coordinates share a common offset), and a zero threshold wastes bits
on that offset.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

from embedjax.quant.base import Quantizer, check_calibration, dim_of, dot_scores


def pack_bits(bits) -> jax.Array:
  """(..., D) bool -> (..., ceil(D / 8)) uint8, np.packbits(axis=-1) layout (big-endian bits)."""
  return jnp.packbits(jnp.asarray(bits, jnp.bool_), axis=-1)


def as_uint8(codes) -> jax.Array:
  """Packed codes as uint8: sentence-transformers' int8 'binary' codes are packed - 128."""
  codes = jnp.asarray(codes)
  if codes.dtype == jnp.int8:
    return (codes.astype(jnp.int16) + 128).astype(jnp.uint8)
  if codes.dtype != jnp.uint8:
    raise TypeError(f'packed codes must be uint8 or int8, got {codes.dtype}')
  return codes


def unpack_bits(packed, dim: int) -> jax.Array:
  """(..., W) uint8/int8 packed -> (..., dim) uint8 in {0, 1}; inverse of ``pack_bits``."""
  p = as_uint8(packed)
  if not 0 < dim <= 8 * p.shape[-1]:
    raise ValueError(f'dim {dim} does not fit {p.shape[-1]} bytes')
  return jnp.unpackbits(p, axis=-1, count=dim)


def unpack_signs(packed, dim: int, dtype=jnp.float32) -> jax.Array:
  """(..., W) packed -> (..., dim) +-1 of ``dtype`` (bit 1 -> +1)."""
  return unpack_bits(packed, dim).astype(dtype) * 2 - 1


def bytes_to_words(packed) -> jax.Array:
  """(..., W) uint8/int8 -> (..., ceil(W / 4)) uint32, zero-padded; for word-wise popcount.

  The byte order inside a word is the machine's (bitcast); Hamming distances do not depend on it,
  and ``words_to_bytes`` inverts it exactly.
  """
  p = as_uint8(packed)
  w = p.shape[-1]
  pad = (-w) % 4
  if pad:
    p = jnp.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, pad)])
  return jax.lax.bitcast_convert_type(p.reshape(*p.shape[:-1], -1, 4), jnp.uint32)


def words_to_bytes(words, num_bytes: int) -> jax.Array:
  """(..., ceil(W / 4)) uint32 -> (..., num_bytes) uint8; inverse of ``bytes_to_words``."""
  words = jnp.asarray(words, jnp.uint32)
  b = jax.lax.bitcast_convert_type(words, jnp.uint8)  # (..., n, 4)
  return b.reshape(*words.shape[:-1], -1)[..., :num_bytes]


def popcount_hamming(a, b) -> jax.Array:
  """All-pairs Hamming distances by XOR + popcount: (A, W) x (B, W) packed -> (A, B) int32.

  The reference definition; it materialises (A, B, W) so it is meant for small inputs.
  ``embedjax.search.hamming`` searches large corpora.
  """
  wa, wb = bytes_to_words(a), bytes_to_words(b)
  chex.assert_equal_shape_suffix([wa, wb], 1)
  x = jnp.bitwise_xor(wa[:, None, :], wb[None, :, :])
  return jnp.sum(jax.lax.population_count(x).astype(jnp.int32), axis=-1)


@struct.dataclass
class BinaryParams:
  """threshold: (D,) float32; bit d is x[d] > threshold[d]."""
  threshold: jax.Array


def _make_binary(name: str, signed: bool, centered: bool) -> Quantizer:

  def fit(calibration, key=None) -> BinaryParams:
    """calibration (N, D): only its mean matters (centered) or only its width (otherwise)."""
    del key
    x = check_calibration(calibration)
    t = jnp.mean(x, axis=0) if centered else jnp.zeros((x.shape[1],), jnp.float32)
    return BinaryParams(threshold=t)

  def encode(params: BinaryParams, x) -> jax.Array:
    """(N, D) float -> (N, ceil(D / 8)) packed bits, int8 (binary) or uint8 (ubinary)."""
    x = jnp.asarray(x, jnp.float32)
    chex.assert_shape(x, (None, params.threshold.shape[0]))
    packed = pack_bits(x > params.threshold)
    if signed:
      return (packed.astype(jnp.int16) - 128).astype(jnp.int8)
    return packed

  def decode(params: BinaryParams, codes) -> jax.Array:
    """(N, W) packed -> (N, D) float32 +-1."""
    return unpack_signs(codes, params.threshold.shape[0])

  def score_prepared(params: BinaryParams, queries, codes) -> jax.Array:
    """(Q, D) float32 queries x (N, W) packed docs -> (Q, N) q . (2b - 1)."""
    return dot_scores(queries, decode(params, codes))

  def bytes_per_vector(params_or_dim) -> int:
    return -(-dim_of(params_or_dim, lambda p: p.threshold.shape[0]) // 8)

  return Quantizer(name=name, fit=fit, encode=jax.jit(encode), decode=jax.jit(decode),
                   score_prepared=jax.jit(score_prepared), bytes_per_vector=bytes_per_vector)


binary = _make_binary('binary', signed=True, centered=False)
ubinary = _make_binary('ubinary', signed=False, centered=False)
binary_centered = _make_binary('binary_centered', signed=False, centered=True)

BINARY_QUANTIZERS = {q.name: q for q in (binary, ubinary, binary_centered)}
