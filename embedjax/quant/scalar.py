"""Scalar (per-coordinate) quantizers: float casts and calibrated uniform integers.

Float casts (``float32``, ``float16``, ``bfloat16``, ``float8_e4m3`` = e4m3fn, ``float8_e5m2``):
  encode = saturate(x * scale).astype(fmt), decode = code / scale. ``scale`` is a power of two
  (exact, so it changes no mantissa bit) fitted so that the calibration's largest magnitude lands
  at a quarter of the format's maximum: for float8 this keeps normalised-embedding coordinates
  (|x| ~ 1e-3..0.3) in the normal range instead of e4m3's coarse subnormals (below 2^-6), and leaves
  headroom before saturation. ``scaled=False`` gives the plain cast (scale 1). Values beyond the
  format's maximum saturate (e4m3fn has no infinity and would otherwise give NaN).
  Error bound (normal range): |x - x_hat| <= |x| * 2^-(mantissa bits + 1).

Calibrated uniform integers (``int8``, ``uint8``: exactly sentence-transformers'
``quantize_embeddings``; ``int4``: the same with 16 levels, packed two per byte):
  ranges = [min; max] per dimension over the calibration set, step = (max - min) / divisor,
  level = clip(floor((x - min) / step), 0, levels - 1); int8 stores level - 128.
  divisor is 255 for 8 bits (sentence-transformers' choice: the top level holds only x = max) and
  16 for 4 bits (16 equal buckets: with 4 bits a wasted level costs too much).
  decode returns the bucket centre min + (level + 0.5) * step (sentence-transformers dequantises to
  the left edge; the centre halves the worst-case error and, for a fixed query, shifts every
  asymmetric score by the same constant, so rankings are identical). A constant dimension
  (max == min) decodes to min exactly.
  Error bound inside the calibrated range: |x - x_hat| <= step / 2.

Asymmetric scores: float32 queries against decoded codes, computed without materialising the
decoded corpus: q . x_hat = (q * step) . level + q . (min + step / 2).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from embedjax.quant.base import HIGHEST, Quantizer, check_calibration, dim_of, dot_scores

# ----------------------------------------------------------------------------------------------
# Float casts

FLOAT_FORMATS = {
    'float32': jnp.float32,
    'float16': jnp.float16,
    'bfloat16': jnp.bfloat16,
    'float8_e4m3': jnp.float8_e4m3fn,
    'float8_e5m2': jnp.float8_e5m2,
}
# A fitted scale puts the calibration's largest |x| at fmax / _HEADROOM.
_HEADROOM = 4.0


@struct.dataclass
class CastParams:
  """scale: () float32 power of two multiplying x before the cast; dim: D (static)."""
  scale: jax.Array
  dim: int = struct.field(pytree_node=False)


def cast_scale(absmax: float, dtype, scaled: bool = True) -> float:
  """The power-of-two scale for a calibration set whose largest magnitude is ``absmax``."""
  if not scaled or dtype == jnp.float32 or absmax <= 0 or not math.isfinite(absmax):
    return 1.0
  fmax = float(jnp.finfo(dtype).max)
  return float(2.0 ** math.floor(math.log2(fmax / (_HEADROOM * absmax))))


def _make_cast(name: str, scaled: bool) -> Quantizer:
  dtype = FLOAT_FORMATS[name]
  fmax = float(jnp.finfo(dtype).max)
  itemsize = jnp.dtype(dtype).itemsize

  def fit(calibration, key=None) -> CastParams:
    """calibration (N, D) -> CastParams (only its largest magnitude matters)."""
    del key
    x = check_calibration(calibration)
    absmax = float(np.max(np.abs(np.asarray(x))))
    return CastParams(scale=jnp.float32(cast_scale(absmax, dtype, scaled)), dim=x.shape[1])

  def encode(params: CastParams, x) -> jax.Array:
    """x (N, D) -> (N, D) codes of the format's dtype (saturating)."""
    x = jnp.asarray(x, jnp.float32)
    chex.assert_shape(x, (None, params.dim))
    return jnp.clip(x * params.scale, -fmax, fmax).astype(dtype)

  def decode(params: CastParams, codes) -> jax.Array:
    """(N, D) codes -> (N, D) float32."""
    return jnp.asarray(codes).astype(jnp.float32) / params.scale

  def score_prepared(params: CastParams, queries, codes) -> jax.Array:
    """(Q, D) float32 queries x (N, D) codes -> (Q, N) inner products with the decoded codes."""
    return dot_scores(queries, decode(params, codes))

  def bytes_per_vector(params_or_dim) -> int:
    return itemsize * dim_of(params_or_dim, lambda p: p.dim)

  suffix = '' if scaled or name in ('float32', 'float16', 'bfloat16') else '_noscale'
  return Quantizer(name=name + suffix, fit=fit, encode=jax.jit(encode), decode=jax.jit(decode),
                   score_prepared=jax.jit(score_prepared), bytes_per_vector=bytes_per_vector)


