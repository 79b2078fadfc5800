"""Binary quantizers: codes vs sentence-transformers, bit/word packing identities, popcount."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from embedjax import ops
from embedjax.quant import QUANTIZERS, binary

quantize_embeddings = pytest.importorskip(
    'sentence_transformers.util.quantization').quantize_embeddings

N = 32
_settings = settings(max_examples=15, deadline=None)


@pytest.mark.parametrize('d', [24, 29])  # 29: the last byte is zero-padded
@pytest.mark.parametrize('precision', ['binary', 'ubinary'])
def test_codes_equal_sentence_transformers(precision, d):
  rng = np.random.default_rng(d)
  x = rng.standard_normal((N, d)).astype(np.float32)
  x[0, :4] = 0.0  # exactly zero is not > 0
  q = QUANTIZERS[precision]
  p = q.fit(x)
  got = np.asarray(q.encode(p, x))
  ref = quantize_embeddings(x, precision)
  assert got.dtype == ref.dtype and got.shape == ref.shape
  np.testing.assert_array_equal(got, ref)
  assert q.bytes_per_vector(p) == q.bytes_per_vector(d) == got.shape[1] == -(-d // 8)
  # decode: +1 where x > 0 else -1, padding bits dropped.
  np.testing.assert_array_equal(np.asarray(q.decode(p, got)), np.where(x > 0, 1.0, -1.0))


def test_centered_thresholds_at_the_calibration_mean():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((N, 16)) + 3.0).astype(np.float32)
  q = QUANTIZERS['binary_centered']
  p = q.fit(x)
  np.testing.assert_allclose(np.asarray(p.threshold), x.mean(0), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(q.encode(p, x)),
                                np.packbits(x > np.asarray(p.threshold), axis=-1))


@_settings
@given(bits=hnp.arrays(np.bool_, st.sampled_from([(N, 24), (N, 29)])))
def test_bit_and_word_packing_identities(bits):
  d = bits.shape[1]
  packed = ops.pack_bits(bits)
  np.testing.assert_array_equal(np.asarray(packed), np.packbits(bits, axis=-1))
  np.testing.assert_array_equal(np.asarray(ops.unpack_bits(packed, d)), bits)
  words = ops.bytes_to_words(packed)
  assert words.dtype == np.uint32 and words.shape == (N, 1)
  np.testing.assert_array_equal(np.asarray(ops.words_to_bytes(words, packed.shape[1])),
                                np.asarray(packed))
  # int8 (sentence-transformers 'binary') codes unpack to the same bits.
  signed = (np.asarray(packed).astype(np.int16) - 128).astype(np.int8)
  np.testing.assert_array_equal(np.asarray(ops.unpack_bits(signed, d)), bits)


@_settings
@given(a=hnp.arrays(np.bool_, (N, 40)), b=hnp.arrays(np.bool_, (N, 40)))
def test_popcount_hamming_matches_numpy_and_is_monotone(a, b):
  pa, pb = np.packbits(a, axis=-1), np.packbits(b, axis=-1)
  ref = (a[:, None, :] != b[None, :, :]).sum(-1)
  ham = np.asarray(binary.popcount_hamming(pa, pb))
  np.testing.assert_array_equal(ham, ref)
  # Setting a differing bit of b to agree with a[0] lowers the distance by exactly one.
  diff = np.flatnonzero(a[0] != b[0])
  if diff.size:
    b2 = b.copy()
    b2[0, diff[0]] = a[0, diff[0]]
    ham2 = np.asarray(binary.popcount_hamming(pa, np.packbits(b2, axis=-1)))
    assert ham2[0, 0] == ham[0, 0] - 1


def test_asymmetric_score_ranks_like_sentence_transformers_rescoring():
  # sentence-transformers rescores with q . b (b in {0, 1}); q . (2b - 1) differs by a per-query
  # constant, so both give the same ranking.
  rng = np.random.default_rng(3)
  x = rng.standard_normal((N, 24)).astype(np.float32)
  qs = rng.standard_normal((N, 24)).astype(np.float32)
  q = QUANTIZERS['ubinary']
  p = q.fit(x)
  codes = q.encode(p, x)
  ours = np.asarray(q.score(p, qs, codes), np.float64)
  st_scores = qs.astype(np.float64) @ np.unpackbits(np.asarray(codes), axis=-1)[:, :24].T
  np.testing.assert_allclose(ours, 2 * st_scores - qs.sum(1, keepdims=True), atol=1e-4)
