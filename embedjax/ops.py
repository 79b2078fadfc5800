"""Low-level array operations shared by every layer: L2 normalisation and bit packing.

Depends on jax and numpy only, so that models, losses, quant, search, tables and limit can all
import it without reaching upward (DESIGN.md's dependency direction). Each operation lives here
once; the modules that use them import them from here.

Bit packing follows ``np.packbits(bits, axis=-1)``: the first dimension goes to the most
significant bit of the first byte, and the last byte is zero-padded. Packed codes may also come as
sentence-transformers' int8 'binary' codes (packed - 128); ``as_uint8`` maps them back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps) along ``axis`` (``torch.nn.functional.normalize`` semantics).

  A numpy array comes back as numpy (float64 stays float64, nothing goes through the device);
  anything else (jax arrays, tracers, lists) goes through ``jax.numpy``. The result has x's float
  dtype. For dtypes narrower than float32 (bfloat16, float16) the norm is computed in float32 and
  cast back before the division (as sentence-transformers' Matryoshka truncation does); float32
  and float64 inputs are computed in their own dtype. Integer inputs are normalised as float32.

  >>> import numpy as np
  >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))  # a zero row stays zero
  array([[0.6, 0.8],
         [0. , 0. ]])
  >>> y = l2_normalize(jnp.ones((2, 4), jnp.bfloat16))
  >>> y.dtype, y.tolist()
  (dtype(bfloat16), [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
  """
  if isinstance(x, np.ndarray):
    xp = np
  else:
    xp, x = jnp, jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(np.float32)
  wide = x if x.dtype.itemsize >= 4 else x.astype(np.float32)
  norm = xp.maximum(xp.linalg.norm(wide, axis=axis, keepdims=True), eps)
  return x / norm.astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Bit packing


def pack_bits(bits) -> jax.Array:
  """(..., D) bool -> (..., ceil(D / 8)) uint8, np.packbits(axis=-1) layout (big-endian bits).

  >>> import numpy as np
  >>> bits = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1, 1]], bool)
  >>> pack_bits(bits).tolist(), np.packbits(bits, axis=-1).tolist()
  ([[176, 192]], [[176, 192]])
  >>> unpack_bits(pack_bits(bits), 10).tolist()  # the inverse, given the dimension
  [[1, 0, 1, 1, 0, 0, 0, 0, 1, 1]]
  """
  return jnp.packbits(jnp.asarray(bits, jnp.bool_), axis=-1)


def as_uint8(codes) -> jax.Array:
  """Packed codes as uint8: sentence-transformers' int8 'binary' codes are packed - 128.

  >>> as_uint8(np.array([-128, 48, 127], np.int8)).tolist()
  [0, 176, 255]
  """
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
  """(..., W) packed -> (..., dim) +-1 of ``dtype`` (bit 1 -> +1).

  >>> unpack_signs(np.array([[176]], np.uint8), 4).tolist()
  [[1.0, -1.0, 1.0, 1.0]]
  """
  return unpack_bits(packed, dim).astype(dtype) * 2 - 1


def bytes_to_words(packed) -> jax.Array:
  """(..., W) uint8/int8 -> (..., ceil(W / 4)) uint32, zero-padded; for word-wise popcount.

  The byte order inside a word is the machine's (bitcast); Hamming distances do not depend on it,
  and ``words_to_bytes`` inverts it exactly.

  >>> packed = np.array([[1, 2, 3, 4, 5]], np.uint8)
  >>> words = bytes_to_words(packed)
  >>> words.shape, words_to_bytes(words, 5).tolist()
  ((1, 2), [[1, 2, 3, 4, 5]])
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