def cast(name: str, *, scaled: bool | None = None) -> Quantizer:
  """A float-cast quantizer: name in FLOAT_FORMATS; scaled defaults to True for float8 only.

  Example: float8 e4m3 keeps 3 mantissa bits, so a coordinate read back is within |x| / 16.

  >>> q = cast('float8_e4m3')
  >>> x = jnp.array([[0.1, -0.02, 0.3]])
  >>> params = q.fit(x)
  >>> q.encode(params, x).dtype, q.bytes_per_vector(params)
  (dtype(float8_e4m3fn), 3)
  >>> bool(jnp.all(jnp.abs(q.roundtrip(params, x) - x) <= jnp.abs(x) / 16))
  True
  """
  if name not in FLOAT_FORMATS:
    raise ValueError(f'unknown float format {name!r}; choose from {", ".join(FLOAT_FORMATS)}')
  if scaled is None:
    scaled = name.startswith('float8')
  return _make_cast(name, scaled)


# ----------------------------------------------------------------------------------------------
# Calibrated uniform integers


@struct.dataclass
class UniformParams:
  """ranges: (2, D) float32, row 0 the per-dimension minimum, row 1 the maximum.

  The same array sentence-transformers calls ``ranges`` (``quantize_embeddings(..., ranges=)``).
  """
  ranges: jax.Array


def uniform_fit(calibration, key=None) -> UniformParams:
  """Per-dimension [min; max] of the calibration embeddings (N, D); the fit of int8, uint8, int4.

  Example (int8, as sentence-transformers' ``quantize_embeddings``, float rounding included:
  (max - min) / step lands just below 255 here): each dimension's minimum maps to -128, and a
  vector read back is within half a step (range / 255 / 2) of the original.

  >>> import numpy as np
  >>> x = np.array([[-1.0, 0.0, 0.5], [1.0, 0.25, -0.5], [0.0, 0.125, 0.0]], np.float32)
  >>> params = int8.fit(x)
  >>> params.ranges.tolist()
  [[-1.0, 0.0, -0.5], [1.0, 0.25, 0.5]]
  >>> int8.encode(params, x).tolist()
  [[-128, -128, 126], [126, 126, -128], [-1, -1, -1]]
  >>> float(jnp.max(jnp.abs(int8.roundtrip(params, x) - x))) <= 1 / 255
  True
  """
  del key
  return UniformParams(ranges=_min_max(check_calibration(calibration)))


@jax.jit
def _min_max(x: jax.Array) -> jax.Array:
  return jnp.stack([jnp.min(x, axis=0), jnp.max(x, axis=0)])


def exact_divide(a: jax.Array, b) -> jax.Array:
  """a / b correctly rounded, as numpy computes it (b broadcast to a's shape).

  XLA's CPU backend rewrites a division by a broadcast (or constant) operand into a multiplication
  by its reciprocal, which is off by an ulp for some inputs; at a bucket edge that changes the
  floor, and so the code, relative to sentence-transformers. An optimization barrier on the
  materialised divisor keeps a true element-wise division.
  """
  b = jnp.broadcast_to(jnp.asarray(b, a.dtype), a.shape)
  return a / jax.lax.optimization_barrier(b)


def _steps(ranges: jax.Array, divisor: int) -> tuple[jax.Array, jax.Array]:
  """(bucket step used to encode, step used to decode); a constant dimension decodes exactly."""
  lo, hi = ranges[0], ranges[1]
  step = exact_divide(hi - lo, divisor)
  # sentence-transformers replaces a zero step by 1 (every value then lands in level 0).
  enc_step = jnp.where(step == 0, jnp.float32(1), step)
  dec_step = jnp.where(step == 0, jnp.float32(0), step)
  return enc_step, dec_step


