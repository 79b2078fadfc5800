"""Low-precision tables: int8 storage after float training, and low-precision training (LPT).

Both quantize each row symmetrically with its own scale: ``q = clip(round(x / s), -Q, Q)``,
``Q = 2^(bits-1) - 1``, ``s = max|x| / Q`` stored as float16 (the float16-rounded scale is the one
used to quantize, so dequantization is exact w.r.t. what is stored). Compute is always float32:
rows are dequantized after the gather.

* ``int8``: trained as a float32 full table; :meth:`finalize` quantizes with round-to-nearest
  (post-training quantization). Bytes: ``N D + 2 N``.
* ``lpt`` (bits 8, 4 or 2): the weights live on the quantization grid during training: after every
  optimizer step :meth:`post_update` requantizes each row with *stochastic* rounding (round up with
  probability equal to the fractional part, so the rounding is unbiased and small updates survive
  in expectation; a row's largest entry rounds to nearest, so that the row keeps its scale). Its
  uniforms come from a counter hash (:func:`hashed_uniform`: MurmurHash3's finaliser of each
  entry's index under a seed drawn from the step's key) rather than threefry, since the whole
  table is requantized every step. Bytes: ``ceil(N D bits / 8) + 2 N`` (codes bit-packed).

Note: in this implementation the float32 master copy during training is kept on the grid but is
still float32 (and the optimizer state is float32), so *training* memory equals the full table's;
only the stored/served form is low precision. A production LPT would keep int codes and fold the
update into a fused kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from embedjax.tables import base

SCALE_DTYPE = jnp.float16


def row_scale(x: jax.Array, bits: int) -> jax.Array:
  """(N, D) -> (N,) float16 per-row scales; an all-zero row gets scale 1 (any scale is exact)."""
  qmax = 2 ** (bits - 1) - 1
  s = jnp.max(jnp.abs(x), axis=-1) / qmax
  # Round up to float16 so that max|x| / s <= Q after rounding and nothing clips by more than
  # float16 rounding; the smallest normal float16 keeps tiny rows representable.
  s16 = s.astype(SCALE_DTYPE)
  # (A row already on the grid gives s back up to float32 rounding: no bump then, so requantizing
  # it is exact.)
  s16 = jnp.where(s16.astype(jnp.float32) < s * (1 - 2.0 ** -18),
                  jnp.nextafter(s16, jnp.asarray(jnp.inf, SCALE_DTYPE)), s16)
  s16 = jnp.where(s > 0, jnp.maximum(s16, jnp.finfo(SCALE_DTYPE).tiny), jnp.ones_like(s16))
  return s16


def hashed_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniforms in [0, 1) of ``shape`` (24 bits each): MurmurHash3's finaliser, twice, of each
  entry's flat index mixed with one 32-bit word drawn from ``key``. Counter-based, as threefry is,
  with fewer rounds; for stochastic rounding, not for cryptography."""
  word = jax.random.bits(key, (), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  h = base._fmix32(base._fmix32(index ^ word, jnp) + word, jnp)
  return (h >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0 ** -24)


def quantize(x: jax.Array, bits: int, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(N, D) float -> (codes (N, D) int8, scales (N,) float16); stochastic rounding when keyed."""
  qmax = 2 ** (bits - 1) - 1
  scale = row_scale(x, bits)
  y = x / scale.astype(jnp.float32)[:, None]
  if key is None:
    q = jnp.round(y)
  else:
    q = jnp.floor(y + hashed_uniform(key, y.shape))
    # A row's largest entry rounds to nearest, i.e. to +-Q: rounded down it would shrink the
    # row's maximum, so the scale found again from the stored row (finalize) would differ and
    # requantizing would move the row off its grid.
    top = jnp.abs(y) == jnp.max(jnp.abs(y), axis=-1, keepdims=True)
    q = jnp.where(top, jnp.round(y), q)
  return jnp.clip(q, -qmax, qmax).astype(jnp.int8), scale


def dequantize(codes: jax.Array, scale: jax.Array) -> jax.Array:
  return codes.astype(jnp.float32) * scale.astype(jnp.float32)[..., None]


def _lookup_rows(params, gid):
  if 'codes' in params:  # served form
    return dequantize(jnp.take(params['codes'], gid, axis=0), jnp.take(params['scale'], gid, axis=0))
  return jnp.take(params['embedding'], gid, axis=0)


def packed_bytes(n: int, dim: int, bits: int) -> int:
  """Codes bit-packed, plus one float16 scale per row."""
  return math.ceil(n * dim * bits / 8) + 2 * n


def int8(vocab_sizes: Sequence[int], dim: int, *, init_std: float = 0.01) -> base.Table:
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)

  def init(key):
    return {'embedding': base.normal_init(key, (n, dim), init_std)}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    return _lookup_rows(params, base.global_ids(ids, vocab_sizes))

  def finalize(params):
    if 'codes' in params:
      return params
    codes, scale = quantize(params['embedding'], 8)
    return {'codes': codes, 'scale': scale}

  def param_bytes(served):
    if 'codes' not in served:
      raise ValueError('param_bytes counts the served form: call finalize first')
    return base.tree_bytes(served)  # int8 codes + float16 scales

  return base.Table('int8', vocab_sizes, dim, init, lookup, param_bytes=param_bytes,
                    finalize=finalize, config={'bits': 8, 'scale_dtype': 'float16', 'init_std': init_std})


def lpt(vocab_sizes: Sequence[int], dim: int, *, bits: int = 8, init_std: float = 0.01) -> base.Table:
  if bits not in (2, 4, 8):
    raise ValueError(f'bits must be 2, 4 or 8, got {bits}')
  vocab_sizes = tuple(int(v) for v in vocab_sizes)
  n = sum(vocab_sizes)

  def on_grid(x, key=None):
    return dequantize(*quantize(x, bits, key))

  def init(key):
    return {'embedding': on_grid(base.normal_init(key, (n, dim), init_std))}

  def lookup(params, ids, key=None):
    del key
    base.check_ids(ids, vocab_sizes)
    return _lookup_rows(params, base.global_ids(ids, vocab_sizes))

  def post_update(params, key):
    return {'embedding': on_grid(params['embedding'], key)}

  def finalize(params):
    if 'codes' in params:
      return params
    codes, scale = quantize(params['embedding'], bits)  # exact: the weights are on the grid
    return {'codes': codes, 'scale': scale}

  def param_bytes(served):
    if 'codes' not in served:
      raise ValueError('param_bytes counts the served form: call finalize first')
    rows, width = served['codes'].shape
    return packed_bytes(rows, width, bits)

  return base.Table('lpt', vocab_sizes, dim, init, lookup, param_bytes=param_bytes,
                    finalize=finalize, post_update=post_update,
                    config={'bits': bits, 'rounding': 'stochastic', 'scale_dtype': 'float16',
                            'init_std': init_std})


def int8_for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  need = packed_bytes(int(sum(vocab_sizes)), dim, 8)
  if need > budget_bytes:
    raise base.Infeasible(f'int8 table needs {need} bytes > {budget_bytes}')
  return int8(vocab_sizes, dim, **kw)


def lpt_for_budget(vocab_sizes: Sequence[int], dim: int, budget_bytes: int, **kw) -> base.Table:
  """The widest of 8, 4, 2 bits that fits."""
  n = int(sum(vocab_sizes))
  for bits in (8, 4, 2):
    if packed_bytes(n, dim, bits) <= budget_bytes:
      return lpt(vocab_sizes, dim, bits=bits, **kw)
  raise base.Infeasible(f'2-bit table needs {packed_bytes(n, dim, 2)} bytes > {budget_bytes}')
