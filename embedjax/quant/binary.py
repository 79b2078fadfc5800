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

Example: four dimensions, bits x > 0 in the top bits of one byte (as ``np.packbits``).

>>> import numpy as np
>>> x = np.array([[0.3, -0.1, 0.0, 2.0], [-0.3, 0.1, 0.2, -2.0]], np.float32)
>>> params = ubinary.fit(x)
>>> ubinary.encode(params, x).tolist(), np.packbits(x > 0, axis=-1).tolist()
([[144], [96]], [[144], [96]])
>>> binary.encode(params, x).tolist()  # the same bits, as int8 = packed - 128
[[16], [-32]]
>>> ubinary.decode(params, ubinary.encode(params, x)).tolist()
[[1.0, -1.0, -1.0, 1.0], [-1.0, 1.0, 1.0, -1.0]]
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

from embedjax.ops import bytes_to_words, pack_bits, unpack_signs
from embedjax.quant.base import Quantizer, check_calibration, dim_of, dot_scores


def popcount_hamming(a, b) -> jax.Array:
  """All-pairs Hamming distances by XOR + popcount: (A, W) x (B, W) packed -> (A, B) int32.

  The reference definition; it materialises (A, B, W) so it is meant for small inputs.
  ``embedjax.search.hamming`` searches large corpora.

  >>> import numpy as np
  >>> a = np.packbits(np.array([[1, 0, 1, 1], [0, 0, 0, 0]], bool), axis=-1)
  >>> popcount_hamming(a, a).tolist()
  [[0, 3], [3, 0]]
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