def uniform_levels(ranges: jax.Array, x, divisor: int, levels: int) -> jax.Array:
  """(N, D) float -> (N, D) int32 levels in [0, levels), sentence-transformers' arithmetic."""
  ranges = jnp.asarray(ranges, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  chex.assert_shape(x, (None, ranges.shape[1]))
  enc_step, _ = _steps(ranges, divisor)
  return jnp.clip(jnp.floor(exact_divide(x - ranges[0], enc_step)), 0, levels - 1).astype(jnp.int32)


def uniform_decode(ranges: jax.Array, levels_: jax.Array, divisor: int) -> jax.Array:
  """(N, D) integer levels -> (N, D) float32 bucket centres."""
  _, dec_step = _steps(ranges, divisor)
  return ranges[0] + (levels_.astype(jnp.float32) + 0.5) * dec_step


def _uniform_prepare(ranges: jax.Array, queries, divisor: int) -> tuple[jax.Array, jax.Array]:
  """(Q, D) -> ((Q, D) q * step, (Q,) q . (min + step / 2)): the asymmetric score's two parts."""
  q = jnp.asarray(queries, jnp.float32)
  _, dec_step = _steps(ranges, divisor)
  offset = ranges[0] + 0.5 * dec_step
  return q * dec_step, jnp.dot(q, offset, precision=HIGHEST)


def pack_nibbles(levels_: jax.Array) -> jax.Array:
  """(N, D) values in [0, 16) -> (N, ceil(D / 2)) uint8; element 2i in the high nibble."""
  v = jnp.asarray(levels_).astype(jnp.uint8)
  if v.shape[-1] % 2:
    v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, 1)])
  return (v[..., 0::2] << 4) | (v[..., 1::2] & 0xF)


def unpack_nibbles(packed: jax.Array, dim: int) -> jax.Array:
  """(N, ceil(D / 2)) uint8 -> (N, D) uint8 in [0, 16); inverse of ``pack_nibbles``."""
  p = jnp.asarray(packed, jnp.uint8)
  both = jnp.stack([p >> 4, p & 0xF], axis=-1)
  return both.reshape(*p.shape[:-1], -1)[..., :dim]


def _make_uniform(name: str) -> Quantizer:
  bits = {'int8': 8, 'uint8': 8, 'int4': 4}[name]
  levels = 2 ** bits
  divisor = 255 if bits == 8 else 16
  offset = 128 if name == 'int8' else 0

  def encode(params: UniformParams, x) -> jax.Array:
    """(N, D) float -> int8 (N, D) | uint8 (N, D) | uint8 (N, ceil(D / 2)) for int4."""
    lv = uniform_levels(params.ranges, x, divisor, levels)
    if name == 'int8':
      return (lv - offset).astype(jnp.int8)
    if name == 'uint8':
      return lv.astype(jnp.uint8)
    return pack_nibbles(lv)

  def to_levels(params: UniformParams, codes) -> jax.Array:
    codes = jnp.asarray(codes)
    if name == 'int4':
      return unpack_nibbles(codes, params.ranges.shape[1]).astype(jnp.int32)
    return codes.astype(jnp.int32) + offset

  def decode(params: UniformParams, codes) -> jax.Array:
    return uniform_decode(params.ranges, to_levels(params, codes), divisor)

  def prepare_query(params: UniformParams, queries):
    return _uniform_prepare(params.ranges, queries, divisor)

  def score_prepared(params: UniformParams, prepared, codes) -> jax.Array:
    scaled_q, bias = prepared
    # Levels are small integers, exact in float32; the product runs as a float32 GEMM.
    lv = to_levels(params, codes).astype(jnp.float32)
    return dot_scores(scaled_q, lv) + bias[:, None]

  def bytes_per_vector(params_or_dim) -> int:
    d = dim_of(params_or_dim, lambda p: p.ranges.shape[1])
    return d if bits == 8 else -(-d // 2)

  return Quantizer(name=name, fit=uniform_fit, encode=jax.jit(encode), decode=jax.jit(decode),
                   score_prepared=jax.jit(score_prepared), bytes_per_vector=bytes_per_vector,
                   prepare_query=jax.jit(prepare_query))


def ranges_from_numpy(ranges) -> UniformParams:
  """Wraps a sentence-transformers ``ranges`` array (2, D) as params."""
  r = np.asarray(ranges, np.float32)
  if r.ndim != 2 or r.shape[0] != 2:
    raise ValueError(f'ranges must be (2, D), got {r.shape}')
  return UniformParams(ranges=jnp.asarray(r))


float32 = cast('float32')
float16 = cast('float16')
bfloat16 = cast('bfloat16')
float8_e4m3 = cast('float8_e4m3')
float8_e5m2 = cast('float8_e5m2')
float8_e4m3_noscale = cast('float8_e4m3', scaled=False)
float8_e5m2_noscale = cast('float8_e5m2', scaled=False)
int8 = _make_uniform('int8')
uint8 = _make_uniform('uint8')
int4 = _make_uniform('int4')

SCALAR_QUANTIZERS = {q.name: q for q in (
    float32, float16, bfloat16, float8_e4m3, float8_e5m2, float8_e4m3_noscale,
    float8_e5m2_noscale, int8, uint8, int4)}
