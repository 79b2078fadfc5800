"""Scalar quantizers: codes vs sentence-transformers, round-trip error bounds, monotonicity, bytes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from embedjax.quant import QUANTIZERS, scalar

quantize_embeddings = pytest.importorskip(
    'sentence_transformers.util.quantization').quantize_embeddings

# One shape everywhere: every jitted encode/decode/score then compiles once per quantizer.
N, D = 32, 24
FINITE = st.floats(-2.0, 2.0, width=32, allow_subnormal=False)
_settings = settings(max_examples=15, deadline=None)


def _embeddings(seed, n=N, d=D, scale=0.1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, d)).astype(np.float32) * scale
  x[:, 3] += 0.2  # an anisotropic coordinate, as real embeddings have
  return x


@pytest.mark.parametrize('precision', ['int8', 'uint8'])
def test_codes_equal_sentence_transformers(precision):
  cal, x = _embeddings(0), _embeddings(1, scale=0.13)  # x partly outside the range
  q = QUANTIZERS[precision]
  params = q.fit(cal)
  got = np.asarray(q.encode(params, x))
  ref = quantize_embeddings(x, precision, calibration_embeddings=cal)
  assert got.dtype == ref.dtype and got.shape == ref.shape
  np.testing.assert_array_equal(got, ref)
  # Same codes from sentence-transformers' explicit ranges, and from its own-data calibration.
  ranges = np.vstack([cal.min(0), cal.max(0)])
  np.testing.assert_array_equal(np.asarray(params.ranges), ranges)
  np.testing.assert_array_equal(
      np.asarray(q.encode(scalar.ranges_from_numpy(ranges), x)),
      quantize_embeddings(x, precision, ranges=ranges))
  x_big = _embeddings(2, n=128)  # sentence-transformers warns below 100 rows of own calibration
  np.testing.assert_array_equal(np.asarray(q.encode(q.fit(x_big), x_big)),
                                quantize_embeddings(x_big, precision))


def test_constant_dimension_matches_and_decodes_exactly():
  cal = _embeddings(2)
  cal[:, 5] = 0.25
  for name in ('int8', 'uint8'):
    q = QUANTIZERS[name]
    p = q.fit(cal)
    np.testing.assert_array_equal(np.asarray(q.encode(p, cal)),
                                  quantize_embeddings(cal, name, calibration_embeddings=cal))
    np.testing.assert_array_equal(np.asarray(q.roundtrip(p, cal))[:, 5], 0.25)


@_settings
@given(x=hnp.arrays(np.float32, (N, D), elements=FINITE),
       name=st.sampled_from(['int8', 'uint8', 'int4']))
def test_uniform_roundtrip_within_half_step(x, name):
  q = QUANTIZERS[name]
  p = q.fit(x)
  divisor = 255 if name != 'int4' else 16
  step = (np.asarray(p.ranges[1], np.float64) - np.asarray(p.ranges[0], np.float64)) / divisor
  err = np.abs(np.asarray(q.roundtrip(p, x), np.float64) - x)
  # Half a step, plus float32 rounding of (x - min) / step near bucket edges.
  assert np.all(err <= step / 2 * (1 + 1e-4) + 1e-6)


@_settings
@given(x=hnp.arrays(np.float32, (N, D), elements=FINITE),
       name=st.sampled_from(['float16', 'bfloat16', 'float8_e4m3', 'float8_e5m2',
                             'float8_e4m3_noscale', 'float8_e5m2_noscale']))
def test_float_roundtrip_relative_error(x, name):
  q = QUANTIZERS[name]
  p = q.fit(x)
  dtype = scalar.FLOAT_FORMATS[name.replace('_noscale', '')]
  info = jnp.finfo(dtype)
  scale = float(p.scale)
  err = np.abs(np.asarray(q.roundtrip(p, x), np.float64) - x)
  # Round to nearest: half an ulp relative in the normal range; below it, at most the smallest
  # normal (covers subnormal rounding and flush-to-zero).
  bound = np.maximum(np.abs(x) * 2.0 ** -(info.nmant + 1), float(info.smallest_normal) / scale)
  assert np.all(err <= bound * (1 + 1e-6))


def test_float8_scale_is_power_of_two_and_avoids_saturation():
  x = _embeddings(3)
  for name in ('float8_e4m3', 'float8_e5m2'):
    p = QUANTIZERS[name].fit(x)
    s = float(p.scale)
    assert s > 1 and np.log2(s) == int(np.log2(s))
    fmax = float(jnp.finfo(scalar.FLOAT_FORMATS[name]).max)
    assert np.abs(x).max() * s <= fmax / 4
  # Values far outside the calibration saturate instead of becoming NaN / inf.
  q = QUANTIZERS['float8_e4m3_noscale']
  out = np.asarray(q.roundtrip(q.fit(x), np.full((N, D), 1e6, np.float32)))
  assert np.all(np.isfinite(out)) and np.all(out == 448)


@_settings
@given(col=hnp.arrays(np.float32, (N,), elements=FINITE),
       name=st.sampled_from(['int8', 'uint8', 'int4', 'float16', 'bfloat16', 'float8_e4m3',
                             'float8_e5m2']))
def test_roundtrip_is_monotone(col, name):
  # Quantization must never swap the order of two values of the same coordinate.
  x = np.sort(col)[:, None].repeat(D, axis=1)
  q = QUANTIZERS[name]
  y = np.asarray(q.roundtrip(q.fit(x), x))[:, 0]
  assert np.all(np.diff(y) >= 0)


@pytest.mark.parametrize('name', sorted(scalar.SCALAR_QUANTIZERS))
def test_asymmetric_score_is_query_dot_decoded(name):
  cal, x, qs = _embeddings(4), _embeddings(5), _embeddings(6)
  q = QUANTIZERS[name]
  p = q.fit(cal)
  codes = q.encode(p, x)
  ref = qs.astype(np.float64) @ np.asarray(q.decode(p, codes), np.float64).T
  np.testing.assert_allclose(np.asarray(q.score(p, qs, codes)), ref, atol=1e-5)


def test_bytes_per_vector_is_exact():
  x = _embeddings(7, d=25)  # odd D: int4 pads half a byte
  expected = {'float32': 100, 'float16': 50, 'bfloat16': 50, 'float8_e4m3': 25, 'float8_e5m2': 25,
              'float8_e4m3_noscale': 25, 'float8_e5m2_noscale': 25, 'int8': 25, 'uint8': 25,
              'int4': 13}
  for name, nbytes in expected.items():
    q = QUANTIZERS[name]
    p = q.fit(x)
    codes = np.asarray(q.encode(p, x))
    assert q.bytes_per_vector(p) == q.bytes_per_vector(25) == nbytes
    assert codes.nbytes == N * nbytes, name


@_settings
@given(levels=hnp.arrays(np.uint8, st.sampled_from([(3, 8), (2, 9)]),
                         elements=st.integers(0, 15)))
def test_nibble_packing_identity(levels):
  packed = scalar.pack_nibbles(levels)
  assert packed.shape == (levels.shape[0], -(-levels.shape[1] // 2))
  np.testing.assert_array_equal(np.asarray(scalar.unpack_nibbles(packed, levels.shape[1])), levels)
